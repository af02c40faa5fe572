"""Foundation models (extra `foundation`: open_clip, peft) on tiny random-weight towers, in process: zero-shot weights
from prompts, the CLIP image embedding, LoRA and AdaptFormer training only their adapters and the classifier, final.pt
(LoRA merged, AdaptFormer kept), exact resume after a kill, cached-feature probes. The numbers of these random models
mean nothing: only their equalities are tested."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("peft")

from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from timm.models import generate_default_cfgs, register_model  # noqa: E402
from timm.models.vision_transformer import _create_vision_transformer  # noqa: E402

from bench.config import ConfigError  # noqa: E402
from bench.experiment import load_config  # noqa: E402
from bench.data.lt import build_lt_data  # noqa: E402
from bench.launch.run import run_experiment  # noqa: E402
from bench.methods.classifiers import make_model  # noqa: E402
from bench.methods.zeroshot import prompt_weights  # noqa: E402
from bench.models.parts import encode, head_of  # noqa: E402
from bench.runtime.rundir import RunDir  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["runtime.threads=1", "runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled"]
TINY = ["data.synthetic.train_per_class=24", "data.synthetic.test_per_class=6", "data.val_per_class=4",
        "train.batch_size=16", *QUIET]

# A CLIP image tower of timm's kind (pre-norm ViT, token pool, projection as `head`), 16 px, width 32, 2 blocks,
# projecting to 16 dimensions: the architecture of the tiny open_clip model below, so one checkpoint holds both.
default_cfgs = generate_default_cfgs({"vit_micro_clip_test.untrained": dict(
    num_classes=16, input_size=(3, 16, 16), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=1.0,
    classifier="head", first_conv="patch_embed.proj")})


@register_model
def vit_micro_clip_test(pretrained: bool = False, **kwargs):
    args = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, pre_norm=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-5))
    return _create_vision_transformer("vit_micro_clip_test", pretrained=pretrained, **dict(args, **kwargs))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
NAMES = ["cat", "dog", "sea_lion", "truck", "tree", "apple", "boat", "cup", "bird", "lamp"]


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A random tiny open_clip model saved as an open_clip checkpoint, its config JSON and a class-names file."""
    d = tmp_path_factory.mktemp("clip")
    (d / "ltb-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "ltb-tiny-clip.json")
    torch.manual_seed(0)
    clip = open_clip.create_model("ltb-tiny-clip")
    with torch.no_grad():   # a non-trivial LayerNorm and logit scale, so a wrong conversion shows
        for name, p in clip.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
        clip.logit_scale.fill_(3.0)
    torch.save(clip.state_dict(), d / "tiny-clip.pt")
    (d / "names.txt").write_text("\n".join(NAMES) + "\n")
    return {"clip": clip.eval(), "ckpt": str(d / "tiny-clip.pt"), "json": str(d / "ltb-tiny-clip.json"),
            "names": str(d / "names.txt")}


def clip_args(towers, *extra):
    return [*TINY, "model.name=vit_micro_clip_test", "model.embedding=clip", "model.classifier=zeroshot",
            f"model.pretrained_file={towers['ckpt']}", f"model.zeroshot.text_model={towers['json']}",
            f"model.zeroshot.class_names_file={towers['names']}",
            "model.zeroshot.templates=['a photo of a {}.', 'a drawing of the {}.']", *extra]


def hand_weights(clip, names, templates):
    """Normalise each prompt embedding, average over templates, renormalise: by hand, one class at a time."""
    tok = open_clip.get_tokenizer("ltb-tiny-clip")
    rows = []
    with torch.no_grad():
        for n in names:
            embs = [clip.encode_text(tok([t.format(n.replace("_", " "))]))[0] for t in templates]
            mean = sum(e / e.norm() for e in embs) / len(embs)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_prompt_weights_normalise_average_renormalise():
    table = {"a x": [3.0, 4.0], "b x": [1.0, 0.0], "a y": [0.0, 2.0], "b y": [0.0, -5.0]}
    w = prompt_weights(lambda ps: torch.tensor([table[p] for p in ps]), ["x", "y"], ["a {}", "b {}"])
    x = torch.tensor([0.6 + 1.0, 0.8 + 0.0]) / 2                   # (3,4)/5 and (1,0), averaged
    expected = torch.stack([x / x.norm(), torch.tensor([0.0, 0.0]) / 1.0])
    assert torch.allclose(w[0], expected[0])
    assert torch.isfinite(w[1]).all() and w[1].abs().sum() == 0    # opposite prompts cancel: a zero row stays zero


def test_clip_embedding_is_open_clips_and_zeroshot_head_is_the_prompt_weights(towers):
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers))
    assert cfg.data.input_stats == "model" and cfg.data.mean == list(OPENAI_CLIP_MEAN) and cfg.data.resize == 16
    data = build_lt_data(cfg.data)
    torch.manual_seed(0)
    model = make_model(cfg, data).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        f = encode(model, x)
        expected = F.normalize(towers["clip"].encode_image(x), dim=-1)
    assert torch.allclose(f, expected, atol=1e-5)          # the image tower converted by timm, projection included
    t = hand_weights(towers["clip"], NAMES, cfg.model.zeroshot.templates)
    head = head_of(model)
    assert float(head.scale) == pytest.approx(float(torch.tensor(3.0).exp()))   # the checkpoint's logit scale
    assert torch.allclose(head.weight, head.scale * t, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(x), head.scale * expected @ t.T, atol=1e-4)   # logits = s cos(f, t_c)


