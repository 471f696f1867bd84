"""Confidence intervals over seeds: every bound is checked against scipy computed in the test."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from tsloss_harness.stats import mean_ci, paired_ratio_ci, ratio_ci


def test_mean_ci_agrees_with_scipy():
    values = [3.0, 5.5, 4.0, 8.0, 6.5]
    mean, half, n = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
    assert (mean, n) == (pytest.approx(5.4), 5)
    assert (mean - half, mean + half) == (pytest.approx(low), pytest.approx(high))
    assert mean_ci([7.0]) == (7.0, None, 1)


def test_ratio_ci_is_the_log_delta_method():
    a, b = [6.0, 8.0, 7.0, 9.0], [10.0, 14.0, 12.0, 11.0, 13.0]
    ratio, low, high = ratio_ci(a, b)
    ma, mb = sum(a) / 4, sum(b) / 5
    va, vb = stats.tvar(a) / (4 * ma**2), stats.tvar(b) / (5 * mb**2)
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert ratio == pytest.approx(ma / mb)
    assert (math.log(low), math.log(high)) == (
        pytest.approx(math.log(ratio) - half),
        pytest.approx(math.log(ratio) + half),
    )
    assert ratio_ci([5.0], [10.0]) == (0.5, None, None)


def test_paired_ratio_ci_is_scipys_paired_t_on_log_ratios():
    a, b = [6.0, 8.0, 7.0, 9.0, 30.0], [10.0, 14.0, 12.0, 11.0, 40.0]
    ratio, low, high = paired_ratio_ci(a, b)
    logs_a, logs_b = [math.log(v) for v in a], [math.log(v) for v in b]
    ci = stats.ttest_rel(logs_a, logs_b).confidence_interval(0.95)
    assert ratio == pytest.approx(math.exp(sum(x - y for x, y in zip(logs_a, logs_b)) / 5))
    assert (low, high) == (pytest.approx(math.exp(ci.low)), pytest.approx(math.exp(ci.high)))
    # pairing removes the spread between seeds: narrower than the unpaired interval on the same runs
    _, unpaired_low, unpaired_high = ratio_ci(a, b)
    assert high / low < unpaired_high / unpaired_low
    assert paired_ratio_ci([5.0], [10.0]) == (0.5, None, None)
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio_ci([1.0, 2.0], [1.0])
