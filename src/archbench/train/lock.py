"""One process per run folder: an advisory lock on ``RUN_DIR/.lock``.

The lock is an OS file lock (flock), so the kernel drops it when its process dies,
even by SIGKILL: a killed run never leaves a folder locked. The file keeps the holder's
pid only to make the refusal message useful.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from archbench.errors import ArchbenchError

LOCK_NAME = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    import fcntl  # POSIX; archbench's supported platforms are Linux and macOS

    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ArchbenchError(
                f"{run_dir} is in use by another archbench process (pid {holder}); wait for it to "
                f"finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
