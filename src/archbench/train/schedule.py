"""The learning-rate schedule as a pure function of the (0-based) epoch.

Equivalent to torch's MultiStepLR stepped once per epoch: with milestones [50, 75],
epochs 1-50 (1-based) train at base_lr, 51-75 at base_lr*gamma, 76-100 at base_lr*gamma^2.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def multistep_lr(epoch: int, base_lr: float, milestones: Sequence[int], gamma: float) -> float:
    """Learning rate used throughout 0-based ``epoch``."""
    return base_lr * gamma ** bisect_right(list(milestones), epoch)
