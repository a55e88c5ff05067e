"""What one Ray task does: train one run of the grid, draw its plots and evaluate it.

The task runs in a Ray worker process, anywhere in the cluster. It writes the run folder
in place when the compare folder is visible there (the driver's marker file is readable),
and otherwise in a temp folder whose files go back to the driver inside the ``Outcome``.
Each attempt reports to the driver's ``Progress`` actor: where it started, every log line,
every finished epoch. A problem the user must fix (bad data, a refused folder, a
divergence) is an outcome, not an exception, so Ray never retries it; only a lost worker
or node is retried.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from archbench.config import Config
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError, DivergenceError
from archbench.scale import folders

FILES_MODES = ("auto", "shared", "return")
FINISHED, DIVERGED, FAILED, INTERRUPTED = "finished", "diverged", "failed", "interrupted"


@dataclass(frozen=True)
class Job:
    """One (model, seed) run as the driver hands it to a worker."""

    cfg: Config
    run_dir: str  # absolute, as the driver sees it
    label: str  # the run folder relative to the compare folder, e.g. resnet18/seed1
    marker: str  # the driver's marker file in the compare folder
    token: str  # what the marker holds: a worker that reads it sees the driver's folder
    files: str  # auto | shared | return (FILES_MODES)
    start: list  # [ObjectRef of the driver's copy of the run folder] in a list, so it is fetched only if needed
    threads: int  # torch CPU threads: the task's CPU share


@dataclass(frozen=True)
class Outcome:
    label: str
    status: str  # FINISHED, DIVERGED, FAILED or INTERRUPTED
    message: str
    archive: bytes | None  # the run folder, when it was written away from the compare folder
    where: str  # host and process that ran the attempt
    device: str


class Progress:
    """The driver's mailbox (a Ray actor): events from every attempt, collected in order."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, object]] = []

    def put(self, label: str, kind: str, payload: object) -> None:
        self._events.append((label, kind, payload))

    def drain(self) -> list[tuple[str, str, object]]:
        events, self._events = self._events, []
        return events


def reads_marker(marker: str, token: str) -> bool:
    """Whether this process sees the driver's compare folder: its marker file, holding ``token``."""
    try:
        return Path(marker).read_text() == token
    except OSError:
        return False


def writable(data: CifarData) -> CifarData:
    """``data`` with arrays torch may write to: those read from Ray's object store are read-only views."""
    changes: dict[str, Any] = {
        f.name: np.array(v)
        for f in dataclasses.fields(data)
        if isinstance(v := getattr(data, f.name), np.ndarray) and not v.flags.writeable
    }
    return dataclasses.replace(data, **changes) if changes else data


def run_job(job: Job, data: CifarData, progress) -> Outcome:
    """The body of the Ray task (``progress``: a handle of the ``Progress`` actor)."""
    import ray
    import torch

    where = f"{socket.gethostname()} pid {os.getpid()}"
    torch.set_num_threads(max(1, job.threads))
    cfg = job.cfg
    if cfg.device == "auto" and not ray.get_gpu_ids():
        cfg = cfg.replace(device="cpu")  # no GPU reserved for this task: leave the node's GPUs to others
    shared = reads_marker(job.marker, job.token)
    if job.files == "shared" and not shared:
        message = (
            f"{where} does not see {Path(job.marker).parent}; put it on a shared filesystem or use --ray-files return"
        )
        return Outcome(job.label, FAILED, message, None, where, "")
    if job.files == "return":
        shared = False
    if not shared and not job.start:  # a node that joined after the driver found every node sharing the folder
        message = (
            f"{where} does not see {Path(job.marker).parent}, which every node did at the start; use --ray-files return"
        )
        return Outcome(job.label, FAILED, message, None, where, "")
    node = ray.get_runtime_context().get_node_id()
    progress.put.remote(job.label, "start", {"where": where, "pid": os.getpid(), "node": node, "shared": shared})
    temp = None if shared else tempfile.mkdtemp(prefix="archbench-run-")
    run_dir = Path(job.run_dir) if temp is None else Path(temp) / job.label
    if temp is not None:
        cfg = cfg.replace(out=temp)  # so trackers name the run by its folder (resnet18/seed1), as in place
    try:
        if temp is not None:
            folders.unpack(ray.get(job.start[0]), run_dir)
        status, message, device = _train_and_evaluate(cfg, writable(data), run_dir, job.label, progress)
        ray.get(progress.put.remote(job.label, "saved", None))  # every event of this run reaches the driver first
        return Outcome(job.label, status, message, None if shared else folders.pack(run_dir), where, device)
    except KeyboardInterrupt:  # the driver cancelled the task: its finished epochs are kept
        return Outcome(job.label, INTERRUPTED, "cancelled", None if shared else folders.pack(run_dir), where, "")
    except ArchbenchError as e:  # nothing is sent back: the driver's copy of the folder stays as it is
        return Outcome(job.label, FAILED, str(e), None, where, "")
    except Exception as e:  # a bug, not a lost worker: reported with its traceback, not retried
        return Outcome(job.label, FAILED, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", None, where, "")
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _train_and_evaluate(cfg: Config, data: CifarData, run_dir: Path, label: str, progress) -> tuple[str, str, str]:
    """What a local compare does for one run: train (or resume, or reuse), plot, evaluate."""
    from archbench.analysis.compare import evaluate_run
    from archbench.analysis.environment import device_name
    from archbench.analysis.plots import plot_run
    from archbench.train.runner import Run

    def log(line: str) -> None:
        progress.put.remote(label, "log", line)

    def on_epoch(record: dict) -> None:
        progress.put.remote(label, "epoch", {"epoch": record["epoch"], "val_acc": record["val_acc"]})

    run = Run(cfg, run_dir, log, on_epoch)
    status, message = FINISHED, ""
    try:
        run.train(lambda: data, resume=True)
    except DivergenceError as e:
        status, message = DIVERGED, str(e)
    plot_run(run.run_dir)
    evaluate_run(run.run_dir, data, run.device)
    return status, message, device_name(run.device)
