"""PaCo / GPaCo (bench/methods/contrast.py) and the multi-view batches they read (bench/data/views.py): the loss
against its formula and against logit-adjusted CE, the queue, the momentum encoder, the views' determinism across
ranks and resumes, and a run killed mid-epoch that ends as the uninterrupted one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.config import ContrastConfig, LossConfig
from bench.methods.contrast import ContrastModel, PaCoLoss
from bench.methods.losses import make_loss

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _out(centre, contrast, keys):
    return {"logits": centre[: len(keys)], "centre": centre, "contrast": contrast, "keys": keys}


def test_paco_with_only_the_centre_term_is_logit_adjusted_ce():
    """alpha = gamma = 0, beta = 1: the contrastive terms leave numerator and denominator, and PaCo is CE on
    z + log pi (the logit-adjusted loss at tau 1)."""
    torch.manual_seed(0)
    counts = [40, 10, 3]
    loss = PaCoLoss(counts, ContrastConfig(alpha=0.0, gamma=0.0, beta=1.0, queue=8, dim=4), seed=0)
    z, y = torch.randn(5, 3) * 3, torch.tensor([0, 1, 2, 2, 0])
    q = F.normalize(torch.randn(10, 4), dim=1)
    la = make_loss(LossConfig(name="logit_adjusted", la_tau=1.0), counts)
    assert torch.allclose(loss(_out(z, q, q[5:]), y), la(z, y), atol=1e-6)


def test_paco_loss_by_hand():
    """One anchor set worked through the formula with Python floats: 2 anchors (labels 0, 1), their 2 keys, a
    queue of 1 (label 1), 2 classes, T 0.5, alpha 0.3, beta 1, gamma 0.7."""
    cfg = ContrastConfig(alpha=0.3, beta=1.0, gamma=0.7, temperature=0.5, queue=1, dim=2)
    loss = PaCoLoss([3, 1], cfg, seed=0)
    loss.queue.copy_(torch.tensor([[0.0, 1.0]]))
    loss.queue_labels.copy_(torch.tensor([1]))
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    z = torch.tensor([[0.5, -0.5], [0.2, 0.1]])
    y = torch.tensor([0, 1])
    feats, labels = [*q.tolist(), *k.tolist(), [0.0, 1.0]], [0, 1, 0, 1, 1]
    log_prior = [math.log(0.75), math.log(0.25)]
    total = 0.0
    for i in range(2):
        centre = [z[i, c].item() + log_prior[c] for c in range(2)]
        s = [sum(a * b for a, b in zip(q[i].tolist(), f)) / 0.5 for f in feats]
        denom = sum(math.exp(v) for v in centre) + 0.7 * sum(math.exp(v) for j, v in enumerate(s) if j != i)
        pos = [j for j in range(5) if j != i and labels[j] == int(y[i])]
        num = 1.0 * (centre[int(y[i])] - math.log(denom)) + 0.3 * sum(s[j] - math.log(denom) for j in pos)
        total += -num / (1.0 + 0.3 * len(pos))
    got = loss(_out(z, torch.cat([q, k]), k), y)
    assert math.isclose(float(got), total / 2, rel_tol=1e-5)


def test_the_queue_takes_the_keys_after_the_loss_oldest_first_out():
    cfg = ContrastConfig(queue=5, dim=2)
    loss = PaCoLoss([2, 2], cfg, seed=3)
    first = loss.queue.clone()
    assert torch.allclose(first.norm(dim=0), torch.ones(2))          # the reference's normalize(queue, dim=0)
    keys = F.normalize(torch.randn(3, 2), dim=1)
    before = loss.queue.clone()
    loss(_out(torch.zeros(3, 2), torch.cat([keys, keys]), keys), torch.tensor([0, 1, 1]))
    assert torch.equal(loss.queue[:3], keys) and torch.equal(loss.queue[3:], before[3:])
    assert loss.queue_labels[:3].tolist() == [0, 1, 1] and int(loss.queue_ptr) == 3
    more = F.normalize(torch.randn(3, 2), dim=1)
    loss(_out(torch.zeros(3, 2), torch.cat([more, more]), more), torch.tensor([1, 0, 0]))
    assert torch.equal(loss.queue[3:], more[:2]) and torch.equal(loss.queue[0], more[2]) and int(loss.queue_ptr) == 1
    again = PaCoLoss([2, 2], cfg, seed=3)
    assert torch.equal(again.queue, first)                            # the initial queue is seeded


def test_momentum_encoder_moves_by_the_moving_average_and_gpaco_has_none():
    import timm

    import bench.models  # noqa: F401 - registers the CIFAR ResNets

    torch.manual_seed(0)
    net = timm.create_model("resnet8_cifar", num_classes=3)
    cm = ContrastModel(net, ContrastConfig(momentum=0.5, dim=4), momentum_encoder=True)
    assert all(not p.requires_grad for p in cm.key_model.parameters())
    with torch.no_grad():
        for p in cm.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in cm.key_model.parameters()]
    h, out = cm(torch.randn(4, 2, 3, 16, 16))
    for b, k, q in zip(before, cm.key_model.parameters(), cm.model.parameters()):
        assert torch.allclose(k, 0.5 * b + 0.5 * q)
    assert out["centre"].shape == (4, 3) and out["contrast"].shape == (8, 4) and not out["keys"].requires_grad
    g = ContrastModel(net, ContrastConfig(dim=4, projection="mlp3"), momentum_encoder=False)
    h, out = g(torch.randn(4, 2, 3, 16, 16))
    assert g.key_model is None and out["centre"].shape == (8, 3) and out["contrast"].shape == (8, 4)
    assert len(g.proj) == 5 and not any(isinstance(m, torch.nn.BatchNorm1d) for m in g.proj)


@pytest.mark.parametrize("names", [("autoaugment_cutout", "simclr"), ("crop_flip", "randaugment"),
                                   ("rrc_randaugment", "rrc_sim"), ("rrc_colour", "rrc_colour"),
                                   ("rrc_randaugment", "rrc_sim_randaugment"),
                                   ("rrc_colour_randaugment", "rrc_colour_randaugment")])
def test_views_are_a_function_of_the_position_on_any_rank(names):
    """Each image's draws come from (seed, epoch, step, view, global index): two ranks' halves make the one-process
    batch, and the same position draws the same views again (a resume)."""
    from bench.data.views import view_fn

    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    views = view_fn(names, crop_padding=4)
    whole = views(x, (7, 2, 5), 6, 0)
    assert whole.shape == (6, 2, 3, 32, 32) and whole.dtype == torch.uint8
    halves = torch.cat([views(x[:3], (7, 2, 5), 6, 0), views(x[3:], (7, 2, 5), 6, 3)])
    assert torch.equal(whole, halves) and torch.equal(whole, views(x, (7, 2, 5), 6, 0))
    assert not torch.equal(whole, views(x, (7, 2, 6), 6, 0)) and not torch.equal(whole[:, 0], whole[:, 1])
    grey = view_fn(names, 4)(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8), (0, 0, 0), 2, 0)
    assert grey.shape == (2, 2, 1, 28, 28)


def test_large_image_views_crop_the_whole_image_and_keep_the_global_rngs():
    """PaCo's ImageNet-LT views (rrc_randaugment: RandomResizedCrop + flip + jitter + timm's RandAugment; rrc_sim):
    from shards they crop the decoded image, not its centre crop (a black centre crop, a bright whole image: the
    views are bright); timm draws from Python's and NumPy's RNGs, which are seeded per image and restored after."""
    import random

    import numpy as np

    from bench.data.views import augment_views

    centre = torch.zeros(4, 3, 24, 24, dtype=torch.uint8)
    whole = [torch.full((3, 40 + 8 * i, 56), 200, dtype=torch.uint8) for i in range(4)]
    py, npy = random.getstate(), np.random.get_state()[1].copy()
    v = augment_views(centre, (1, 0, 0, 3), 4, 0, names=["rrc_randaugment", "rrc_sim"], crop_padding=4, whole=whole)
    assert v.shape == (4, 2, 3, 24, 24) and v.float().mean() > 60
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy)
    again = augment_views(centre, (1, 0, 0, 3), 4, 0, names=["rrc_randaugment", "rrc_sim"], crop_padding=4,
                          whole=whole)
    assert torch.equal(v, again)
    # from memory (no whole images) they crop the images themselves: black stays nearly black
    assert augment_views(centre, (1, 0, 0), 4, 0, names=["rrc_sim"], crop_padding=4).float().mean() < 5
    # GPaCo's key view (randclsstack) reads the whole image too
    g = augment_views(centre, (1, 0, 0, 3), 4, 0, names=["rrc_sim_randaugment"], crop_padding=4, whole=whole)
    assert g.shape == (4, 1, 3, 24, 24) and g.float().mean() > 60
    # data.randaugment_n: more RandAugment operations after the same crop, flip and colour draws
    from bench.data.views import ViewOptions

    names = ["rrc_randaugment", "rrc_sim_randaugment"]
    two, five = (augment_views(centre, (1, 0, 0, 3), 4, 0, names=names, crop_padding=4, whole=whole,
                               opts=ViewOptions(randaugment_n=n)) for n in (2, 5))
    assert not torch.equal(two, five) and torch.equal(two, augment_views(centre, (1, 0, 0, 3), 4, 0, names=names,
                                                                          crop_padding=4, whole=whole))



def test_views_blur_with_pil_as_mocos_gaussianblur():
    """simclr's and crop_colour_blur's blur is MoCo v2's GaussianBlur as PaCo and SADE copy it: PIL's GaussianBlur,
    radius sigma ~ U(0.1, 2) from Python's random."""
    import random

    from PIL import ImageFilter
    from torchvision.transforms.v2 import functional as TF

    from bench.data.views import _pil_blur

    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    random.seed(5)
    out = _pil_blur(x)
    random.seed(5)
    want = TF.pil_to_tensor(TF.to_pil_image(x).filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0))))
    assert torch.equal(out, want) and not torch.equal(out, x)


