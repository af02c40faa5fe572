"""Seed statistics against values computed by hand and from printed t tables."""

from __future__ import annotations

import math

import pytest

from bench.report.stats import betainc, bootstrap_interval, paired_t, t_interval, t_quantile, t_sf_two_sided


@pytest.mark.parametrize("df, q", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_printed_table(df, q):
    assert abs(t_quantile(0.975, df) - q) < 5e-4


def test_t_distribution_closed_forms():
    # df = 1 is Cauchy: P(|T| > t) = 1 - 2 atan(t) / pi;  df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    for t in (0.3, 1.0, 4.0):
        assert abs(t_sf_two_sided(t, 1) - (1 - 2 * math.atan(t) / math.pi)) < 1e-10
        assert abs(t_sf_two_sided(t, 2) - (1 - t / math.sqrt(2 + t * t))) < 1e-10
    assert abs(betainc(2, 3, 0.4) - 0.5248) < 1e-12      # I_0.4(2,3) = 1 - (0.6^4 + 4*0.4*0.6^3) = 0.5248


def test_t_interval_by_hand():
    # 1, 2, 3: mean 2, s = 1, n = 3: half width t_{0.975,2} / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert abs(lo - (2 - 2.4841)) < 1e-3 and abs(hi - (2 + 2.4841)) < 1e-3
    assert t_interval([5.0]) is None


def test_paired_t_by_hand():
    # differences 1, 2, 3: mean 2, s 1, t = 2 / (1 / sqrt 3) = 3.4641, df 2: p = 1 - t / sqrt(2 + t^2) = 0.0742
    m, p, n = paired_t([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
    assert m == 2.0 and n == 3 and abs(p - (1 - 3.4641 / math.sqrt(2 + 12.0))) < 1e-4
    assert paired_t([1.0, 2.0], [1.0, 2.0])[1] == 1.0 and paired_t([2.0, 3.0], [1.0, 2.0])[1] == 0.0
    assert paired_t([1.0], [0.0]) is None


def test_bootstrap_is_seeded_and_brackets_the_mean():
    xs = [70.1, 71.3, 69.8, 70.9, 70.4]
    a, b = bootstrap_interval(xs), bootstrap_interval(xs)
    assert a == b and a[0] < sum(xs) / 5 < a[1] and min(xs) <= a[0] and a[1] <= max(xs)
