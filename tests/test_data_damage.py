"""Damaged copies of CIFAR-10: every reader loads the right data or says in one line which file is wrong.

The cases are generated from a fixed seed, so every run sees the same bytes. Each case builds a
tiny dataset (three images a file) in one of the three forms archbench reads — a folder of
``.npz.xz`` files, the official ``cifar-10-batches-py`` folder, the official
``cifar-10-python.tar.gz`` — damages it, and reads it with checksum verification on and off,
through ``load_dataset`` (which also locates the data) and through the format's reader.

Checksums catch almost any change to a file's bytes, so damage comes in two kinds:

* ``post``: done to a complete copy after its checksums were taken (truncation, random or
  overwritten bytes, a folder or a symlink loop where a file belongs). With verification on the
  checksum names the file; with it off the decoders and the structural checks must catch it.
* ``pre``: a wrongly made file whose checksums match (arrays of the wrong dtype, shape or range,
  pickles of the wrong type, missing or extra fields). The structural checks must catch it
  whether or not checksums are verified.

For the official formats the expected MD5s are patched to those of the tiny fake files, so that
verification behaves as it would on the real dataset.

Every case asserts: the read either returns exactly the data written (benign cases only) or
raises ``ArchbenchError`` with a one-line message naming the data folder and the damaged file;
no other exception escapes; and the whole tree (names, types, modes, bytes, link targets) is
the same afterwards.

Decisions the cases pin down:

* Extra arrays in an ``.npz.xz`` file and extra keys in a batch pickle are accepted and ignored
  (the real files carry ``orig_index``, ``batch_label`` and ``filenames``); they are not even
  decoded, so an extra array that could not be read does no harm.
* Files that are not part of a format (``README.md``, ``train-0.npz.xz.bak``, ``._test.npz.xz``,
  ``data_batch_6``, sub-folders, ...) are ignored.
* Labels may be stored in any integer dtype (they are range-checked and widened to int64);
  floats, bools, strings and objects are refused even when their values look like labels.
  Images must be uint8. ``lossless`` must be bool.
* Batch pickles may have str keys (what ``encoding='latin1'`` makes of the official Python 2
  pickles) or bytes keys (what ``encoding='bytes'`` makes of them, kept by copies re-saved after
  such a load); a pickle with both spellings of one key is refused as ambiguous.
* With verification off, nothing but the decoders can see a change to pixel values or labels:
  the official pickles carry no checksum of their own, so altered bytes inside a pickle may load
  (``UNDETECTABLE_UNVERIFIED``; the result must still be well-formed). The xz and gzip formats
  carry CRCs and decompress fully before use, so altered bytes are always caught; bytes after
  the end of a complete xz stream are ignored by the xz decoder (the data it holds is intact).
* ``SHA256SUMS`` is read only when verifying. Then it must be UTF-8 lines of
  ``<64 hex digits>  <name>`` (``*`` binary marker, ``./`` prefix, CRLF, a BOM and blank lines
  are accepted) and must list every file read; a shard it lists must be present. Without it
  (or unverified) a missing *last* shard cannot be seen: the number of shards is not fixed.
* Pickle protocol 5 stores arrays through numpy's ``_frombuffer``, which the restricted
  unpickler does not admit; such a re-saved batch is refused (in one line), not loaded.
* A folder, a pipe or a broken link where a file belongs is reported by name, never read
  (a pipe would block forever), and never taken for "no CIFAR-10 here".
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import lzma
import os
import pickle
import random
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from archbench.data import datasets
from archbench.data.datasets import CIFAR10
from archbench.data.sources import (
    check_arrays,
    load_dataset,
    read_npz_xz,
    read_python_archive,
    read_python_folder,
)
from archbench.errors import ArchbenchError

CLASSES, OFFICIAL_ARCHIVE, OFFICIAL_FOLDER, TRAIN_BATCHES = (
    CIFAR10.classes,
    CIFAR10.archive,
    CIFAR10.folder,
    CIFAR10.train_files,
)
SEED = 20240611
PER_FILE = 3  # images in each file: enough for shapes, label ranges and ragged lists; fast to build
SUMS = "SHA256SUMS"
CODEC = "::codec"  # key in an archive's content: how the tar is compressed

OK, ERROR = "ok", "error"
OK_UNVERIFIED = "ok-unverified"  # refused when verifying (the checksums see it), benign otherwise
UNDETECTABLE_UNVERIFIED = "undetectable-unverified"  # refused when verifying; may load otherwise

# Words of the fix every message ends with (the rule: a message names the file and the fix).
FIX_WORDS = ("copy", "download", "unpack", "make it again", "pass --no-verify-data", "free memory", "provide")


# ---------------------------------------------------------------- content and how it is written


class Raw(bytes):
    """File content written as is."""


@dataclass(frozen=True)
class Pickled:
    obj: object
    protocol: int


class _TarDir:
    """Archive content: a directory member."""


DIR = _TarDir()


@dataclass(frozen=True)
class TarSymlink:
    target: str


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _xz(raw: bytes) -> bytes:
    return lzma.compress(raw, preset=0)


def _rows(x: np.ndarray) -> np.ndarray:
    """HWC images as the official (N, 3072) CHW-planar rows."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def _pristine(fmt: str) -> tuple[dict, dict]:
    """A complete dataset's content (fresh containers a case may change), and the arrays it holds."""
    content, expected = _base(fmt)
    return {k: dict(v) if isinstance(v, dict) else v for k, v in content.items()}, expected


