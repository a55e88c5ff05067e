"""Experiment trackers: where a run's epochs are shown besides its own files.

This module owns every tracker archbench can log to — TensorBoard, MLflow and Weights &
Biases — behind one small interface (``Tracker``): checking, before a run starts, that the
packages the config asks for are installed (``check_trackers``); opening the trackers for
one run folder (``open_trackers``), which continues a resumed run's tracker runs through
the ids kept in ``RUN_DIR/trackers.json``; logging each committed epoch and closing them;
and logging a comparison's output files (``log_comparison``).

The run folder's history files remain the record; a tracker is a view of them. Each tracker
library is imported only when a config asks for it, and a library's failure becomes one
``ArchbenchError`` naming the tracker.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from archbench.config import MLFLOW_DEFAULT_STORE, Config
from archbench.data.fetch import offline_from_env
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, read_json

IDS_NAME = "trackers.json"
PROJECT = "archbench"  # the MLflow experiment and the W&B project
COMPARISON = "comparison"  # the name of a compare's tracker runs
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds")
# Files of a compare folder logged as artifacts (with its figures, *.png), when present.
COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.json", "report.md", "report.html")
_IDS_FIX = f"delete {IDS_NAME} to start new tracker runs"

# flag, module to import, install command
_PACKAGES = {
    "tensorboard": ("--tensorboard", "torch.utils.tensorboard", "pip install tensorboard"),
    "mlflow": ("--mlflow", "mlflow", "pip install mlflow-skinny (or: pip install 'archbench[mlflow]')"),
    "wandb": ("--wandb", "wandb", "pip install wandb (or: pip install 'archbench[wandb]')"),
}


class Tracker(Protocol):
    """Where a run's epochs go besides its history files."""

    def log_epoch(self, record: dict) -> None:
        """Log one committed epoch (a history record)."""

    def close(self, finished: bool) -> None:
        """End the tracker's run; ``finished``: every planned epoch is logged."""


def enabled(cfg: Config) -> list[str]:
    """The trackers ``cfg`` asks for, in the order they are opened."""
    asked = {"tensorboard": cfg.tensorboard, "mlflow": cfg.mlflow is not None, "wandb": cfg.wandb}
    return [name for name, on in asked.items() if on]


def check_trackers(cfg: Config) -> None:
    """Refuse, before anything is trained or written, trackers that cannot work: a package
    that is not installed, or an MLflow URI that is a model name."""
    from archbench.models.specs import looks_like_model

    if cfg.mlflow is not None and looks_like_model(cfg.mlflow):  # `--mlflow resnet18 vgg19_bn` took a model
        raise ArchbenchError(
            f"--mlflow {cfg.mlflow!r} is a model name, not a tracking URI; put --mlflow after the model "
            f"names, or write --mlflow=URI"
        )
    if cfg.offline or offline_from_env():  # --offline means no network, the trackers' included
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 phones home on import
        os.environ.setdefault("WANDB_MODE", "offline")
    for name in enabled(cfg):
        _import(name)


