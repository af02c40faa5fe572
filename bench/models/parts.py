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


def _groups(model: nn.Module) -> list[list[str]]:
    """Parameter names by timm's fine-grained group_matcher, in order: a ResNet's stem, each residual block, then
    the head (fc; ConvNeXt's head.norm with head.fc)."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise ModelError(f"model {type(model).__name__} has no timm group_matcher to find its blocks")
    groups = group_parameters(model, model.group_matcher(coarse=False))  # type: ignore[operator]
    return [groups[g] for g in sorted(groups)]


def backbone_blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names of the model's blocks in order (timm's groups without the final one, the head)."""
    return _groups(model)[:-1]


def _last_k(blocks: list[list[str]], k: int, key: str, model: nn.Module) -> list[list[str]]:
    if k > len(blocks):
        raise ModelError(f"config key '{key}': {k} is more than the {len(blocks)} blocks of {type(model).__name__}")
    return blocks[len(blocks) - k:]


def last_blocks(model: nn.Module, k: int, key: str) -> list[str]:
    """Parameter names of the model's last k blocks (backbone_blocks); `key` names the config field asking."""
    if k == 0:
        return []
    return [n for names in _last_k(backbone_blocks(model), k, key, model) for n in names]


def reset_last_blocks(model: nn.Module, k: int) -> int:
    """Re-initialise every layer of the last k blocks as a freshly built one (each module's reset_parameters:
    PyTorch's default initialisation, BatchNorm at weight 1, bias 0 and fresh running statistics), as MiSLAS's
    Places-LT model appends a new `Bottleneck(2048, 512)` to a ResNet-152 whose last pretrained block it drops.
    Returns how many layers were reset."""
    names = set(last_blocks(model, k, "model.reinit_last_blocks"))
    reset = 0
    for prefix, module in model.named_modules():
        own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
        if own and all(n in names for n in own):
            if not hasattr(module, "reset_parameters"):
                raise ModelError(f"config key 'model.reinit_last_blocks': layer {prefix} ({type(module).__name__}) "
                                 "has no reset_parameters to re-initialise it")
            module.reset_parameters()  # type: ignore[operator]
            reset += 1
    return reset


def modules_outside(model: nn.Module, keep: set[str]) -> list[nn.Module]:
    """The outermost modules none of whose parameters is in `keep`: the rest of the model, to keep in eval mode
    while only `keep` trains (one .eval() covers a module's children). A module without parameters goes with its
    parent (a trunk's DropPath is outside, a kept block's is not; one beside both, as a global pool, is neither)."""
    status: dict[str, str] = {}
    out = []
    for name, module in model.named_modules():     # parents before their children
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        names = [f"{name}.{n}" if name else n for n, _ in module.named_parameters()]
        if names:
            kept = sum(n in keep for n in names)
            status[name] = "in" if kept == len(names) else "out" if kept == 0 else "mixed"
        else:
            status[name] = status[parent] if name else "mixed"
        if status[name] == "out" and (not name or status[parent] != "out"):
            out.append(module)
    return out


def train_all_but(module: nn.Module, fixed: list[nn.Module], mode: bool = True) -> None:
    """module.train(mode), then the `fixed` modules back in eval mode: their BatchNorm keeps its statistics."""
    module.train(mode)
    for m in fixed:
        m.eval()


def freeze_all_but_last_blocks(model: nn.Module, k: int) -> list[nn.Module]:
    """Freeze every parameter but those of the last k blocks and the head (the classifier, with a norm before it
    where the model's head has one), as MiSLAS's Places-LT stage 1
    trains its new block and classifier on a ResNet-152 trunk run under no_grad in eval mode (its
    train_stage1.py: `model.eval()`, `block.train()`). Returns the rest of the model, which the training loop keeps
    in eval mode (BatchNorm statistics as pretrained); no graph is built through it (nothing there requires
    grad)."""
    groups, head = _groups(model), {id(p) for p in head_of(model).parameters()}
    keep = {n for names in _last_k(groups[:-1], k, "train.train_only_last_blocks", model) for n in names}
    keep |= set(groups[-1]) | {n for n, p in model.named_parameters() if id(p) in head}   # the head, its norm too
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
    return modules_outside(model, keep)


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
