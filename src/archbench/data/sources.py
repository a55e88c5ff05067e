"""Finding and reading CIFAR-10 and CIFAR-100 from disk, in whichever form the user has it.

Supported forms, all returning the same uint8 HWC arrays in the official order:
- the compressed numpy folder (``train-0..k.npz.xz``, ``test.npz.xz``, optional ``SHA256SUMS``);
  for CIFAR-100 the labels are the fine labels (0..99);
- the official "python version": the ``cifar-10-batches-py`` / ``cifar-100-python`` folder or
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (checked against the official MD5s);
- nothing yet: the official archive is then downloaded into the per-user cache (``fetch``).

What differs between the datasets (file names, MD5s, class count) comes from their
``DatasetInfo``; every function takes one and defaults to CIFAR-10.

The official batches are pickles; they are read with an unpickler that only admits the
few numpy types the format uses, so loading a file never runs code from it.

A damaged or wrongly made copy — a truncated or altered file, a file in another format, arrays
of the wrong type, shape or range, missing arrays or keys, a folder or a broken link where a
file belongs, a malformed ``SHA256SUMS`` — ends in one ``ArchbenchError`` naming the file and
the fix, never in a traceback and never in silently wrong data. Each format's containers are
checked in one place (``_read_npz_split``, ``_batch_arrays``), and the arrays of every form in
another (``check_images``). Checksums are a first line of defence only: with
``--no-verify-data`` the structural checks must still catch what a decoder cannot.

Reading never writes into the data folder (archives are read in memory, never extracted).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import pickle
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archbench.data import fetch
from archbench.data.datasets import CIFAR10, DATASETS, DatasetInfo
from archbench.data.datasets import DEFAULT as DEFAULT_DATASET
from archbench.data.datasets import get as get_dataset
from archbench.errors import ArchbenchError
from archbench.io_utils import os_error, read_text

SHARED_ROOT = Path("..") / "shared" / "data"
ENV_VAR = "ARCHBENCH_DATA"


def _dataset(ds: DatasetInfo | None) -> DatasetInfo:
    """``ds``, or CIFAR-10 as ``datasets.DATASETS`` holds it now (looked up at each call)."""
    return ds if ds is not None else get_dataset(DEFAULT_DATASET)


def how_to_provide(ds: DatasetInfo) -> str:
    ds = _dataset(ds)
    return (
        f"provide {ds.title} in one of these ways: pass --data-dir DIR (or set ARCHBENCH_DATA=DIR) "
        f"pointing at a {ds.folder} folder, a {ds.archive} or a folder of "
        f"*.npz.xz files; put one of those under ./data; or let archbench download the official "
        f"archive (leave out --offline and unset ARCHBENCH_OFFLINE; with --data-dir, add --download)"
    )


@dataclass(frozen=True)
class CifarData:
    """A CIFAR dataset (CIFAR-10, or CIFAR-100 with ``dataset="cifar100"``) as uint8 arrays,
    HWC layout, official order."""

    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, 32, 32, 3) uint8
    y_test: np.ndarray  # (M,) int64
    test_exact: np.ndarray | None  # (M,) bool: pixel-exact images, when the source says so
    source: str  # human-readable: format and path
    checksums: str = "not checked"  # what the files were verified against, for reports
    test_index: np.ndarray | None = None  # (M,) official test index of each image; None: 0..M-1
    dataset: str = DEFAULT_DATASET  # a key of datasets.DATASETS

    @property
    def info(self) -> DatasetInfo:
        return get_dataset(self.dataset)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def test_indices(self) -> np.ndarray:
        return np.arange(len(self.y_test)) if self.test_index is None else self.test_index


# ---------------------------------------------------------------- locating


@dataclass(frozen=True)
class Found:
    kind: str  # "npz-xz" | "python-folder" | "python-archive"
    path: Path


def detect(path: Path, ds: DatasetInfo | None = None) -> Found | None:
    """Which form of ``ds``, if any, lives at ``path`` (a folder or an archive).

    A name counts when anything has it — a folder, a dangling or looping link — so that a
    damaged file is reported by its reader rather than passed over as "CIFAR-10 not found".
    """
    ds = _dataset(ds)
    path = Path(path)
    there = os.path.lexists
    if path.name.endswith((".tar.gz", ".tgz")) and there(path) and not path.is_dir():
        return Found("python-archive", path)
    if not path.is_dir():
        return None
    if there(path / "test.npz.xz") or there(path / "train-0.npz.xz"):
        return Found("npz-xz", path)
    if there(path / ds.train_files[0]) or there(path / ds.test_file):
        return Found("python-folder", path)
    if there(path / ds.folder):
        return Found("python-folder", path / ds.folder)
    if there(path / ds.archive):
        return Found("python-archive", path / ds.archive)
    return None


def candidate_dirs(data_dir: str | None, ds: DatasetInfo | None = None) -> tuple[list[tuple[str, Path]], bool]:
    """Places to look, in order, and whether the first one was named by the user.

    A place the user named (--data-dir, or ARCHBENCH_DATA) is authoritative: if it holds
    no data, that is an error rather than a silent fall-back to another copy. Otherwise the
    last place is the per-user cache a download goes to.
    """
    ds = _dataset(ds)
    if data_dir:
        return [("--data-dir", Path(data_dir))], True
    env = os.environ.get(ENV_VAR)
    if env:
        return [(ENV_VAR, Path(env))], True
    return [
        ("./data", Path("data")),
        (f"../shared/data/{ds.name}", SHARED_ROOT / ds.name),
        ("the cache", fetch.data_cache_dir(ds.name)),
    ], False


def find(data_dir: str | None, ds: DatasetInfo | None = None) -> Found | None:
    """The first place in the search order that holds ``ds``, if any."""
    ds = _dataset(ds)
    places, _ = candidate_dirs(data_dir, ds)
    return next((found for _, path in places if (found := detect(path, ds))), None)


def not_found(
    data_dir: str | None, offline: bool, download_missing: bool = False, ds: DatasetInfo | None = None
) -> ArchbenchError:
    ds = _dataset(ds)
    places, _ = candidate_dirs(data_dir, ds)
    tried = "; ".join(f"{label} = {path.resolve()}" for label, path in places)
    off = offline and download_target(data_dir, download_missing, ds) is not None
    why = " and downloading is off (--offline or ARCHBENCH_OFFLINE)" if off else ""
    other = next((d for d in DATASETS.values() if d != ds and any(detect(p, d) for _, p in places)), None)
    if other is not None:  # the user's copy is of the other dataset: the flag is the fix
        return ArchbenchError(
            f"{ds.title} not found (tried {tried}), but {other.title} is there; pass --dataset {other.name}"
        )
    return ArchbenchError(f"{ds.title} not found (tried {tried}){why}; {how_to_provide(ds)}")


def locate(data_dir: str | None, ds: DatasetInfo | None = None) -> Found:
    ds = _dataset(ds)
    found = find(data_dir, ds)
    if found is None:
        raise not_found(data_dir, offline=False, ds=ds)
    return found


def download_target(data_dir: str | None, download_missing: bool, ds: DatasetInfo | None = None) -> Path | None:
    """Where a missing dataset would be downloaded to: a named place only with --download,
    else the per-user cache."""
    ds = _dataset(ds)
    places, named = candidate_dirs(data_dir, ds)
    if named:
        return places[0][1] if download_missing else None
    return places[-1][1]


def download(root: Path, *, named: bool, quiet: bool = False, ds: DatasetInfo | None = None) -> Found:
    """Fetch the official archive into ``root`` (kept as the .tar.gz; read in place)."""
    ds = _dataset(ds)
    room = f"free {ds.archive_mb} MB there"
    fix = (
        f"{room} or pass another --data-dir"
        if named
        else f"{room}, set {fetch.CACHE_VAR} to another folder, or pass --data-dir DIR --download"
    )
    dest = Path(root) / ds.archive
    fetch.fetch(
        fetch.archive_url(ds.url, ds.url_var),
        dest,
        ds.archive_md5,
        fix=fix,
        quiet=quiet,
        what=ds.title,
        url_var=ds.url_var,
    )
    found = detect(root, ds)
    if not found:
        raise ArchbenchError(f"download into {root} finished but no {ds.title} was found there")
    return found


def load_dataset(
    data_dir: str | None = None,
    *,
    download_missing: bool = False,
    offline: bool = False,
    verify: bool = True,
    with_train: bool = True,
    quiet: bool = False,
    ds: DatasetInfo | None = None,
) -> CifarData:
    """Find the dataset ``ds`` (default: CIFAR-10, as ``datasets.DATASETS`` holds it; see
    ``candidate_dirs``), download it if it is nowhere and the network is allowed (``offline``, or
    ``ARCHBENCH_OFFLINE``, forbids it), check and load it."""
    ds = _dataset(ds)
    found = find(data_dir, ds)
    if found is None:
        offline = offline or fetch.offline_from_env()
        target = download_target(data_dir, download_missing, ds)
        if target is None or offline:
            raise not_found(data_dir, offline, download_missing, ds)
        found = download(target, named=candidate_dirs(data_dir, ds)[1], quiet=quiet, ds=ds)
    reader = {"npz-xz": read_npz_xz, "python-folder": read_python_folder, "python-archive": read_python_archive}[
        found.kind
    ]
    try:
        data = reader(found.path, verify=verify, with_train=with_train, ds=ds)
    except ArchbenchError as e:
        if found.path.parent != fetch.data_cache_dir(ds.name):
            raise
        # "download it again" cannot happen by itself while a damaged copy sits in the cache.
        raise ArchbenchError(
            f"the downloaded copy in archbench's cache is damaged: {str(e).split('; ')[0]}; "
            f"delete {found.path} and the next command downloads it again"
        ) from e
    check_arrays(data)
    return data


# ---------------------------------------------------------------- checks

# A split of this many images whose labels all lie in CIFAR-10's 0..9 is CIFAR-10 read under a
# dataset of more classes: CIFAR-100's official order is shuffled, so each label falls in 0..9 with
# probability 1/10 and all of them with 10**-50; a class-balanced subset of it reaches label 49.
LOOKS_LIKE_CIFAR10_IMAGES = 50
CIFAR10_CLASSES = CIFAR10.num_classes


def _not_cifar(ds: DatasetInfo) -> str:
    ds = _dataset(ds)
    return f"the file is not {ds.title} or is damaged — get a fresh copy"


def check_images(
    x: object, y: object, where: str, *, exact: object = None, empty_ok: bool = True, ds: DatasetInfo | None = None
) -> None:
    """The structural check of one file's (or split's) arrays, whatever the format.

    Images: (N, 32, 32, 3) uint8. Labels: N integers 0..C-1 (C: the dataset's class count), in
    any integer dtype (they are widened to int64; floats, bools and strings are refused even when
    their values look right, as they mean the file was not made as CIFAR). ``exact``, when given:
    the N bools of the 'lossless' array. ``empty_ok=False`` refuses a file without images.
    ``where`` names the file.
    """
    ds = _dataset(ds)
    top = ds.num_classes - 1
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8):
        raise ArchbenchError(f"{where}: images have {_describe(x)}, expected (N, 32, 32, 3) uint8; {_not_cifar(ds)}")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu"):
        raise ArchbenchError(f"{where}: labels have {_describe(y)}, expected integers 0..{top}; {_not_cifar(ds)}")
    if y.shape != (len(x),):
        labels = f"{len(y)} labels" if y.ndim == 1 else f"labels of shape {y.shape}"
        raise ArchbenchError(f"{where}: {len(x)} images but {labels}; the file is damaged — get a fresh copy")
    if not empty_ok and not len(x):
        raise ArchbenchError(f"{where}: holds no images; {_not_cifar(ds)}")
    if y.size and (y.min() < 0 or y.max() > top):
        fits = [d for d in DATASETS.values() if y.min() >= 0 and y.max() < d.num_classes]
        hint = f" (if it is {fits[0].title}, pass --dataset {fits[0].name})" if fits else ""
        raise ArchbenchError(
            f"{where}: labels range over {y.min()}..{y.max()}, {ds.title}'s are 0..{top}; {_not_cifar(ds)}{hint}"
        )
    if exact is not None and not (
        isinstance(exact, np.ndarray) and exact.dtype == np.bool_ and exact.shape == (len(x),)
    ):
        raise ArchbenchError(
            f"{where}: the 'lossless' array has {_describe(exact)}, expected ({len(x)},) bool "
            f"like the labels; {_not_cifar(ds)}"
        )


def check_arrays(d: CifarData) -> None:
    """The assembled dataset, whatever its source, before any training touches it."""
    ds = d.info
    check_images(d.x_train, d.y_train, f"{d.source} (train)", ds=ds)
    check_images(d.x_test, d.y_test, f"{d.source} (test)", exact=d.test_exact, ds=ds)
    for split, y in (("training", d.y_train), ("test", d.y_test)):
        if ds.num_classes > CIFAR10_CLASSES and len(y) >= LOOKS_LIKE_CIFAR10_IMAGES and y.max() < CIFAR10_CLASSES:
            raise ArchbenchError(
                f"{d.source}: its {len(y)} {split} images all have labels 0..{CIFAR10_CLASSES - 1}, but {ds.title} "
                f"has {ds.num_classes} classes: this looks like CIFAR-10; pass --dataset cifar10, or point "
                f"--data-dir at {ds.title}"
            )


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"shape {a.shape} and dtype {a.dtype}"
    return f"type {_type_name(a)} (not an array)"


def _type_name(a: object) -> str:
    t = type(a)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _one_line(text: object, limit: int = 200) -> str:
    """Text from a decoder or from inside a data file, fit for a one-line message: control
    characters (a newline in an array's name, say) escaped, long text cut."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return s if len(s) <= limit else s[:limit] + "…"


def _names(keys: Iterable[object]) -> str:
    """The keys of a damaged file, for its error message (the first few, escaped)."""
    keys = list(keys)
    shown = ", ".join(_one_line(repr(k), 40) for k in keys[:8])
    return (shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")) or "nothing"


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _checksum_error(name: str, algo: str, got: str, want: str) -> ArchbenchError:
    return ArchbenchError(
        f"{name}: {algo} checksum {got} does not match the expected {want}; the file is "
        f"damaged or not the official one — download it again (or pass --no-verify-data "
        f"to use it anyway)"
    )


# ---------------------------------------------------------------- reading files


def _require_file(path: Path, fix: str) -> None:
    """Refuse anything but a regular file (after links) before it is opened: a folder cannot
    be read, and reading a pipe or a device might never end."""
    try:
        mode = path.stat().st_mode  # a dangling link or a link loop fails here
    except OSError as e:
        raise os_error("read", path, e, fix) from e
    if not stat.S_ISREG(mode):
        kind = "a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise ArchbenchError(f"{path}: is {kind}; {fix}")


def _read_file(path: Path, fix: str) -> bytes:
    _require_file(path, fix)
    try:
        return path.read_bytes()
    except OSError as e:
        raise os_error("read", path, e, fix) from e


@contextmanager
def _decoding(where: str | Path, what: str, fix: str) -> Iterator[None]:
    """Turn a decoder's failure on a damaged file into one line naming the file.

    lzma, zipfile, numpy, pickle, gzip and tarfile report damage through many exception types
    (LZMAError, BadZipFile, zlib.error, ValueError, EOFError, KeyError, UnpicklingError, ...),
    so any Exception counts. KeyboardInterrupt and SystemExit are not Exceptions: they pass.
    """
    try:
        yield
    except ArchbenchError:
        raise
    except MemoryError:  # genuinely too little memory, or a damaged size field: either way, say so
        raise ArchbenchError(
            f"{where}: not enough memory to read it; free memory and try again (if the file is damaged: {fix})"
        ) from None
    except Exception as e:
        raise ArchbenchError(f"{where}: not a readable {what} ({type(e).__name__}: {_one_line(e)}); {fix}") from e


# ---------------------------------------------------------------- compressed numpy folder

SUMS_FILE = "SHA256SUMS"
_TRAIN_FILE = re.compile(r"train-(0|[1-9][0-9]*)\.npz\.xz")  # train-0.npz.xz, train-1.npz.xz, ...
_SUMS_LINE = re.compile(r"([0-9A-Fa-f]{64}) [ *](?:\./)?(.+)")  # sha256sum's output (text or binary mode)
_COPY_FOLDER = "copy the complete dataset folder again"
_COPY_FILE = "the file is truncated or damaged — copy it again"
_NOT_NPZ = "the file is not in archbench's CIFAR-10 numpy format — copy it again"


def _read_sha256sums(folder: Path) -> dict[str, str] | None:
    """``SHA256SUMS`` as {file name: digest}, or None when the folder has none.

    A list that cannot be read in full is an error rather than a list of fewer files: a
    damaged checksum list must not quietly check nothing. A byte-order mark, CRLF line ends,
    blank lines, ``*`` (binary mode) and ``./`` before names are accepted.
    """
    path = folder / SUMS_FILE
    if not os.path.lexists(path):
        return None
    fix = (
        "make it again (sha256sum *.npz.xz > SHA256SUMS), copy the dataset folder again, or pass "
        "--no-verify-data to skip the checksums"
    )
    _require_file(path, fix)
    sums: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "the checksum list", fix).removeprefix("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        match = _SUMS_LINE.fullmatch(line.rstrip())
        if not match:
            raise ArchbenchError(
                f"{path}: line {number} ({_one_line(repr(line), 60)}) is not '<64 hex digits>  <file name>'; {fix}"
            )
        digest, name = match[1].lower(), match[2]
        if sums.setdefault(name, digest) != digest:
            raise ArchbenchError(f"{path}: lists {_one_line(name)} twice, with different checksums; {fix}")
    return sums


def _train_files(folder: Path, sums: dict[str, str] | None) -> list[Path]:
    """``train-<k>.npz.xz`` in order of k. Other names are not part of the format and are
    ignored (``train-0.npz.xz.bak``, ``._train-0.npz.xz``, ``README.md``, ...); a gap in the
    numbers, or a file ``SHA256SUMS`` lists but the folder lacks, is a missing file."""
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise os_error("list the folder", folder, e, _COPY_FOLDER) from e
    numbered = {int(m[1]): name for name in names if (m := _TRAIN_FILE.fullmatch(name))}
    gaps = [k for k in range(max(numbered, default=-1) + 1) if k not in numbered]
    if gaps:
        raise ArchbenchError(f"{folder}: missing train-{gaps[0]}.npz.xz; {_COPY_FOLDER}")
    listed = sorted(int(m[1]) for name in (sums or {}) if (m := _TRAIN_FILE.fullmatch(name)))
    absent = [k for k in listed if k not in numbered]
    if absent:
        raise ArchbenchError(f"{folder}: missing train-{absent[0]}.npz.xz (listed in {SUMS_FILE}); {_COPY_FOLDER}")
    return [folder / numbered[k] for k in sorted(numbered)]


def _read_npz_split(
    path: Path, split: str, sha256: str | None, ds: DatasetInfo | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One ``.npz.xz`` file's images, labels (int64) and, for the test split, 'lossless'.

    Only those arrays are decoded: others (``orig_index``, anything added by hand) are ignored,
    even if they could not be read.
    """
    ds = _dataset(ds)
    raw = _read_file(path, _COPY_FOLDER)
    if sha256 is not None and _digest(raw, "sha256") != sha256:
        raise _checksum_error(str(path), "SHA-256", _digest(raw, "sha256"), sha256)
    x_key, y_key = f"x_{split}", f"y_{split}"
    with _decoding(path, ".npz.xz file", _COPY_FILE):
        npz = np.load(io.BytesIO(lzma.decompress(raw)), allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):  # np.load also reads a bare .npy
        raise ArchbenchError(f"{path}: holds a single array, not the named arrays {x_key} and {y_key}; {_NOT_NPZ}")
    with npz:
        missing = [k for k in (x_key, y_key) if k not in npz.files]
        if missing:
            raise ArchbenchError(f"{path}: missing array {missing[0]!r} (has {_names(npz.files)}); {_NOT_NPZ}")
        arrays = {}
        for key in (x_key, y_key, *(["lossless"] if split == "test" and "lossless" in npz.files else [])):
            with _decoding(path, f"array {key!r}", _COPY_FILE):  # arrays are decoded one by one, on access
                arrays[key] = npz[key]
    x, y, exact = arrays[x_key], arrays[y_key], arrays.get("lossless")
    check_images(x, y, str(path), exact=exact, empty_ok=False, ds=ds)
    return x, y.astype(np.int64), exact


def read_npz_xz(
    folder: Path, *, verify: bool = True, with_train: bool = True, ds: DatasetInfo | None = None
) -> CifarData:
    ds = _dataset(ds)
    folder = Path(folder)
    sums = _read_sha256sums(folder) if verify else None
    train_files = _train_files(folder, sums) if with_train else []
    test_file = folder / "test.npz.xz"
    missing = [] if os.path.lexists(test_file) else ["test.npz.xz"]
    if with_train and not train_files:
        missing.append("train-*.npz.xz")
    if missing:
        raise ArchbenchError(f"{folder}: missing {', '.join(missing)}; copy the complete dataset folder")
    files = train_files + [test_file]
    unlisted = [p.name for p in files if sums is not None and p.name not in sums]
    if unlisted:
        raise ArchbenchError(
            f"{folder / SUMS_FILE}: has no line for {unlisted[0]}; copy the complete dataset "
            f"folder again, or pass --no-verify-data to skip the checksums"
        )

    def read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return _read_npz_split(
            path, "test" if path == test_file else "train", None if sums is None else sums[path.name], ds
        )

    # xz decompression releases the GIL: reading the files in parallel is several times faster.
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(read, files))
    x_test, y_test, exact = parts.pop()
    if with_train:
        x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        x_train, y_train = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    checked = (
        (f"SHA-256 matched {SUMS_FILE}" if sums is not None else f"no {SUMS_FILE} to check against")
        if verify
        else "not checked (--no-verify-data)"
    )
    return CifarData(x_train, y_train, x_test, y_test, exact, f"numpy-xz folder {folder}", checked, dataset=ds.name)


# ---------------------------------------------------------------- official python version


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch pickle contains: plain containers and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; keep old pickles loadable
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _not_batch(ds: DatasetInfo) -> str:
    ds = _dataset(ds)
    return f"not a {ds.title} batch — download it again"


def _parse_batch(raw: bytes, name: str, ds: DatasetInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    ds = _dataset(ds)
    with _decoding(name, f"{ds.title} batch", "the file is truncated or damaged — download it again"):
        entry = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    return _batch_arrays(entry, name, ds)


def _batch_arrays(entry: object, name: str, ds: DatasetInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (HWC) and int64 labels of one unpickled batch, checked.

    A batch is a dict with 'data', (N, 3072) uint8 rows, each CHW-planar, and the labels, N ints,
    under ``ds.label_key`` ('labels'; CIFAR-100's fine labels under 'fine_labels').
    Its keys may be str or bytes: Python 3 reads the official Python 2 pickles' keys as str
    with encoding='latin1' (as here), as bytes with encoding='bytes', and copies re-saved after
    such a load keep bytes keys. Other keys (batch_label, filenames, coarse_labels) are ignored.
    """
    ds = _dataset(ds)
    keys = ("data", ds.label_key)
    if not isinstance(entry, dict):
        raise ArchbenchError(
            f"{name}: holds a {_type_name(entry)}, expected a dict with 'data' and {ds.label_key!r}; {_not_batch(ds)}"
        )
    fields = {}
    for key, value in entry.items():
        text = key.decode("latin1") if isinstance(key, bytes) else key
        if text in keys:
            if text in fields:
                raise ArchbenchError(
                    f"{name}: has both {text!r} and {text.encode()!r} (str and bytes "
                    f"keys), so which to use is unclear; {_not_batch(ds)}"
                )
            fields[text] = value
    missing = [k for k in keys if k not in fields]
    if missing:
        raise ArchbenchError(f"{name}: no {missing[0]!r} entry (has {_names(entry)}); {_not_batch(ds)}")
    data, labels = fields["data"], fields[ds.label_key]
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
    ):
        raise ArchbenchError(f"{name}: image array has {_describe(data)}, expected (N, 3072) uint8; {_not_batch(ds)}")
    if isinstance(labels, (list, tuple)):  # what the official batches hold
        try:
            labels = np.array(labels)  # no dtype: floats or strings must stay visible to the check
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            raise ArchbenchError(f"{name}: labels are not a list of integers ({_one_line(e)}); {_not_batch(ds)}") from e
    # The official layout is CHW-planar per row; archbench keeps HWC like the numpy format.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    check_images(images, labels, name, empty_ok=False, ds=ds)
    return images, labels.astype(np.int64)


def _assemble(read: Callable[[str], bytes], where: str, verify: bool, with_train: bool, ds: DatasetInfo) -> CifarData:
    ds = _dataset(ds)
    names = (list(ds.train_files) if with_train else []) + [ds.test_file]
    parsed = {}
    for name in names:
        raw = read(name)
        if verify and _digest(raw, "md5") != ds.file_md5[name]:
            raise _checksum_error(f"{where}/{name}", "MD5", _digest(raw, "md5"), ds.file_md5[name])
        parsed[name] = _parse_batch(raw, f"{where}/{name}", ds)
    x_test, y_test = parsed.pop(ds.test_file)
    if with_train:
        x_train = np.concatenate([parsed[n][0] for n in ds.train_files])
        y_train = np.concatenate([parsed[n][1] for n in ds.train_files])
    else:
        x_train, y_train = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    return CifarData(
        x_train,
        y_train,
        x_test,
        y_test,
        None,
        where,
        "official MD5s matched" if verify else "not checked (--no-verify-data)",
        dataset=ds.name,
    )


def read_python_folder(
    folder: Path, *, verify: bool = True, with_train: bool = True, ds: DatasetInfo | None = None
) -> CifarData:
    ds = _dataset(ds)
    folder = Path(folder)

    def read(name: str) -> bytes:
        path = folder / name
        if not os.path.lexists(path):
            raise ArchbenchError(
                f"{folder}: missing {name}; the {ds.folder} folder is incomplete — unpack the official archive again"
            )
        return _read_file(path, "unpack the official archive again")

    return _assemble(read, f"python folder {folder}", verify, with_train, ds)


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:  # only regular files are kept as members; this is not one
        raise ArchbenchError(f"{member.name} in the archive is not a file; download the official archive again")
    return f.read()


def read_python_archive(
    archive: Path, *, verify: bool = True, with_train: bool = True, ds: DatasetInfo | None = None
) -> CifarData:
    ds = _dataset(ds)
    archive = Path(archive)
    raw = _read_file(archive, "download the official archive again")
    if verify and _digest(raw, "md5") != ds.archive_md5:
        raise _checksum_error(str(archive), "MD5", _digest(raw, "md5"), ds.archive_md5)
    damaged = "the archive is truncated or damaged — download it again"
    needed = (ds.train_files if with_train else ()) + (ds.test_file,)
    with _decoding(archive, ".tar.gz", damaged):
        # Decompressed in full first, so that gzip's CRC covers every byte even without
        # checksums: tarfile reads only as far as it needs, and would miss a damaged end.
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            raw = gz.read()  # the tar itself; the compressed bytes are no longer needed
        # Members are read in memory, straight from the archive: nothing is extracted to disk.
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = {
                Path(m.name).name: m for m in tar.getmembers() if m.isfile() and Path(m.name).parent.name == ds.folder
            }
            batches = {name: _member_bytes(tar, members[name]) for name in needed if name in members}

    def read(name: str) -> bytes:
        if name not in batches:
            raise ArchbenchError(
                f"{archive}: no {ds.folder}/{name} inside; not the "
                f"official {ds.title} python archive — download it again"
            )
        return batches[name]

    return _assemble(read, f"python archive {archive}", verify, with_train, ds)
