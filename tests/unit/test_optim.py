"""Weight-decay scope and learning-rate schedules."""

import math

import torch

from bench.config import TrainConfig
from bench.train.optim import lr_factor, make_optimizer


def test_wd_scope_all_decays_every_parameter():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(m, TrainConfig(weight_decay=5e-3, wd_scope="all"))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 5e-3
    assert len(opt.param_groups[0]["params"]) == 4        # conv w, conv b, bn gamma, bn beta


def test_wd_scope_no_norm_bias():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(m, TrainConfig(weight_decay=5e-3, wd_scope="no_norm_bias"))
    decay, no_decay = opt.param_groups
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 5e-3
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_sgd_coupled_weight_decay_by_hand():
    # one SGD step on a zero-gradient parameter: theta <- theta - lr * lambda * theta
    p = torch.nn.Linear(1, 1, bias=False)
    p.weight.data.fill_(2.0)
    opt = make_optimizer(p, TrainConfig(lr=0.1, weight_decay=0.5, momentum=0.0))
    p.weight.grad = torch.zeros_like(p.weight)
    opt.step()
    assert math.isclose(p.weight.item(), 2.0 - 0.1 * 0.5 * 2.0, rel_tol=1e-6)


def test_cosine_per_epoch_and_wb_epoch_start_stepping():
    cfg = TrainConfig(epochs=4, schedule_unit="epoch")
    assert [lr_factor(t, cfg, 10) for t in (0, 9, 10, 39)] == [1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)),
                                                              0.5 * (1 + math.cos(3 * math.pi / 4))]
    wb = TrainConfig(epochs=4, schedule_unit="epoch", schedule_step_at_epoch_start=True)
    # WB reference: CosineAnnealingLR(T_max=E).step() before each epoch -> epoch 0 already at cos(pi/E)
    assert lr_factor(0, wb, 10) == 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_factor(39, wb, 10) == 0.0


def test_cosine_per_step_and_warmup():
    cfg = TrainConfig(epochs=2, schedule_unit="step")
    assert lr_factor(0, cfg, 5) == 1.0
    assert math.isclose(lr_factor(5, cfg, 5), 0.5)
    warm = TrainConfig(epochs=3, schedule_unit="step", warmup_epochs=1)
    assert [lr_factor(t, warm, 4) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lr_factor(8, warm, 4), 0.5)      # half-way through the 2 cosine epochs


def test_constant_schedule():
    assert lr_factor(123, TrainConfig(schedule="constant"), 10) == 1.0