def _import(name: str) -> Any:
    flag, module, pip = _PACKAGES[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ArchbenchError(f"{flag} needs the {name} package: {pip}") from e


@contextmanager
def _library(tracker: str, action: str, fix: str) -> Iterator[None]:
    """Turn a tracker library's failure to ``action`` into one line naming the tracker."""
    try:
        yield
    except ArchbenchError:
        raise
    except Exception as e:  # each library has its own exception types; all mean "the tracker failed"
        reason = " ".join(str(e).split()) or type(e).__name__
        if len(reason) > 400:
            reason = reason[:400] + " ..."
        raise ArchbenchError(f"{tracker}: could not {action} ({type(e).__name__}: {reason}); {fix}") from e


def run_name(cfg: Config, run_dir: Path) -> str:
    """The run folder relative to the output folder (``resnet18``, ``resnet18/seed1``), else the model."""
    try:
        return Path(run_dir).resolve().relative_to(Path(cfg.out).resolve()).as_posix()
    except ValueError:
        return cfg.model


def mlflow_uri(cfg: Config) -> str:
    """The tracking URI ``cfg.mlflow`` means: ``default`` is a file store at OUT/mlruns."""
    if cfg.mlflow == MLFLOW_DEFAULT_STORE:
        return (Path(cfg.out).resolve() / "mlruns").as_uri()
    if urlparse(cfg.mlflow).scheme == "":  # a path: one spelling per store, wherever the command runs
        return Path(cfg.mlflow).resolve().as_uri()
    return cfg.mlflow


def store_on_this_machine(uri: str) -> bool:
    """Whether an MLflow store lives in this machine's files (a folder, or an SQLite file)."""
    return _is_file_store(uri) or urlparse(uri).scheme.split("+")[0] == "sqlite"


def _is_file_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a bare path, file:..., or C:\... on Windows


def _store_fix(uri: str) -> str:
    """What to do when the store at ``uri`` cannot be used."""
    database = urlparse(uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")
    # mlflow-skinny has no database stores (no SQLAlchemy); its error names its model registry instead.
    return f"check --mlflow {uri}" + ("; database stores need the full package: pip install mlflow" if database else "")


def _mlflow_client(uri: str):
    """A client of one tracking store (MLflow's fluent API would keep a global active run)."""
    _import("mlflow")
    if _is_file_store(uri):
        # MLflow 3 refuses its file store ("maintenance mode") unless this is set; a file store
        # is what `--mlflow` alone asks for, and one the user named is asked for explicitly.
        # setdefault: a user who set it to false keeps MLflow's refusal.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client) -> str:
    exp = client.get_experiment_by_name(PROJECT)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(PROJECT)
    except Exception:  # another process created it meanwhile
        exp = client.get_experiment_by_name(PROJECT)
        if exp is None:
            raise
        return exp.experiment_id


def mlflow_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params, which are text: lists as JSON, other values as ``str``."""
    return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in cfg.to_dict().items()}


def _metrics(record: dict) -> dict[str, float]:
    out = {k: float(record[k]) for k in METRICS}
    if record.get("val_acc_exact") is not None:
        out["val_acc_exact"] = float(record["val_acc_exact"])
    return out


# ---------------------------------------------------------------- the trackers


class TensorBoardTracker:
    """Scalars in RUN_DIR/tensorboard, one step per epoch."""

    def __init__(self, run_dir: Path, epochs_done: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events of epochs a crashed run logged but never checkpointed.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=epochs_done + 1)

    def log_epoch(self, record: dict) -> None:
        e = record["epoch"]
        for split in ("train", "val"):
            self.writer.add_scalar(f"loss/{split}", record[f"{split}_loss"], e)
            self.writer.add_scalar(f"accuracy/{split}", record[f"{split}_acc"], e)
        self.writer.add_scalar("lr", record["lr"], e)
        self.writer.add_scalar("seconds/epoch", record["epoch_seconds"], e)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per run folder: params are the config, metrics are per epoch (step = epoch).

    MLflow keeps every value logged, so each epoch is logged once: a resume logs only the
    epochs after the last one the run holds — the history's earlier epochs when the MLflow
    run is new (tracking turned on later, or another store), none of a replayed epoch that a
    crashed process logged before its checkpoint landed (its numbers are the replay's on CPU).
    """

    def __init__(self, cfg: Config, run_dir: Path, history: list[dict], stored: dict | None):
        self.uri = mlflow_uri(cfg)
        self._fix = _store_fix(self.uri)
        with _library("mlflow", f"open the tracking store {self.uri}", self._fix):
            self.client = _mlflow_client(self.uri)
            run = self._stored_run(stored)
            params = mlflow_params(cfg)
            if run is None:
                run = self.client.create_run(
                    _experiment_id(self.client),
                    run_name=run_name(cfg, run_dir),
                    tags={"archbench.model": cfg.model, "archbench.seed": str(cfg.seed)},
                )
                self.run_id, self.logged_to = run.info.run_id, 0
                self.client.log_batch(self.run_id, params=[_param(k, v) for k, v in params.items()])
            else:
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                steps = [m.step for m in self.client.get_metric_history(self.run_id, "val_acc")]
                self.logged_to = max(steps, default=0)
                self._update_params(run.data.params, params)
        for record in history:  # epochs trained before this run was tracked
            self.log_epoch(record)

    def _stored_run(self, stored: dict | None):
        """The run ``trackers.json`` names, if this store still holds it."""
        if not stored or stored.get("tracking_uri") != self.uri or not stored.get("run_id"):
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(stored["run_id"])
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return run if run.info.lifecycle_stage == "active" else None

    def _update_params(self, old: dict[str, str], new: dict[str, str]) -> None:
        """MLflow params cannot change: a setting that did on resume (more epochs, another
        device) is recorded in the tag ``config.<name>``; new settings become params."""
        from mlflow.entities import RunTag

        added = [_param(k, v) for k, v in new.items() if k not in old]
        changed = [RunTag(f"config.{k}", v) for k, v in new.items() if k in old and old[k] != v]
        if added or changed:
            self.client.log_batch(self.run_id, params=added, tags=changed)

    @property
    def ids(self) -> dict[str, str]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def log_epoch(self, record: dict) -> None:
        from mlflow.entities import Metric

        e = record["epoch"]
        if e <= self.logged_to:
            return
        now = int(time.time() * 1000)
        with _library("mlflow", f"log epoch {e} to {self.uri}", "the finished epochs are saved; --resume continues"):
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, e) for k, v in _metrics(record).items()])
        self.logged_to = e

    def close(self, finished: bool) -> None:
        with _library("mlflow", f"end run {self.run_id} in {self.uri}", self._fix):
            self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _wandb_init(fix: str, **kwargs: Any):
    """A W&B run; WANDB_MODE and the other WANDB_* variables apply. Every run archbench
    starts is finished before the next one starts, as each wandb version expects."""
    wandb = _import("wandb")
    with _library("wandb", "start a run", fix):
        return wandb.init(project=PROJECT, **kwargs)


