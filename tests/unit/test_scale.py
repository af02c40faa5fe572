"""The pieces of `ltbench perf --only scale` and `--only sweep` that are formulas: the iNaturalist-shaped class
counts and the job ids of one sacct row (the sections themselves run in tests/integration)."""

from __future__ import annotations

import pytest

from bench.devtools.scale import FULL, class_counts
from bench.runtime.jobstate import _task_ids


def test_class_counts_by_hand():
    # C = 3 from 10 to 1, 13 images: p grows until 10 + 1 + 1 + round(9 * 0.5^p) = 13, i.e. the middle class 2
    assert class_counts(3, 10, 1, 13) == [10, 2, 1]


def test_class_counts_at_inaturalist_size():
    c = class_counts(FULL.classes, FULL.n_max, FULL.n_min, FULL.train)
    assert (len(c), sum(c), c[0], c[-1]) == (8142, 437_513, 1000, 2)      # datasets/inat2018.yaml's `expected`
    assert all(a >= b for a, b in zip(c, c[1:]))                          # falls from head to tail


def test_class_counts_refuse_what_cannot_be():
    for args in ((3, 10, 1, 12), (3, 10, 1, 30), (2, 5, 1, 7)):
        with pytest.raises(ValueError):
            class_counts(*args)


def test_task_ids_of_a_sacct_row():
    assert _task_ids("123") == ["123"] and _task_ids("123_4") == ["123_4"]
    assert _task_ids("123_[5-7%4]") == ["123_5", "123_6", "123_7"]
    assert _task_ids("123_[2,5-6]") == ["123_2", "123_5", "123_6"]
