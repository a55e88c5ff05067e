"""Finding and reading CIFAR-10 from disk, in whichever form the user has it.

Supported forms, all returning the same uint8 HWC arrays in the official order:
- the compressed numpy folder (``train-0..4.npz.xz``, ``test.npz.xz``, optional ``SHA256SUMS``);
- the official "CIFAR-10 python version": the ``cifar-10-batches-py`` folder or
  ``cifar-10-python.tar.gz`` (checked against the official MD5s);
- a download of the official archive (``--download``), via torchvision's downloader.

The official batches are pickles; they are read with an unpickler that only admits the
few numpy types the format uses, so loading a file never runs code from it.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from archbench.errors import ArchbenchError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASSES)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
OFFICIAL_FOLDER = "cifar-10-batches-py"
OFFICIAL_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SHARED_DEFAULT = Path("..") / "shared" / "data" / "cifar10"
ENV_VAR = "ARCHBENCH_DATA"

HOW_TO_PROVIDE = (
    "provide CIFAR-10 in one of three ways: pass --data-dir DIR (or set ARCHBENCH_DATA=DIR) "
    "pointing at a cifar-10-batches-py folder, a cifar-10-python.tar.gz or a folder of "
    "*.npz.xz files; put one of those under ./data; or add --download to fetch the official "
    "archive into ./data (or --data-dir)")


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as uint8 arrays, HWC layout, official order."""

    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, 32, 32, 3) uint8
    y_test: np.ndarray  # (M,) int64
    test_exact: np.ndarray | None  # (M,) bool: pixel-exact images, when the source says so
    source: str  # human-readable: format and path
    checksums: str = "not checked"  # what the files were verified against, for reports
    test_index: np.ndarray | None = None  # (M,) official test index of each image; None: 0..M-1

    def test_indices(self) -> np.ndarray:
        return np.arange(len(self.y_test)) if self.test_index is None else self.test_index


# ---------------------------------------------------------------- locating

@dataclass(frozen=True)
class Found:
    kind: str  # "npz-xz" | "python-folder" | "python-archive"
    path: Path


def detect(path: Path) -> Found | None:
    """Which CIFAR-10 form, if any, lives at ``path`` (a folder or an archive)."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return Found("python-archive", path)
    if not path.is_dir():
        return None
    if (path / "test.npz.xz").is_file() or (path / "train-0.npz.xz").is_file():
        return Found("npz-xz", path)
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return Found("python-folder", path)
    if (path / OFFICIAL_FOLDER).is_dir():
        return Found("python-folder", path / OFFICIAL_FOLDER)
    if (path / OFFICIAL_ARCHIVE).is_file():
        return Found("python-archive", path / OFFICIAL_ARCHIVE)
    return None


def candidate_dirs(data_dir: str | None) -> tuple[list[tuple[str, Path]], bool]:
    """Places to look, in order, and whether the first one was named by the user.

    A place the user named (--data-dir, or ARCHBENCH_DATA) is authoritative: if it holds
    no data, that is an error rather than a silent fall-back to another copy.
    """
    if data_dir:
        return [("--data-dir", Path(data_dir))], True
    env = os.environ.get(ENV_VAR)
    if env:
        return [(ENV_VAR, Path(env))], True
    return [("./data", Path("data")), ("../shared/data/cifar10", SHARED_DEFAULT)], False


def locate(data_dir: str | None) -> Found:
    places, _ = candidate_dirs(data_dir)
    for _, path in places:
        found = detect(path)
        if found:
            return found
    tried = "; ".join(f"{label} = {path.resolve()}" for label, path in places)
    raise ArchbenchError(f"CIFAR-10 not found (tried {tried}); {HOW_TO_PROVIDE}")


def download_dir(data_dir: str | None) -> Path:
    places, named = candidate_dirs(data_dir)
    return places[0][1] if named else Path("data")


def download(root: Path, downloader: Callable[..., None] | None = None) -> Found:
    """Fetch and unpack the official archive into ``root`` (no-op if already there)."""
    found = detect(root)
    if found:
        return found
    if downloader is None:
        from torchvision.datasets.utils import download_and_extract_archive as downloader
    try:
        downloader(OFFICIAL_URL, download_root=str(root), filename=OFFICIAL_ARCHIVE,
                   md5=OFFICIAL_ARCHIVE_MD5)
    except Exception as e:  # network errors come in many types; report them in one line
        raise ArchbenchError(
            f"downloading CIFAR-10 from {OFFICIAL_URL} into {root} failed ({e}); check the "
            f"network, or download it by hand and pass --data-dir") from e
    found = detect(root)
    if not found:
        raise ArchbenchError(f"download into {root} finished but no CIFAR-10 was found there")
    return found


def load_cifar10(data_dir: str | None = None, *, download_missing: bool = False,
                 verify: bool = True, with_train: bool = True) -> Cifar10:
    """Find CIFAR-10 (see ``candidate_dirs``), optionally download it, check and load it."""
    if download_missing:
        try:
            found = locate(data_dir)
        except ArchbenchError:
            found = download(download_dir(data_dir))
    else:
        found = locate(data_dir)
    reader = {"npz-xz": read_npz_xz, "python-folder": read_python_folder,
              "python-archive": read_python_archive}[found.kind]
    data = reader(found.path, verify=verify, with_train=with_train)
    check_arrays(data)
    return data


# ---------------------------------------------------------------- checks

def check_images(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Shapes, dtype and label range of one file's (or split's) images and labels."""
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise ArchbenchError(
            f"{where}: images have shape {x.shape} and dtype {x.dtype}, expected (N, 32, 32, 3) "
            f"uint8; the file is not CIFAR-10 or is damaged — get a fresh copy")
    if y.shape != (x.shape[0],):
        raise ArchbenchError(f"{where}: {x.shape[0]} images but {y.shape[0] if y.ndim else 0} labels; "
                             f"the file is damaged — get a fresh copy")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ArchbenchError(f"{where}: labels range over {y.min()}..{y.max()}, CIFAR-10's are 0..9; "
                             f"the file is not CIFAR-10 or is damaged — get a fresh copy")