def test_zeroshot_run_and_posthoc_la_child(towers, tmp_path):
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "train.epochs=0", "model.zeroshot.logit_scale=50"))
    run = RunDir.for_config(cfg, tmp_path)
    result = run_experiment(cfg, run, runs_root=tmp_path)
    assert result["status"] == "complete" and result["epochs"] == 0 and result["selected_epoch"] == 0
    assert set(result["metrics"]) >= {"all", "many", "medium", "few"}
    assert result["zeroshot"]["logit_scale"] == 50 and not result["zeroshot"]["trained"]
    assert result["preprocessing"]["source"] == "model" and result["preprocessing"]["resize"] == 16
    final = torch.load(run.final_ckpt, weights_only=False)["model"]
    t = hand_weights(towers["clip"], NAMES, cfg.model.zeroshot.templates)
    assert torch.allclose(final["head.weight"], 50 * t, atol=1e-5) and not final["head.bias"].any()
    assert not any("direction" in k for k in final)        # folded: a plain linear classifier
    child = load_config(CONFIGS / "smoke_taunorm.yaml", [*QUIET, f"parent={run.path}", "posthoc.kind=la_add"])
    ph = run_experiment(child, RunDir.for_config(child, tmp_path), runs_root=tmp_path)["posthoc"]
    assert (ph["kind"] == "la_add" and ph["chosen_on"] == "val"
            and ph["grid"][str(ph["tau"])] == max(ph["grid"].values()))


LORA = ["train.epochs=2", "model.peft.method=lora", "model.peft.r=4", "model.peft.alpha=8",
        "train.loss.name=logit_adjusted", "train.lr=0.5", "train.weight_decay=0", "model.zeroshot.logit_scale=10",
        "eval.select=last"]


ADAPTFORMER = [*LORA[:1], "model.peft.method=adaptformer", "model.peft.r=4", *LORA[4:]]


def finished_run(root: Path, args: list[str]):
    """(runs root, config, run directory, result) of a stage-1 run of the tiny tower, trained in process."""
    cfg = load_config(CONFIGS / "smoke.yaml", args)
    run = RunDir.for_config(cfg, root)
    return root, cfg, run, run_experiment(cfg, run, runs_root=root)


@pytest.fixture(scope="module")
def lora_run(towers, tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("lora"), clip_args(towers, *LORA))


@pytest.fixture(scope="module")
def adaptformer_run(towers, tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("adaptformer"), clip_args(towers, *ADAPTFORMER))


def test_lora_trains_only_adapters_and_classifier(lora_run):
    root, cfg, run, result = lora_run
    data = build_lt_data(cfg.data)
    start = make_model(cfg, data).state_dict()            # the pretrained weights, adapters injected, text head
    last = torch.load(run.last_ckpt, weights_only=False)["model"]
    assert set(last) == set(start)
    changed = {k for k in start if not torch.equal(start[k], last[k])}
    adapters = {k for k in start if "lora_" in k}
    assert adapters and changed <= adapters | {"head.direction"}
    assert "head.direction" in changed and any("lora_B" in k for k in changed)
    lora = sum(v.numel() for k, v in start.items() if "lora_" in k)
    assert lora == 2 * (4 * 32 + 96 * 4)                   # two qkv layers: A (r x 32) + B (96 x r)
    assert result["trainable_params"]["trainable"] == lora + 10 * 16
    assert result["trainable_params"]["share"] == pytest.approx((lora + 160) / result["trainable_params"]["total"])
    assert result["peft"] == {"method": "lora", "merged_layers": 2} and result["zeroshot"]["trained"]


