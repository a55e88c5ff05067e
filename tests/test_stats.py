"""Seed statistics: summaries and Welch's interval, checked against scipy and by hand."""

import pytest

from archbench.analysis.stats import summary, welch


def test_summary():
    s = summary([94.0, 95.0, 96.0])
    assert (s.mean, s.std, s.n) == (95.0, 1.0, 3) and s.text() == "95.00 ± 1.00"
    one = summary([93.5])
    assert one.std is None and one.text() == "93.50"


def test_welch_matches_scipy_and_contains_the_difference():
    from scipy import stats

    a, b = [94.9, 95.1, 95.3, 94.8], [92.7, 93.1, 92.5]
    d = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert d.ci_low < d.diff < d.ci_high and d.ci_low > 0
    ci = ref.confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert "Welch's t" in d.text() and d.text().startswith("+2.26 pp")


def test_welch_with_single_runs_has_no_interval():
    d = welch([95.0], [93.0, 92.0])
    assert d.diff == pytest.approx(2.5) and d.ci_low is None and d.p_value is None
    assert "no interval" in d.text()


def test_overlapping_samples_give_an_interval_through_zero():
    d = welch([90.0, 92.0], [91.0, 91.5])
    assert d.ci_low < 0 < d.ci_high and d.p_value > 0.5
