"""A diverged run's outcome, kept in its folder as ``divergence.json``.

Divergence is a result, not a crash: the run keeps its last finite epoch, and the file
records where it failed so that ``compare`` counts it (rather than training it again
into the same failure) and the report can show it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from archbench.config import Config, protocol_mismatch, run_config
from archbench.errors import ArchbenchError, DivergenceError
from archbench.io_utils import atomic_write_text, read_json
from archbench.schema import OBJECT, STRING, Fields, integer, or_null

FILE_NAME = "divergence.json"
FIX = "delete it to train the run again"


def write(run_dir: Path, cfg: Config, err: DivergenceError) -> None:
    record = {"epoch": err.epoch, "step": err.step, "message": str(err), "config": cfg.to_dict()}
    atomic_write_text(Path(run_dir) / FILE_NAME, json.dumps(record, indent=2) + "\n")


def read(run_dir: Path) -> dict | None:
    """The checked divergence record of a run folder, or None if it did not diverge."""
    path = Path(run_dir) / FILE_NAME
    if not os.path.lexists(path):
        return None
    fields = Fields(read_json(path, "the run's divergence record", FIX), str(path), FIX)
    record = {
        "epoch": fields.get("epoch", integer(1)),
        "step": fields.get("step", or_null(integer(1))),
        "message": fields.get("message", STRING),
    }
    cfg = run_config(fields.get("config", OBJECT), f"{path} field 'config'", FIX)
    return {**record, "config": cfg.to_dict()}


def refuse_retraining(run_dir: Path, cfg: Config) -> None:
    """Raise the recorded divergence of ``run_dir`` (same protocol), so it is counted, not retrained."""
    record = read(run_dir)
    if record is None:
        return
    diffs = protocol_mismatch(record["config"], cfg, extending=True)  # more epochs do not undo a divergence
    if diffs:
        raise ArchbenchError(
            f"{run_dir} holds a diverged run with another protocol ({'; '.join(diffs)}); "
            f"choose another --out or delete that folder"
        )
    where = f"epoch {record['epoch']}" + (f", step {record['step']}" if record["step"] else "")
    raise DivergenceError(
        f"[{cfg.model}] {run_dir} diverged at {where} when it was trained "
        f"(recorded in {FILE_NAME}); it is not trained again — lower --lr and choose "
        f"another --out",
        record["epoch"],
        record["step"],
    )
