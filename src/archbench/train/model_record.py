"""What a run records about its model, and the checks that use the record.

``model.json`` in a run folder says where the model's definition came from (its spec; for a file
or module, the defining file and its SHA-256; for timm or an entry point, the package and version)
and its metadata (description, default lr, plain twin), so that reports pair a plain twin with its
residual model from the folder alone, and a resume or an evaluation can tell a changed definition.
``last.pt`` carries the same source record for the resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from archbench import io_utils
from archbench.config import RUN_CONFIG_FIX, Config
from archbench.data.datasets import get as get_dataset
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text
from archbench.models.registry import ModelSpec
from archbench.models.specs import check as check_model
from archbench.models.specs import resolve as resolve_model
from archbench.models.specs import source_mismatch
from archbench.schema import OBJECT, STRING, TEXT, Fields, number, or_null

MODEL_NAME = "model.json"


def checked_model(cfg: Config, log: Callable[[str], None] = print) -> ModelSpec:
    """The config's model, resolved; one from outside the package is also built and given a test
    batch (``specs.check``), so a broken factory fails before any work; its notes go to ``log``."""
    spec = resolve_model(cfg.model, cfg.model_spec)
    if spec.source.kind != "builtin":
        for note in check_model(spec, get_dataset(cfg.dataset).num_classes):
            log(note)
    return spec


def refuse_changed_model(run_dir: Path, name: str, recorded: dict | None, spec: ModelSpec) -> None:
    """Raise if the run was trained with another definition of its model than ``spec`` resolves to now."""
    changed = source_mismatch(recorded, spec.source)
    if changed:
        raise ArchbenchError(
            f"{run_dir} was trained with another definition of model {name!r}: {changed}; "
            f"restore the model's code as it was, or train into another --out"
        )


def refuse_changed_model_of(run_dir: Path, cfg: Config) -> None:
    """``refuse_changed_model`` against the run's model.json, for readers of finished runs
    (evaluation, landscapes): weights that still load into a changed model would give wrong numbers."""
    record = read_model_record(run_dir)
    if record is not None:
        refuse_changed_model(run_dir, cfg.model, record["source"], resolve_model(cfg.model, cfg.model_spec))


def write_model_record(run_dir: Path, spec: ModelSpec) -> None:
    """``model.json``: where the model came from (spec, file and its SHA-256) and its metadata, so
    reports pair a plain twin with its resnet and a resume can tell a changed definition."""
    record = {
        "name": spec.name,
        "description": spec.description,
        "default_lr": spec.default_lr,
        "plain_twin_of": spec.plain_twin_of,
        "source": spec.source.to_dict(),
    }
    atomic_write_text(Path(run_dir) / MODEL_NAME, json.dumps(record, indent=2) + "\n")


def read_model_record(run_dir: Path) -> dict | None:
    """A run's checked ``model.json`` (None: a run made before models were recorded)."""
    path = Path(run_dir) / MODEL_NAME
    if not os.path.lexists(path):
        return None
    f = Fields(io_utils.read_json(path, "the run's model record", RUN_CONFIG_FIX), str(path), RUN_CONFIG_FIX)
    record = {
        "name": f.get("name", TEXT),
        "description": f.get("description", STRING),
        "default_lr": f.get("default_lr", number(positive=True)),
        "plain_twin_of": f.get("plain_twin_of", or_null(TEXT)),
    }
    source = Fields(f.get("source", OBJECT), str(path), RUN_CONFIG_FIX, "source.")
    record["source"] = {
        key: source.get(key, STRING if key in ("kind", "spec") else or_null(STRING))
        for key in ("kind", "spec", "file", "sha256", "package")
    }
    return record