def test_balanced_contrastive_loss_by_hand():
    """BCL's BalSCL on 2 images (labels 0, 1), their two views, 2 class prototypes, T 0.5: each denominator term
    divided by its class's count in the set (2 b_c + 1 = 3 each), less one for the anchor's own class."""
    from bench.methods.contrast import balanced_supcon

    # [view 1 of images 0, 1; view 2 of images 0, 1]
    f = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, -0.3], [-0.2, 0.8]]), dim=1)
    p = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    y = torch.tensor([0, 1])
    allf, labels = torch.cat([f, p]).tolist(), [0, 1, 0, 1, 0, 1]
    total = 0.0
    for i in range(4):
        s = [sum(a * b for a, b in zip(f[i].tolist(), g)) / 0.5 for g in allf]
        denom = sum(math.exp(s[j]) / (3 - (labels[j] == labels[i])) for j in range(6) if j != i)
        pos = [j for j in range(6) if j != i and labels[j] == labels[i]]
        total += -sum(s[j] - math.log(denom) for j in pos) / len(pos)
    assert math.isclose(float(balanced_supcon(f, p, y, 0.5)), total / 4, rel_tol=1e-5)


def test_cosine_head_is_s_cos():
    from bench.methods.classifiers import NormedCosine

    head = NormedCosine(3, 2, scale=30.0)
    h = torch.tensor([[3.0, 0.0, 4.0]])
    v = head.direction.detach()
    want = 30.0 * (h[0] / 5.0) @ (v / v.norm(dim=1, keepdim=True)).T
    assert torch.allclose(head(h)[0], want, atol=1e-5)
    assert torch.allclose(head.weight.norm(dim=1), torch.full((2,), 30.0))
    # NormedLinear's renorm_(2, 1, 1e-5).mul_(1e5): every class vector starts at norm 1 (RIDE, SADE, BCL alike)
    from bench.models.experts import ExpertCosineClassifiers

    assert torch.allclose(NormedCosine(2048, 5).direction.norm(dim=1), torch.ones(5))
    assert torch.allclose(ExpertCosineClassifiers(3, 48, 7, 30.0).direction.norm(dim=2), torch.ones(3, 7))


