"""Multi-expert networks (RIDE, Wang et al., ICLR 2021; SADE, Zhang et al., NeurIPS 2022): early layers shared,
the later stages one copy per expert at a reduced width, each expert pooled and scored by its own cosine classifier.

* `ExpertCosineClassifiers`: the experts' cosine classifiers, one module (the head ltbench's analysis reads).
* `MultiExpertNet`: the timm model API of such a network (forward_features gives (B, K, c, H', W'), forward_head the
  pooled features side by side, the classifier every expert's logits (B, K, C)).
* `ResNetExperts`: the multi-expert form of a timm ResNet / ResNeXt (RIDE's model/fb_resnets/RIDEResNeXt.py and
  RIDEResNet.py; built by factory.build_resnet_experts): stem, layer1 and layer2 shared, layer3 and layer4 per
  expert. The CIFAR form is bench/models/cifar_resnet.py `CifarResNetExperts`.
"""

from __future__ import annotations

import copy
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_device_dtype

__all__ = ["ExpertCosineClassifiers", "MultiExpertNet", "ResNetExperts"]


class ExpertCosineClassifiers(nn.Module):
    """One cosine classifier per expert (RIDE's and SADE's NormedLinear times s): the input is the experts' pooled
    features side by side, h = [h_1, ..., h_K] (B, K d); the output is every expert's logits (B, K, C),
    z_kc = s cos(h_k, v_kc), which the experts' prediction averages over k. `weight` is that mean as one (C, K d)
    linear layer on the concatenated unit features, (s / K) [v_1c / |v_1c|, ..., v_Kc / |v_Kc|]: what the
    weight-norm analysis reads."""

    scale: torch.Tensor
    aggregation: torch.Tensor

    def __init__(self, experts: int, in_features: int, num_classes: int, scale: float,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.experts, self.out_features, self.in_features = experts, num_classes, experts * in_features
        # RIDE's NormedLinear, uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5): uniform draws, each class vector at norm
        # 1 (forward divides the norm out, but it sets how fast a direction turns under SGD)
        self.direction = nn.Parameter(F.normalize(torch.empty(experts, num_classes, in_features, device=device,
                                                              dtype=dtype).uniform_(-1, 1), dim=2))
        self.register_buffer("scale", torch.tensor(float(scale), device=device))
        # the experts' weights in the prediction, as K w_k (SADE's test-time aggregation sets them): expert k's
        # logits are multiplied by K w_k, so the mean the prediction takes is sum_k w_k z_k; ones = the plain mean
        self.register_buffer("aggregation", torch.ones(experts, device=device))
        # RIDE's expert-assignment router (bench/methods/router.py), set by a stage2.router run: in eval mode each
        # image's prediction then averages the experts it is routed to
        self.router: nn.Module | None = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + "aggregation", self.aggregation.clone())   # checkpoints written before it
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def weight(self) -> torch.Tensor:
        v = F.normalize(self.direction, dim=2) * self.aggregation[:, None, None]
        return (self.scale / self.experts) * v.permute(1, 0, 2).reshape(self.out_features, self.in_features)

    def expert_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Every expert's logits (B, K, C), weighted by `aggregation`, before any routing."""
        u = F.normalize(h.view(len(h), self.experts, -1), dim=2)
        z = self.scale * torch.einsum("bkd,kcd->bkc", u, F.normalize(self.direction, dim=2).to(h.dtype))
        return z * self.aggregation.to(z.dtype)[None, :, None]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.expert_logits(h)
        if self.router is not None and not self.training:
            z = self.router.route(h, z)   # type: ignore[operator]
        return z

    def extra_repr(self) -> str:
        return f"experts={self.experts}, in_features={self.in_features}, out_features={self.out_features}, " \
               f"scale={float(self.scale):g}"


