"""Long-tailed profiles and selection against the published figures (Cao et al. 2019; WB)."""

import numpy as np
import pytest

from bench.data.profiles import class_counts, indices_hash, select_indices
from bench.evaluation.metrics import shot_groups


@pytest.mark.parametrize("imb, total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_lt_totals(imb, total):
    counts = class_counts(100, 500, imb)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == 500 // imb


def test_cifar10_lt_if100_counts():
    assert class_counts(10, 5000, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_fashion_mnist_lt_if100_counts():
    counts = class_counts(10, 6000, 100)
    assert counts == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert sum(counts) == 14886


def test_cifar100_lt_if100_split_sizes_35_35_30():
    g = shot_groups(class_counts(100, 500, 100), many=100, few=20)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [35, 35, 30]


def test_step_profile():
    assert class_counts(4, 100, 10, profile="step") == [100, 100, 10, 10]
    assert class_counts(5, 100, 10, profile="step") == [100, 100, 10, 10, 10]


def test_rounding_floor_vs_round_by_hand():
    # n_max 10, IF 3, C 3: 10, 10 * 3^-0.5 = 5.7735, 10/3 = 3.333
    assert class_counts(3, 10, 3, rounding="floor") == [10, 5, 3]
    assert class_counts(3, 10, 3, rounding="round") == [10, 6, 3]


def test_balanced_profile():
    assert class_counts(5, 7, 1) == [7] * 5


@pytest.mark.parametrize("inclusive, many, medium, few", [
    (False, [0], [1, 2, 3, 4], [5]),          # WB: many > 100, few < 20
    (True, [0, 1], [2, 3], [4, 5]),           # OLTR: many >= 100, few <= 20
])
def test_bucket_edges_at_exactly_20_and_100(inclusive, many, medium, few):
    g = shot_groups([101, 100, 99, 21, 20, 19], many=100, few=20, inclusive=inclusive)
    assert g == {"many": many, "medium": medium, "few": few}


def test_fashion_mnist_groups_by_card_and_empty_few_group():
    counts = class_counts(10, 6000, 100)
    g = shot_groups(counts, many=1000, few=200)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [4, 3, 3]
    g = shot_groups(counts, many=100, few=20)
    assert [len(g[k]) for k in ("many", "medium", "few")] == [8, 2, 0]


def _labels():
    # 3 classes interleaved in file order, 10 images each
    return np.tile(np.arange(3), 10)


def test_select_first_takes_file_order_and_val_follows():
    y = _labels()
    train, val = select_indices(y, [4, 2, 1], "first", val_per_class=2)
    assert train.tolist() == [0, 3, 6, 9, 1, 4, 2]
    assert val.tolist() == [12, 15, 7, 10, 5, 8]
    assert not set(train) & set(val)


def test_select_shuffle_matches_ldam_drw_construction():
    y = _labels()
    counts = [5, 3, 2]
    # LDAM-DRW IMBALANCECIFAR: np.random.seed(0); per class in order: shuffle its indices, keep the first n.
    np.random.seed(0)
    expected = []
    for c, n in enumerate(counts):
        idx = np.where(y == c)[0]
        np.random.shuffle(idx)
        expected += idx[:n].tolist()
    train, _ = select_indices(y, counts, "shuffle", seed=0)
    assert train.tolist() == expected


def test_select_not_enough_images():
    with pytest.raises(ValueError, match="class 0 has 10 images"):
        select_indices(_labels(), [9, 1, 1], val_per_class=2)


def test_indices_hash_is_stable_and_sensitive():
    a = np.array([1, 2, 3])
    assert indices_hash(a) == indices_hash(a.copy())
    assert indices_hash(a) != indices_hash(np.array([1, 2, 4]))
    assert indices_hash(a, np.array([], dtype=np.int64)) != indices_hash(a)