def test_merged_final_equals_the_lora_model(lora_run):
    root, cfg, run, _ = lora_run
    data = build_lt_data(cfg.data)
    lora_model = make_model(cfg, data)
    lora_model.load_state_dict(torch.load(run.last_ckpt, weights_only=False)["model"])   # the last epoch, unmerged
    plain = make_model(cfg, data, init=False)
    final = torch.load(run.final_ckpt, weights_only=False)["model"]
    assert not any("lora_" in k for k in final)
    plain.load_state_dict(final)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(lora_model.eval()(x), plain.eval()(x), atol=1e-4)
    pretrained = make_model(cfg, data, init=False).state_dict()
    moved = {k for k in final if k.startswith("tower.") and not torch.equal(final[k], pretrained[k])}
    assert moved == {f"tower.blocks.{i}.attn.qkv.weight" for i in range(2)}   # W + (alpha/r) B A; biases untouched


@pytest.mark.parametrize("method, args", [("lora", LORA), ("adaptformer", ADAPTFORMER)])
def test_killed_mid_epoch_resumes_exactly(method, args, request, towers, tmp_path, monkeypatch):
    """A run that dies right after a mid-epoch checkpoint and is started again ends with the uninterrupted
    run's final.pt, bit for bit (one thread)."""
    from bench.train import loop

    _, _, ref, _ = request.getfixturevalue(f"{method}_run")
    every = ["runtime.checkpoint_every_steps=3"]
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, *args, *every))
    assert cfg.run_hash() == load_config(CONFIGS / "smoke.yaml", clip_args(towers, *args)).run_hash()
    save = loop.LastCheckpoint.save

    def save_then_die(self, state):
        save(self, state)
        if state.epoch == 1 and state.step == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop.LastCheckpoint, "save", save_then_die)
    run = RunDir.for_config(cfg, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run, runs_root=tmp_path)
    monkeypatch.setattr(loop.LastCheckpoint, "save", save)
    assert torch.load(run.last_ckpt, weights_only=False)["state"]["step"] == 3
    run_experiment(cfg, run, runs_root=tmp_path)
    a = torch.load(ref.final_ckpt, weights_only=False)["model"]
    b = torch.load(run.final_ckpt, weights_only=False)["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["lora", "adaptformer"])
def test_cached_feature_probe_equals_recomputed(method, request):
    """cRT-style linear probe on the CLIP embedding of a LoRA (merged) or AdaptFormer (kept) parent: cached
    features train the classifier the backbone recomputed every epoch does."""
    root, _, parent, _ = request.getfixturevalue(f"{method}_run")
    args = [*QUIET, f"parent={parent.path}", "stage2.reinit_classifier=true", "stage2.maxnorm=false",
            "stage2.train.epochs=2", "stage2.train.loss.name=ce"]
    heads = []
    for cache in ("true", "false"):
        cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*args, f"stage2.cache_features={cache}"])
        result = run_experiment(cfg, RunDir.for_config(cfg, root), runs_root=root)
        assert result["cached_features"] == (cache == "true")
        heads.append(torch.load(RunDir.for_config(cfg, root).final_ckpt, weights_only=False)["model"]["head.weight"])
    assert torch.allclose(heads[0], heads[1], atol=1e-5)


def test_adaptformer_branch_by_hand():
    """s * W_up relu(W_down LN(x) + b_down) + s * b_up on a 2-wide input, the LayerNorm by hand; zero at init."""
    from bench.methods.adapters import AdaptFormer

    torch.manual_seed(0)
    a = AdaptFormer(width=2, bottleneck=1)
    x = torch.tensor([[1.0, 3.0]])
    assert torch.equal(a(x), torch.zeros(1, 2)) and a.down.weight.abs().sum() > 0      # up = 0: starts as identity
    with torch.no_grad():
        a.down.weight.copy_(torch.tensor([[2.0, -1.0]]))
        a.down.bias.fill_(0.5)
        a.up.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        a.up.bias.copy_(torch.tensor([0.25, 0.0]))
        a.scale.fill_(3.0)
    ln = torch.tensor([-1.0, 1.0]) * (1.0 / (1.0 + 1e-5) ** 0.5)    # (x - 2) / sqrt(var 1 + eps), weight 1, bias 0
    h = max(2.0 * ln[0] - ln[1] + 0.5, 0.0)                           # relu(-3 / sqrt(1 + eps) + 0.5) = 0
    assert h == 0
    assert torch.allclose(a(x), 3.0 * torch.tensor([[0.25, 0.0]]))  # only s * b_up is left
    with torch.no_grad():
        a.down.bias.fill_(4.0)                                          # relu(4 - 3 / sqrt(1 + eps)) > 0
    h = 4.0 + 2.0 * ln[0] - ln[1]
    assert torch.allclose(a(x), 3.0 * torch.tensor([[h + 0.25, -2.0 * h]]), atol=1e-6)


