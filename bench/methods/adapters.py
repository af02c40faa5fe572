"""Parameter-efficient fine-tuning (extra `foundation`): LoRA (Hu et al. 2022) through the `peft` library, and
AdaptFormer (Chen et al. 2022) as LIFT (Shi et al. 2024) uses it, written here.

LoRA adds to a target linear layer W (d_out x d_in) a low-rank update: y = W x + b + (alpha / r) B A x with
A (r x d_in, Kaiming-uniform, seeded by the run's seed) and B (d_out x r, zeros: the model starts exactly as
pretrained). peft injects the layers in place (`inject_adapter_in_model`), so the model keeps its type and
its encode / head_of / group_matcher, and checkpoints and DDP see the adapters as ordinary parameters; only
they and the classifier require grad. At the end of training `merge_adapters` folds each update into its
layer, W <- W + (alpha / r) B A, and puts the plain layer back: final.pt is a plain timm model, which
stage-2 and post-hoc children load like any other (they never need peft). peft is imported only here, when
a run asks for adapters.

AdaptFormer adds to each transformer block a bottleneck branch parallel to the MLP (LIFT models/peft_vit.py):
x' = x + MLP(LN_2(x)) + s * W_up ReLU(W_down LN_a(x) + b_down) + s * b_up, where x is the block's residual
stream after attention, LN_a the adapter's own LayerNorm, s a learned scalar starting at 1, W_down of width
model.peft.r (Kaiming-normal, a = sqrt 5), W_up and both biases zeros: the model starts exactly as
pretrained. peft has no such parallel adapter, hence the module here. Its ReLU makes it impossible to fold
into the block, so final.pt holds it (blocks.i.adaptformer.*) and `build_adapters` builds it for every
child that loads final.pt.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from bench.config import ConfigError, PeftConfig
from bench.errors import one_line
from bench.models.clip import ClipImageModel
from bench.models.parts import head_of


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("config key 'model.peft.method': lora needs the peft library, which is not installed: "
                          "pip install 'ltbench[foundation]'") from None
    return peft


class AdaptFormer(nn.Module):
    """The parallel bottleneck branch s * up(relu(down(LN(x)))), zero at initialisation (LIFT peft_modules.py)."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        for t in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(self.ln(x))))


class AdaptFormerBlock(Block):
    """timm's pre-norm ViT block (vision_transformer.Block) with an AdaptFormer branch beside its MLP.

    forward is timm 1.0's Block.forward plus the branch; a test checks that a zero branch gives timm's block."""

    adaptformer: AdaptFormer

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) + self.adaptformer(x)


def add_adaptformer(backbone: nn.Module, bottleneck: int) -> int:
    """Give every timm ViT block of `backbone` an AdaptFormer branch in place (parameter names
    blocks.i.adaptformer.*, the block's own names unchanged); returns how many blocks."""
    if list(inspect.signature(Block.forward).parameters) != ["self", "x", "attn_mask", "is_causal"]:
        import timm  # AdaptFormerBlock.forward is a copy of timm 1.0's Block.forward: refuse to guess
        raise ConfigError(f"config key 'model.peft.method': adaptformer follows timm 1.0's ViT Block.forward, and "
                          f"timm {timm.__version__} changed it; install timm 1.0.x")
    blocks = [m for m in backbone.modules() if type(m) is Block]
    if not blocks:
        kinds = sorted({type(m).__name__ for m in backbone.modules() if "Block" in type(m).__name__})
        raise ConfigError(f"config key 'model.peft.method': adaptformer goes into timm ViT blocks "
                          f"(timm.models.vision_transformer.Block); {type(backbone).__name__} has none"
                          + (f" (its blocks: {', '.join(kinds)})" if kinds else ""))
    for block in blocks:
        block.__class__ = AdaptFormerBlock
        block.adaptformer = AdaptFormer(block.norm2.normalized_shape[0], bottleneck)
    return len(blocks)


def _backbone(model: nn.Module) -> nn.Module:
    return model.tower if isinstance(model, ClipImageModel) else model


def build_adapters(model: nn.Module, pc: PeftConfig) -> None:
    """The adapters that stay in final.pt (AdaptFormer), for a model that loads a finished run's weights."""
    if pc.method == "adaptformer":
        add_adaptformer(_backbone(model), pc.r)


def apply_peft(model: nn.Module, pc: PeftConfig) -> None:
    """Inject the adapters of model.peft into the backbone (never into the classifier); freeze the rest of the
    backbone; the classifier keeps training."""
    if pc.method == "none":
        return
    head = head_of(model)
    if pc.method == "adaptformer":
        build_adapters(model, pc)
        for name, p in _backbone(model).named_parameters():
            p.requires_grad_(".adaptformer." in f".{name}")
        for p in head.parameters():
            p.requires_grad_(True)
        return
    peft = _peft()
    config = peft.LoraConfig(r=pc.r, lora_alpha=pc.alpha, lora_dropout=pc.dropout, bias="none",
                             target_modules=list(pc.target_modules))
    backbone = _backbone(model)
    try:
        peft.inject_adapter_in_model(config, backbone)
    except ValueError as e:      # no module matched, or a module type LoRA cannot wrap
        raise ConfigError(f"config key 'model.peft.target_modules': {list(pc.target_modules)} in "
                          f"{type(backbone).__name__}: {one_line(e)}") from None
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(head_of(model), BaseTunerLayer):
        raise ConfigError("config key 'model.peft.target_modules': it matches the classifier; adapters go into the "
                          "backbone")
    for p in head.parameters():
        p.requires_grad_(True)


def merge_adapters(model: nn.Module) -> int:
    """Fold every injected peft adapter (LoRA) into its base layer and restore the plain layer; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, layer.get_base_layer())
    for m in model.modules():
        if hasattr(m, "peft_config"):
            del m.peft_config
    return len(layers)


def finish_adapters(model: nn.Module, pc: PeftConfig) -> dict[str, Any]:
    """Ready the trained model for final.pt (LoRA merged; AdaptFormer kept: its ReLU branch cannot be folded)
    and the result.json record of its adapters."""
    if pc.method == "lora":
        return {"method": "lora", "merged_layers": merge_adapters(model)}
    return {"method": pc.method, "adapter_blocks": sum(isinstance(m, AdaptFormerBlock) for m in model.modules())}


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trained and total parameters (adapters included), and the trained share."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trained, "total": total, "share": trained / total if total else 0.0}
