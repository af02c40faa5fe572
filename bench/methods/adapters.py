"""Parameter-efficient fine-tuning through the `peft` library (extra `foundation`): LoRA (Hu et al. 2022).

LoRA adds to a target linear layer W (d_out x d_in) a low-rank update: y = W x + b + (alpha / r) B A x with
A (r x d_in, Kaiming-uniform, seeded by the run's seed) and B (d_out x r, zeros: the model starts exactly as
pretrained). peft injects the layers in place (`inject_adapter_in_model`), so the model keeps its type and
its encode / head_of / group_matcher, and checkpoints and DDP see the adapters as ordinary parameters; only
they and the classifier require grad. At the end of training `merge_adapters` folds each update into its
layer, W <- W + (alpha / r) B A, and puts the plain layer back: final.pt is a plain timm model, which
stage-2 and post-hoc children load like any other (they never need peft). peft is imported only here, when
a run asks for adapters.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

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


def apply_peft(model: nn.Module, pc: PeftConfig) -> None:
    """Inject the adapters of model.peft into the backbone (never into the classifier); freeze the rest of the
    backbone; the classifier keeps training."""
    if pc.method == "none":
        return
    peft = _peft()
    config = peft.LoraConfig(r=pc.r, lora_alpha=pc.alpha, lora_dropout=pc.dropout, bias="none",
                             target_modules=list(pc.target_modules))
    backbone = model.tower if isinstance(model, ClipImageModel) else model
    head = head_of(model)
    try:
        peft.inject_adapter_in_model(config, backbone)
    except ValueError as e:      # no module matched, or a module type LoRA cannot wrap
        raise ConfigError(f"config key 'model.peft.target_modules': {list(pc.target_modules)} in "
                          f"{type(backbone).__name__}: {one_line(e)}") from None
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(head_of(model), BaseTunerLayer):
        raise ConfigError("config key 'model.peft.target_modules': it matches the classifier; adapters go into the backbone")
    for p in head.parameters():
        p.requires_grad_(True)


def merge_adapters(model: nn.Module) -> int:
    """Fold every injected adapter into its base layer and restore the plain layer; returns how many."""
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


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trained and total parameters (adapters included), and the trained share."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trained, "total": total, "share": trained / total if total else 0.0}