WANDB_FIX = "run `wandb login`, or set WANDB_MODE=offline to log locally and `wandb sync` later"


class WandbTracker:
    """One W&B run per run folder, files under RUN_DIR/wandb; per-epoch values with step = epoch.

    A resume continues the same run id (``resume="allow"``). W&B drops a step at or below the
    last one it holds, so an epoch replayed after a crash keeps its first values; offline,
    each process writes its own ``offline-run-*`` folder under the same id.
    """

    def __init__(self, cfg: Config, run_dir: Path, history: list[dict], stored: dict | None):
        stored_id = (stored or {}).get("id")
        self.run = _wandb_init(
            WANDB_FIX,
            name=run_name(cfg, run_dir),
            group=cfg.model,
            job_type="train",
            dir=str(run_dir),
            config=cfg.to_dict(),
            id=stored_id,
            resume="allow",
            allow_val_change=True,  # a resume may extend the epochs
        )
        with _library("wandb", "define the epoch axis", WANDB_FIX):
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
        if stored_id is None:
            for record in history:  # epochs trained before this run was tracked
                self.log_epoch(record)

    @property
    def ids(self) -> dict[str, str]:
        return {"id": self.run.id}

    def log_epoch(self, record: dict) -> None:
        e = record["epoch"]
        with _library("wandb", f"log epoch {e}", "the finished epochs are saved; --resume continues"):
            self.run.log({"epoch": e, **_metrics(record)}, step=e)

    def close(self, finished: bool) -> None:
        with _library("wandb", "finish the run", WANDB_FIX):
            self.run.finish(exit_code=0 if finished else 1)


# ---------------------------------------------------------------- one run's trackers


def read_ids(run_dir: Path) -> dict[str, dict[str, str]]:
    """The tracker run ids a run folder keeps (``{}``: none yet)."""
    path = Path(run_dir) / IDS_NAME
    if not path.exists():
        return {}
    ids = read_json(path, "the run's tracker ids", _IDS_FIX)
    ok = isinstance(ids, dict) and all(
        isinstance(v, dict) and all(isinstance(k2, str) and isinstance(v2, str) for k2, v2 in v.items())
        for v in ids.values()
    )
    if not ok:
        raise ArchbenchError(
            f"{path}: expected an object of tracker ids (text), not {json.dumps(ids)[:80]}; {_IDS_FIX}"
        )
    return ids


def open_trackers(cfg: Config, run_dir: Path, history: list[dict]) -> list[Tracker]:
    """The trackers ``cfg`` asks for, opened for ``run_dir`` whose epochs so far are ``history``.

    MLflow and W&B continue the runs named in RUN_DIR/trackers.json, and that file is
    rewritten when a new one is started; TensorBoard hides events logged after ``history``.
    """
    names = enabled(cfg)
    if not names:
        return []
    run_dir = Path(run_dir)
    ids = read_ids(run_dir) if {"mlflow", "wandb"} & set(names) else {}
    opened: list[Tracker] = []
    kinds: dict[str, Callable[[], Tracker]] = {
        "tensorboard": lambda: TensorBoardTracker(run_dir, history[-1]["epoch"] if history else 0),
        "mlflow": lambda: MLflowTracker(cfg, run_dir, history, ids.get("mlflow")),
        "wandb": lambda: WandbTracker(cfg, run_dir, history, ids.get("wandb")),
    }
    try:
        for name in names:
            opened.append(kinds[name]())
            if name != "tensorboard" and ids.get(name) != opened[-1].ids:
                # Kept for the next resume as soon as the run exists; the ids of trackers
                # that are off this time stay for when they are on again.
                ids[name] = opened[-1].ids
                atomic_write_text(run_dir / IDS_NAME, json.dumps(ids, indent=2) + "\n")
    except BaseException:
        close_trackers(opened, finished=False)
        raise
    return opened


