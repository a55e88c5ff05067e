"""Deterministic, class-balanced subsets for quick runs.

The first images of each class in dataset order are taken, so a subset needs no seed
and is the same on every machine; indices stay in dataset order.
"""

from __future__ import annotations

import numpy as np

from archbench.errors import ArchbenchError


def _refuse_fewer_than_classes(n: int, num_classes: int, what: str) -> None:
    """A subset must hold every class: fewer images than classes would silently drop some."""
    if n < num_classes:
        raise ArchbenchError(
            f"{what} of {n} images cannot hold one image of each of the {num_classes} classes; choose at least "
            f"{num_classes}"
        )


def balanced_indices(labels: np.ndarray, n: int, num_classes: int, what: str = "subset") -> np.ndarray:
    """Indices of ``n`` images: n // C per class, the remainder to the lowest classes."""
    _refuse_fewer_than_classes(n, num_classes, what)
    counts = np.bincount(labels, minlength=num_classes)
    want = np.full(num_classes, n // num_classes)
    want[: n % num_classes] += 1
    short = [c for c in range(num_classes) if want[c] > counts[c]]
    if n > len(labels) or short:
        raise ArchbenchError(
            f"{what} of {n} images is not possible: the data has {len(labels)} images, "
            f"{counts.min()} in its smallest class; choose a smaller {what}"
        )
    picked = [np.flatnonzero(labels == c)[: want[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(picked))


def stratified_holdout(labels: np.ndarray, n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: ``n`` images held out, as evenly over classes as possible,
    chosen at random within each class from ``seed``; both index arrays sorted."""
    _refuse_fewer_than_classes(n, num_classes, "--val-split")
    counts = np.bincount(labels, minlength=num_classes)
    want = np.full(num_classes, n // num_classes)
    want[: n % num_classes] += 1
    if n >= len(labels) or np.any(want >= counts):
        raise ArchbenchError(
            f"--val-split {n} leaves no training images of some class "
            f"(the training set has {len(labels)} images); choose a smaller --val-split"
        )
    rng = np.random.default_rng([seed, 0x5EED])
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: want[c]] for c in range(num_classes)])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