def check_arrays(d: Cifar10) -> None:
    """The assembled dataset, whatever its source, before any training touches it."""
    check_images(d.x_train, d.y_train, f"{d.source} (train)")
    check_images(d.x_test, d.y_test, f"{d.source} (test)")
    if d.test_exact is not None and d.test_exact.shape != d.y_test.shape:
        raise ArchbenchError(f"{d.source}: the 'lossless' array does not match the test labels")


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _checksum_error(name: str, algo: str, got: str, want: str) -> ArchbenchError:
    return ArchbenchError(
        f"{name}: {algo} checksum {got} does not match the expected {want}; the file is "
        f"damaged or not the official one — download it again (or pass --no-verify-data "
        f"to use it anyway)")


# ---------------------------------------------------------------- compressed numpy folder

def _read_sha256sums(folder: Path) -> dict[str, str]:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def _load_npz_xz(path: Path, expected_sha256: str | None) -> dict[str, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ArchbenchError(f"{path}: cannot read ({e.strerror}); check the file and its permissions") from e
    if expected_sha256 and _digest(raw, "sha256") != expected_sha256:
        raise _checksum_error(str(path), "SHA-256", _digest(raw, "sha256"), expected_sha256)
    try:
        with np.load(io.BytesIO(lzma.decompress(raw)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (lzma.LZMAError, EOFError, ValueError, OSError) as e:
        raise ArchbenchError(
            f"{path}: not a readable .npz.xz file ({e}); the file is truncated or damaged — "
            f"copy it again") from e


def _key(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise ArchbenchError(f"{path}: missing array {key!r} (has {', '.join(arrays)}); "
                             f"the file is not in archbench's CIFAR-10 numpy format")
    return arrays[key]


def read_npz_xz(folder: Path, *, verify: bool = True, with_train: bool = True) -> Cifar10:
    folder = Path(folder)
    sums = _read_sha256sums(folder) if verify else {}
    train_files = sorted(folder.glob("train-*.npz.xz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    test_file = folder / "test.npz.xz"
    missing = [] if test_file.is_file() else ["test.npz.xz"]
    if with_train and not train_files:
        missing.append("train-*.npz.xz")
    if missing:
        raise ArchbenchError(f"{folder}: missing {', '.join(missing)}; copy the complete dataset folder")
    files = (train_files if with_train else []) + [test_file]
    # xz decompression releases the GIL: reading the files in parallel is several times faster.
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda p: _load_npz_xz(p, sums.get(p.name)), files))
    test = parts[-1]
    for arrays, path in zip(parts, files):
        split = "test" if path == test_file else "train"
        check_images(_key(arrays, f"x_{split}", path), _key(arrays, f"y_{split}", path), str(path))
    if with_train:
        x_train = np.concatenate([p["x_train"] for p in parts[:-1]])
        y_train = np.concatenate([p["y_train"] for p in parts[:-1]])
    else:
        x_train, y_train = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    exact = test.get("lossless")
    checked = ("SHA-256 matched SHA256SUMS" if sums else "no SHA256SUMS to check against") if verify \
        else "not checked (--no-verify-data)"
    return Cifar10(x_train, y_train.astype(np.int64), _key(test, "x_test", test_file),
                   _key(test, "y_test", test_file).astype(np.int64),
                   None if exact is None else exact.astype(bool), f"numpy-xz folder {folder}", checked)


# ---------------------------------------------------------------- official python version

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch pickle contains: plain containers and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; keep old pickles loadable
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except Exception as e:  # a damaged pickle fails in many ways; all mean "bad file"
        raise ArchbenchError(f"{name}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                             f"the file is truncated or damaged — download it again") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ArchbenchError(f"{name}: image array has shape {data.shape}, expected (N, 3072); "
                             f"not a CIFAR-10 batch")
    # The official layout is CHW-planar per row; archbench keeps HWC like the numpy format.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    check_images(images, labels, name)
    return images, labels


def _assemble(read: Callable[[str], bytes], where: str, verify: bool, with_train: bool) -> Cifar10:
    names = (list(TRAIN_BATCHES) if with_train else []) + ["test_batch"]
    parsed = {}
    for name in names:
        raw = read(name)
        if verify and _digest(raw, "md5") != OFFICIAL_BATCH_MD5[name]:
            raise _checksum_error(f"{where}/{name}", "MD5", _digest(raw, "md5"), OFFICIAL_BATCH_MD5[name])
        parsed[name] = _parse_batch(raw, f"{where}/{name}")
    x_test, y_test = parsed.pop("test_batch")
    if with_train:
        x_train = np.concatenate([parsed[n][0] for n in TRAIN_BATCHES])
        y_train = np.concatenate([parsed[n][1] for n in TRAIN_BATCHES])
    else:
        x_train, y_train = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    return Cifar10(x_train, y_train, x_test, y_test, None, where,
                   "official MD5s matched" if verify else "not checked (--no-verify-data)")


def read_python_folder(folder: Path, *, verify: bool = True, with_train: bool = True) -> Cifar10:
    folder = Path(folder)

    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise ArchbenchError(f"{folder}: missing {name}; the cifar-10-batches-py folder is "
                                 f"incomplete — unpack the official archive again")
        return path.read_bytes()

    return _assemble(read, f"python folder {folder}", verify, with_train)


def read_python_archive(archive: Path, *, verify: bool = True, with_train: bool = True) -> Cifar10:
    archive = Path(archive)
    raw = archive.read_bytes()
    if verify and _digest(raw, "md5") != OFFICIAL_ARCHIVE_MD5:
        raise _checksum_error(str(archive), "MD5", _digest(raw, "md5"), OFFICIAL_ARCHIVE_MD5)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parent.name == OFFICIAL_FOLDER}

            def read(name: str) -> bytes:
                if name not in members:
                    raise ArchbenchError(f"{archive}: no {OFFICIAL_FOLDER}/{name} inside; not the "
                                         f"official CIFAR-10 python archive — download it again")
                return tar.extractfile(members[name]).read()

            # Members are read straight from the archive: nothing is extracted to disk.
            return _assemble(read, f"python archive {archive}", verify, with_train)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchbenchError(f"{archive}: not a readable .tar.gz ({e}); the archive is truncated "
                             f"or damaged — download it again") from e

