"""A model seen as encoder (x -> pooled penultimate feature h) and head (h -> logits)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .factory import ModelError


def encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled penultimate features, timm API: forward_head(forward_features(x), pre_logits=True)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]


def prediction(logits: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits a model predicts with: a multi-expert head's (B, K, C) averaged over its experts, as RIDE and SADE
    predict (the mean of the experts' logits); a training output that is a dict (a contrastive model's, a taught
    student's) that of its `logits`; (B, C) as they are."""
    if isinstance(logits, dict):
        return prediction(logits["logits"])
    return logits.mean(1) if logits.dim() == 3 else logits


def head_of(model: nn.Module) -> nn.Module:
    """The classifier module (nn.Linear, or an ETF classifier after set_head)."""
    return model.get_classifier()  # type: ignore[operator]


def set_head(model: nn.Module, head: nn.Module) -> None:
    """Replace the classifier module named by the model's pretrained_cfg ('fc', 'head.fc', ...)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not isinstance(name, str):
        raise ModelError(f"model {type(model).__name__}: cannot locate its classifier to replace it")
    parent = model
    *path, leaf = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    if not isinstance(getattr(parent, leaf, None), nn.Module):
        raise ModelError(f"model {type(model).__name__}: classifier '{name}' not found")
    setattr(parent, leaf, head)


def backbone_blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names of the model's blocks in order, by timm's fine-grained group_matcher (its final group, the
    classifier, left out): a ResNet's stem, then each residual block."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise ModelError(f"model {type(model).__name__} has no timm group_matcher to find its blocks")
    groups = group_parameters(model, model.group_matcher(coarse=False))  # type: ignore[operator]
    return [groups[g] for g in sorted(groups)][:-1]


def freeze_convs_but_last_block(model: nn.Module) -> int:
    """Freeze the weight of every convolution outside the model's last block (layer4's last bottleneck on a
    ResNet), as PaCo's and GPaCo's Places-LT script does (`disable_conv`, then `layer4[-1]` trainable again);
    BatchNorm and linear layers keep training. Returns how many were frozen."""
    last = set(backbone_blocks(model)[-1])
    frozen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and f"{name}.weight" not in last:
            module.weight.requires_grad_(False)
            frozen += 1
    return frozen