def test_adaptformer_initialisation_is_lifts():
    """scale 1, up-projection and both biases 0, down-projection Kaiming-normal with a = sqrt(5): std
    sqrt(2 / (1 + 5)) / sqrt(fan_in), fan_in = the width (LIFT's ViT-B/16: 768, bottleneck 32)."""
    from bench.methods.adapters import AdaptFormer

    torch.manual_seed(0)
    a = AdaptFormer(width=768, bottleneck=32)
    assert a.scale.item() == 1.0 and a.scale.requires_grad
    assert not a.up.weight.any() and not a.up.bias.any() and not a.down.bias.any()
    assert a.down.weight.shape == (32, 768)
    assert a.down.weight.std().item() == pytest.approx((1 / 3) ** 0.5 / 768 ** 0.5, rel=0.03)
    assert abs(a.down.weight.mean().item()) < 1e-3
    assert torch.equal(a.ln.weight, torch.ones(768)) and a.ln.eps == 1e-5


def test_adaptformer_block_is_timms_block_plus_the_branch_on_the_mlp_input(towers):
    """With its branch at zero the model is the pretrained one (so AdaptFormerBlock's copy of timm's Block.forward
    is timm's); with a trained branch each block adds branch(x) to timm's output, x the MLP residual's input."""
    import copy

    from bench.methods.adapters import AdaptFormerBlock, add_adaptformer

    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "model.classifier=linear"))
    plain = make_model(cfg, build_lt_data(cfg.data)).eval()
    adapted = copy.deepcopy(plain)
    assert add_adaptformer(adapted.tower, 4) == 2
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), adapted(x))
        for b in adapted.tower.blocks:
            b.adaptformer.up.weight.normal_()
        block, ref = adapted.tower.blocks[0], plain.tower.blocks[0]
        assert type(block) is AdaptFormerBlock and type(ref) is not AdaptFormerBlock
        tokens = torch.randn(3, 5, 32)
        seen = []
        hook = ref.norm2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        expected = ref(tokens)
        hook.remove()
        assert torch.allclose(block(tokens), expected + block.adaptformer(seen[0]), atol=1e-6)
        assert not torch.allclose(block(tokens), expected)


def test_adaptformer_trains_only_its_branches_and_final_keeps_them(adaptformer_run):
    root, cfg, run, result = adaptformer_run
    data = build_lt_data(cfg.data)
    start = make_model(cfg, data).state_dict()
    last = torch.load(run.last_ckpt, weights_only=False)["model"]
    assert set(last) == set(start)
    changed = {k for k in start if not torch.equal(start[k], last[k])}
    branches = {k for k in start if ".adaptformer." in k}
    assert changed <= branches | {"head.direction"} and "head.direction" in changed
    assert {f"tower.blocks.{i}.adaptformer.up.weight" for i in range(2)} <= changed
    per_block = 2 * 32 + (32 * 4 + 4) + (4 * 32 + 32) + 1                 # LN, down, up, scale
    assert sum(start[k].numel() for k in branches) == 2 * per_block
    assert result["trainable_params"]["trainable"] == 2 * per_block + 10 * 16
    assert result["peft"] == {"method": "adaptformer", "adapter_blocks": 2}
    final = torch.load(run.final_ckpt, weights_only=False)["model"]
    child = make_model(cfg, data, init=False)         # what a stage-2 / post-hoc child builds for final.pt
    child.load_state_dict(final)
    trained = make_model(cfg, data)
    trained.load_state_dict(last)                     # eval.select=last: final.pt is the last epoch
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(trained.eval()(x), child.eval()(x), atol=1e-5)


