"""Confidence intervals over seeds: a mean, a ratio of means, and a ratio of paired runs.

Each takes plain sequences of per-seed values and returns plain floats, with Student t quantiles
(scipy): a handful of seeds gives the wide interval it deserves. Used by the leaderboard's tables, the
sweep's ratios and board, and the report's bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_ci", "paired_ratio_ci", "ratio_ci"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, int]:
    """(mean, CI half-width, n) of ``values`` with Student's t (n-1 dof); half-width None when n < 2."""
    from scipy import stats

    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci of an empty series")
    mean = math.fsum(x) / n
    if n < 2:
        return mean, None, n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)), n


def ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """mean(numerator) / mean(denominator) with a CI (delta method on the log ratio, Welch-Satterthwaite
    dof, two independent samples). Returns (ratio, low, high); the bounds are None unless both sides
    have n >= 2. Used for TSLoss ÷ CE iterations to convergence."""
    from scipy import stats

    a, b = [float(v) for v in numerator], [float(v) for v in denominator]
    ma, mb = math.fsum(a) / len(a), math.fsum(b) / len(b)
    ratio = ma / mb
    if len(a) < 2 or len(b) < 2 or ma <= 0 or mb <= 0:
        return ratio, None, None
    # Var(log mean) ~ s²/(n·m²) per sample.
    va = (sum((v - ma) ** 2 for v in a) / (len(a) - 1)) / (len(a) * ma * ma)
    vb = (sum((v - mb) ** 2 for v in b) / (len(b) - 1)) / (len(b) * mb * mb)
    se = math.sqrt(va + vb)
    if se == 0:
        return ratio, ratio, ratio
    dof = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    t = float(stats.t.ppf(0.5 + confidence / 2, dof))
    return ratio, ratio * math.exp(-t * se), ratio * math.exp(t * se)


def paired_ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """The geometric mean of per-pair ratios numerator[i] / denominator[i] with a Student-t CI on the
    mean log ratio. For runs that share a seed (the same rows and initial prompt, as in a sweep):
    pairing removes the spread of difficulty between seeds, which dominates ``ratio_ci``'s interval.
    Returns (ratio, low, high); the bounds are None unless there are >= 2 pairs."""
    from scipy import stats

    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired_ratio_ci needs two equally long, non-empty sequences")
    logs = [math.log(float(a) / float(b)) for a, b in zip(numerator, denominator)]
    mean = math.fsum(logs) / len(logs)
    if len(logs) < 2:
        return math.exp(mean), None, None
    se = math.sqrt(math.fsum((v - mean) ** 2 for v in logs) / (len(logs) - 1) / len(logs))
    t = float(stats.t.ppf(0.5 + confidence / 2, len(logs) - 1))
    return math.exp(mean), math.exp(mean - t * se), math.exp(mean + t * se)
