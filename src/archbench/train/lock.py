"""One process per run folder: an advisory lock on ``RUN_DIR/.lock``, present only while held.

The lock is an OS file lock (flock), so the kernel drops it when its process dies,
even by SIGKILL: a killed run never leaves a folder locked (only, at worst, an unlocked
``.lock`` file, which the next process takes over). The holder removes the file before
releasing the lock, so a finished or refused command leaves nothing behind. The file keeps
the holder's pid only to make the refusal message useful.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from archbench.errors import ArchbenchError
from archbench.io_utils import os_error

LOCK_NAME = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    path = Path(run_dir) / LOCK_NAME
    fd = _acquire(path, run_dir)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise os_error("write the lock file", path, e) from e
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: a newcomer then locks a fresh file
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path, run_dir: Path) -> int:
    import fcntl  # POSIX; archbench's supported platforms are Linux and macOS

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise os_error("create the lock file", path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ArchbenchError(
                f"{run_dir} is in use by another archbench process (pid {holder}); wait for it to "
                f"finish or choose another --out"
            ) from None
        except OSError as e:
            os.close(fd)
            raise os_error("lock", path, e, "the file system may not support file locks; choose another --out") from e
        # The previous holder removes the file before it unlocks; if that happened after we
        # opened it, we hold a lock on a file no one else will open: try again on the new one.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