@functools.cache
def _base(fmt: str) -> tuple[dict, dict]:
    rng = np.random.default_rng(SEED)
    splits = [
        (f"train-{i}", rng.integers(0, 256, (PER_FILE, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, PER_FILE))
        for i in range(len(TRAIN_BATCHES) if fmt != "npz" else 2)
    ]
    x_test, y_test = rng.integers(0, 256, (PER_FILE, 32, 32, 3), dtype=np.uint8), np.array([0, 9, 4])
    exact = np.array([True, False, True])
    expected = {
        "x_train": np.concatenate([x for _, x, _ in splits]),
        "y_train": np.concatenate([y for _, _, y in splits]).astype(np.int64),
        "x_test": x_test,
        "y_test": y_test.astype(np.int64),
        "test_exact": exact if fmt == "npz" else None,
    }
    index = np.arange(PER_FILE, dtype=np.int32)
    if fmt == "npz":
        content = {f"{name}.npz.xz": {"x_train": x, "y_train": y, "orig_index": index} for name, x, y in splits}
        content["test.npz.xz"] = {"x_test": x_test, "y_test": y_test, "lossless": exact, "orig_index": index}
        content[SUMS] = _standard_sums
        return content, expected
    content = {
        name: {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in y],
            "data": _rows(x),
            "filenames": [f"{name}_{i}.png" for i in range(PER_FILE)],
        }
        for name, (_, x, y) in zip(TRAIN_BATCHES, splits)
    }
    content["test_batch"] = {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(v) for v in y_test],
        "data": _rows(x_test),
        "filenames": [f"t{i}.png" for i in range(PER_FILE)],
    }
    content["batches.meta"] = {"label_names": list(CLASSES), "num_cases_per_batch": PER_FILE, "num_vis": 3072}
    if fmt == "archive":
        content[CODEC] = "gz"
    return content, expected


def _standard_sums(digests: dict[str, str]) -> bytes:
    return "".join(f"{d}  {name}\n" for name, d in digests.items()).encode()


def _serialize(value) -> bytes | None:
    """The bytes of a file (npz dict, pickled object, raw bytes); None for a special entry."""
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Pickled):
        return pickle.dumps(value.obj, protocol=value.protocol)
    if value is DIR or isinstance(value, TarSymlink):
        return None
    return pickle.dumps(value, protocol=2)  # like the official Python 2 pickles


@functools.cache
def _base_npz_xz(name: str) -> bytes:
    return _xz(_npz(_base("npz")[0][name]))


def _write_npz(folder: Path, content: dict) -> None:
    folder.mkdir(parents=True)
    digests = {}
    base = _base("npz")[0]
    for name, value in content.items():
        if name == SUMS:
            continue
        if isinstance(value, bytes):
            raw = bytes(value)
        elif (
            isinstance(base.get(name), dict)
            and value.keys() == base[name].keys()
            and all(value[k] is base[name][k] for k in value)
        ):
            raw = _base_npz_xz(name)  # unchanged: compressed once per session, for speed
        else:
            raw = _xz(_npz(value))
        (folder / name).write_bytes(raw)
        digests[name] = hashlib.sha256(raw).hexdigest()
    sums = content[SUMS]
    if sums is not None:
        (folder / SUMS).write_bytes(sums(digests) if callable(sums) else sums)


def _official_md5s(content: dict) -> dict[str, str]:
    """What the patched CIFAR-10 file MD5s expect: the batches as written."""
    md5s = {}
    for name in (*TRAIN_BATCHES, "test_batch"):
        raw = _serialize(content[name]) if name in content else None
        md5s[name] = hashlib.md5(raw).hexdigest() if raw is not None else "0" * 32
    return md5s


def _write_folder(folder: Path, content: dict) -> None:
    folder.mkdir(parents=True)
    for name, value in content.items():
        (folder / name).write_bytes(_serialize(value))