@pytest.mark.parametrize("method", [["train.contrast.method=paco"],
                                    ["train.contrast.method=gpaco", "train.contrast.projection=mlp3"],
                                    ["train.contrast.method=bcl", "model.classifier=cosine",
                                     "train.loss.name=logit_adjusted", "data.views=[crop_flip,simclr,flip]"]])
def test_a_contrastive_run_killed_after_a_mid_epoch_checkpoint_ends_as_the_uninterrupted_one(tmp_path, monkeypatch,
                                                                                             method):
    """The queue (the loss's state), the key encoder and the views resume exactly: a crash right after the first
    mid-epoch checkpoint, then the same command again, gives the uninterrupted run's numbers."""
    from bench.experiment import load_config
    from bench.launch.run import run_experiment
    from bench.runtime.rundir import RunDir
    from bench.train import loop

    args = ["runtime.threads=1", "runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled",
            "data.synthetic.train_per_class=30", "data.synthetic.test_per_class=10", "data.synthetic.image_size=8",
            "data.val_per_class=5", "train.epochs=2", "train.batch_size=16", "runtime.checkpoint_every_steps=3",
            *method, "train.contrast.queue=24", "train.contrast.dim=8",
            "data.views=[autoaugment_cutout,simclr]", "data.augment=none", "train.drop_last=true"]
    if any(m.startswith("data.views") for m in method):      # bcl's three views replace the default two
        args.remove("data.views=[autoaugment_cutout,simclr]")
    cfg = load_config(CONFIGS / "smoke.yaml", args)
    ref = run_experiment(cfg, RunDir.for_config(cfg, tmp_path / "ref"), runs_root=tmp_path / "ref")

    real_save = loop.LastCheckpoint.save

    def crash_after_first(self, state):
        real_save(self, state)
        if state.step == 3 and state.epoch == 0:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr(loop.LastCheckpoint, "save", crash_after_first)
    run = RunDir.for_config(cfg, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run, runs_root=tmp_path / "cut")
    monkeypatch.setattr(loop.LastCheckpoint, "save", real_save)
    resumed = run_experiment(cfg, run, runs_root=tmp_path / "cut")
    for key in ("metrics", "val_metrics", "per_class_acc"):
        assert resumed[key] == ref[key], key
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [json.loads(line)["train_loss"] for line in
                                                RunDir.for_config(cfg, tmp_path / "ref").metrics_file.read_text()
                                                .splitlines()]


