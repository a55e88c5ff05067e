"""Statistics across seeds: summaries, and how two models differ with what uncertainty.

Owns the numbers behind every comparison of model A with model B:
  - `summary`: mean ± sample std of one model's runs;
  - `Estimate`: a difference A − B with its 95% interval and two-sided p-value, from
    `paired_t` (runs paired by seed) or `two_level_bootstrap` (per-image correctness: seeds and
    test images both resampled);
  - `mcnemar` / `mcnemar_combined`: exact tests on the images exactly one model gets right;
  - the paired effect size `cohens_dz`, `min_detectable_effect` for a paired design,
    and `holm` for a family of p-values.
Where the data give no basis for an interval or a p-value (one seed, or no spread at
all) these are None and the estimate says why, rather than reporting p = 0 or a
zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95

# Spread at or below this fraction of the values' size is float rounding, not data:
# 95.1 − 93.0 and 94.1 − 92.0 differ in the last bits, and a t-test on that "spread"
# would report p ≈ 0 and a zero-width interval.
_ROUNDING = 1e-12
# Bounds the image-weight block the bootstrap holds at once (several arrays of this size).
_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # sample std (ddof=1); None for a single run
    n: int

    def text(self, fmt: str = ".2f") -> str:
        return f"{self.mean:{fmt}}" + ("" if self.std is None else f" ± {self.std:{fmt}}")


def summary(values: Sequence[float]) -> Summary:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values")
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, int(v.size))


@dataclass(frozen=True)
class Estimate:
    """A difference A − B and its uncertainty.

    Interval and p-value are None where the data give no basis for them; `note` says why.
    """

    diff: float  # point estimate, in the unit of the inputs
    n: int  # number of pairs (seeds)
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # two-sided, against a difference of 0
    method: str  # e.g. "paired t over 3 seeds"; printed beside the interval
    note: str = ""  # why there is no interval, or what the interval leaves out
    # Smallest p the method can give (a bootstrap's resolution); a p at it prints as "p < …".
    p_floor: float | None = None

    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def text(self, unit: str = "pp", fmt: str = "+.2f") -> str:
        u = f" {unit}" if unit else ""
        head = f"{self.diff:{fmt}}{u}"
        if not self.has_interval():
            return f"{head} (no interval: {self.note})" if self.note else f"{head} (no interval)"
        parts = [f"{CONFIDENCE:.0%} CI [{self.ci_low:{fmt}}, {self.ci_high:{fmt}}]", self.method]
        if self.p_value is not None:
            parts.append(self._p_text())
        tail = f"; {self.note}" if self.note else ""
        return f"{head} ({', '.join(parts)}{tail})"

    def _p_text(self) -> str:
        p = self.p_value
        if self.p_floor is not None and p is not None and p <= self.p_floor:
            return f"p < {_ceil_significant(self.p_floor):.3g}"
        return f"p = {p:.3g}"


def _ceil_significant(x: float) -> float:
    """x rounded up to one significant digit, so "p < x" stays true after rounding."""
    step = 10.0 ** math.floor(math.log10(x))
    return math.ceil(x / step) * step


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _values(x: Sequence[float]) -> np.ndarray:
    v = np.asarray(x, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("expected a non-empty 1-D sequence of numbers")
    return v


def _flat(x: np.ndarray, scale: float) -> bool:
    """True when x has no spread beyond the rounding of numbers of size `scale`."""
    return float(np.ptp(x)) <= _ROUNDING * max(scale, 1.0)


def _scale(*arrays: np.ndarray) -> float:
    return max(float(np.abs(v).max()) for v in arrays)


def paired_t(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a − b) by the paired t-test, a[i] and b[i] being runs with the same seed."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    n = int(x.size)
    diff, method = float(np.mean(x - y)), f"paired t over {_seeds(n)}"
    if n < 2:
        return Estimate(diff, n, None, None, None, method, "one seed: no spread to estimate")
    if _flat(x - y, _scale(x, y)):
        return Estimate(diff, n, None, None, None, method, "no spread: the difference is the same at every seed")
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(CONFIDENCE)
    return Estimate(diff, n, float(ci.low), float(ci.high), float(res.pvalue), method)


def _correct(x: object, ndim: int) -> np.ndarray:
    """x as a bool array of `ndim` dimensions; 0/1 numbers are accepted, anything else refused."""
    v = np.asarray(x)
    if v.dtype != bool:
        if not np.isin(v, (0, 1)).all():
            raise ValueError("correctness must be bool (or 0/1)")
        v = v.astype(bool)
    if v.ndim != ndim or v.size == 0:
        raise ValueError(f"expected a non-empty {ndim}-D array, got shape {v.shape}")
    return v


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`size` bootstrap resamples of n items, each as how often every item was drawn: (size, n)."""
    draws = rng.integers(0, n, size=(size, n))
    # One bincount for all rows: row r's items are offset into their own block of n bins.
    draws += np.arange(size)[:, None] * n
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)


