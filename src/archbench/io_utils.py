"""Files in and out: crash-safe writes, readable reads, one error message per kind of failure.

Every file is written to a temp file and renamed into place, so a reader (or a resumed
run) sees either the old complete file or the new complete file, never a torn one; a
failed write (disk full) leaves the old file intact. Files get the usual permissions
(0666 less the umask), like any file the user's shell creates.

Every operating-system failure of a read or a write becomes one ``ArchbenchError`` naming
the path, the reason and the fix (``os_error``): a full disk, a read-only or unwritable
folder, a name too long, a missing file, text that is not UTF-8, JSON that does not parse.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from archbench.errors import ArchbenchError

# What a user can do about each kind of operating-system failure.
# Output paths come from --out, --json and the like; the fixes name no particular flag.
_FIXES = {
    errno.ENOSPC: "free disk space or write to another place",
    errno.EDQUOT: "free space within your disk quota or write to another place",
    errno.EROFS: "write to a writable place (e.g. another --out)",
    errno.EACCES: "fix the permissions or write to another place",
    errno.EPERM: "fix the permissions or write to another place",
    errno.ENAMETOOLONG: "choose a shorter path or name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "a folder is in the way of the file; choose another path",
}
_DEFAULT_FIX = "check the path, its permissions and the free disk space"


def os_error(action: str, path: Path | str, e: OSError, fix: str | None = None) -> ArchbenchError:
    """One line for a failed ``action`` ("write", "read", "create the folder") on ``path``."""
    reason = e.strerror or str(e) or type(e).__name__
    return ArchbenchError(f"could not {action} {path}: {reason}; {fix or _FIXES.get(e.errno or 0, _DEFAULT_FIX)}")


def os_error_in(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: torch's serializer reports a failed write (disk full) as a
    RuntimeError whose context is the file's OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the folders created, outermost first."""
    path = Path(path)
    created: list[Path] = []
    try:
        for p in [path, *path.parents][::-1]:
            if p.is_dir():
                continue
            if p.exists() and not p.is_dir():  # is_dir again: another process may have just made it
                raise ArchbenchError(
                    f"could not create the folder {path}: {p} is a file, not a folder; {_FIXES[errno.ENOTDIR]}"
                )
            try:
                p.mkdir()
            except FileExistsError:  # made meanwhile by another process: fine if it is a folder
                if not p.is_dir():
                    raise
                continue
            created.append(p)
    except BaseException as e:
        remove_empty_dirs(created)  # a failure half-way leaves no empty folders behind
        if isinstance(e, OSError):
            raise os_error("create the folder", path, e) from e
        raise
    return created


# A temp name adds 14 bytes to the file's; beyond this the file's name is cut (255 bytes is the usual limit).
TEMP_STEM_BYTES = 200


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden temp file beside ``path``, opened for writing with mode 0666 less the umask.

    (``tempfile.mkstemp`` would make it 0600, and the rename would keep that.)
    """
    stem = path.name if len(path.name.encode()) <= TEMP_STEM_BYTES else path.name[: TEMP_STEM_BYTES // 4]
    for _ in range(100):
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(path))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = None
    try:
        make_dirs(path.parent)
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(tmp)
        cause = None if isinstance(e, (ArchbenchError, KeyboardInterrupt, SystemExit)) else os_error_in(e)
        if cause is None:
            raise
        raise os_error("write", path, cause) from e


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically with ``write(f)``; an exception from ``write`` leaves no trace."""
    _atomic_write(path, write)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(f: IO[bytes]) -> None:
        f.write(data)

    _atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: Path, obj: object) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def check_writable(path: Path) -> None:
    """Fail now, not after an hour of work, if ``path`` cannot be written (creates its folder)."""
    path = Path(path)
    if path.is_dir():
        raise ArchbenchError(f"could not write {path}: it is a folder; name a file")
    created = make_dirs(path.parent)
    try:
        fd, tmp = _create_temp(path)
        os.close(fd)
        _remove_quietly(tmp)
    except OSError as e:
        raise os_error("write", path, e) from e
    finally:
        remove_empty_dirs(created)  # a probe leaves no trace; the real write makes them again


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Undo ``make_dirs`` where nothing was written: innermost first, stopping at a non-empty one."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            return


def read_text(path: Path, what: str, fix: str) -> str:
    """A UTF-8 text file; ``what`` names it for the user ("the run's config"), ``fix`` says what to do."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchbenchError(f"{path}: {what} is missing; {fix}") from None
    except UnicodeDecodeError as e:
        raise ArchbenchError(f"{path}: {what} is not UTF-8 text (byte {e.start}); {fix}") from e
    except OSError as e:
        raise os_error("read", path, e, fix) from e


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file (``read_text`` rules); NaN and Infinity, which Python writes, are accepted."""
    text = read_text(path, what, fix)
    try:
        return json.loads(text)
    except ValueError as e:
        raise ArchbenchError(f"{path}: {what} is not valid JSON ({e}); {fix}") from e
    except RecursionError:
        raise ArchbenchError(f"{path}: {what} is nested too deeply to be JSON archbench wrote; {fix}") from None