def test_lws_with_the_class_aware_sampler_on_an_adaptformer_parent(adaptformer_run):
    """configs/foundation/_lws.yaml's recipe in small: LWS on the (AdaptFormer) model's classifier, trained on cached
    features with Decoupling's class-aware sampler, whose epoch is max_c n_c x C samples; the rows of the
    child are the parent's, each scaled."""
    root, _, parent, _ = adaptformer_run
    cfg = load_config(CONFIGS / "smoke_stage2.yaml", [*QUIET, f"parent={parent.path}", "stage2.lws=true",
                                                     "stage2.maxnorm=false", "stage2.train.sampler=class_aware",
                                                     "stage2.train.epochs=1", "stage2.train.loss.name=ce"])
    run = RunDir.for_config(cfg, root)
    result = run_experiment(cfg, run, runs_root=root)
    assert result["cached_features"] and result["status"] == "complete"
    counts = build_lt_data(cfg.data).class_counts
    sched = torch.load(run.last_ckpt, weights_only=False)["scheduler"]      # stepped once per optimiser step
    assert sched["last_epoch"] == -(-max(counts) * len(counts) // cfg.stage2.train.batch_size) > 0
    assert max(counts) * len(counts) > 2 * sum(counts)                       # not an epoch of N samples
    before = torch.load(parent.final_ckpt, weights_only=False)["model"]["head.weight"]
    after = torch.load(run.final_ckpt, weights_only=False)["model"]["head.weight"]
    scales = (after * before).sum(1) / (before * before).sum(1)
    assert torch.allclose(after, scales[:, None] * before, atol=1e-5) and not torch.allclose(scales, torch.ones(10))


def test_group_matcher_reaches_the_tower_blocks(towers):
    from bench.models.parts import last_blocks

    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "model.classifier=linear"))
    model = make_model(cfg, build_lt_data(cfg.data))
    names = last_blocks(model, 1, "k")          # as on a plain timm ViT: the last block with the final norm
    assert {n.split(".")[1] for n in names} == {"blocks", "norm"}
    assert all(n.startswith(("tower.blocks.1.", "tower.norm.")) for n in names)


@pytest.mark.parametrize("extra, match", [
    (["model.embedding=pooled"], "set model.embedding=clip"),
    (["model.zeroshot.class_names_file=null"], "card of synthetic has none"),
    (["model.zeroshot.templates=['no slot']"], "with '{}'"),
    (["model.peft.method=adaptformer", "model.peft.dropout=0.1"], "'model.peft.dropout': 0.1 is a LoRA setting"),
    (["model.peft.method=adaptformer", "model.peft.target_modules=[fc1]"], "adaptformer has none"),
])
def test_config_errors(towers, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "smoke.yaml", clip_args(towers, *extra))


def test_adaptformer_needs_vit_blocks():
    cfg = load_config(CONFIGS / "smoke.yaml", ["model.peft.method=adaptformer", *QUIET])
    with pytest.raises(ConfigError, match=r"adaptformer goes into timm ViT blocks.*ResNet has none"):
        make_model(cfg, build_lt_data(cfg.data))


def test_grey_data_needs_to_rgb_for_a_clip_model(towers):
    args = ["data.dataset=fashion-mnist", "model.name=vit_micro_clip_test", "model.embedding=clip"]
    with pytest.raises(ConfigError, match="data.to_rgb=true"):
        load_config(None, args)
    cfg = load_config(None, [*args, "data.to_rgb=true"])
    assert cfg.data.resize == 16 and len(cfg.data.mean) == 3


def test_missing_weights_and_libraries_are_one_line_errors(towers, tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "train.epochs=0",
                                                        f"model.zeroshot.text_weights_file={tmp_path}/nope.pt"))
    run = RunDir.for_config(cfg, tmp_path)
    with pytest.raises(ConfigError, match="nope.pt does not exist"):
        run_experiment(cfg, run, runs_root=tmp_path)
    assert not (run.path / "config.yaml").exists()        # refused before the run directory was written
    monkeypatch.setitem(sys.modules, "open_clip", None)
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "train.epochs=0"))
    with pytest.raises(ConfigError, match=r"pip install 'ltbench\[foundation\]'"):
        make_model(cfg, build_lt_data(cfg.data))
    monkeypatch.setitem(sys.modules, "peft", None)
    cfg = load_config(CONFIGS / "smoke.yaml", clip_args(towers, "model.classifier=linear", "model.peft.method=lora"))
    with pytest.raises(ConfigError, match=r"lora needs the peft library.*ltbench\[foundation\]"):
        make_model(cfg, build_lt_data(cfg.data))


def test_default_configs_keep_their_hash_and_load_no_foundation_library():
    """The new fields are out of the hash at their defaults; a plain config never imports open_clip / peft."""
    import subprocess

    code = ("import sys; from bench.experiment import load_config; c = load_config('configs/smoke.yaml'); "
            "print(c.data.input_stats, c.data.resize, [m for m in ('open_clip', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=CONFIGS.parent, check=True).stdout.split()
    assert out == ["card", "None", "[]"]
    # the hashes of these configs before the foundation fields existed (ltbench 428c181)
    assert load_config(CONFIGS / "smoke.yaml").run_hash() == "da0cd1042a"
    assert load_config(CONFIGS / "demo" / "fmnist_wd.yaml").run_hash() == "eec8bc15dd"
