"""A diverged run's outcome, kept in its folder as ``divergence.json``.

Divergence is a result, not a crash: the run keeps its last finite epoch, and the file
records where it failed so that ``compare`` counts it (rather than training it again
into the same failure) and the report can show it.
"""

from __future__ import annotations

import json
from pathlib import Path

from archbench.config import Config, protocol_mismatch
from archbench.errors import ArchbenchError, DivergenceError
from archbench.io_utils import atomic_write_text

FILE_NAME = "divergence.json"


def write(run_dir: Path, cfg: Config, err: DivergenceError) -> None:
    record = {"epoch": err.epoch, "step": err.step, "message": str(err), "config": cfg.to_dict()}
    atomic_write_text(Path(run_dir) / FILE_NAME, json.dumps(record, indent=2) + "\n")


def read(run_dir: Path) -> dict | None:
    """The recorded divergence of a run folder, or None if it did not diverge."""
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {"epoch": int(record["epoch"]), "step": record.get("step"), "message": str(record["message"]),
                "config": dict(record["config"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArchbenchError(f"{path} is damaged ({e}); delete it to train the run again") from e


def refuse_retraining(run_dir: Path, cfg: Config) -> None:
    """Raise the recorded divergence of ``run_dir`` (same protocol), so it is counted, not retrained."""
    record = read(run_dir)
    if record is None:
        return
    diffs = protocol_mismatch(record["config"], cfg)
    if diffs:
        raise ArchbenchError(f"{run_dir} holds a diverged run with another protocol ({'; '.join(diffs)}); "
                             f"choose another --out or delete that folder")
    where = f"epoch {record['epoch']}" + (f", step {record['step']}" if record["step"] else "")
    raise DivergenceError(f"[{cfg.model}] {run_dir} diverged at {where} when it was trained "
                          f"(recorded in {FILE_NAME}); it is not trained again — lower --lr and choose "
                          f"another --out", record["epoch"], record["step"])
