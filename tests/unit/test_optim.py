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


def test_mislas_step_schedule_with_per_epoch_warmup():
    """MiSLAS / LDAM-DRW CIFAR adjust_learning_rate: epoch e = 1..5 at lr e / 5 (the whole epoch), then lr, lr x 0.1
    from epoch 161, lr x 0.01 from epoch 181 (`epoch > 160`, `epoch > 180` with 1-based epochs)."""
    cfg = TrainConfig(epochs=200, schedule="step", lr_milestones=[160, 180], warmup_epochs=5, warmup_unit="epoch")
    by_epoch = {e: lr_factor(e * 10 + 9, cfg, 10) for e in (0, 1, 4, 5, 159, 160, 179, 180, 199)}   # 0-based
    assert by_epoch == {0: 0.2, 1: 0.4, 4: 1.0, 5: 1.0, 159: 1.0, 160: 0.1, 179: 0.1, 180: 0.1 ** 2, 199: 0.1 ** 2}
    assert lr_factor(0, cfg, 10) == lr_factor(9, cfg, 10) == 0.2          # constant inside a warm-up epoch
    steps = TrainConfig(epochs=4, schedule="step", lr_milestones=[2], schedule_unit="step", lr_step_gamma=0.5)
    assert [lr_factor(t, steps, 10) for t in (19, 20, 39)] == [1.0, 0.5, 0.5]


def test_lr_factors_give_parameters_their_fraction_of_every_scheduled_lr():
    """MiSLAS stage 2: the classifier at lr_factor x lr beside the scales at lr, both annealed alike."""
    from bench.train.optim import make_scheduler

    head, scales = torch.nn.Linear(3, 2), torch.nn.Parameter(torch.ones(2))
    m = torch.nn.Module()
    m.head, m.scales = head, scales
    cfg = TrainConfig(lr=0.1, epochs=2)
    opt = make_optimizer(m, cfg, {p: 0.2 for p in head.parameters()})
    sched = make_scheduler(opt, cfg, 1)
    groups = {len(g["params"]): g for g in opt.param_groups}      # 1: the scales, 2: the head's weight and bias
    assert math.isclose(groups[1]["lr"], 0.1) and math.isclose(groups[2]["lr"], 0.02)
    opt.step()
    sched.step()                                                   # epoch 2 of 2: cos(pi / 2) = half
    assert math.isclose(groups[1]["lr"], 0.05) and math.isclose(groups[2]["lr"], 0.01)
