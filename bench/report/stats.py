"""Seed statistics for benchmark tables: Student-t confidence intervals, a percentile bootstrap, and the
paired t-test of a method against a baseline over the seeds both ran.

Only the standard library: the t distribution's CDF is the regularised incomplete beta function
(Abramowitz & Stegun 26.7.1: P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)), evaluated with the continued
fraction of Numerical Recipes (3rd ed., section 6.4), and its quantile is found by bisection.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (p in (0.5, 1)), e.g. t_quantile(0.975, 2) = 4.3027."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    target = 2.0 * (1.0 - p)            # two-sided tail mass beyond the quantile
    lo, hi = 0.0, 1.0
    while t_sf_two_sided(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_sf_two_sided(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def t_interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """mean +- t_{(1+level)/2, n-1} * s / sqrt(n) over the seeds; None below two values."""
    n = len(xs)
    if n < 2:
        return None
    m, s = statistics.fmean(xs), statistics.stdev(xs)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * s / math.sqrt(n)
    return m - half, m + half


def bootstrap_interval(xs: Sequence[float], level: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (seeded: the table is a pure function of the runs)."""
    n = len(xs)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=n)) for _ in range(resamples))
    lo = means[int(math.floor((1.0 - level) / 2.0 * (resamples - 1)))]
    hi = means[int(math.ceil((1.0 + level) / 2.0 * (resamples - 1)))]
    return lo, hi


def paired_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int] | None:
    """Paired t-test of a against b over matched seeds: (mean difference a - b, two-sided p, pairs).
    None below two pairs; p = 1 for identical results, 0 for a constant non-zero difference."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    n = len(a)
    if n < 2:
        return None
    d = [x - y for x, y in zip(a, b)]
    m, s = statistics.fmean(d), statistics.stdev(d)
    if s == 0.0:
        return m, (1.0 if m == 0.0 else 0.0), n
    return m, t_sf_two_sided(m / (s / math.sqrt(n)), n - 1), n
