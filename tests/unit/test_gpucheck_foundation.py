"""The GPU check's `foundation` part (ViT: bare full fine-tune, bare LoRA, bare AdaptFormer, ltbench's trainer
with LoRA) rehearsed on the CPU in tiny mode (timm's test_vit at 160 px, as model.embedding=clip builds it), and
its two skip reasons. Speed is never asserted: only that every rate is measured and the counts are right."""

from __future__ import annotations

import sys
import time

import pytest

from bench.devtools.gpucheck import FOUNDATION, PARTS, gpu_check, section_foundation
from bench.devtools.gpureport import render


def test_tiny_foundation_part_on_the_cpu(tmp_path):
    pytest.importorskip("peft")
    out = gpu_check(tmp_path, tiny=True, device="cpu", parts=("foundation",))
    assert "foundation" in PARTS
    for part in ("pipeline", "models", "end_to_end"):
        assert out[part] == {"skipped": "not asked for (--gpu-parts)", "met": None}
    assert not (tmp_path / "photos").exists()          # no JPEG shards when neither part that reads them runs
    fm = out["foundation"]
    assert "skipped" not in fm, fm
    assert fm["model"] == "test_vit" and fm["embedding"] == "clip" and fm["channels_last"] is False
    assert fm["lora"] == {"r": 8, "alpha": 16.0, "target_modules": ["qkv"]}
    assert fm["amp"] == {"bare": "bf16", "trainer": "none"}     # tiny: no autocast in the trainer on the CPU
    full, lora, trainer = fm["bare_full"], fm["bare_lora"], fm["trainer_lora"]
    assert all(r["images_per_s"] > 0 for r in (full, lora, trainer, fm["bare_adaptformer"]))
    assert fm["lora trainer / bare full"] > 0 and fm["lora trainer / bare lora"] > 0
    assert full["trainable_params"]["share"] == 1.0
    # result.json's count: LoRA on the 6 qkv layers (64 -> 192): r (64 + 192) each, and the classifier on the
    # tower's 1000-wide head (10 classes); the bare LoRA loop builds the same model
    tp = trainer["trainable_params"]
    assert tp["trainable"] == 6 * 8 * (64 + 192) + 1000 * 10 + 10
    assert tp == lora["trainable_params"] and tp["total"] == full["trainable_params"]["total"] + 6 * 8 * (64 + 192)
    assert 0 < tp["share"] < 0.1                        # well below 1: the backbone is frozen
    assert trainer["peft"] == {"method": "lora", "merged_layers": 6}
    # AdaptFormer r 32 in each of the 6 blocks (width 64): LN 2 * 64, down 64 * 32 + 32, up 32 * 64 + 64, scale 1
    af = fm["bare_adaptformer"]["trainable_params"]
    assert af["trainable"] == 6 * (128 + 64 * 32 + 32 + 32 * 64 + 64 + 1) + 1000 * 10 + 10
    md = "\n".join(render(out))
    assert ("### Foundation model (ViT: LoRA, AdaptFormer)" in md and "channels_last off" in md
            and "train.amp=none" in md)
    assert "| bare loop, AdaptFormer r 32 (LIFT) |" in md
    assert "| ltbench trainer, LoRA r 8 on qkv (gpu_vit_lora.yaml) |" in md and f"| {tp['share']:.4f} |" in md


def test_foundation_part_says_why_it_is_skipped(tmp_path, monkeypatch):
    skipped = section_foundation(tmp_path, deadline=time.time() + 5, device="cpu")
    assert skipped["met"] is None and skipped["skipped"].startswith("time budget: it needs about 110 s")
    monkeypatch.setitem(sys.modules, "peft", None)     # `import peft` raises ImportError
    skipped = section_foundation(tmp_path, deadline=time.time() + 3600, device="cpu")
    assert (skipped["skipped"].startswith("peft cannot be imported (ModuleNotFoundError")
            and "make gpu-wheels" in skipped["skipped"])
    assert "skipped: peft cannot be imported" in "\n".join(render({
        "cores": 1, "pipeline": {"skipped": "x"}, "models": {"skipped": "x"}, "foundation": skipped,
        "end_to_end": {"skipped": "x"}}))
    assert not list(tmp_path.iterdir())                 # nothing was built or run


def test_foundation_config_is_vit_b16_lora_bf16():
    from bench.experiment import load_config

    cfg = load_config(FOUNDATION)
    assert cfg.model.name == "vit_base_patch16_clip_quickgelu_224" and cfg.model.embedding == "clip"
    assert (cfg.model.peft.method, cfg.model.peft.r, cfg.model.peft.target_modules) == ("lora", 8, ["qkv"])
    assert cfg.train.amp == "bf16" and cfg.runtime.channels_last is False
    assert cfg.data.synthetic.image_size == 224 and cfg.data.resize == 224 and cfg.train.batch_size == 256
