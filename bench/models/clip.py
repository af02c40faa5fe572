"""A CLIP image tower from timm as encoder (x -> CLIP image embedding f) and head (f -> logits).

Why a wrapper: timm's CLIP ViTs (`vit_*_clip_*`) carry CLIP's image projection as their classifier `head`
when num_classes equals the embedding width (512 for ViT-B/16): `forward_head(pre_logits=True)` stops
before it, and a class-count head would replace it. Zero-shot classification compares class-name text
embeddings with the *projected* image embedding, so the projection must stay part of the encoder and a
new classifier must sit after it. `ClipImageModel` keeps the timm tower whole (projection included) as
`tower` and adds `head`, so `encode(model, x)` is the L2-normalised CLIP image embedding
f = P^T pool(x) / ||P^T pool(x)|| and `head_of(model)` the classifier on it; checkpoints, DDP, timm's
group_matcher (stage2.train_blocks) and `set_head` work as on any timm model. The tower is built by
`build_model` from a timm or an open_clip checkpoint (timm converts the latter's `visual.*` keys).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg

from .factory import ModelError, build_model


class ClipImageModel(nn.Module):
    """timm CLIP image tower (its `head` = the CLIP projection) + a classifier on the normalised embedding."""

    def __init__(self, tower: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        proj = tower.get_classifier()  # type: ignore[operator]
        if not isinstance(proj, nn.Linear):
            raise ModelError(f"model.embedding=clip: {type(tower).__name__} has no linear projection head "
                             "(a timm CLIP ViT built with num_classes = its embedding width has one)")
        self.tower = tower
        self.embed_dim = proj.out_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes)
        # set_head / make_model find the classifier by name, as on a timm model
        self.pretrained_cfg: dict[str, Any] = {**dict(getattr(tower, "pretrained_cfg", {}) or {}),
                                               "classifier": "head", "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_features(x)  # type: ignore[operator]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # projected, then on the unit sphere (CLIP)
        f = F.normalize(self.tower.forward_head(x), dim=-1)  # type: ignore[operator]
        return f if pre_logits else self.head(self.head_drop(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The tower's groups under `tower.`; the projection and the classifier fall into the last group."""
        def prefixed(rule: Any) -> Any:
            if isinstance(rule, str):
                return r"^tower\.(?:" + rule.removeprefix("^") + ")"   # every alternative under the prefix
            return [(prefixed(r), order) for r, order in rule]
        return {k: prefixed(v) for k, v in self.tower.group_matcher(coarse).items()}  # type: ignore[operator]


def projection_dim(name: str) -> int:
    """The CLIP embedding width of a timm CLIP tower: its pretrained_cfg's num_classes (512 for ViT-B/16)."""
    pc = get_pretrained_cfg(name)
    n = int(getattr(pc, "num_classes", 0) or 0)
    if n <= 0:
        raise ModelError(f"model.embedding=clip: timm's pretrained_cfg of {name!r} has no projection width "
                         "(num_classes); use a CLIP tower with its weights tag, "
                         "e.g. vit_base_patch16_clip_quickgelu_224.openai")
    return n


def build_clip_model(name: str, num_classes: int, in_chans: int = 3, pretrained_file: str | None = None,
                     drop_rate: float = 0.0) -> ClipImageModel:
    """The timm tower `name` with its projection as head (num_classes = projection width), wrapped."""
    tower = build_model(name, num_classes=projection_dim(name), in_chans=in_chans, pretrained_file=pretrained_file)
    return ClipImageModel(tower, num_classes, drop_rate)
