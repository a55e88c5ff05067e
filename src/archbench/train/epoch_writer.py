"""Writing finished epochs to disk on a background thread, in order, so training never waits for it.

A checkpoint is hundreds of megabytes (VGG19-BN's last.pt: weights plus momentum, 312 MB)
and takes longer to serialise and fsync than a fast epoch takes to train. So the
training thread only copies the epoch's state to host memory (``host_copy``) and hands
it to an ``EpochWriter``, whose thread writes best.pt, then last.pt, then the history
rows and gradflow.csv — the order that keeps a run folder consistent at any crash.

If epochs finish faster than the disk takes them, a waiting write is superseded by the
newer one: last.pt jumps to the newest epoch, best.pt to the newest best, and every
history row is still appended, after the checkpoint that carries it. A failed write
stops the writer; the error is raised in the training thread at its next hand-over or
at ``close``, and ``close`` always lets a started write finish first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archbench.train import checkpoint, gradflow, history


def host_copy(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor copied to host memory, so training can go on changing the originals."""
    copies = _copy_tensors(obj)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copies were queued without blocking
    return copies


def _copy_tensors(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cuda":
            return obj.detach().to("cpu", non_blocking=True)  # into pinned memory
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj


@dataclass
class EpochFiles:
    """What one or more finished epochs leave on disk."""

    last: dict  # last.pt's payload (host tensors)
    records: list[dict]  # history rows not yet appended, in epoch order
    best: dict | None = None  # best.pt's payload, when the best epoch changed

    def then(self, newer: EpochFiles) -> EpochFiles:
        """This write and a newer one as a single write with the same end state."""
        return EpochFiles(newer.last, self.records + newer.records, newer.best or self.best)


def write_epoch_files(run_dir: Path, files: EpochFiles, layer_names: list[str]) -> None:
    """best.pt, then last.pt, then the history rows it carries: a crash between any two is repaired on resume."""
    if files.best is not None:
        checkpoint.save(run_dir / checkpoint.BEST, files.best)
    checkpoint.save(run_dir / checkpoint.LAST, files.last)
    for record in files.records:
        history.append_record(run_dir, record)
    gradflow.sync(run_dir, layer_names, files.last.get("gradflow", []))


class EpochWriter:
    """One background thread writing ``EpochFiles`` to one run folder.

    ``layer_names`` are gradflow.csv's columns (the run's tracked layers).
    """

    def __init__(self, run_dir: Path, layer_names: list[str]):
        self.run_dir, self.layer_names = Path(run_dir), layer_names
        self._cond = threading.Condition()
        self._waiting: EpochFiles | None = None
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="archbench-epoch-writer", daemon=True)
        self._thread.start()

    def submit(self, files: EpochFiles) -> None:
        """Queue ``files``; raises the error of an earlier write that failed."""
        with self._cond:
            self._raise_error()
            self._waiting = files if self._waiting is None else self._waiting.then(files)
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted is on disk; raises a write's error."""
        with self._cond:
            self._wait_idle()
            self._raise_error()

    def close(self, raise_errors: bool = True) -> None:
        """Finish the submitted writes and stop the thread.

        With ``raise_errors=False`` (the run is already failing for another reason) a
        write's error is not raised, so the original error is the one reported.
        """
        try:
            if raise_errors:
                self.flush()
            else:
                with self._cond:
                    self._wait_idle()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()

    def _wait_idle(self) -> None:
        """Until nothing is waiting or being written (or a write failed); holds ``_cond``."""
        self._cond.wait_for(lambda: self._error is not None or (self._waiting is None and not self._busy))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting is not None or self._closed)
                if self._waiting is None or self._error is not None:
                    return  # closed, or stopped by a failed write
                files, self._waiting, self._busy = self._waiting, None, True
            try:
                write_epoch_files(self.run_dir, files, self.layer_names)
            except BaseException as e:  # handed to the training thread, which reports it
                with self._cond:
                    self._error = e
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