def _archive_bytes(content: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, value in content.items():
            if name == CODEC:
                continue
            info = tarfile.TarInfo(name if "/" in name else f"{OFFICIAL_FOLDER}/{name}")
            if value is DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(value, TarSymlink):
                info.type, info.linkname = tarfile.SYMTYPE, value.target
                tar.addfile(info)
            else:
                raw = _serialize(value)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    tar_bytes = buf.getvalue()
    codec = content[CODEC]
    if codec == "gz":
        return gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    if codec == "tar":
        return tar_bytes
    if codec == "xz":
        return _xz(tar_bytes)
    if codec == "zip":
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as z:
            z.writestr("cifar-10-batches-py/test_batch", _serialize(content["test_batch"]))
        return zbuf.getvalue()
    raise AssertionError(codec)


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    fmt: str  # "npz" | "folder" | "archive"
    name: str
    outcome: str  # OK | ERROR | OK_UNVERIFIED | UNDETECTABLE_UNVERIFIED
    blame: tuple[str, ...] = ()  # what the message must name, besides the data folder
    pre: Callable[[dict], None] | None = None  # makes the content wrong before checksums are taken
    post: Callable[[Path, random.Random], None] | None = None  # damages the written copy
    same_exact: bool = True  # an OK case still carries the 'lossless' array

    @property
    def id(self) -> str:
        return f"{self.fmt}:{self.name}"

    def expected(self, verify: bool) -> str:
        if self.outcome == OK_UNVERIFIED:
            return ERROR if verify else OK
        if self.outcome == UNDETECTABLE_UNVERIFIED:
            return ERROR if verify else "either"
        return self.outcome


def _bytes_post(target: str, op: Callable[[bytes, random.Random], bytes]):
    def post(folder: Path, rng: random.Random) -> None:
        path = folder / target
        path.write_bytes(op(path.read_bytes(), rng))

    return post


def _random(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def _byte_ops(rng: random.Random) -> list[tuple[str, Callable[[bytes, random.Random], bytes]]]:
    fractions = sorted(round(rng.uniform(0.02, 0.98), 3) for _ in range(3))
    flip_at = round(rng.uniform(0.0, 1.0), 3)

    def flip(raw: bytes, r: random.Random) -> bytes:
        i = min(int(len(raw) * flip_at), len(raw) - 1)
        return raw[:i] + bytes([raw[i] ^ (1 << r.randrange(8))]) + raw[i + 1 :]

    def overwrite_middle(raw: bytes, r: random.Random) -> bytes:
        i = len(raw) // 2 - 8
        return raw[:i] + _random(r, 16) + raw[i + 16 :]

    return [
        ("truncated-to-0-bytes", lambda raw, r: b""),
        *[(f"truncated-at-{f}", lambda raw, r, f=f: raw[: max(1, int(len(raw) * f))]) for f in fractions],
        ("last-byte-cut", lambda raw, r: raw[:-1]),
        ("random-bytes-same-length", lambda raw, r: _random(r, len(raw))),
        ("random-bytes-short", lambda raw, r: _random(r, 37)),
        ("zero-filled", lambda raw, r: bytes(len(raw))),
        ("16-bytes-overwritten-mid-file", overwrite_middle),
        (f"bit-flipped-at-{flip_at}", flip),
        ("junk-appended", lambda raw, r: raw + _random(r, 24)),
    ]


def _replace_with_folder(name: str):
    def post(folder: Path, rng: random.Random) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
        (folder / name / "inside").write_bytes(b"x")

    return post


def _symlink_loop(name: str):
    def post(folder: Path, rng: random.Random) -> None:
        (folder / name).unlink()
        os.symlink(name, folder / name)

    return post


def _dangling_symlink(name: str):
    def post(folder: Path, rng: random.Random) -> None:
        (folder / name).unlink()
        os.symlink("gone-" + name, folder / name)

    return post


def _fifo(name: str):
    def post(folder: Path, rng: random.Random) -> None:  # reading one would wait forever for a writer
        (folder / name).unlink()
        os.mkfifo(folder / name)

    return post


def _symlink_to_copy(name: str):
    def post(folder: Path, rng: random.Random) -> None:
        elsewhere = folder.parent / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        os.replace(folder / name, elsewhere / name)
        os.symlink(elsewhere / name, folder / name)

    return post


def _remove(*names: str):
    def post(folder: Path, rng: random.Random) -> None:
        for name in names:
            (folder / name).unlink()

    return post


def _empty_folder(folder: Path, rng: random.Random) -> None:
    for p in folder.iterdir():
        p.unlink()


def _extras(*junk_names: str):
    """Files that are not part of the format, full of junk, plus the usual clutter."""

    def post(folder: Path, rng: random.Random) -> None:
        for name in junk_names:
            (folder / name).write_bytes(_random(rng, 100))
        (folder / "README.md").write_text("# notes\n")
        (folder / ".DS_Store").write_bytes(_random(rng, 64))
        (folder / "backup").mkdir()
        (folder / "backup" / "whatever").write_bytes(_random(rng, 10))
        os.symlink("loop", folder / "loop")
        os.mkfifo(folder / "a-pipe")

    return post


def _set(file: str, **changes):
    """Change arrays (npz) or entries (batch dict) of one file; a callable gets the old value,
    ``DROP`` removes the key."""

    def pre(content: dict) -> None:
        d = content[file]
        for key, change in changes.items():
            if change is DROP:
                d.pop(key)
            else:
                d[key] = change(d[key]) if callable(change) else change

    return pre


def _put(file: str, value):
    def pre(content: dict) -> None:
        content[file] = value(content) if callable(value) else value

    return pre


DROP = object()


def _npz_member_bytes(raw_members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, raw in raw_members.items():
            z.writestr(name, raw)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# Wrong images and labels, as functions of the right ones (numpy format: HWC images).
IMAGE_DAMAGE = {
    "images-float32": lambda x: x.astype(np.float32),
    "images-int64": lambda x: x.astype(np.int64),
    "images-uint16": lambda x: x.astype(np.uint16),
    "images-bool": lambda x: x > 127,
    "images-chw": lambda x: x.transpose(0, 3, 1, 2),
    "images-flat-rows": lambda x: x.reshape(len(x), -1),
    "images-grey": lambda x: x[..., :1],
    "images-28x28": lambda x: x[:, :28, :28],
    "images-3d": lambda x: x[0],
    "images-5d": lambda x: x[None],
    "images-scalar": lambda x: np.uint8(7),
    "images-string": lambda x: np.array("images"),
    "images-one-short": lambda x: x[:-1],
}
LABEL_DAMAGE = {
    "labels-float-integral": lambda y: y.astype(np.float64),
    "labels-float-fractional": lambda y: y + 0.5,
    "labels-nan": lambda y: np.full(len(y), np.nan),
    "labels-str": lambda y: y.astype(str),
    "labels-bytes": lambda y: y.astype("S2"),
    "labels-bool": lambda y: y > 4,
    "labels-complex": lambda y: y.astype(complex),
    "labels-negative": lambda y: np.where(np.arange(len(y)) == 1, -1, y),
    "labels-10": lambda y: np.where(np.arange(len(y)) == 1, 10, y),
    "labels-255-uint8": lambda y: np.full(len(y), 255, np.uint8),
    "labels-int64-max": lambda y: np.full(len(y), np.iinfo(np.int64).max),
    "labels-column": lambda y: y[:, None],
    "labels-scalar": lambda y: np.int64(3),
    "labels-one-short": lambda y: y[:-1],
    "labels-one-long": lambda y: np.append(y, 0),
    "labels-object": lambda y: y.astype(object),
}
LABEL_OK = {
    "labels-int32": lambda y: y.astype(np.int32),
    "labels-uint8": lambda y: y.astype(np.uint8),
    "labels-big-endian": lambda y: y.astype(">i8"),
}
LOSSLESS_DAMAGE = {
    "lossless-float": lambda e: e.astype(np.float64),
    "lossless-int": lambda e: e.astype(np.int64),
    "lossless-str": lambda e: e.astype(str),
    "lossless-one-short": lambda e: e[:-1],
    "lossless-column": lambda e: e[:, None],
    "lossless-scalar": lambda e: np.bool_(True),
    "lossless-object": lambda e: e.astype(object),
}


def _npz_file_cases(target: str, split: str) -> list[Case]:
    """Wrongly made arrays and containers in one .npz.xz file (``split``: "train" or "test")."""
    x, y = f"x_{split}", f"y_{split}"
    cases = []
    for name, fn in IMAGE_DAMAGE.items():
        cases.append(Case("npz", f"{target}-{name}", ERROR, (target,), pre=_set(target, **{x: fn})))
    for name, fn in LABEL_DAMAGE.items():
        cases.append(Case("npz", f"{target}-{name}", ERROR, (target,), pre=_set(target, **{y: fn})))
    for name, fn in LABEL_OK.items():
        cases.append(Case("npz", f"{target}-{name}", OK, pre=_set(target, **{y: fn})))
    cases += [
        Case(
            "npz",
            f"{target}-no-images",
            ERROR,
            (target,),
            pre=_set(
                target,
                **{x: lambda a: a[:0], y: lambda a: a[:0]},
                **({"lossless": lambda e: e[:0]} if split == "test" else {}),
            ),
        ),
        Case("npz", f"{target}-missing-{x}", ERROR, (target, x), pre=_set(target, **{x: DROP})),
        Case("npz", f"{target}-missing-{y}", ERROR, (target, y), pre=_set(target, **{y: DROP})),
        Case("npz", f"{target}-no-arrays", ERROR, (target,), pre=_put(target, Raw(_xz(_npz({}))))),
        Case(
            "npz",
            f"{target}-other-split-keys",
            ERROR,
            (target, x),
            pre=_put(target, lambda c: {k.replace(split, "other"): v for k, v in c[target].items()}),
        ),
        Case(
            "npz",
            f"{target}-extra-arrays",
            OK,
            pre=_set(target, notes=np.array("made by hand"), **{"odd\nname": np.zeros(2), "k" * 300: np.ones(1)}),
        ),
        # an extra array that could not be read (objects need pickle) is never decoded
        Case(
            "npz", f"{target}-extra-object-array", OK, pre=_set(target, extra=np.array([{"a": 1}, None], dtype=object))
        ),
        Case("npz", f"{target}-bare-npy", ERROR, (target,), pre=_put(target, lambda c: Raw(_xz(_npy(c[target][x]))))),
        Case("npz", f"{target}-xz-of-nothing", ERROR, (target,), pre=_put(target, Raw(_xz(b"")))),
        Case(
            "npz",
            f"{target}-xz-of-pickle",
            ERROR,
            (target,),
            pre=_put(target, lambda c: Raw(_xz(pickle.dumps(c[target])))),
        ),
        Case("npz", f"{target}-xz-of-text", ERROR, (target,), pre=_put(target, Raw(_xz(b"x_test,y_test\n1,2\n")))),
        Case("npz", f"{target}-not-compressed", ERROR, (target,), pre=_put(target, lambda c: Raw(_npz(c[target])))),
        Case(
            "npz",
            f"{target}-gzip-not-xz",
            ERROR,
            (target,),
            pre=_put(target, lambda c: Raw(__import__("gzip").compress(_npz(c[target])))),
        ),
        Case(
            "npz",
            f"{target}-member-not-npy",
            ERROR,
            (target,),
            pre=_put(
                target,
                lambda c: Raw(_xz(_npz_member_bytes({x: b"raw bytes, not an array", f"{y}.npy": _npy(c[target][y])}))),
            ),
        ),
        Case(
            "npz",
            f"{target}-member-npy-truncated",
            ERROR,
            (target,),
            pre=_put(
                target,
                lambda c: Raw(
                    _xz(_npz_member_bytes({f"{x}.npy": _npy(c[target][x])[:200], f"{y}.npy": _npy(c[target][y])}))
                ),
            ),
        ),
        Case(
            "npz",
            f"{target}-member-npy-bad-header",
            ERROR,
            (target,),
            pre=_put(
                target,
                lambda c: Raw(
                    _xz(
                        _npz_member_bytes(
                            {
                                f"{x}.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}\n" + bytes(100),
                                f"{y}.npy": _npy(c[target][y]),
                            }
                        )
                    )
                ),
            ),
        ),
        Case("npz", f"{target}-is-a-folder", ERROR, (target,), post=_replace_with_folder(target)),
        Case("npz", f"{target}-symlink-loop", ERROR, (target,), post=_symlink_loop(target)),
        Case("npz", f"{target}-dangling-symlink", ERROR, (target,), post=_dangling_symlink(target)),
        Case("npz", f"{target}-is-a-fifo", ERROR, (target,), post=_fifo(target)),
        Case("npz", f"{target}-symlink-to-a-good-copy", OK, post=_symlink_to_copy(target)),
    ]
    return cases


def _npz_cases(rng: random.Random) -> list[Case]:
    cases = []
    for target in ("test.npz.xz", "train-1.npz.xz"):
        for op_name, op in _byte_ops(rng):
            # bytes after a complete xz stream are ignored by the decoder; what it holds is intact
            outcome = OK_UNVERIFIED if op_name == "junk-appended" else ERROR
            cases.append(Case("npz", f"{target}-{op_name}", outcome, (target,), post=_bytes_post(target, op)))
    for target, split in (("test.npz.xz", "test"), ("train-1.npz.xz", "train")):
        cases += _npz_file_cases(target, split)
    for name, fn in LOSSLESS_DAMAGE.items():
        cases.append(
            Case("npz", f"test.npz.xz-{name}", ERROR, ("test.npz.xz", "lossless"), pre=_set("test.npz.xz", lossless=fn))
        )
    cases += [
        Case("npz", "test.npz.xz-missing", ERROR, ("test.npz.xz",), post=_remove("test.npz.xz")),
        # Without SHA256SUMS nothing says how many shards there are (the sample has only train-0),
        # so a missing last shard is seen only when verifying.
        Case(
            "npz",
            "train-1.npz.xz-missing",
            UNDETECTABLE_UNVERIFIED,
            ("train-1.npz.xz",),
            post=_remove("train-1.npz.xz"),
        ),
        Case("npz", "test.npz.xz-lossless-absent", OK, pre=_set("test.npz.xz", lossless=DROP), same_exact=False),
        Case(
            "npz",
            "train-0.npz.xz-missing-so-shards-have-a-gap",
            ERROR,
            ("train-0.npz.xz",),
            post=_remove("train-0.npz.xz"),
        ),
        Case("npz", "all-train-files-missing", ERROR, ("train-",), post=_remove("train-0.npz.xz", "train-1.npz.xz")),
        Case("npz", "empty-folder", ERROR, post=_empty_folder),
        Case(
            "npz",
            "extra-files",
            OK,
            post=_extras(
                "._test.npz.xz",
                "._train-0.npz.xz",
                "train-0.npz.xz.bak",
                "train-old.npz.xz",
                "train-1 copy.npz.xz",
                "train-1-copy.npz.xz",
                "train-01.npz.xz",
                "train-.npz.xz",
                "test.npz",
                "test.npz.xz~",
                "data_batch_1",
            ),
        ),
    ]
    return cases + _sums_cases(rng)


def _sums_cases(rng: random.Random) -> list[Case]:
    """Damage to SHA256SUMS: refused when verifying, never read otherwise."""

    def sums(make: Callable[[dict[str, str]], bytes]):
        return _put(SUMS, lambda c: make)

    def text(lines: Callable[[dict[str, str]], list[str]], end: str = "\n", encoding: str = "utf-8"):
        return sums(lambda d: "".join(line + end for line in lines(d)).encode(encoding))

    def std(d: dict[str, str]) -> list[str]:
        return [f"{h}  {n}" for n, h in d.items()]

    cut = sorted(round(rng.uniform(0.05, 0.95), 3) for _ in range(3))
    bad = [
        ("not-utf8", sums(lambda d: _standard_sums(d) + "abc  café.txt\n".encode("latin-1"))),
        ("utf16", text(std, encoding="utf-16")),
        ("random-bytes", sums(lambda d: _random(random.Random(f"{SEED}/sums"), 300))),
        ("malformed-line", text(lambda d: std(d) + ["this is not a checksum line"])),
        ("hash-one-digit-short", text(lambda d: [f"{h[:-1]}  {n}" for n, h in d.items()])),
        ("hash-not-hex", text(lambda d: [f"{'g' * 64}  {n}" for n, h in d.items()])),
        ("hash-without-name", text(lambda d: std(d) + ["a" * 64])),
        ("bsd-style-line", text(lambda d: [f"SHA256 ({n}) = {h}" for n, h in d.items()])),
        ("empty", sums(lambda d: b"")),
        *[
            (f"truncated-at-{f}", sums(lambda d, f=f: _standard_sums(d)[: int(len(_standard_sums(d)) * f)]))
            for f in cut
        ],
        ("no-line-for-train-1", text(lambda d: [l for l in std(d) if "train-1" not in l])),
        ("conflicting-duplicate-line", text(lambda d: std(d) + [f"{'0' * 64}  test.npz.xz"])),
    ]
    cases = [Case("npz", f"{SUMS}-{name}", OK_UNVERIFIED, (SUMS,), pre=pre) for name, pre in bad]
    cases += [
        Case("npz", f"{SUMS}-is-a-folder", OK_UNVERIFIED, (SUMS,), post=_replace_with_folder(SUMS)),
        Case("npz", f"{SUMS}-symlink-loop", OK_UNVERIFIED, (SUMS,), post=_symlink_loop(SUMS)),
        Case("npz", f"{SUMS}-is-a-fifo", OK_UNVERIFIED, (SUMS,), post=_fifo(SUMS)),
        Case(
            "npz",
            f"{SUMS}-wrong-digest-for-test",
            OK_UNVERIFIED,
            ("test.npz.xz",),
            pre=text(lambda d: [f"{d['train-0.npz.xz'] if n == 'test.npz.xz' else h}  {n}" for n, h in d.items()]),
        ),
        Case(
            "npz",
            f"{SUMS}-lists-a-missing-shard",
            OK_UNVERIFIED,
            ("train-2.npz.xz",),
            pre=text(lambda d: std(d) + [f"{'1' * 64}  train-2.npz.xz"]),
        ),
    ]
    benign = [
        ("crlf", text(std, end="\r\n")),
        ("bom", sums(lambda d: b"\xef\xbb\xbf" + _standard_sums(d))),
        ("binary-marker", text(lambda d: [f"{h} *{n}" for n, h in d.items()])),
        ("dot-slash", text(lambda d: [f"{h}  ./{n}" for n, h in d.items()])),
        ("upper-case-hex", text(lambda d: [f"{h.upper()}  {n}" for n, h in d.items()])),
        ("blank-lines", text(lambda d: ["", *std(d), "", "  "])),
        ("lists-other-files", text(lambda d: std(d) + [f"{'2' * 64}  README.md"])),
        ("no-final-newline", sums(lambda d: _standard_sums(d).rstrip(b"\n"))),
        ("absent", _put(SUMS, None)),
    ]
    return cases + [Case("npz", f"{SUMS}-{name}", OK, pre=pre) for name, pre in benign]


BATCH_DATA_DAMAGE = {
    "data-float32": lambda d: d.astype(np.float32),
    "data-int64": lambda d: d.astype(np.int64),
    "data-hwc-images": lambda d: d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
    "data-3071-columns": lambda d: d[:, :-1],
    "data-flat": lambda d: d.ravel(),
    "data-numpy-scalar": lambda d: np.uint8(7),
    "data-list-of-lists": lambda d: d.tolist(),
    "data-bytes": lambda d: d.tobytes(),
    "data-none": lambda d: None,
    "data-object-array": lambda d: d.astype(object),
    "data-one-row-short": lambda d: d[:-1],
}
BATCH_LABEL_DAMAGE = {
    "labels-float-integral": lambda l: [float(v) for v in l],
    "labels-float-fractional": lambda l: [v + 0.5 for v in l],
    "labels-str": lambda l: [str(v) for v in l],
    "labels-bytes": lambda l: [str(v).encode() for v in l],
    "labels-negative": lambda l: [-1, *l[1:]],
    "labels-10": lambda l: [10, *l[1:]],
    "labels-none-inside": lambda l: [None, *l[1:]],
    "labels-bool": lambda l: [bool(v % 2) for v in l],
    "labels-nested": lambda l: [[v] for v in l],
    "labels-ragged": lambda l: [[l[0]], [l[1], l[2]], []],
    "labels-dict": lambda l: {i: v for i, v in enumerate(l)},
    "labels-one-string": lambda l: "".join(map(str, l)),
    "labels-one-short": lambda l: l[:-1],
    "labels-one-long": lambda l: [*l, 0],
    "labels-huge-int": lambda l: [2**70, *l[1:]],
    "labels-float-array": lambda l: np.array(l, np.float32),
    "labels-none": lambda l: None,
    "labels-object-array": lambda l: np.array(l, dtype=object),
}
BATCH_LABEL_OK = {
    "labels-int64-array": lambda l: np.array(l, np.int64),
    "labels-uint8-array": lambda l: np.array(l, np.uint8),
    "labels-tuple": lambda l: tuple(l),
}


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _batch_container_cases(fmt: str, target: str) -> list[Case]:
    """Whole-pickle damage: wrong type, missing or doubled keys, foreign classes."""

    def rekey(conv):
        return _put(target, lambda c: {conv(k): v for k, v in c[target].items()})

    blame = (target,) if fmt == "folder" else (OFFICIAL_ARCHIVE, target)
    return [
        Case(
            fmt,
            f"{target}-pickle-of-list",
            ERROR,
            blame,
            pre=_put(target, lambda c: [c[target]["data"], c[target]["labels"]]),
        ),
        Case(
            fmt,
            f"{target}-pickle-of-tuple",
            ERROR,
            blame,
            pre=_put(target, lambda c: (c[target]["data"], c[target]["labels"])),
        ),
        Case(fmt, f"{target}-pickle-of-none", ERROR, blame, pre=_put(target, Pickled(None, 2))),
        Case(fmt, f"{target}-pickle-of-int", ERROR, blame, pre=_put(target, Pickled(7, 2))),
        Case(fmt, f"{target}-pickle-of-str", ERROR, blame, pre=_put(target, Pickled("data", 2))),
        Case(fmt, f"{target}-pickle-of-array", ERROR, blame, pre=_put(target, lambda c: c[target]["data"])),
        Case(fmt, f"{target}-empty-dict", ERROR, blame, pre=_put(target, {})),
        Case(fmt, f"{target}-missing-data", ERROR, blame + ("data",), pre=_set(target, data=DROP)),
        Case(fmt, f"{target}-missing-labels", ERROR, blame + ("labels",), pre=_set(target, labels=DROP)),
        Case(
            fmt,
            f"{target}-cifar100-keys",
            ERROR,
            blame + ("labels",),
            pre=rekey(lambda k: "fine_labels" if k == "labels" else k),
        ),
        Case(fmt, f"{target}-bytes-keys", OK, pre=rekey(lambda k: k.encode())),
        Case(
            fmt,
            f"{target}-bytes-keys-protocol-4",
            OK,
            pre=_put(target, lambda c: Pickled({k.encode(): v for k, v in c[target].items()}, 4)),
        ),
        # Protocol 5 stores arrays through numpy's _frombuffer, which the restricted unpickler does
        # not admit: such a re-saved copy is refused, in one line.
        Case(
            fmt,
            f"{target}-protocol-5",
            ERROR,
            blame + ("_frombuffer",),
            pre=_put(target, lambda c: Pickled(c[target], 5)),
        ),
        Case(
            fmt,
            f"{target}-str-and-bytes-keys",
            ERROR,
            blame + ("labels",),
            pre=_put(target, lambda c: {**c[target], b"labels": list(reversed(c[target]["labels"]))}),
        ),
        Case(fmt, f"{target}-extra-keys", OK, pre=_set(target, extra=[1, "a", {"b": None}], **{"odd\nkey": b"\x00"})),
        Case(
            fmt,
            f"{target}-non-str-extra-keys",
            OK,
            pre=_put(target, lambda c: {**c[target], 5: "int key", ("t",): 1.5, b"\xff": None}),
        ),
        Case(
            fmt,
            f"{target}-runs-code",
            ERROR,
            blame,
            pre=_put(target, lambda c: {**c[target], "data": _Evil(str(Path(os.environ["DAMAGE_MARKER"])))}),
        ),
        Case(
            fmt, f"{target}-foreign-numpy-class", ERROR, blame, pre=_set(target, data=lambda d: np.ma.masked_array(d))
        ),
        Case(fmt, f"{target}-is-not-a-pickle", ERROR, blame, pre=_put(target, Raw(b"data,labels\n1,2\n"))),
    ]


def _folder_cases(rng: random.Random) -> list[Case]:
    cases = []
    for target in ("test_batch", "data_batch_3"):
        for op_name, op in _byte_ops(rng):
            # a pickle has no checksum of its own: altered pixel or label bytes can still unpickle
            outcome = (
                UNDETECTABLE_UNVERIFIED
                if op_name in ("16-bytes-overwritten-mid-file", "junk-appended") or op_name.startswith("bit-flipped")
                else ERROR
            )
            cases.append(Case("folder", f"{target}-{op_name}", outcome, (target,), post=_bytes_post(target, op)))
        cases += [
            Case("folder", f"{target}-is-a-folder", ERROR, (target,), post=_replace_with_folder(target)),
            Case("folder", f"{target}-symlink-loop", ERROR, (target,), post=_symlink_loop(target)),
            Case("folder", f"{target}-dangling-symlink", ERROR, (target,), post=_dangling_symlink(target)),
            Case("folder", f"{target}-is-a-fifo", ERROR, (target,), post=_fifo(target)),
            Case("folder", f"{target}-symlink-to-a-good-copy", OK, post=_symlink_to_copy(target)),
            Case("folder", f"{target}-missing", ERROR, (target,), post=_remove(target)),
        ]
    for name, fn in BATCH_DATA_DAMAGE.items():
        cases.append(Case("folder", f"test_batch-{name}", ERROR, ("test_batch",), pre=_set("test_batch", data=fn)))
    for name, fn in BATCH_LABEL_DAMAGE.items():
        cases.append(
            Case("folder", f"data_batch_2-{name}", ERROR, ("data_batch_2",), pre=_set("data_batch_2", labels=fn))
        )
    for name, fn in BATCH_LABEL_OK.items():
        cases.append(Case("folder", f"data_batch_2-{name}", OK, pre=_set("data_batch_2", labels=fn)))
    cases += [
        Case(
            "folder",
            "test_batch-no-images",
            ERROR,
            ("test_batch",),
            pre=_set("test_batch", data=lambda d: d[:0], labels=[]),
        ),
        Case("folder", "empty-folder", ERROR, ("data_batch_1",), post=_empty_folder),
        Case(
            "folder",
            "extra-files",
            OK,
            post=_extras("readme.html", "data_batch_6", "data_batch_1.bak", "._data_batch_1", "test_batch~"),
        ),
    ]
    return cases + _batch_container_cases("folder", "data_batch_4")


def _archive_cases(rng: random.Random) -> list[Case]:
    a = OFFICIAL_ARCHIVE
    cases = [Case("archive", f"{a}-{op_name}", ERROR, (a,), post=_bytes_post(a, op)) for op_name, op in _byte_ops(rng)]

    def codec(name: str):
        return _put(CODEC, name)

    def move_all(prefix: str):
        def pre(content: dict) -> None:
            moved = {(k if k == CODEC else f"{prefix}/{k}"): v for k, v in content.items()}
            content.clear()
            content.update(moved)

        return pre

    cases += [
        Case("archive", "plain-tar-named-tar-gz", ERROR, (a,), pre=codec("tar")),
        Case("archive", "xz-tar-named-tar-gz", ERROR, (a,), pre=codec("xz")),
        Case("archive", "zip-named-tar-gz", ERROR, (a,), pre=codec("zip")),
        Case("archive", "no-test_batch-member", ERROR, (a, "test_batch"), pre=lambda c: c.pop("test_batch")),
        Case("archive", "test_batch-member-is-a-folder", ERROR, (a, "test_batch"), pre=_put("test_batch", DIR)),
        Case(
            "archive",
            "test_batch-member-is-a-symlink",
            ERROR,
            (a, "test_batch"),
            pre=_put("test_batch", TarSymlink("data_batch_1")),
        ),
        Case(
            "archive", "members-in-another-folder", ERROR, (a, "data_batch_1"), pre=move_all("cifar-10-batches-py-old")
        ),
        Case(
            "archive",
            "extra-members",
            OK,
            pre=lambda c: c.update(
                {
                    "readme.html": Raw(b"<html>"),
                    "../escape.txt": Raw(b"out"),
                    "/absolute.txt": Raw(b"abs"),
                    "other/test_batch": Raw(b"junk"),
                    "data_batch_6": Raw(b"junk"),
                }
            ),
        ),
        Case("archive", "is-a-folder", ERROR, (a,), post=_replace_with_folder(a)),
        Case("archive", "symlink-loop", ERROR, (a,), post=_symlink_loop(a)),
        Case("archive", "dangling-symlink", ERROR, (a,), post=_dangling_symlink(a)),
        Case("archive", "is-a-fifo", ERROR, (a,), post=_fifo(a)),
        Case("archive", "symlink-to-a-good-copy", OK, post=_symlink_to_copy(a)),
        Case("archive", "extra-files-beside-it", OK, post=_extras("cifar-10-python.tar.gz.part", "._" + a)),
    ]
    for name in ("data-float32", "data-hwc-images"):
        cases.append(
            Case(
                "archive",
                f"test_batch-{name}",
                ERROR,
                (a, "test_batch"),
                pre=_set("test_batch", data=BATCH_DATA_DAMAGE[name]),
            )
        )
    for name in ("labels-str", "labels-float-integral", "labels-10"):
        cases.append(
            Case(
                "archive",
                f"test_batch-{name}",
                ERROR,
                (a, "test_batch"),
                pre=_set("test_batch", labels=BATCH_LABEL_DAMAGE[name]),
            )
        )
    return cases + [
        c
        for c in _batch_container_cases("archive", "test_batch")
        if c.name.split("test_batch-")[1]
        in ("pickle-of-list", "missing-labels", "bytes-keys", "runs-code", "str-and-bytes-keys", "is-not-a-pickle")
    ]


def _all_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = _npz_cases(rng) + _folder_cases(rng) + _archive_cases(rng)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


CASES = _all_cases()


# ---------------------------------------------------------------- building, reading, checking


@dataclass
class Built:
    load_path: Path  # what --data-dir names
    reader: Callable  # the format's reader ...
    reader_path: Path  # ... and what it is given
    folder: Path  # the folder every message must name
    expected: dict


def build(case: Case, root: Path, monkeypatch) -> Built:
    content, expected = _pristine(case.fmt)
    if case.pre:
        case.pre(content)
    data = root / "data"
    if case.fmt == "npz":
        _write_npz(data, content)
        built = Built(data, read_npz_xz, data, data, expected)
    else:
        expected_md5s = {"file_md5": _official_md5s(content)}
        if case.fmt == "folder":
            _write_folder(data / OFFICIAL_FOLDER, content)
            built = Built(data, read_python_folder, data / OFFICIAL_FOLDER, data / OFFICIAL_FOLDER, expected)
        else:
            data.mkdir(parents=True)
            raw = _archive_bytes(content)
            (data / OFFICIAL_ARCHIVE).write_bytes(raw)
            expected_md5s["archive_md5"] = hashlib.md5(raw).hexdigest()
            built = Built(data, read_python_archive, data / OFFICIAL_ARCHIVE, data, expected)
        monkeypatch.setitem(datasets.DATASETS, "cifar10", dataclasses.replace(CIFAR10, **expected_md5s))
    if case.post:
        post_dir = data / OFFICIAL_FOLDER if case.fmt == "folder" else data
        case.post(post_dir, random.Random(f"{SEED}/{case.id}"))
    return built


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode and content hash (files) or target (links)."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):  # links are listed, never followed
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                tree[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                tree[rel] = ("other", st.st_mode)
    return tree


def check_message(msg: str, case: Case, built: Built, context: str) -> None:
    assert len(msg.splitlines()) == 1 and "\n" not in msg and "\r" not in msg, f"{context}: not one line: {msg!r}"
    assert str(built.folder) in msg or str(built.folder.resolve()) in msg, (
        f"{context}: does not name the data folder {built.folder}: {msg}"
    )
    for name in case.blame:
        assert name in msg, f"{context}: does not name {name!r}: {msg}"
    assert any(w in msg for w in FIX_WORDS), f"{context}: says no fix: {msg}"


def check_loaded(data, case: Case, built: Built, expect: str, context: str) -> None:
    assert expect != ERROR, f"{context}: damage went unnoticed (loaded {data.source})"
    check_arrays(data)
    if expect == "either":
        return  # a change nothing can detect without checksums; the data is still well-formed
    want = built.expected
    for key in ("x_train", "y_train", "x_test", "y_test"):
        got = getattr(data, key)
        assert got.dtype == want[key].dtype and np.array_equal(got, want[key]), f"{context}: wrong {key}"
    if case.same_exact and want["test_exact"] is not None:
        assert data.test_exact is not None and np.array_equal(data.test_exact, want["test_exact"]), context
    else:
        assert data.test_exact is None, context


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_damaged_copy_loads_exactly_or_fails_in_one_line(case, tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("DAMAGE_MARKER", str(marker))
    built = build(case, tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    for verify in (True, False):
        expect = case.expected(verify)
        calls = (
            ("load_dataset", functools.partial(load_dataset, str(built.load_path), verify=verify)),
            (built.reader.__name__, functools.partial(built.reader, built.reader_path, verify=verify)),
        )
        for how, call in calls:
            context = f"{case.id} via {how}(verify={verify})"
            try:
                data = call()
            except ArchbenchError as e:
                assert expect != OK, f"{context}: refused a good copy: {e}"
                check_message(str(e), case, built, context)
            else:
                check_loaded(data, case, built, expect, context)
            assert snapshot(tmp_path) == before, f"{context}: the data folder changed"
    assert not marker.exists()


# ---------------------------------------------------------------- smaller checks


def test_damage_to_files_not_read_does_not_matter(tmp_path, monkeypatch):
    """``with_train=False`` (the eval command) reads only the test split."""
    for fmt, target in (("npz", "train-1.npz.xz"), ("folder", "data_batch_3")):
        case = Case(fmt, "x", OK, post=_bytes_post(target, lambda raw, r: _random(r, 50)))
        built = build(case, tmp_path / fmt, monkeypatch)
        before = snapshot(tmp_path)
        for verify in (True, False):
            d = load_dataset(str(built.load_path), verify=verify, with_train=False)
            assert np.array_equal(d.x_test, built.expected["x_test"]) and len(d.y_train) == 0
        assert snapshot(tmp_path) == before


CLI_CASES = {  # one structural and one byte-level case per format, as a user would meet them
    "npz:test.npz.xz-labels-float-fractional": [],
    "folder:data_batch_4-pickle-of-list": [],
    "archive:cifar-10-python.tar.gz-truncated-to-0-bytes": ["--no-verify-data"],
}


@pytest.mark.parametrize("case_id", list(CLI_CASES))
def test_cli_train_reports_damage_in_one_line_and_leaves_no_run(case_id, tmp_path, monkeypatch, capsys):
    from archbench.cli import main

    case = next(c for c in CASES if c.id == case_id)
    built = build(case, tmp_path / "in", monkeypatch)
    before = snapshot(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "resnet18",
            "--data-dir",
            str(built.load_path),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
            *CLI_CASES[case_id],
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("archbench: error:") and err.endswith("\n") and err.count("\n") == 1, err
    check_message(err[len("archbench: error: ") : -1], case, built, case_id)
    assert snapshot(tmp_path / "in") == before
    assert not out.exists(), sorted(out.rglob("*"))  # no run folder, no lock file
