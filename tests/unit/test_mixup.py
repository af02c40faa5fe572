"""mixup (bench/methods/mixup.py, MiSLAS stage 1): the draws are a function of the step's position, the mix and the
loss are the formulas of the reference, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.methods.mixup import Mixup


def test_draws_are_a_function_of_seed_epoch_step_and_rank():
    m = Mixup(1.0, seed=3)
    lam, perm = m.draw(8, epoch=2, step=5, rank=0)
    again = m.draw(8, epoch=2, step=5, rank=0)
    assert lam == again[0] and (perm == again[1]).all()          # a resumed run draws what it drew
    assert 0 <= lam <= 1 and sorted(perm) == list(range(8))
    other_rank = m.draw(8, epoch=2, step=5, rank=1)
    assert other_rank[0] == lam and not (other_rank[1] == perm).all()    # one lambda, a permutation per rank
    assert m.draw(8, epoch=2, step=6, rank=0)[0] != lam and Mixup(1.0, seed=4).draw(8, 2, 5, 0)[0] != lam
    # Beta(alpha, alpha): alpha 1 is uniform on [0, 1]; the mean of many draws is 1/2
    lams = [m.draw(2, 0, s, 0)[0] for s in range(2000)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError):
        Mixup(0.0, seed=0)


def test_mixed_batch_and_loss_by_hand():
    m = Mixup(0.4, seed=0)
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    xm, y_perm, lam = m(x, y, 1, 7)
    lam_, perm = m.draw(4, 1, 7, 0)
    assert lam == lam_ and torch.equal(y_perm, y[torch.from_numpy(perm)])
    assert torch.allclose(xm, lam * x + (1 - lam) * x[torch.from_numpy(perm)])
    # the loop's loss: lambda CE(z, y) + (1 - lambda) CE(z, y[perm]) = CE against the mixed one-hot targets
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    mixed_target = lam * torch.nn.functional.one_hot(y, 3) + (1 - lam) * torch.nn.functional.one_hot(y_perm, 3)
    loop = lam * torch.nn.functional.cross_entropy(z, y) + (1 - lam) * torch.nn.functional.cross_entropy(z, y_perm)
    assert float(loop) == pytest.approx(float(-(mixed_target * z.log_softmax(1)).sum(1).mean()), abs=1e-6)
