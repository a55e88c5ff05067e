"""Per-epoch history: one record per finished epoch, appended to history.csv and history.jsonl.

Appends are flushed and fsynced as each epoch ends. Figures and reports are made from
these files alone. On start and resume the files are made to hold exactly the records kept in
the checkpoint (``sync``), so an epoch is never lost or duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text

FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_exact",
          "train_seconds", "eval_seconds", "epoch_seconds")
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
    except OSError as e:
        raise ArchbenchError(f"could not append to {path}: {e.strerror}; free disk space or choose "
                             f"another --out (earlier epochs are kept in the checkpoint)") from e


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


def _number(v: str) -> float | int | None:
    if v == "":
        return None
    f = float(v)
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read(run_dir: Path) -> list[dict]:
    """The history of a run folder, from history.jsonl (or history.csv if that is all there is)."""
    run_dir = Path(run_dir)
    jsonl, csv_path = run_dir / JSONL_NAME, run_dir / CSV_NAME
    try:
        if jsonl.is_file():
            return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        if csv_path.is_file():
            rows = csv.DictReader(io.StringIO(csv_path.read_text()))
            return [{k: _number(v) for k, v in row.items()} for row in rows]
    except (ValueError, KeyError) as e:
        raise ArchbenchError(f"{run_dir}: history file is damaged ({e}); it is rebuilt from the "
                             f"checkpoint by resuming the run") from e
    raise ArchbenchError(f"{run_dir}: no {JSONL_NAME} or {CSV_NAME}; is this a run folder?")