def test_the_view_names_are_the_schemas():
    import typing

    from bench.config import DataConfig
    from bench.data.views import VIEW_AUGMENTS

    (item,) = typing.get_args(typing.get_type_hints(DataConfig)["views"])
    assert set(typing.get_args(item)) == set(VIEW_AUGMENTS)


@pytest.mark.parametrize("overrides, message", [
    (["train.contrast.method=paco"], "config key 'data.views': paco reads 2 views of each image (the query, then "
                                     "the key)"),
    (["data.views=[simclr,simclr]"], "config key 'data.views': ['simclr', 'simclr']: several views are read by a "
                                     "contrastive method only"),
    (["train.contrast.queue=10"], "config key 'train.contrast': its settings apply with train.contrast.method"),
    (["train.contrast.method=paco", "data.views=[simclr,simclr]"], "config key 'data.augment': crop_flip is not used "
                                                                   "with data.views"),
    (["train.contrast.method=paco", "data.views=[simclr,simclr]", "data.augment=none", "train.drop_last=true",
      "train.loss.name=focal"], "config key 'train.contrast.method': paco is its own loss"),
    (["train.contrast.method=bcl", "data.views=[simclr,simclr]"], "config key 'data.views': bcl reads 3 views"),
    (["train.contrast.method=bcl", "data.views=[randaugment,simclr,simclr]", "data.augment=none"],
     "config key 'model.classifier': bcl's classes are a cosine classifier"),
    (["train.contrast.method=gpaco", "data.views=[simclr,simclr]", "data.augment=none"],
     "config key 'train.drop_last': gpaco's code drops an epoch's last incomplete batch"),
    (["stage2.train.contrast.method=paco"], "config key 'stage2.train.contrast': a contrastive method trains stage 1"),
    (["train.contrast.method=paco", "data.views=[simclr,simclr]", "data.augment=none", "train.drop_last=true",
      "train.contrast.gather=true"], "config key 'train.contrast.gather': paco contrasts each process's part"),
    (["train.contrast.method=moco"], "config key 'train.contrast.method': expected one of 'paco', 'gpaco', 'bcl'"),
])
def test_contrast_settings_that_name_no_method(overrides, message):
    import re

    from bench.config import ConfigError
    from bench.experiment import load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