def log_epoch(trackers: list[Tracker], record: dict) -> None:
    """Log ``record`` to every tracker; the first failure is raised after all were tried, so
    one tracker's failure costs the others nothing."""
    failure = None
    for t in trackers:
        try:
            t.log_epoch(record)
        except Exception as e:
            failure = failure or e
    if failure is not None:
        raise failure


def catch_up(cfg: Config, run_dir: Path, history: list[dict]) -> None:
    """A finished run's trackers, when it is reused: MLflow gets the epochs it lacks (a log
    that failed, or tracking turned on after training) and is marked finished; W&B gets a run
    if it has none yet. (A W&B run that missed an epoch keeps the gap: W&B offers no way to
    ask which steps it holds offline.)"""
    names = [n for n in enabled(cfg) if n == "mlflow" or (n == "wandb" and "wandb" not in read_ids(run_dir))]
    if names:
        wanted = cfg.replace(tensorboard=False, wandb="wandb" in names)
        close_trackers(open_trackers(wanted, run_dir, history), finished=True)


def close_trackers(trackers: list[Tracker], finished: bool) -> None:
    """Close every tracker; the first failure is raised after all were tried, unless the run
    is already failing (``finished`` false), whose own error is the one that matters."""
    failure = None
    for t in trackers:
        try:
            t.close(finished)
        except Exception as e:
            failure = failure or e
    if failure is not None and finished:
        raise failure


# ---------------------------------------------------------------- a comparison


def comparison_files(out: Path) -> list[Path]:
    """The comparison's output files present in ``out``: tables, report, manifest, figures."""
    out = Path(out)
    return [p for p in (out / n for n in COMPARISON_FILES) if p.is_file()] + sorted(out.glob("*.png"))


def log_comparison(cfg: Config, out: Path, models: list[str], seeds: list[int] | None = None) -> list[str]:
    """Log a compare folder's outputs to a tracker run named "comparison" per tracker ``cfg``
    asks for; returns where, one description per tracker.

    MLflow and W&B get the files as artifacts (a new run per compare). TensorBoard has no
    artifacts: OUT/tensorboard gets the comparison table as text, replacing an earlier one.
    """
    out = Path(out)
    files = comparison_files(out)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "seed")}
    settings |= {"models": " ".join(models), "seeds": " ".join(map(str, seeds)) if seeds else str(cfg.seed)}
    done = []
    if cfg.tensorboard and (out / "comparison.md").is_file():
        from torch.utils.tensorboard import SummaryWriter

        # purge_step 0: a rerun's table replaces the last one instead of piling up at step 0.
        with SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=0) as writer:
            writer.add_text(COMPARISON, (out / "comparison.md").read_text(encoding="utf-8"), 0)
        done.append(f"TensorBoard text in {out / 'tensorboard'}")
    if cfg.mlflow is not None:
        done.append(_mlflow_comparison(cfg, files, settings))
    if cfg.wandb:
        done.append(_wandb_comparison(out, files, settings))
    return done


def _mlflow_comparison(cfg: Config, files: list[Path], settings: dict[str, Any]) -> str:
    uri = mlflow_uri(cfg)
    fix = f"{_store_fix(uri)}; the comparison's files are written"
    with _library("mlflow", f"log the comparison to {uri}", fix):
        client = _mlflow_client(uri)
        run = client.create_run(_experiment_id(client), run_name=COMPARISON, tags={"archbench.kind": COMPARISON})
        run_id = run.info.run_id
        try:
            params = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in settings.items()}
            client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
            for f in files:
                client.log_artifact(run_id, str(f))
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
    return f"MLflow run {run_id} ({COMPARISON}) in {uri}"


def _wandb_comparison(out: Path, files: list[Path], settings: dict[str, Any]) -> str:
    wandb = _import("wandb")
    run = _wandb_init(WANDB_FIX, name=COMPARISON, job_type=COMPARISON, dir=str(out), config=settings)
    finished = False
    try:
        with _library("wandb", "log the comparison's files", WANDB_FIX):
            artifact = wandb.Artifact(COMPARISON, type=COMPARISON)
            for f in files:
                artifact.add_file(str(f))
            run.log_artifact(artifact)
        finished = True
    finally:
        with _library("wandb", "finish the comparison run", WANDB_FIX):
            run.finish(exit_code=0 if finished else 1)
    return f"W&B run {run.id} ({COMPARISON}), files under {out / 'wandb'}"
