"""Seed statistics: summaries, paired/Welch/bootstrap differences, McNemar, effect sizes,
power and Holm, checked against scipy and against values worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from archbench.analysis.stats import (
    Estimate,
    McNemar,
    cohens_dz,
    holm,
    mcnemar,
    mcnemar_combined,
    min_detectable_effect,
    paired_t,
    summary,
    two_level_bootstrap,
)


def test_summary():
    s = summary([94.0, 95.0, 96.0])
    assert (s.mean, s.std, s.n) == (95.0, 1.0, 3) and s.text() == "95.00 ± 1.00"
    one = summary([93.5])
    assert one.std is None and one.text() == "93.50"


# --- Estimate.text -------------------------------------------------------------------


def test_estimate_text_with_and_without_interval():
    e = Estimate(1.234, 3, 0.4, 2.06, 0.02134, "paired t over 3 seeds")
    assert e.has_interval()
    assert e.text() == "+1.23 pp (95% CI [+0.40, +2.06], paired t over 3 seeds, p = 0.0213)"
    none = Estimate(1.0, 1, None, None, None, "Welch's t", "one seed per model: no spread to estimate")
    assert not none.has_interval()
    assert none.text() == "+1.00 pp (no interval: one seed per model: no spread to estimate)"
    assert none.text(unit="", fmt="+.1f") == "+1.0 (no interval: one seed per model: no spread to estimate)"


def test_bootstrap_p_at_its_floor_prints_as_an_upper_bound():
    floor = 2 / 2001
    e = Estimate(3.0, 3, 2.0, 4.0, floor, "two-level bootstrap", p_floor=floor)
    assert e.text().endswith("p < 0.001)")
    above = Estimate(3.0, 3, 2.0, 4.0, 0.004, "two-level bootstrap", p_floor=floor)
    assert above.text().endswith("p = 0.004)")


# --- paired_t ------------------------------------------------------------------------


def test_paired_t_matches_scipy_and_the_textbook_interval():
    a, b = [95.2, 94.6, 95.9, 95.0], [93.9, 94.1, 94.2, 94.4]
    e = paired_t(a, b)
    d = np.subtract(a, b)
    n = d.size
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert e.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert e.diff == pytest.approx(d.mean())
    assert (e.ci_low, e.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    assert e.n == 4 and e.method == "paired t over 4 seeds"


def test_paired_t_with_constant_differences_has_no_interval():
    # 95.1 − 93.0 and 94.1 − 92.0 differ in their last bits: that is not spread.
    e = paired_t([95.1, 94.1, 93.3], [93.0, 92.0, 91.2])
    assert e.diff == pytest.approx(2.1) and not e.has_interval() and e.p_value is None
    assert e.note == "no spread: the difference is the same at every seed"


def test_paired_t_with_one_seed_has_no_interval():
    e = paired_t([95.0], [94.0])
    assert e.diff == 1.0 and e.n == 1 and not e.has_interval() and e.p_value is None
    assert e.note.startswith("one seed")


def test_paired_t_refuses_unequal_lengths():
    with pytest.raises(ValueError):
        paired_t([1.0, 2.0], [1.0])


# --- two_level_bootstrap -------------------------------------------------------------


def _correct(rng, seeds, images, accuracy):
    """Bool (seeds, images); accuracy is one number or one per seed."""
    acc = np.broadcast_to(np.asarray(accuracy, dtype=float), (seeds,))[:, None]
    return rng.random((seeds, images)) < acc


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    a, b = _correct(rng, 3, 2000, 0.9), _correct(rng, 3, 2000, 0.88)
    first, again = two_level_bootstrap(a, b, seed=7), two_level_bootstrap(a, b, seed=7)
    assert first == again
    other = two_level_bootstrap(a, b, seed=8)
    assert other.diff == first.diff and (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_bootstrap_exact_on_tiny_cases():
    # One image, two seeds: only seeds vary; the resampled mean is +1, 0 or −1 (¼, ½, ¼).
    seeds_only = two_level_bootstrap([[True], [False]], [[False], [True]], seed=1)
    assert seeds_only.diff == 0 and (seeds_only.ci_low, seeds_only.ci_high) == (-100, 100)
    assert seeds_only.p_value == 1.0
    # One seed, two images: only images vary; the resampled mean is 1, ½ or 0.
    images_only = two_level_bootstrap([[True, True]], [[False, True]], seed=1)
    assert images_only.diff == 50 and (images_only.ci_low, images_only.ci_high) == (0, 100)
    assert images_only.note == "one seed: test-image noise only, no seed-to-seed spread"
    assert images_only.method == "two-level bootstrap (1 seed × 2 images, 2,000 resamples)"


def test_bootstrap_one_seed_matches_the_normal_image_interval():
    rng = np.random.default_rng(1)
    n = 20_000
    a, b = _correct(rng, 1, n, 0.90), _correct(rng, 1, n, 0.85)
    e = two_level_bootstrap(a, b, seed=3)
    d = a.astype(float) - b.astype(float)
    expected_half = 1.96 * math.sqrt(d.var() / n) * 100
    assert (e.ci_high - e.ci_low) / 2 == pytest.approx(expected_half, rel=0.15)
    assert e.ci_low < 5.0 < e.ci_high  # true difference: 90% − 85%
    assert e.diff == pytest.approx(100 * d.mean()) and e.n == 1
    assert "one seed" in e.note and "one seed" in e.text()


def test_bootstrap_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    seeds, n = 5, 5000
    a = _correct(rng, seeds, n, 0.90 + np.array([-0.04, 0.03, -0.01, 0.05, -0.03]))
    b = _correct(rng, seeds, n, 0.88)
    e = two_level_bootstrap(a, b, seed=4)
    d = a.astype(float) - b.astype(float)
    image_only_half = 1.96 * math.sqrt(d.mean(axis=0).var() / n) * 100
    assert (e.ci_high - e.ci_low) / 2 > 2 * image_only_half
    assert e.ci_low < 2.0 < e.ci_high  # true difference: 90% − 88%
    assert e.note == "" and e.n == seeds


def test_bootstrap_clear_difference_reaches_the_p_floor():
    rng = np.random.default_rng(5)
    a, b = _correct(rng, 3, 5000, 0.95), _correct(rng, 3, 5000, 0.80)
    e = two_level_bootstrap(a, b, n_resamples=1000)
    assert e.p_value == pytest.approx(2 / 1001) and e.p_floor == e.p_value
    assert e.ci_low > 10 and e.text().endswith("p < 0.002)")


def test_bootstrap_identical_predictions_give_no_interval():
    rng = np.random.default_rng(6)
    a = _correct(rng, 3, 1000, 0.9)
    e = two_level_bootstrap(a, a.copy())
    assert e.diff == 0 and not e.has_interval() and e.p_value is None
    assert e.note == "the models agree on every image"


def test_bootstrap_refuses_bad_input():
    a = np.ones((2, 10), dtype=bool)
    with pytest.raises(ValueError):
        two_level_bootstrap(a, a, n_resamples=999)
    with pytest.raises(ValueError):
        two_level_bootstrap(a, a[:, :5])
    with pytest.raises(ValueError):
        two_level_bootstrap(a[0], a[0])
    with pytest.raises(ValueError):
        two_level_bootstrap(a * 0.5, a)


# --- McNemar -------------------------------------------------------------------------


def _pairs(a_only, b_only, both=0, neither=0):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def test_mcnemar_exact_value_by_hand():
    t = mcnemar(*_pairs(10, 2, both=50, neither=7))
    assert (t.a_only, t.b_only) == (10, 2)
    by_hand = 2 * (math.comb(12, 0) + math.comb(12, 1) + math.comb(12, 2)) / 2**12
    assert by_hand == pytest.approx(0.0385742, abs=1e-7)
    assert t.p_value == pytest.approx(by_hand, rel=1e-12)


def test_mcnemar_without_discordant_images_has_no_p():
    t = mcnemar(*_pairs(0, 0, both=5, neither=3))
    assert t == McNemar(0, 0, None)


def test_mcnemar_combined_pools_the_counts():
    tests = [mcnemar(*_pairs(4, 1)), mcnemar(*_pairs(3, 2)), mcnemar(*_pairs(5, 0))]
    c = mcnemar_combined(tests)
    assert (c.a_only, c.b_only) == (12, 3)
    assert c.p_value == pytest.approx(stats.binomtest(12, 15, 0.5).pvalue, rel=1e-12)
    assert mcnemar_combined([McNemar(0, 0, None)] * 2).p_value is None
    with pytest.raises(ValueError):
        mcnemar_combined([])


# --- effect sizes, power, Holm -------------------------------------------------------


def test_cohens_dz():
    assert cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert cohens_dz([2.0, 2.0, 2.0]) is None and cohens_dz([1.5]) is None


def _power(delta, sd, n, alpha=0.05):
    df, nc = n - 1, delta * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def test_min_detectable_effect_has_the_asked_power_and_shrinks_with_n():
    deltas = [min_detectable_effect(0.6, n) for n in (3, 5, 10, 30)]
    for n, delta in zip((3, 5, 10, 30), deltas):
        assert _power(delta, 0.6, n) == pytest.approx(0.8, abs=1e-6)
    assert deltas == sorted(deltas, reverse=True) and len(set(deltas)) == 4
    # Textbook value: n = 10 pairs, α = 0.05, power 0.8 → d ≈ 0.996.
    assert min_detectable_effect(1.0, 10) == pytest.approx(0.996, abs=1e-3)
    assert min_detectable_effect(1.0, 2) > 10  # one degree of freedom: huge, but finite
    assert min_detectable_effect(0.6, 1) is None
    assert min_detectable_effect(0.0, 5) is None and min_detectable_effect(math.nan, 5) is None


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 with m = 3: ×3, ×2, ×1 → 0.03, 0.06, max(0.06, 0.04).
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([None, None]) == [None, None] and holm([]) == []
