"""Per-image evidence turned into per-class accuracy, confusion matrices and calibration.

Inputs are the arrays of ``predictions.npz``: predicted class, true label, logits.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)


def confusion(pred: np.ndarray, label: np.ndarray, classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return np.bincount(label * classes + pred, minlength=classes * classes).reshape(classes, classes)


def per_class_accuracy(pred: np.ndarray, label: np.ndarray, classes: int) -> np.ndarray:
    """Accuracy (%) per true class; NaN for a class with no images."""
    m = confusion(pred, label, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.diag(m) / m.sum(axis=1)


def calibration(logits: np.ndarray, label: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error (%) and the reliability diagram's bins.

    ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|, confidence being the top softmax
    probability. Bins without images are left out of the diagram.
    """
    p = softmax(logits.astype(np.float64), axis=1)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == label).astype(float)
    # conf lies in (0, 1]; the right edge belongs to the last bin.
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=hit, minlength=bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
    used = count > 0
    ece = float(np.sum(count[used] / len(label) * np.abs(acc[used] - mean_conf[used])))
    return {"ece": 100.0 * ece, "confidence": mean_conf[used], "accuracy": acc[used], "count": count[used]}
