"""Deterministic, class-balanced subsets for quick runs.

The first images of each class in dataset order are taken, so a subset needs no seed
and is the same on every machine; indices stay in dataset order.
"""

from __future__ import annotations

import numpy as np

from archbench.errors import ArchbenchError


def balanced_indices(labels: np.ndarray, n: int, num_classes: int, what: str = "subset") -> np.ndarray:
    """Indices of ``n`` images: n // C per class, the remainder to the lowest classes."""
    counts = np.bincount(labels, minlength=num_classes)
    want = np.full(num_classes, n // num_classes)
    want[: n % num_classes] += 1
    short = [c for c in range(num_classes) if want[c] > counts[c]]
    if n > len(labels) or short:
        raise ArchbenchError(
            f"{what} of {n} images is not possible: the data has {len(labels)} images, "
            f"{counts.min()} in its smallest class; choose a smaller {what}")
    picked = [np.flatnonzero(labels == c)[: want[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(picked))
