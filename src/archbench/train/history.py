"""Per-epoch history: one record per finished epoch, appended to history.csv and history.jsonl.

Appends are flushed and fsynced as each epoch ends. Figures and reports are made from
these files alone, so ``read`` checks every record (``SCHEMA``) and the two files against
each other. On start and resume the files are made to hold exactly the records kept in
the checkpoint (``sync``), so an epoch is never lost or duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, os_error, read_text
from archbench.schema import PERCENT, Fields, integer, number, or_null, parse_cell

FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_acc_exact",
    "train_seconds",
    "eval_seconds",
    "epoch_seconds",
)
CSV_NAME, JSONL_NAME = "history.csv", "history.jsonl"


def _csv_text(records: Iterable[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in FIELDS})
    return buf.getvalue()


def _jsonl_text(records: Iterable[dict]) -> str:
    return "".join(json.dumps({k: r.get(k) for k in FIELDS}) + "\n" for r in records)


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # earlier epochs stay in the checkpoint; the next start rewrites the file from it
        raise os_error("append to", path, e) from e


def append_record(run_dir: Path, record: dict) -> None:
    csv_path = Path(run_dir) / CSV_NAME
    _append(csv_path, _csv_text([record], header=not csv_path.exists() or csv_path.stat().st_size == 0))
    _append(Path(run_dir) / JSONL_NAME, _jsonl_text([record]))


def sync(run_dir: Path, records: list[dict]) -> None:
    """Make both history files hold exactly ``records``, rewriting (atomically) only what differs.

    Called when a run starts or resumes: a crash between checkpointing an epoch and
    appending its row, or in the middle of an append, is repaired from the checkpoint.
    """
    for name, text in ((CSV_NAME, _csv_text(records, header=True)), (JSONL_NAME, _jsonl_text(records))):
        path = Path(run_dir) / name
        try:
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            atomic_write_text(path, text)


# What each field of a record must hold. A non-finite training loss stops a run before its epoch
# is recorded. A non-finite validation loss does too now, but runs trained before final.json
# existed recorded that epoch (the metrics take NaN as never reached). val_acc_exact is null when
# every test image is pixel-exact.
SCHEMA = {
    "epoch": integer(1),
    "lr": number(positive=True),
    "train_loss": number(0),
    "train_acc": PERCENT,
    "val_loss": number(0, nonfinite=True),
    "val_acc": PERCENT,
    "val_acc_exact": or_null(PERCENT),
    "train_seconds": number(0),
    "eval_seconds": number(0),
    "epoch_seconds": number(0),
}
FIX = "resume the run (archbench train MODEL --resume, or compare again) to rewrite it from the checkpoint"


def _record(data: object, where: str, epoch: int, noun: str, fix: str = FIX) -> dict:
    """One checked record, with exactly the fields of ``SCHEMA`` (others are ignored)."""
    fields = Fields(data, where, fix, noun=noun)
    record = {k: fields.get(k, kind) for k, kind in SCHEMA.items()}
    fields.require(
        record["epoch"] == epoch,
        f"{noun} 'epoch' is {record['epoch']}, expected {epoch} (epochs are recorded 1, 2, 3, ... once each)",
    )
    return record


def check_records(records: list, where: str, fix: str) -> list[dict]:
    """Records kept elsewhere (a checkpoint's copy of the history), held to the files' rules."""
    return [_record(r, f"{where} record {n}", n, "field", fix) for n, r in enumerate(records, start=1)]


def _read_jsonl(path: Path) -> list[dict]:
    records: list[dict] = []
    for n, line in enumerate(read_text(path, "the run's history", FIX).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ArchbenchError(f"{path} line {n}: not a JSON record ({type(e).__name__}); {FIX}") from e
        records.append(_record(data, f"{path} line {n}", len(records) + 1, "field"))
    return records


def _read_csv(path: Path) -> list[dict]:
    try:
        rows = list(csv.reader(io.StringIO(read_text(path, "the run's history", FIX))))
    except csv.Error as e:
        raise ArchbenchError(f"{path}: not CSV ({e}); {FIX}") from e
    if not rows:
        raise ArchbenchError(f"{path}: the header line is missing; {FIX}")
    header, records = rows[0], list[dict]()
    missing = [k for k in FIELDS if k not in header]
    if missing:
        raise ArchbenchError(f"{path}: column {missing[0]!r} is missing from the header; {FIX}")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ArchbenchError(f"{path} line {n}: {len(row)} cells under a header of {len(header)}; {FIX}")
        data = {k: parse_cell(v) for k, v in zip(header, row)}
        records.append(_record(data, f"{path} line {n}", len(records) + 1, "column"))
    return records


def _difference(a: list[dict], b: list[dict]) -> str | None:
    """Where two readings of a history differ (NaN equals NaN here), or None."""
    for x, y in zip(a, b):
        key = next((k for k in FIELDS if json.dumps(x[k]) != json.dumps(y[k])), None)
        if key:
            return f"epoch {x['epoch']}'s {key} differs"
    return None if len(a) == len(b) else f"{len(a)} vs {len(b)} epochs"


def read(run_dir: Path) -> list[dict]:
    """The checked history of a run folder: its records, epochs 1, 2, ... (none if no epoch has finished).

    history.jsonl and history.csv hold the same records; both are read when both are there,
    and must agree, so that one cut short or edited is not taken for the run's history.
    """
    run_dir = Path(run_dir)
    jsonl, csv_path = run_dir / JSONL_NAME, run_dir / CSV_NAME
    have_jsonl, have_csv = os.path.lexists(jsonl), os.path.lexists(csv_path)
    if not (have_jsonl or have_csv):
        raise ArchbenchError(f"{run_dir}: no {JSONL_NAME} or {CSV_NAME}; is this a run folder?")
    records = _read_jsonl(jsonl) if have_jsonl else None
    rows = _read_csv(csv_path) if have_csv else None
    differ = None if records is None or rows is None else _difference(records, rows)
    if differ:
        raise ArchbenchError(f"{jsonl} and {csv_path} disagree ({differ}); {FIX}")
    if records is not None:
        return records
    assert rows is not None  # one of the two files exists
    return rows
