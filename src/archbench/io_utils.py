"""Crash-safe file writing: every file is written to a temp file and renamed into place.

A reader (or a resumed run) therefore sees either the old complete file or the new
complete file, never a torn one; a failed write (disk full) leaves the old file intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from archbench.errors import ArchbenchError


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise ArchbenchError(
            f"could not write {path}: {e.strerror or e}; free disk space or choose another --out "
            f"(files already written are intact)") from e
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: Path, obj: object) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))
