"""The published-experiment configs: up to date with their generator, loadable, honest about protocol."""

import importlib.util

import pytest

from bench.experiment import load_config


CIFAR10_STD = (0.2023, 0.1994, 0.2010)     # the copied CIFAR-10 std the MiSLAS code uses for both CIFARs


def _generator(repo):
    spec = importlib.util.spec_from_file_location("gen", repo / "configs" / "paper" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_configs_match_the_generator(repo, tmp_path):
    gen = _generator(repo)
    for p in gen.write(tmp_path):
        committed = repo / "configs" / "paper" / p.relative_to(tmp_path)
        assert committed.is_file() and committed.read_text() == p.read_text(), f"rerun generate.py: {committed}"


@pytest.mark.parametrize("exp", ["cifar100_lt_if100", "cifar100_lt_if50", "cifar100_lt_if10", "cifar10_lt_if100"])
def test_every_paper_config_loads_with_its_protocol(repo, exp):
    d = repo / "configs" / "paper" / exp
    cfgs = {p.stem: load_config(p) for p in sorted(d.glob("*.yaml"))}
    experts = {"cifar100_lt_if100": {"ride", "sade"}, "cifar10_lt_if100": set()}.get(exp, {"sade"})
    tta = ({"sade_tta"} if "sade" in experts else set()) | (
        {"ride_ea", "ride_teacher", "ride_distill", "ride_distill_ea"} if "ride" in experts else set())
    paco = set() if exp == "cifar10_lt_if100" else {"paco"}
    assert set(cfgs) == {"naive", "wd", "l2norm", "taunorm", "cb_wd", "cb_maxnorm", "wb", "hs_stage1", "hs", "mixup",
                         "mislas"} | experts | paco | tta
    if paco:    # PaCo's CIFAR script: ResNet-32, queue 1024, T 0.05, alpha 0.01, AutoAugment + Cutout / SimCLR views
        c = cfgs["paco"]
        assert (c.train.contrast.method, c.train.contrast.queue, c.train.contrast.temperature, c.train.contrast.alpha,
                c.train.contrast.dim) == ("paco", 1024, 0.05, 0.01, 32)
        assert c.data.views == ["autoaugment_cutout", "simclr"] and c.train.epochs == 400 and c.train.drop_last
    wd, wb, hs = cfgs["wd"], cfgs["wb"], cfgs["hs_stage1"]
    # WB rows: the reference protocol (test selection, TTA, first-n), CIFAR-100 WD 5e-3 on all params
    assert wd.protocol == "wb-reference" and wd.eval.selection_split == "test" and wd.eval.tta_flip
    assert wd.data.n_max == (500 if "cifar100" in exp else 5000) and wd.train.wd_scope == "all"
    assert wb.stage == "stage2" and wb.stage2.maxnorm and wb.stage2.train.weight_decay == 0.1
    assert wb.stage2.maxnorm_cadence == "epoch" and wb.stage2.train.loss.name == "cb_bce_softmax"
    assert wb.parent_hash == wd.run_hash() and wb.data == wd.data
    assert not cfgs["cb_wd"].stage2.maxnorm and cfgs["cb_maxnorm"].stage2.train.weight_decay == 0.0
    assert not wd.eval.select_tta_flip and not wb.eval.select_tta_flip     # best epoch on plain logits
    # the WB code normalises CIFAR-100 with the copied CIFAR-10 statistics (it has no CIFAR-10 code: card)
    std = [0.2023, 0.1994, 0.2010] if "cifar100" in exp else [0.2470, 0.2435, 0.2616]
    assert wd.data.std == std and wb.data.std == std
    # HS: the HS code's protocol: 20 val images held out (n_max = pool - 20, round()), SGD without
    # weight_decay, WD in the loss + FR + ETF, scheduler stepped before each epoch, the best epoch on val
    assert hs.protocol == "hs-reference" and hs.eval.selection_split == "val" and hs.eval.select == "best"
    assert not hs.eval.tta_flip and not hs.eval.select_tta_flip and hs.data.std == std
    assert hs.data.n_max == (480 if "cifar100" in exp else 4980) and hs.data.rounding == "round"
    assert hs.train.weight_decay == 0.0 and hs.train.schedule_step_at_epoch_start
    assert hs.model.classifier == "etf" and hs.train.wd_in_loss == 5e-3 and hs.train.feature_reg == 0.01
    la = cfgs["hs"]
    assert la.protocol == "hs-reference" and la.parent_hash == hs.run_hash()
    assert la.posthoc.kind == "la_mult" and la.posthoc.tau is None and la.eval.selection_split == "val"
    # MiSLAS (its code's configs): ResNet-32, 200 epochs of mixup (alpha 1) at lr 0.1 (warm-up 5, x0.1 after 160 and
    # 180), WD 2e-4, batch 128; stage 2: 10 epochs, LAS, the rows at lr_factor x lr, BN re-estimated on CIFAR-100
    mix, mis = cfgs["mixup"], cfgs["mislas"]
    assert mix.protocol == mis.protocol == "mislas-reference" and mis.parent_hash == mix.run_hash()
    assert (mix.model.name, mix.train.epochs, mix.train.mixup_alpha, mix.train.lr_milestones) == (
        "resnet32_cifar", 200, 1.0, [160, 180])
    assert (mix.data.selection, mix.eval.selection_split, mix.data.std) == ("shuffle", "test", list(CIFAR10_STD))
    eps, rows_lr, bn = {"cifar100_lt_if100": ((0.4, 0.1), 0.2, "train"),
                        "cifar100_lt_if50": ((0.3, 0.0), 0.1, "train"),
                        "cifar100_lt_if10": ((0.2, 0.0), 0.1, "train"),
                        "cifar10_lt_if100": ((0.3, 0.0), 0.5, "eval")}[exp]
    # RIDE / SADE (their configs): 3 experts at 3/4 width, cosine x30, Nesterov, WD 5e-4, x gamma after 160 / 180,
    # under their codes' protocols: LDAM-DRW's cut, the best test epoch, the copied statistics
    for key in experts:
        c = cfgs[key]
        assert c.protocol == f"{key}-reference"
        assert (c.model.experts, c.model.expert_width, c.model.expert_scale) == (3, 0.75, 30.0)
        assert (c.train.nesterov, c.train.weight_decay, c.train.lr_milestones, c.train.warmup_unit) == (
            True, 5e-4, [160, 180], "epoch")
        assert (c.eval.selection_split, c.eval.select, c.data.selection, c.data.val_per_class) == (
            "test", "best", "shuffle", 0)
        assert c.data.std == [0.2023, 0.1994, 0.2010] and c.train.wd_scope == "all"
    if paco:
        assert cfgs["paco"].protocol == "paco-reference" and cfgs["paco"].eval.select == "best"
    if tta:
        t = cfgs["sade_tta"]
        assert t.stage == "posthoc" and t.posthoc.kind == "sade_tta" and t.parent_hash == cfgs["sade"].run_hash()
        assert t.model.experts == 3 and t.method == "sade-tta"
    if "ride" in experts:
        ea = cfgs["ride_ea"]
        assert ea.stage2.router and ea.parent_hash == cfgs["ride"].run_hash() and ea.stage2.train.batch_size == 512
        r = cfgs["ride"].train
        assert (r.lr_step_gamma, r.loss.drw_epoch, r.loss.ride_diversity, r.loss.cb_normalizer) == (
            0.01, 160, -0.45, "weights")
        # RIDE + Distill: 3 experts taught by the 6-expert teacher (T 1.5, warm-up 20), then the router on them
        teacher, student, dea = cfgs["ride_teacher"], cfgs["ride_distill"], cfgs["ride_distill_ea"]
        assert teacher.model.experts == 6 and student.model.experts == 3 and student.train.warmup_epochs == 20
        d = student.train.distill
        assert (d.teacher_hash, d.temperature, d.teacher_bn, d.repeat) == (teacher.run_hash(), 1.5, "train", "experts")
        assert dea.parent_hash == student.run_hash() and dea.stage2.router and dea.method == "ride-distill-ea"
    loss = mis.stage2.train.loss
    assert (loss.name, (loss.las_head, loss.las_tail), mis.stage2.lws_rows_lr_factor, mis.stage2.bn_mode) == (
        "las", eps, rows_lr, bn)


@pytest.fixture(scope="module")
def large_shards(tmp_path_factory):
    """Fake ImageNet-LT / Places-LT / iNat shards under one root, prepared against the real cards (so the
    configs load exactly as they would on the real data; the size deviation is allowed and recorded)."""
    from bench.data.prepare import prepare
    from tests.shardtools import make_inat_tree, make_split_file_tree

    root = tmp_path_factory.mktemp("shards")
    for name in ("imagenet-lt", "places-lt", "inat2018"):
        src = tmp_path_factory.mktemp(name)
        images = make_inat_tree(src) if name == "inat2018" else make_split_file_tree(src, name)
        prepare(name, root / name, images, src / "splits", workers=1, allow_deviation=True, progress="off")
    return root


@pytest.fixture
def large_env(large_shards, monkeypatch, tmp_path):
    monkeypatch.setenv("LTBENCH_SHARDS", str(large_shards))
    monkeypatch.setenv("LTBENCH_WEIGHTS", str(tmp_path))


def test_large_scale_configs(repo, large_env, large_shards):
    d = repo / "configs" / "paper"
    inlt = {p.stem: load_config(p) for p in sorted((d / "imagenet_lt").glob("*.yaml"))}
    assert set(inlt) == {"wd", "wb", "taunorm", "hs_stage1", "hs", "paco", "paco_x50", "paco_x101", "gpaco",
                         "gpaco_x50", "gpaco_x101", "ride", "ride_ea", "ride_teacher", "ride_distill",
                         "ride_distill_ea", "sade", "bcl", "bcl_sim_rand", "bcl_rand_rand", "mixup", "mislas"}
    # BCL (its README command, main.py's defaults; ResNeXt-50 as its table): the best epoch on the val list
    bcl = inlt["bcl"]
    assert bcl.protocol == "clean" and (bcl.eval.selection_split, bcl.eval.select) == ("val", "best")
    assert bcl.data.views == ["rrc_randaugment", "rrc_colour", "rrc_colour"] and not bcl.train.drop_last
    assert (bcl.model.classifier, bcl.train.loss.name, bcl.train.contrast.dim, bcl.train.contrast.weight) == (
        "cosine", "logit_adjusted", 1024, 0.35)
    # its sim-rand / rand-rand rows: RandAugment after the contrastive views' colour steps (augmentation_randnclsstack)
    stack = "rrc_colour_randaugment"
    # its DataParallel loss on the whole batch: under DDP the contrast set is every process's views
    assert all(inlt[k].train.contrast.gather for k in ("bcl", "bcl_sim_rand", "bcl_rand_rand"))
    assert inlt["bcl_sim_rand"].data.views == ["rrc_randaugment", stack, "rrc_colour"]
    assert inlt["bcl_rand_rand"].data.views == ["rrc_randaugment", stack, stack]
    assert (inlt["bcl_sim_rand"].method, inlt["bcl_rand_rand"].method) == ("bcl-sim-rand", "bcl-rand-rand")
    wd = inlt["wd"]
    assert wd.model.name == "resnext50_32x4d" and wd.data.profile == "files" and wd.data.imbalance_factor == 256
    assert wd.data.shards == str(large_shards / "imagenet-lt") and wd.data.shards_manifest
    assert wd.protocol == "clean" and wd.eval.selection_split == "val" and wd.data.augment == "rrc_flip"
    assert (wd.data.image_size, wd.data.eval_resize, wd.data.val_per_class) == (224, 256, 20)
    wb = inlt["wb"]
    assert wb.parent_hash == wd.run_hash() and wb.stage2.maxnorm and wb.stage2.bn_mode == "eval"
    assert wb.data.shards_manifest == wd.data.shards_manifest
    assert wb.stage2.train.loss.name == "cb_ce" and wb.stage2.train.loss.cb_normalizer == "batch"
    hs = inlt["hs_stage1"]
    assert hs.protocol == "hs-reference" and hs.eval.select == "best" and hs.train.weight_decay == 0.0
    assert hs.data.val_per_class == 20 and hs.data.mean == [0.485, 0.456, 0.406]   # split files; ImageNet card
    inat = {p.stem: load_config(p) for p in sorted((d / "inat2018").glob("*.yaml"))}
    # no val split: wd / wb choose nothing on it
    assert set(inat) == {"wd", "wb", "paco", "gpaco", "gpaco_r152", "ride", "ride_ea", "ride_teacher", "ride_distill",
                         "ride_distill_ea", "sade", "mixup", "mislas"}
    assert inat["gpaco_r152"].model.name == "resnet152" and inat["gpaco_r152"].train.lr == inat["gpaco"].train.lr
    # MiSLAS (its config/imagenet, config/ina2018): mixup 0.2 with cosine per epoch, then stage 2 on class-aware batches
    # of the stage-1 transform, read from the shards; the best epoch on the test list in both stages
    for cfgs, wd_, epochs in ((inlt, 5e-4, 180), (inat, 1e-4, 200)):
        mix, mis = cfgs["mixup"], cfgs["mislas"]
        assert mix.protocol == mis.protocol == "mislas-reference" and mis.parent_hash == mix.run_hash()
        assert (mix.train.mixup_alpha, mix.train.epochs, mix.train.schedule, mix.train.warmup_epochs) == (
            0.2, epochs, "cosine", 0) and mix.data.augment == "rrc_flip_jitter" and mix.train.weight_decay == wd_
        s2 = mis.stage2
        assert (s2.augment, s2.train.sampler, s2.train.epoch_length, s2.bn_mode, s2.lws, s2.lws_rows_lr_factor) == (
            "rrc_flip_jitter", "class_aware", "dataset_plus_one", "train", True, 0.05)
        assert (s2.train.loss.las_head, s2.train.loss.las_tail, s2.train.weight_decay) == (0.3, 0.0, wd_)
        assert (mis.eval.selection_split, mis.eval.select) == (mix.eval.selection_split, mix.eval.select) == (
            "test", "best")
    # RIDE / SADE (their ImageNet-LT ResNeXt-50 and iNaturalist ResNet-50 configs): 3 experts at 3/4 width; what
    # their loaders select on: SADE's ImageNet-LT val list, else the last epoch
    for cfgs, arch, aug in ((inlt, "resnext50_32x4d", "rrc_flip_jitter"), (inat, "resnet50", "rrc_flip")):
        for key in ("ride", "sade"):
            c = cfgs[key]
            assert c.protocol == f"{key}-reference" and c.model.name == arch and c.data.augment == aug
            assert (c.model.experts, c.model.expert_width, c.train.nesterov) == (3, 0.75, True)
    # RIDE's router (its *_ride_ea.json, the published headline rows): class-balanced batches of the stage-1 transform
    for cfgs in (inlt, inat):
        ea = cfgs["ride_ea"]
        assert ea.parent_hash == cfgs["ride"].run_hash() and ea.stage2.router and ea.stage2.router_top == 50
        assert ea.stage2.augment == cfgs["ride"].data.augment and ea.stage2.train.sampler == "class_balanced"
        assert ea.eval.select == "last"
        # config_*_distill_ride.json: 3 experts taught by 6 at T 1.5, then the router on them
        teacher, student, dea = cfgs["ride_teacher"], cfgs["ride_distill"], cfgs["ride_distill_ea"]
        assert (teacher.model.experts, student.model.experts, student.train.distill.temperature) == (6, 3, 1.5)
        assert student.train.distill.teacher_hash == teacher.run_hash() and dea.parent_hash == student.run_hash()
    assert (inlt["sade"].eval.selection_split, inlt["sade"].eval.select) == ("val", "best")
    assert inlt["ride"].eval.select == inat["ride"].eval.select == inat["sade"].eval.select == "last"
    assert (inlt["sade"].train.epochs, inlt["sade"].train.schedule, inlt["sade"].train.loss.sade_tau) == (180, "cosine",
                                                                                                         2.0)
    assert (inat["sade"].train.loss.sade_tau, inat["ride"].train.loss.ride_temperature_factor) == (1.0, 0.015)
    # a child takes the protocol's per-dataset settings of the dataset it inherits (SADE's test-time aggregation on
    # ImageNet-LT: SADE validates on the val list there)
    tta = load_config(d / "cifar100_lt_if100" / "sade_tta.yaml", [f"parent={d / 'imagenet_lt' / 'sade.yaml'}"])
    assert tta.data.dataset == "imagenet-lt" and tta.eval.selection_split == "val"
    # PaCo (its ImageNetLT_train_R50.sh / Inat_train_R50.sh): the best epoch on the test list, as its code keeps it
    for paco, wd_ in ((inlt["paco"], 5e-4), (inat["paco"], 1e-4)):
        assert paco.protocol == "paco-reference" and (paco.eval.selection_split, paco.eval.select) == ("test", "best")
        assert paco.data.views == ["rrc_randaugment", "rrc_sim"] and paco.data.augment == "none"
        assert paco.model.name == "resnet50" and paco.train.weight_decay == wd_ and paco.train.epochs == 400
        c = paco.train.contrast
        assert (c.queue, c.dim, c.temperature, c.alpha, c.projection) == (8192, 128, 0.2, 0.05, "mlp2_bn")
    # PaCo's and GPaCo's ResNeXt scripts (ImageNetLT_train_X50.sh, _X101.sh): the stacked view, RandAugment n2 / 3 / 5
    for key, model, views, n, lr, t, alpha in (
            ("paco_x50", "resnext50_32x4d", ["rrc_sim_randaugment", "rrc_sim"], 2, 0.02, 0.07, 0.05),
            ("paco_x101", "resnext101_32x4d", ["rrc_sim_randaugment", "rrc_sim"], 3, 0.03, 0.2, 0.05),
            ("gpaco_x50", "resnext50_32x4d", ["rrc_randaugment", "rrc_sim_randaugment"], 3, 0.06, 0.2, 0.05),
            ("gpaco_x101", "resnext101_32x4d", ["rrc_randaugment", "rrc_sim_randaugment"], 5, 0.06, 0.2, 0.05)):
        c = inlt[key]
        assert (c.model.name, c.data.views, c.data.randaugment_n, c.train.lr) == (model, views, n, lr), key
        assert (c.train.contrast.temperature, c.train.contrast.alpha, c.protocol) == (t, alpha, "paco-reference"), key
    # torchvision's ResNet init in the codes that build it (zero_init_residual=False), timm's elsewhere
    assert all(cfgs[k].model.zero_init_last is False for cfgs in (inlt, inat) for k in ("mixup", "paco", "gpaco"))
    assert inlt["bcl"].model.zero_init_last is False and inlt["wd"].model.zero_init_last is None
    # GPaCo (GPaCo/LT/sh/LT/ImageNetLT_train_R50.sh, Inat_train_R50.sh): no key encoder, GPaCo's MLP, RandAugment on
    # both ImageNet-LT views (randcls_randclsstack), randcls_sim on iNaturalist
    for g, views, alpha in ((inlt["gpaco"], ["rrc_randaugment", "rrc_sim_randaugment"], 0.045),
                            (inat["gpaco"], ["rrc_randaugment", "rrc_sim"], 0.05)):
        c = g.train.contrast
        assert g.protocol == "paco-reference" and g.data.views == views and g.data.view_blur == "pil"
        assert (c.method, c.projection, c.queue, c.alpha, g.train.lr, g.train.epochs) == ("gpaco", "mlp3", 8192, alpha,
                                                                                          0.04, 400)
    assert inat["wd"].model.name == "resnet50" and inat["wd"].train.batch_size == 512
    assert inat["wd"].eval.selection_split == "test" and inat["wd"].eval.select == "last"
    assert inat["wd"].data.val_per_class == 0 and inat["wd"].data.imbalance_factor == 500
    # SADE Places-LT: 3 full-width experts copied from the pretrained ResNet-152, the backbone at 0.1 x lr
    sp = load_config(d / "places_lt" / "sade.yaml")
    assert (sp.model.experts, sp.model.expert_width, sp.train.backbone_lr_factor, sp.train.loss.sade_tau) == (
        3, 1.0, 0.1, 1.0) and sp.model.pretrained_file.endswith("resnet152_imagenet.pth")
    assert (sp.eval.selection_split, sp.eval.select, sp.protocol) == ("val", "best", "sade-reference")
    # PaCo / GPaCo Places-LT (their PlacesLT_train_R152.sh): the pretrained ResNet-152, convolutions frozen but the last
    # block, fp16, sim_sim views, the best epoch on the val list (the script's only eval list)
    for key, alpha in (("paco", 0.05), ("gpaco", 0.02)):
        c = load_config(d / "places_lt" / f"{key}.yaml")
        assert (c.method, c.train.contrast.method, c.train.contrast.alpha, c.train.freeze_convs, c.train.amp) == (
            key, key, alpha, True, "fp16")
        assert c.data.views == ["rrc_sim", "rrc_sim"] and (c.train.epochs, c.train.warmup_epochs) == (30, 5)
        assert (c.eval.selection_split, c.eval.select) == ("val", "best") and c.model.name == "resnet152"
    # MiSLAS Places-LT (config/places/places_resnet152_stage{1_mixup,2_mislas}.yaml, resnet_places.py): the
    # pretrained ResNet-152 with a new last bottleneck, which alone trains with the classifier on the eval-mode
    # trunk (90 epochs); stage 2 re-estimates that block's BatchNorm only, smoothing 0.4 / 0.1; the best epoch on the
    # test list
    mix, mis = (load_config(d / "places_lt" / f"{k}.yaml") for k in ("mixup", "mislas"))
    assert (mix.model.name, mix.model.reinit_last_blocks, mix.train.train_only_last_blocks) == ("resnet152", 1, 1)
    assert (mix.train.epochs, mix.train.mixup_alpha, mix.train.weight_decay, mix.data.augment) == (
        90, 0.2, 5e-4, "rrc_flip_jitter") and mix.model.pretrained_file.endswith("resnet152_imagenet.pth")
    s2 = mis.stage2
    assert (s2.bn_mode, s2.bn_last_blocks, s2.train.loss.las_head, s2.train.loss.las_tail, s2.augment) == (
        "train", 1, 0.4, 0.1, "rrc_flip_jitter") and mis.parent_hash == mix.run_hash()
    assert (mis.eval.selection_split, mis.eval.select, mix.eval.selection_split, mix.eval.select) == (
        "test", "best", "test", "best")
    places = load_config(d / "places_lt" / "wd.yaml")
    assert places.model.name == "resnet152" and places.model.pretrained_file.endswith("resnet152_imagenet.pth")
    assert places.data.n_max == 4980


def test_every_config_in_the_repo_loads(repo, large_env):
    paths = [p for p in sorted((repo / "configs").rglob("*.yaml")) if not p.name.startswith("_")]
    assert len(paths) > 40
    for p in paths:
        cfg = load_config(p)
        assert cfg.name and cfg.method, p


def test_foundation_configs(repo, large_env, tmp_path):
    """configs/foundation/: CLIP ViT-B/16 zero-shot (+ post-hoc LA), LIFT (AdaptFormer) and its LoRA variant, the
    linear probe, cRT, LWS, WB stage 2 and tau-norm on the frozen model, the model's preprocessing."""
    d = repo / "configs" / "foundation"
    for ds, classes_r, epochs in (("imagenet_lt", 32, 10), ("places_lt", 8, 10), ("inat2018", 256, 20)):
        zs, la, lift, lora = (load_config(d / ds / f"{n}.yaml") for n in ("zeroshot", "zeroshot_la", "lift", "lora_la"))
        assert zs.train.epochs == 0 and zs.model.classifier == "zeroshot" and zs.model.embedding == "clip"
        assert zs.data.input_stats == "model" and zs.data.mean == [0.48145466, 0.4578275, 0.40821073]
        assert (zs.data.image_size, zs.data.eval_resize) == (224, 256)
        assert zs.model.pretrained_file == str(tmp_path / "clip_vit_b16_openai.bin")
        assert la.parent_hash == zs.run_hash() and la.posthoc.kind == "la_add"
        assert (lift.model.peft.method == "adaptformer" and lift.model.peft.r == classes_r
                and lift.train.epochs == epochs)
        assert lift.model.zeroshot.logit_scale == 25 and lift.train.loss.name == "logit_adjusted"
        assert lora.model.peft.method == "lora" and lora.model.peft.r == classes_r and lora.model.peft.alpha == 1
        assert (lora.train, lora.model.zeroshot, lora.method) == (lift.train, lift.model.zeroshot, "lift-lora")
        assert (ds == "inat2018") == (zs.eval.selection_split == "test")
        # the decoupled-classifier family on the frozen zero-shot model (item 3), each its own named method
        probe, crt, lws, wb, tn = (load_config(d / ds / f"{n}.yaml") for n in ("probe", "crt", "lws", "wb", "taunorm"))
        for c in (probe, crt, lws, wb):
            assert c.stage == "stage2" and c.parent_hash == zs.run_hash() and c.model == zs.model
            assert c.stage2.cache_features and c.stage2.augment == "none"
        assert [c.method for c in (probe, crt, lws, wb, tn)] == ["probe", "crt", "lws", "wb", "tau-norm"]
        assert probe.stage2.reinit_classifier and probe.stage2.train.sampler == "instance"
        assert crt.stage2.reinit_classifier and crt.stage2.train.sampler == "class_aware"
        assert lws.stage2.lws and not lws.stage2.reinit_classifier and lws.stage2.train.sampler == "class_aware"
        assert (crt.stage2.train.epochs, lws.stage2.train.epochs) == (10, 5)
        assert (probe.stage2.train.lr, probe.stage2.train.batch_size, probe.stage2.train.epochs) == (0.2, 512, 10)
        assert wb.stage2.maxnorm and wb.stage2.train.loss.name == "cb_ce" and wb.stage2.train.weight_decay == 0.1
        assert tn.stage == "posthoc" and tn.parent_hash == probe.run_hash()
        assert tn.posthoc.tau == (1.0 if ds == "inat2018" else None)
        assert all(c.name == zs.name and c.protocol == zs.protocol for c in (probe, crt, lws, wb, tn))
