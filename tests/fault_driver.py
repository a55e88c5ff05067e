"""Runs the archbench CLI with one fault injected at a chosen moment (reliability tests).

Usage: python fault_driver.py FAULT archbench-args...   FAULT is one of
  none                 no fault
  step:N               SIGKILL before the N-th optimizer step (mid-epoch)
  write:NAME:N         SIGKILL in the N-th atomic write of file NAME, after its temp file is
                       complete and before it is renamed into place
  partial:NAME:N       SIGKILL half-way through writing the temp file of the N-th NAME checkpoint
  term:NAME:N          SIGTERM half-way through writing the temp file of the N-th NAME checkpoint
                       (prints the epoch that write carries)
  append:NAME:N        SIGKILL just before the N-th append to history file NAME
  enospc:NAME:N        the N-th atomic write of NAME fails with "No space left on device"
  nan:N                the N-th training loss is NaN
Counts start at 1 and are per process.
"""

import errno
import io
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import torch

import archbench.io_utils as io_utils
import archbench.train.history as history
from archbench.cli import main
from tiny_model import register

register()  # the reliability tests train the tiny model; every registered model stays available

seen = Counter()


def hit(kind: str, name: str, want: str, n: int) -> bool:
    if name != want:
        return False
    seen[kind, name] += 1
    return seen[kind, name] == n


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    kind, *rest = fault.split(":")
    if kind == "none":
        return
    if kind in ("step", "nan"):
        n = int(rest[0])
        if kind == "step":
            real_step = torch.optim.SGD.step

            def step(self, *a, **k):
                if hit("step", "", "", n):
                    die()
                return real_step(self, *a, **k)

            torch.optim.SGD.step = step
        else:
            real_ce = torch.nn.functional.cross_entropy

            def cross_entropy(input, target, *a, **k):
                loss = real_ce(input, target, *a, **k)
                if k.get("reduction", "mean") == "mean" and hit("nan", "", "", n):
                    loss = loss * float("nan")
                return loss

            torch.nn.functional.cross_entropy = cross_entropy
        return
    want, n = rest[0], int(rest[1])
    if kind == "write":
        real_replace = io_utils.os.replace

        def replace(src, dst):
            if hit("write", Path(dst).name, want, n):
                die()
            return real_replace(src, dst)

        io_utils.os.replace = replace
    elif kind in ("partial", "term"):
        import archbench.train.checkpoint as checkpoint

        real_save = checkpoint.atomic_torch_save

        def save(path, obj):
            if hit(kind, Path(path).name, want, n):
                raw = io.BytesIO()
                torch.save(obj, raw)
                raw = raw.getvalue()

                def write_in_halves(f):
                    f.write(raw[: len(raw) // 2])
                    f.flush()
                    if kind == "partial":
                        die()
                    # which epoch this write carries: finished epochs may be merged into one write
                    print(f"fault_driver: SIGTERM while writing epoch {obj['epoch']}", flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)  # handled by the main thread meanwhile
                    time.sleep(0.5)
                    f.write(raw[len(raw) // 2 :])

                return io_utils._atomic_write(path, write_in_halves)
            return real_save(path, obj)

        checkpoint.atomic_torch_save = save
    elif kind == "append":
        real_append = history._append

        def append(path, text):
            if hit("append", Path(path).name, want, n):
                die()
            return real_append(path, text)

        history._append = append
    elif kind == "enospc":
        real_write = io_utils._atomic_write

        def atomic_write(path, write):
            if hit("enospc", Path(path).name, want, n):

                def full(f):
                    write(io.BytesIO())
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                return real_write(path, full)
            return real_write(path, write)

        io_utils._atomic_write = atomic_write
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
