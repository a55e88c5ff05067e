"""Statistics across seeds: mean ± std, and the difference of two models with its uncertainty.

Differences use Welch's t (unequal variances): a 95% confidence interval for
mean(A) − mean(B) and a two-sided p-value. With fewer than two runs per model there is
no spread to estimate, and the interval and p-value are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # sample std (ddof=1); None for a single run
    n: int

    def text(self, fmt: str = ".2f") -> str:
        return f"{self.mean:{fmt}}" + ("" if self.std is None else f" ± {self.std:{fmt}}")


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(A) − mean(B)
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    method: str = "Welch's t, 95% CI"

    def text(self, unit: str = "pp") -> str:
        base = f"{self.diff:+.2f}" + (f" {unit}" if unit else "")
        if self.ci_low is None:
            return base + " (one run per model: no interval)"
        return f"{base} (95% CI [{self.ci_low:+.2f}, {self.ci_high:+.2f}], Welch's t, p = {self.p_value:.3g})"


def summary(values: Sequence[float]) -> Summary:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, int(v.size))


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """mean(a) − mean(b) with Welch's 95% confidence interval and two-sided p-value."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(diff, None, None, None)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:  # identical runs: the difference is exact
        return Difference(diff, diff, diff, 0.0 if diff else 1.0)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Difference(diff, diff - half, diff + half, p)
