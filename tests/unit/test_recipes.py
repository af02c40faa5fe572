"""Each stage recipe and the training loop in this process, on tiny synthetic data (seconds, no subprocess):
a change to the loop or a stage is checked here before the slow tier runs the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.config import ConfigError
from bench.experiment import load_config
from bench.launch.run import run_experiment
from bench.models.factory import ModelError
from bench.runtime.rundir import RunDir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["runtime.threads=1", "runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled"]
TINY = ["data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10", "data.synthetic.image_size=8",
        "data.val_per_class=5", "train.epochs=2", "train.batch_size=16", *QUIET]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(CONFIGS / "smoke.yaml", TINY)
    run = RunDir.for_config(cfg, root)
    return root, cfg, run, run_experiment(cfg, run, runs_root=root)


def test_stage1_trains_reports_and_is_not_retrained(stage1):
    root, cfg, run, result = stage1
    assert result["status"] == "complete" and result["epochs"] == 2 and result["config_hash"] == cfg.run_hash()
    assert len(result["per_class_acc"]) == 10 and 0 <= result["metrics"]["all"] <= 100
    assert [json.loads(line)["epoch"] for line in run.metrics_file.read_text().splitlines()] == [1, 2]
    before = run.final_ckpt.stat().st_mtime_ns
    assert run_experiment(cfg, run, runs_root=root) == result          # complete: reported, not retrained
    assert run.final_ckpt.stat().st_mtime_ns == before


def test_stage2_retrains_only_the_classifier_within_the_maxnorm_ball(stage1):
    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*QUIET, f"parent={parent.path}", "stage2.train.epochs=2"])
    result = run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]
    after = torch.load(RunDir.for_config(cfg, root).final_ckpt, weights_only=False)["model"]
    head = [k for k in after if k.endswith(".weight") and after[k].dim() == 2][-1]
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(head.rsplit(".", 1)[0]))
    assert not torch.equal(before[head], after[head])
    # MaxNorm per step: no row of the trained classifier leaves the ball
    assert float(after[head].norm(dim=1).max()) <= result["maxnorm_radius"] * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["taunorm", "la_mult"])
def test_posthoc_chooses_tau_on_val(stage1, kind):
    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_taunorm.yaml", [*QUIET, f"parent={parent.path}", f"posthoc.kind={kind}"])
    result = run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    ph = result["posthoc"]
    assert ph["kind"] == kind and ph["chosen_on"] == "val" and str(ph["tau"]) in ph["grid"]
    assert ph["grid"][str(ph["tau"])] == max(ph["grid"].values())    # the best tau on val


def test_crt_starts_from_a_fresh_classifier(stage1):
    """cRT (stage2.reinit_classifier): the classifier is re-initialised (seeded) before training, not the
    stage-1 rows; two runs of the same config are identical."""
    root, _, parent, _ = stage1
    # one epoch at a negligible lr and no weight decay: the final classifier is where training started
    args = [*QUIET, f"parent={parent.path}", "stage2.train.epochs=1", "stage2.train.lr=1e-12",
            "stage2.train.weight_decay=0", "stage2.maxnorm=false"]
    fresh = load_config(CONFIGS / "smoke_stage2.yaml", [*args, "stage2.reinit_classifier=true"])
    kept = load_config(CONFIGS / "smoke_stage2.yaml", args)
    assert fresh.run_hash() != kept.run_hash()
    for cfg in (fresh, kept):
        run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
    w = {name: torch.load(RunDir.for_config(c, root).final_ckpt, weights_only=False)["model"]["fc.weight"]
         for name, c in (("fresh", fresh), ("kept", kept))}
    stage1_w = torch.load(parent.final_ckpt, weights_only=False)["model"]["fc.weight"]
    assert torch.allclose(w["kept"], stage1_w, atol=1e-6)
    assert (w["fresh"] - stage1_w).abs().max() > 0.01
    other = root / "again"                                     # the same config in another runs root
    run_experiment(fresh, RunDir.for_config(fresh, other), runs_root=other)
    again = torch.load(RunDir.for_config(fresh, other).final_ckpt, weights_only=False)["model"]["fc.weight"]
    assert torch.equal(again, w["fresh"])


def test_lws_learns_only_a_scale_per_class(stage1):
    """LWS (stage2.lws): each final row and bias is the stage-1 one times its class's learned scale, the
    scales moved away from 1, and the reported accuracy is that of the saved (folded) plain classifier."""
    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*QUIET, f"parent={parent.path}", "stage2.lws=true",
                                                      "stage2.maxnorm=false", "stage2.train.lr=0.5",
                                                      "stage2.train.weight_decay=0", "eval.select=best"])
    run = RunDir.for_config(cfg, root)
    result = run_experiment(cfg, run, runs_root=root)
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]
    after = torch.load(run.final_ckpt, weights_only=False)["model"]
    assert set(after) == set(before)                   # a plain linear layer again: no scales, no wrapper
    w0, w1, b0, b1 = before["fc.weight"], after["fc.weight"], before["fc.bias"], after["fc.bias"]
    s = (w1 * w0).sum(1) / (w0 * w0).sum(1)            # least-squares scale of each row
    assert torch.allclose(w1, s[:, None] * w0, atol=1e-6) and torch.allclose(b1, s * b0, atol=1e-6)
    assert (s - 1).abs().max() > 1e-3
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))
    assert result["metrics"]["all"] >= 0 and result["selected_epoch"] in (1, 2, 3)


def test_mislas_stage2_trains_rows_and_scales_and_re_estimates_batchnorm(stage1):
    """MiSLAS stage 2 (mislas-reference's stage-2 settings on the smoke parent): the stage-1 rows train at 0.2 x lr
    beside the per-class scales, so the folded rows are no longer scaled copies; the frozen backbone runs in train
    mode under no_grad, so BatchNorm's running statistics move and nothing else of the backbone does; an epoch is
    ceil(N / B) + 1 class-aware batches."""
    root, _, parent, stage1_result = stage1
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [
        *QUIET, f"parent={parent.path}", "stage2.lws=true", "stage2.lws_rows_lr_factor=0.2", "stage2.maxnorm=false",
        "stage2.bn_mode=train", "stage2.augment=crop_flip", "stage2.train.sampler=class_aware",
        "stage2.train.epoch_length=dataset_plus_one", "stage2.train.loss.name=las", "stage2.train.lr=0.5",
        "stage2.train.epochs=2", "stage2.train.batch_size=16"])
    run = RunDir.for_config(cfg, root)
    result = run_experiment(cfg, run, runs_root=root)
    assert result["steps_per_epoch"] == -(-sum(stage1_result["class_counts"]) // 16) + 1
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]
    after = torch.load(run.final_ckpt, weights_only=False)["model"]
    assert set(after) == set(before)
    w0, w1 = before["fc.weight"], after["fc.weight"]
    s = (w1 * w0).sum(1) / (w0 * w0).sum(1)
    assert (w1 - s[:, None] * w0).abs().max() > 1e-4              # rows trained, not only scaled
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    frozen = [k for k in before if not k.startswith("fc.") and k not in stats and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)


def test_mislas_places_form_trains_a_new_block_on_a_frozen_trunk_then_re_estimates_its_batchnorm(tmp_path):
    """MiSLAS's Places-LT recipe in small (resnet_places.py, train_stage{1,2}.py): stage 1 trains a new last block
    and the classifier with mixup on a pretrained trunk kept in eval mode, so every trunk tensor, BatchNorm
    statistics included, ends as the file's; stage 2 re-estimates the BatchNorm of that block alone."""
    from bench.data.lt import build_lt_data
    from bench.methods.classifiers import make_model

    tiny = [*TINY, "model.name=resnet18", "train.epochs=1"]
    pre = make_model(cfg := load_config(CONFIGS / "smoke.yaml", tiny), build_lt_data(cfg.data))
    torch.save(pre.state_dict(), tmp_path / "pre.pt")
    cfg = load_config(CONFIGS / "smoke.yaml", [*tiny, f"model.pretrained_file={tmp_path / 'pre.pt'}",
                                               "model.reinit_last_blocks=1", "train.train_only_last_blocks=1",
                                               "train.mixup_alpha=0.2"])
    parent = RunDir.for_config(cfg, tmp_path)
    result = run_experiment(cfg, parent, runs_root=tmp_path)
    file, s1 = pre.state_dict(), torch.load(parent.final_ckpt, weights_only=False)["model"]
    block = [k for k in s1 if k.startswith("layer4.1.") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(file[k], s1[k]) for k in s1 if not k.startswith(("layer4.1.", "fc.")))
    assert all(not torch.equal(file[k], s1[k]) for k in block)
    assert result["trainable_params"]["trainable"] == sum(s1[k].numel() for k in s1 if k.startswith(
        ("layer4.1.", "fc.")) and k.endswith(("weight", "bias")))
    cfg2 = load_config(CONFIGS / "smoke_stage2.yaml", [
        *QUIET, f"parent={parent.path}", "stage2.lws=true", "stage2.lws_rows_lr_factor=0.05", "stage2.maxnorm=false",
        "stage2.bn_mode=train", "stage2.bn_last_blocks=1", "stage2.train.sampler=class_aware",
        "stage2.train.loss.name=las", "stage2.train.epochs=1", "stage2.train.batch_size=16"])
    run = RunDir.for_config(cfg2, tmp_path)
    run_experiment(cfg2, run, runs_root=tmp_path)
    s2 = torch.load(run.final_ckpt, weights_only=False)["model"]
    stats = {k for k in s1 if k.endswith(("running_mean", "running_var"))}
    assert {k for k in stats if not torch.equal(s1[k], s2[k])} == {k for k in stats if k.startswith("layer4.1.")}
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k not in stats and not k.startswith("fc.")
               and not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("loss", [["train.loss.name=sade"],
                                  ["train.loss.name=ride", "train.loss.drw_epoch=1", "train.loss.ride_diversity=-0.45",
                                   "train.loss.cb_normalizer=weights"]])
def test_multi_expert_model_trains_and_predicts_with_the_mean_of_its_experts(tmp_path, loss):
    """RIDE / SADE's model in small: 3 experts over a shared stem and first stage; the reported accuracy is that
    of the mean of the experts' logits, recomputed here from final.pt."""
    from bench.data.lt import build_lt_data
    from bench.methods.classifiers import make_model
    from bench.models.parts import encode, head_of

    cfg = load_config(CONFIGS / "smoke.yaml", [*TINY, "model.experts=3", "model.expert_width=0.75", *loss])
    run = RunDir.for_config(cfg, tmp_path)
    result = run_experiment(cfg, run, runs_root=tmp_path)
    model = make_model(cfg, data := build_lt_data(cfg.data), init=False)
    model.load_state_dict(torch.load(run.final_ckpt, weights_only=False)["model"])
    assert sum(k.startswith("experts.2.") for k in model.state_dict()) > 0 and model.num_features == 3 * 48
    model.eval()
    x, y = data.test.x, data.test.y
    with torch.no_grad():
        z = head_of(model)(encode(model, data.normalizer()(x)))
    assert z.shape == (len(y), 3, 10)
    assert math.isclose(result["metrics"]["all"], 100 * float((z.mean(1).argmax(1) == y).float().mean()), abs_tol=1e-6)


def test_timm_resnet_experts_are_rides_resnext():
    """RIDE's ResNeXt-50 (model/fb_resnets/RIDEResNeXt.py, reduce_dimension): stem, layer1, layer2 shared; per expert
    layer3 / layer4 with 192 / 384 planes, grouped width int(planes * 4 / 64) * 32; 3 x 384 x 4 pooled features. One
    expert at full width is the timm model itself, parameter for parameter, but its classifier."""
    import timm

    from bench.models.experts import ExpertCosineClassifiers, ResNetExperts
    from bench.models.factory import build_resnet_experts

    m = ResNetExperts("resnext50_32x4d", 10, num_experts=3, expert_width=0.75)
    assert m.num_features == 3 * 1536 and isinstance(m.fc, ExpertCosineClassifiers)
    assert [m.experts[k][0][0].conv2.out_channels for k in range(3)] == [384] * 3    # int(192 * 4 / 64) * 32
    assert m.experts[0][1][0].conv2.out_channels == 768 and m.layer2[0].conv2.out_channels == 256
    # every BatchNorm weight at one (RIDE), no zero-initialised last one (timm's default)
    assert all(float(b.bn3.weight.detach().min()) == 1.0 for e in m.experts for stage in e for b in stage)
    z = m(torch.randn(2, 3, 64, 64))
    assert z.shape == (2, 3, 10) and m.forward_head(m.forward_features(torch.randn(2, 3, 64, 64)), True).shape == (
        2, 3 * 1536)
    one = ResNetExperts("resnet18", 10, num_experts=1, expert_width=1.0)
    plain = timm.create_model("resnet18", num_classes=0)
    assert sum(p.numel() for n, p in one.named_parameters() if not n.startswith("fc.")) == sum(
        p.numel() for p in plain.parameters())
    with pytest.raises(ModelError, match="vit_tiny_patch16_224 has no multi-expert form"):
        build_resnet_experts("vit_tiny_patch16_224", 10, 3, 3, 0.75, 30.0)


def test_multi_expert_timm_resnet_trains_from_a_config(tmp_path):
    """model.name=resnet18, model.experts=3 through a whole run with SADE's loss, in SADE's Places-LT form: every
    expert a copy of the pretrained layer3 / layer4, the backbone at 0.1 x lr (train.backbone_lr_factor)."""
    import timm

    from bench.data.lt import build_lt_data
    from bench.methods.classifiers import make_model

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), weights)
    pre = load_config(CONFIGS / "smoke.yaml", [*TINY, "model.name=resnet18", "model.experts=3",
                                               f"model.pretrained_file={weights}", "train.loss.name=sade",
                                               "train.backbone_lr_factor=0.1", "train.epochs=1"])
    model = make_model(pre, build_lt_data(pre.data))
    saved = torch.load(weights)
    assert torch.equal(model.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    assert all(torch.equal(model.experts[k][1][0].conv2.weight, saved["layer4.0.conv2.weight"]) for k in range(3))
    result = run_experiment(pre, run := RunDir.for_config(pre, tmp_path), runs_root=tmp_path)
    assert 0 <= result["metrics"]["all"] <= 100
    groups = torch.load(run.path / "checkpoints" / "last.pt", weights_only=False)["optimizer"]["param_groups"]
    sizes = {g["initial_lr"]: len(g["params"]) for g in groups}
    assert sorted(sizes) == pytest.approx([0.1 * pre.train.lr, pre.train.lr]) and sizes[pre.train.lr] == 1  # fc
    with pytest.raises(ModelError, match="keep their width"):
        make_model(load_config(CONFIGS / "smoke.yaml", [*TINY, "model.name=resnet18", "model.experts=3",
                                                        "model.expert_width=0.5", f"model.pretrained_file={weights}",
                                                        "train.loss.name=sade"]), build_lt_data(pre.data))


def test_ride_distillation_from_a_finished_teacher(tmp_path):
    """RIDE's distillation: a 6-expert teacher run, then a 3-expert student with train.distill.teacher = its run
    directory. The teacher's hash is part of the student's; the teacher stays as it was; bad teachers stop with
    one line."""
    from bench.launch.run import run_config_file

    ride = [*TINY, "model.expert_width=0.75", "train.loss.name=ride", "train.loss.drw_epoch=1",
            "train.loss.ride_diversity=-0.45", "train.loss.cb_normalizer=weights"]
    tcfg = load_config(CONFIGS / "smoke.yaml", [*ride, "model.experts=6", "method=ride-teacher"])
    trun = RunDir.for_config(tcfg, tmp_path)
    run_experiment(tcfg, trun, runs_root=tmp_path)
    before = torch.load(trun.final_ckpt, weights_only=False)["model"]
    student = [*ride, "model.experts=3", "method=ride-distill", f"train.distill.teacher={trun.path}",
               "train.distill.temperature=1.5"]
    scfg = load_config(CONFIGS / "smoke.yaml", student)
    assert scfg.train.distill.teacher_hash == tcfg.run_hash() and scfg.train.distill.teacher_run is None
    result = run_config_file(CONFIGS / "smoke.yaml", student, tmp_path)
    assert 0 <= result["metrics"]["all"] <= 100
    after = torch.load(trun.final_ckpt, weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # another teacher (here: its BatchNorm in eval mode) is another run
    assert load_config(CONFIGS / "smoke.yaml", [*student, "train.distill.teacher_bn=eval"]).run_hash() != \
        scfg.run_hash()
    with pytest.raises(ConfigError, match="config key 'train.distill.teacher': .* is neither a run directory"):
        load_config(CONFIGS / "smoke.yaml", [*ride, "model.experts=3", f"train.distill.teacher={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="config key 'train.distill.temperature': 1.5 is used with a teacher"):
        load_config(CONFIGS / "smoke.yaml", [*ride, "model.experts=3", "train.distill.temperature=1.5"])
    # a teacher of another long-tailed set is refused (it reads this run's batches)
    with pytest.raises(ConfigError, match="has data.imbalance_factor = 10.0, this run 20.0; a teacher reads"):
        run_config_file(CONFIGS / "smoke.yaml", [*student, "data.imbalance_factor=20"], tmp_path)
    # a teacher given as its experiment YAML, never run: resolved to its run directory, which does not exist yet
    yaml_teacher = tmp_path / "teacher.yaml"
    yaml_teacher.write_text((CONFIGS / "smoke.yaml").read_text().replace("method: ce", "method: other-teacher"))
    named = [*ride, "model.experts=3", f"train.distill.teacher={yaml_teacher}"]
    assert load_config(CONFIGS / "smoke.yaml", named).train.distill.teacher_run.startswith("smoke/other-teacher-")
    with pytest.raises(ConfigError, match="stage1 needs its teacher run .* which does not exist: run `ltbench run"):
        run_config_file(CONFIGS / "smoke.yaml", named, tmp_path)
    from bench.launch.submit import plan       # `ltbench submit` runs the teacher first, the student after it
    nodes = plan(str(CONFIGS / "smoke.yaml"), named, str(tmp_path))
    assert [n.cfg.method for n in nodes] == ["other-teacher", "ce"] and nodes[1].parent is nodes[0]


@pytest.mark.parametrize("extra, word", [(["stage2.reinit_classifier=true", "stage2.maxnorm=false"], "re-initialised"),
                                         ([], "maxnorm=false")])
def test_lws_refuses_what_names_no_method(stage1, extra, word):
    from bench.config import ConfigError

    root, _, parent, _ = stage1
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*QUIET, f"parent={parent.path}", "stage2.lws=true", *extra])
    with pytest.raises(ConfigError, match=word):
        run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)


def test_the_last_epoch_keeps_its_per_class_accuracy(stage1, tmp_path):
    """When another epoch is reported (eval.select=best), result.json still holds the last epoch's per-class
    accuracy (a class that collapses late shows only there); with select=last the two are the same."""
    from bench.train import checkpoint as ckpt
    from bench.train.select import select_reported

    _, cfg, _, result = stage1
    assert result["per_class_acc_last_epoch"] == result["per_class_acc"]
    best = load_config(CONFIGS / "smoke.yaml", [*TINY, "eval.select=best"])
    run = RunDir.for_config(best, tmp_path)
    run.best_ckpt.parent.mkdir(parents=True)
    model = torch.nn.Linear(2, 3)
    ckpt.save_atomic({"model": {k: v + 1 for k, v in model.state_dict().items()}, "config_hash": best.run_hash(),
                      "epoch": 1}, run.best_ckpt)

    class LastEpoch:        # what the reporting evaluator says of the model still in memory (the last epoch)
        def run(self, split):
            return {"all": 50.0}, [100.0, 0.0, 50.0], None

    before = model.weight.detach().clone()
    selected, last = select_reported(best, run, 1, 2, LastEpoch(), model)
    assert selected == 1 and last == {"all": 50.0, "per_class": [100.0, 0.0, 50.0]}
    assert torch.equal(model.weight, before + 1)                       # the best epoch's weights were loaded

    # a best.pt of another epoch (left by an attempt killed between best.pt and last.pt) is refused
    ckpt.save_atomic({"model": model.state_dict(), "config_hash": best.run_hash(), "epoch": 2}, run.best_ckpt)
    with pytest.raises(ConfigError, match=r"best\.pt holds epoch 2, but this run's best epoch is 1"):
        select_reported(best, run, 1, 3, LastEpoch(), model)


def test_sade_test_time_aggregation_weighs_the_experts_and_says_it_read_test(tmp_path):
    """posthoc.kind=sade_tta on a SADE parent: the experts' weights are fitted on two views of the unlabeled test
    images (transductive), sum to 1, and the reported accuracy is that of sum_k w_k z_k, recomputed here."""
    from bench.data.lt import build_lt_data
    from bench.methods.classifiers import make_model
    from bench.models.parts import encode, head_of

    cfg = load_config(CONFIGS / "smoke.yaml", [*TINY, "model.experts=3", "model.expert_width=0.75",
                                               "train.loss.name=sade"])
    parent = RunDir.for_config(cfg, tmp_path)
    run_experiment(cfg, parent, runs_root=tmp_path)
    child = load_config(CONFIGS / "smoke_taunorm.yaml", [*QUIET, f"parent={parent.path}", "posthoc.kind=sade_tta",
                                                         "posthoc.tta_epochs=2", "posthoc.tta_batch_size=32"])
    run = RunDir.for_config(child, tmp_path)
    result = run_experiment(child, run, runs_root=tmp_path)
    ph = result["posthoc"]
    w = torch.tensor(ph["expert_weights"])
    assert ph["chosen_on"] == "test" and ph["transductive"] and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert not torch.allclose(w, torch.full((3,), 1 / 3)) and ph["passes"] in (1, 2)
    model = make_model(cfg, data := build_lt_data(cfg.data), init=False)
    model.load_state_dict(torch.load(run.final_ckpt, weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        head = head_of(model)
        head.aggregation.fill_(1.0)                                   # the plain experts, then weighed by hand
        z = head(encode(model, data.normalizer()(data.test.x)))
    pred = torch.einsum("k,bkc->bc", w, z).argmax(1)
    assert math.isclose(result["metrics"]["all"], 100 * float((pred == data.test.y).float().mean()), abs_tol=1e-6)


def test_fit_aggregation_favours_the_expert_that_agrees_across_views():
    from bench.methods.posthoc import fit_aggregation

    torch.manual_seed(0)
    steady = torch.randn(64, 5) * 3
    noise = [torch.randn(64, 5) * 3 for _ in range(2)]

    def experts(view: torch.Tensor) -> torch.Tensor:                 # expert 0 the same on both views, 1 not
        return torch.stack([steady, noise[int(view[0, 0])]], dim=1)

    views = torch.stack([torch.zeros(64, 1), torch.ones(64, 1)], dim=1)
    w, passes = fit_aggregation(experts, lambda e: [views], 2, 5, 0.5, 0.0, 0.0)
    assert w[0] > 0.6 and passes == 5
    w, passes = fit_aggregation(experts, lambda e: [views], 2, 50, 5.0, 0.0, 0.05)
    assert passes < 50 and float(w.min()) < 0.05                    # stopped once a weight fell below 0.05


def test_router_targets_and_routing_by_hand():
    """Router i's target: experts 0..i wrong together, a larger ensemble right. Routing: an image averages the
    experts up to its router's first 'stop'."""
    from bench.methods.router import ExpertRouter, router_targets

    one = torch.eye(2)                     # class 0 = [1, 0], class 1 = [0, 1]
    z = torch.stack([torch.stack([one[1], one[0] * 3, one[1]]),          # y 0: 0 wrong, 0+1 right -> [1, 0]
                     torch.stack([one[0], one[0], one[0]]),              # y 0: all right          -> [0, 0]
                     torch.stack([one[1], one[1] * 0.5, one[0] * 2])])    # y 0: 0, 0+1 wrong, 0+1+2 right -> [1, 1]
    assert router_targets(z, torch.tensor([0, 0, 0])).tolist() == [[1, 0], [0, 0], [1, 1]]
    r = ExpertRouter(3, 4, 2, top=30)
    assert r.top == 2                                                     # at most C values
    r.forward = lambda h, zz: torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])   # go on / stop decisions
    routed = r.route(torch.zeros(3, 12), z)
    mean_used = routed.mean(1)
    assert torch.allclose(mean_used[0], z[0].mean(0)) and torch.allclose(mean_used[1], z[1, 0])
    assert torch.allclose(mean_used[2], z[2, :2].mean(0))
    assert r.experts_used(torch.zeros(3, 12), z).tolist() == [3, 1, 2]


def test_ride_router_trains_only_the_routers_and_reports_experts_used(tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", [*TINY, "model.experts=3", "model.expert_width=0.75",
                                               "train.loss.name=ride", "train.loss.cb_normalizer=weights"])
    parent = RunDir.for_config(cfg, tmp_path)
    run_experiment(cfg, parent, runs_root=tmp_path)
    child = load_config(CONFIGS / "smoke_stage2.yaml", [
        *QUIET, f"parent={parent.path}", "method=ride-ea", "stage2.router=true", "stage2.maxnorm=false",
        "stage2.train.epochs=2", "stage2.train.lr=0.05", "stage2.train.sampler=class_balanced",
        "stage2.augment=crop_flip", "stage2.router_pos_weight=5"])
    run = RunDir.for_config(child, tmp_path)
    result = run_experiment(child, run, runs_root=tmp_path)
    assert 1.0 <= result["experts_used_mean"] <= 3.0
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]
    after = torch.load(run.final_ckpt, weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)   # the experts and their BatchNorm as they were
    assert {k for k in after if k not in before} and all(".router." in k for k in after if k not in before)
