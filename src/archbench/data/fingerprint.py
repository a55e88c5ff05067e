"""What a run trained on, in a few bytes: SHA-256 digests of the train and test arrays.

Stored in each checkpoint so that a run is only continued, or reused by a comparison, on
the very images it started with — whichever folder or format they are read from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from archbench.data.sources import CifarData

DIGEST_CHARS = 16  # 64 bits: tells datasets apart, short enough to print


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x, dtype=np.uint8), np.ascontiguousarray(y, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.data)  # the array's buffer, no copy (empty arrays included)
    return h.hexdigest()[:DIGEST_CHARS]


def fingerprint(data: CifarData) -> dict[str, str]:
    return {
        "train": _digest(data.x_train, data.y_train),
        "test": _digest(data.x_test, data.y_test),
        "source": data.source,
        "dataset": data.dataset,
    }


def differences(saved: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """The parts ("train images", "test images") whose digests differ; empty when the data agree."""
    return [f"{part} images" for part in ("train", "test") if saved.get(part) != now.get(part)]


def describe(fp: Mapping[str, str]) -> str:
    return f"{fp.get('source', 'unknown source')} (train {fp.get('train')}, test {fp.get('test')})"