class MultiExpertNet(nn.Module):
    """The timm model API shared by the multi-expert networks; a subclass builds `experts` (a ModuleList) and sets
    num_experts, expert_features (one expert's pooled width), expert_scale, drop_rate, then calls `_finish`."""

    num_experts: int
    expert_features: int
    expert_scale: float
    drop_rate: float
    num_classes: int
    experts: nn.ModuleList

    def _finish(self, num_classes: int, **dd: Any) -> None:
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = self.num_experts * self.expert_features
        self.feature_info: list[dict[str, Any]] = []
        self.fc: nn.Module = self._classifier(num_classes, **dd)

    def _classifier(self, num_classes: int, **dd: Any) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return ExpertCosineClassifiers(self.num_experts, self.expert_features, num_classes, self.expert_scale, **dd)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = self._classifier(num_classes, **get_device_dtype(self))

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The layers every expert reads."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's unpooled feature map, (B, K, c, H', W')."""
        x = self.shared(x)
        return torch.stack([expert(x) for expert in self.experts], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Each expert average-pooled, side by side (B, K c) (+ dropout); the experts' logits if not pre_logits."""
        x = x.mean(dim=(3, 4)).flatten(1)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNetExperts(MultiExpertNet):
    """RIDE's multi-expert ResNet / ResNeXt over a timm ResNet-family model `name` (resnet50, resnext50_32x4d,
    resnet152, ...): its stem, layer1 and layer2 shared; layer3 and layer4 one copy per expert with their widths
    times `expert_width` (RIDE's reduce_dimension: 256 / 512 -> 192 / 384, grouped widths as its
    int(planes * base_width / 64) * groups); each expert average-pooled and scored by its own cosine classifier times
    `expert_scale`. Initialised as timm initialises the model (kaiming-normal fan-out convolutions, as RIDE's
    normal(0, sqrt(2 / n))), with every BatchNorm weight at one, as RIDE (no zero-initialised last BatchNorm).

    `base`: a (pretrained) timm model of `name` to start from instead: its stem, layer1 and layer2 shared, and every
    expert a copy of its layer3 and layer4 (SADE's Places-LT ResNet-152 from ImageNet weights), at full width only.
    """

    def __init__(self, name: str, num_classes: int, in_chans: int = 3, num_experts: int = 3,
                 expert_width: float = 1.0, expert_scale: float = 30.0, drop_rate: float = 0.0,
                 base: nn.Module | None = None) -> None:
        super().__init__()
        pretrained = base is not None
        if base is None:
            base = timm.create_model(name, num_classes=0, in_chans=in_chans, zero_init_last=False)
        if not isinstance(base, timm.models.ResNet):
            raise ValueError(f"{name} is not a timm ResNet / ResNeXt")
        if pretrained and expert_width != 1.0:
            raise ValueError(f"experts copied from pretrained weights keep their width (expert_width 1, not "
                             f"{expert_width})")
        self.num_experts, self.expert_scale, self.drop_rate = num_experts, expert_scale, drop_rate
        self.conv1, self.bn1, self.act1, self.maxpool = base.conv1, base.bn1, base.act1, base.maxpool
        self.layer1, self.layer2 = base.layer1, base.layer2
        widths = (64, 128, round(256 * expert_width), round(512 * expert_width))
        experts = []
        for _ in range(num_experts):
            e = copy.deepcopy(base) if pretrained else timm.create_model(
                name, num_classes=0, in_chans=in_chans, zero_init_last=False, channels=widths)
            assert isinstance(e, timm.models.ResNet)
            experts.append(nn.Sequential(*(getattr(e, n) for n in ("layer3", "layer4"))))
            self.expert_features = int(e.num_features)
        self.experts = nn.ModuleList(experts)
        self._finish(num_classes)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2"):
            x = getattr(self, name)(x)
        return x

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Stem, the shared stages' blocks, then each expert (timm layer-decay API)."""
        return dict(stem=r'^conv1|bn1', blocks=r'^(layer1|layer2|experts)\.(\d+)' if coarse else
                    r'^(layer[12]\.\d+|experts\.\d+)')

