"""Run folders as one archive of bytes, so a run trained where the compare folder is not
visible can travel back through Ray and land in it.

A landing writes each file atomically (temp file + rename) over the folder's own copy.
The archive holds every file a run folder keeps, sub-folders included (TensorBoard, W&B),
but not the lock or temp files of writes in progress.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_bytes, make_dirs
from archbench.train.lock import LOCK_NAME


def _kept(rel: PurePosixPath) -> bool:
    return rel.name != LOCK_NAME and not (rel.name.startswith(".") and rel.name.endswith(".tmp"))


def pack(run_dir: Path) -> bytes:
    """Every kept file under ``run_dir`` (an empty archive when the folder does not exist)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if Path(run_dir).is_dir():
            for path in sorted(Path(run_dir).rglob("*")):
                rel = PurePosixPath(path.relative_to(run_dir).as_posix())
                if path.is_file() and not path.is_symlink() and _kept(rel):
                    tar.add(path, arcname=str(rel), recursive=False)
    return buf.getvalue()


def members(archive: bytes) -> dict[str, bytes]:
    """The archive's files by relative path; anything but plain files inside the folder is refused."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        for m in tar.getmembers():
            rel = PurePosixPath(m.name)
            if not m.isfile() or rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise ArchbenchError(f"a returned run folder holds {m.name!r}, which is not a file inside it")
            f = tar.extractfile(m)
            assert f is not None  # a regular file always has its bytes
            files[str(rel)] = f.read()
    return files


def unpack(archive: bytes, run_dir: Path) -> int:
    """Write the archive's files into ``run_dir`` (made if needed); returns how many."""
    files = members(archive)
    make_dirs(Path(run_dir))
    # checkpoints last: a folder caught half-landed then looks like an older run, never a newer one
    for rel in sorted(files, key=lambda r: (r.endswith(".pt"), r)):
        target = Path(run_dir) / rel
        make_dirs(target.parent)
        atomic_write_bytes(target, files[rel])
    return len(files)


HISTORY = "history.jsonl"


def _epochs(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def epochs_in(archive: bytes) -> int:
    """Epochs recorded in an archived run folder's history (0: none)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        try:
            f = tar.extractfile(HISTORY)
        except KeyError:
            return 0
        return 0 if f is None else _epochs(f.read())


def epochs_on_disk(run_dir: Path) -> int:
    path = Path(run_dir) / HISTORY
    return _epochs(path.read_bytes()) if path.is_file() else 0


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"