def _resampled_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of d over resampled seed rows and image columns, once per resample.

    With seed counts w_s and image counts w_i, a resample's mean is w_s·(d @ w_i) / (S·N):
    no resample is ever materialised, and image-count blocks are drawn a chunk at a time.
    """
    s, n = d.shape
    seed_w = _resample_counts(rng, s, n_resamples).astype(float)
    per_seed = np.empty((n_resamples, s))
    chunk = max(1, _CHUNK_BYTES // (8 * n))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        image_w = _resample_counts(rng, n, stop - start).astype(float)
        per_seed[start:stop] = image_w @ d.T
    return np.einsum("bs,bs->b", seed_w, per_seed) / (s * n)


def _bootstrap_p(means: np.ndarray) -> float:
    """Two-sided p against 0: twice the smaller tail, each with the +1 correction."""
    b = means.size
    tail = min(np.count_nonzero(means <= 0), np.count_nonzero(means >= 0))
    return min(1.0, 2 * (int(tail) + 1) / (b + 1))


def two_level_bootstrap(correct_a: object, correct_b: object, n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Accuracy A − B in percentage points, resampling seeds and then test images.

    correct_a[s, i] / correct_b[s, i]: whether model A / B got test image i right in seed
    s. Rows are paired by seed and columns by image (one test set), so each resample draws
    S seeds and N images with replacement, the same images for both models. The interval
    is the 95% percentile interval of the resampled differences.
    """
    if n_resamples < 1000:
        raise ValueError(f"n_resamples must be at least 1000, got {n_resamples}")
    a, b = _correct(correct_a, 2), _correct(correct_b, 2)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    s, n = a.shape
    d = a.astype(float) - b.astype(float)
    diff = 100 * float(d.mean())
    method = f"two-level bootstrap ({_seeds(s)} × {n:,} images, {n_resamples:,} resamples)"
    if not d.any():
        return Estimate(diff, s, None, None, None, method, "the models agree on every image")
    if np.ptp(d) == 0:
        return Estimate(
            diff, s, None, None, None, method, "no spread: every image gives the same difference in every seed"
        )
    means = 100 * _resampled_means(d, n_resamples, np.random.default_rng(seed))
    low, high = np.percentile(means, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    note = "one seed: test-image noise only, no seed-to-seed spread" if s == 1 else ""
    return Estimate(diff, s, float(low), float(high), _bootstrap_p(means), method, note, p_floor=2 / (n_resamples + 1))


@dataclass(frozen=True)
class McNemar:
    a_only: int  # images A got right and B wrong
    b_only: int  # images B got right and A wrong
    p_value: float | None  # exact two-sided; None when there are no discordant images


def _exact_mcnemar(a_only: int, b_only: int) -> McNemar:
    total = a_only + b_only
    p = float(stats.binomtest(a_only, total, 0.5).pvalue) if total else None
    return McNemar(a_only, b_only, p)


def mcnemar(correct_a: object, correct_b: object) -> McNemar:
    """Exact McNemar test for one seed: correct_a[i] / correct_b[i] per test image."""
    a, b = _correct(correct_a, 1), _correct(correct_b, 1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return _exact_mcnemar(int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a)))


def mcnemar_combined(tests: list[McNemar]) -> McNemar:
    """One exact test across seeds, on the pooled discordant counts.

    Under the null hypothesis each discordant image, in every seed, is independently a fair
    coin for which model got it right, so the pooled A-only count is binomial(total, 1/2)
    and the exact test applies to the sums.
    """
    if not tests:
        raise ValueError("no tests to combine")
    return _exact_mcnemar(sum(t.a_only for t in tests), sum(t.b_only for t in tests))


def cohens_dz(diffs: Sequence[float]) -> float | None:
    """Paired effect size: mean / sd (ddof=1) of the per-seed differences."""
    d = _values(diffs)
    if d.size < 2 or _flat(d, _scale(d)):
        return None
    return float(d.mean() / d.std(ddof=1))


def _paired_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha for a true mean/sd of `effect`."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    # P(T < −crit; nc) written as P(T > crit; −nc): the same by symmetry, but nct.cdf
    # returns NaN that far into its lower tail.
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true mean paired difference that a two-sided paired t-test at level alpha
    detects with the given power, for n pairs whose differences have standard deviation sd.

    In the unit of sd. None if n < 2 or sd is 0 or not finite.
    """
    if not (0 < alpha < power < 1):
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    if n < 2 or not math.isfinite(sd) or sd == 0:
        return None
    if sd < 0:
        raise ValueError(f"sd must be non-negative, got {sd}")

    def shortfall(effect: float) -> float:
        return _paired_power(effect, n, alpha) - power

    # Power rises from alpha at effect 0; double the upper end until it brackets the root.
    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12)) * sd


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    None entries stay None and do not count towards the family size.
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        # Step-down: a p-value's adjustment never falls below that of a smaller p-value.
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
