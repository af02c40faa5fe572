"""Classifier heads and constraints: the fixed simplex-ETF classifier (HS), MaxNorm (WB), and the model of
a config with its head (make_model).

- simplex ETF (Papyan et al. 2020; HS, Hasegawa & Sato 2024): W = sqrt(C/(C-1)) * (U[:, :C] (I - 11^T/C))^T.
- MaxNorm (WB, Alshammari et al. 2022): projected gradient descent onto the ball ||W_k|| <= delta with one
  radius delta = min_k r_k + thresh * (max_k r_k - min_k r_k) from the stage-1 rows.
- LWS (Kang et al. 2020, learnable weight scaling): logits z_c = s_c (W_c h + b_c) with W, b frozen from
  stage 1 and only s (initialised to 1) trained; folded back into a plain linear layer when done.
- zero-shot / cosine classifier (CLIP, Radford et al. 2021; LIFT, Shi et al. 2024): z_c = s <f, v_c / ||v_c||> on
  the unit CLIP image embedding f, v_c initialised from class-name prompts (bench.methods.zeroshot); folded into
  a plain linear layer (W_c = s v_c / ||v_c||, b = 0) when done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import Config
from bench.data.lt import LTData
from bench.methods.adapters import apply_peft, build_adapters
from bench.models import build_model
from bench.models.cifar_resnet import MULTI_EXPERT_NAMES
from bench.models.factory import build_resnet_experts
from bench.models.clip import build_clip_model
from bench.models.parts import head_of, reset_last_blocks, set_head
from bench.registry import HEADS


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random simplex equiangular tight frame as a (C, dim) float32 weight matrix.

    W = sqrt(C/(C-1)) * (U[:, :C] (I - 11^T/C))^T, U a random orthogonal dim x dim matrix. Its first C
    columns are drawn directly as the Q factor of a reduced QR of a dim x C Gaussian with the signs of
    diag(R) fixed to +1 (first C columns of a Haar-distributed orthogonal matrix). Rows have unit norm
    and pairwise cosine -1/(C-1). Requires 2 <= C <= dim.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs feature dim >= {num_classes}, "
                         f"got dim {dim}")
    C = num_classes
    g = torch.randn(dim, C, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    u = q * signs  # (dim, C), orthonormal columns
    center = torch.eye(C, dtype=torch.float64) - torch.full((C, C), 1.0 / C, dtype=torch.float64)
    m = math.sqrt(C / (C - 1)) * (u @ center)  # (dim, C)
    return m.T.contiguous().to(torch.float32)


class ETFClassifier(nn.Module):
    """Linear head with a FIXED simplex-ETF weight and a trainable bias (HS single-stage method).

    The weight is a (persistent) buffer, not a parameter: the optimiser and weight decay never see it,
    and it is saved in checkpoints. forward(h) = h @ W^T + b. `weight` is the (C, in_features) buffer.
    """

    weight: torch.Tensor

    def __init__(self, in_features: int, out_features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", simplex_etf(out_features, in_features, generator))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight.to(h.dtype), self.bias.to(h.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=fixed simplex ETF"


class ScaledLinear(nn.Module):
    """LWS head (Kang et al. 2020): z = s * (W h + b) per class, W and b frozen, s a trained (C,) vector
    initialised to ones, as the Decoupling code's scaled dot-product classifier. `weight` is the effective
    (C, in) matrix s_c W_c, so weight-norm analysis sees what the head computes. With train_rows, W and b train
    too (MiSLAS stage 2's classifier beside its LearnableWeightScaling, the same s (W h + b))."""

    def __init__(self, linear: nn.Linear, train_rows: bool = False) -> None:
        super().__init__()
        self.linear = linear
        for p in linear.parameters():
            p.requires_grad_(train_rows)
        self.scales = nn.Parameter(torch.ones(linear.out_features, dtype=linear.weight.dtype,
                                              device=linear.weight.device))

    @property
    def weight(self) -> torch.Tensor:
        return self.scales[:, None] * self.linear.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h) * self.scales.to(h.dtype)

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The same classifier as a plain nn.Linear: W_c <- s_c W_c, b_c <- s_c b_c (a copy; self unchanged)."""
        out = nn.Linear(self.linear.in_features, self.linear.out_features, bias=self.linear.bias is not None,
                        device=self.linear.weight.device, dtype=self.linear.weight.dtype)
        out.weight.copy_(self.scales[:, None] * self.linear.weight)
        if self.linear.bias is not None:
            out.bias.copy_(self.scales * self.linear.bias)
        return out


class CosineClassifier(nn.Module):
    """z = s * (h . v_c / ||v_c||) per class, v a trained (C, d) matrix, s a fixed scale (a persistent buffer,
    saved in checkpoints), no bias. On the unit CLIP embedding h = f this is s cos(f, v_c): CLIP's zero-shot
    classifier with v_c = t_c, and LIFT's cosine classifier when v trains. `weight` is the effective (C, d)
    matrix s v_c / ||v_c||, so weight-norm analysis and post-hoc steps see what the head computes."""

    def __init__(self, directions: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.direction = nn.Parameter(directions.detach().clone().float())
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.in_features, self.out_features = directions.shape[1], directions.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return self.scale * F.normalize(self.direction, dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight.to(h.dtype))

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The same classifier as a plain nn.Linear (W = s v / ||v||, b = 0); exact on any input h."""
        out = nn.Linear(self.in_features, self.out_features, device=self.direction.device)
        out.weight.copy_(self.weight)
        out.bias.zero_()
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={float(self.scale):g}"


class NormedCosine(nn.Module):
    """z_c = s cos(h, v_c), the feature and each class direction normalised (the NormedLinear of the LDAM-DRW and BCL
    codes, times s = model.cosine_scale, a persistent buffer), no bias; v initialised uniform(-1, 1) as theirs.
    `weight` is s v_c / |v_c|, what the weight-norm analysis reads. Not linear in h, so never folded: final.pt keeps
    it, and a child run (stage 2, post-hoc) of such a parent is refused."""

    scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # NormedLinear's uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5): uniform draws, each class vector at norm 1
        self.direction = nn.Parameter(F.normalize(torch.empty(out_features, in_features).uniform_(-1, 1), dim=1))
        self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def weight(self) -> torch.Tensor:
        return self.scale * F.normalize(self.direction, dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.direction, dim=1).to(h.dtype).T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={float(self.scale):g}"


def fold_head(model: nn.Module) -> nn.Module:
    """A head trained in another parametrisation (LWS scales, a cosine classifier) as the plain linear layer it
    computes, put in its place; final.pt then holds a plain model that stage-2 / post-hoc children load."""
    head = head_of(model)
    if isinstance(head, (ScaledLinear, CosineClassifier)):
        head = head.folded()
        set_head(model, head)
    return head


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row (each output class); higher-dim weights are flattened per row."""
    return weight.detach().flatten(1).norm(dim=1)


def maxnorm_radius(weight: torch.Tensor, thresh: float) -> float:
    """WB MaxNorm radius from the stage-1 classifier rows: min_k r_k + thresh * (max_k r_k - min_k r_k)."""
    r = row_norms(weight).double()
    lo, hi = float(r.min()), float(r.max())
    return lo + thresh * (hi - lo)


@torch.no_grad()
def maxnorm_project_(weight: torch.Tensor, radius: float) -> None:
    """Project rows onto the ball of `radius` in place: rows with ||W_k|| > radius are rescaled to norm
    radius; rows at or below it are left untouched (bit for bit). Pass the weight only, never the bias.
    """
    norms = row_norms(weight)
    over = norms > radius
    if bool(over.any()):
        scale = (radius / norms[over]).to(weight.dtype)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight[over] = weight[over] * scale.view(shape)


class MaxNorm:
    """WB MaxNorm: after each step (or epoch) rows of W above the radius are projected onto it."""

    def __init__(self, weight: torch.Tensor, radius: float, cadence: str) -> None:
        self.weight, self.radius, self.cadence = weight, radius, cadence

    def after_step(self) -> None:
        if self.cadence == "step":
            maxnorm_project_(self.weight.data, self.radius)

    def after_epoch(self) -> None:
        if self.cadence == "epoch":
            maxnorm_project_(self.weight.data, self.radius)


@dataclass(frozen=True)
class Head:
    """A classifier head of config `model.classifier` (named in bench/registry.py HEADS): `build` (linear layer,
    classes, seed) -> the head in the model's architecture (what a finished run's final.pt holds); `init`, where
    its starting weights come from elsewhere than the backbone's init: (config, data, built head) -> head."""

    build: Callable[[nn.Linear, int, int], nn.Module]
    init: Callable[[Config, LTData, nn.Linear], nn.Module] | None = None


def _zeroshot_head(cfg: Config, data: LTData, linear: nn.Linear) -> nn.Module:
    from bench.methods.zeroshot import zeroshot_classifier  # open_clip: only when a zero-shot head is built

    directions, scale = zeroshot_classifier(cfg.model.zeroshot, cfg.model.pretrained_file, data.class_names,
                                            linear.in_features)
    return CosineClassifier(directions, scale)


# The heads bench/registry.py HEADS names: the backbone's own linear layer; a fixed simplex ETF (HS) in its place,
# seeded by the run's seed; the zero-shot head, a linear layer that a run trains or evaluates from its text weights.
LINEAR_HEAD = Head(build=lambda linear, num_classes, seed: linear)
ETF_HEAD = Head(build=lambda linear, num_classes, seed: ETFClassifier(
    linear.in_features, num_classes, generator=torch.Generator().manual_seed(seed)))
ZEROSHOT_HEAD = Head(build=lambda linear, num_classes, seed: linear, init=_zeroshot_head)


def _cosine_scale(cfg: Config, data: LTData, head: nn.Module) -> nn.Module:
    head.scale.fill_(cfg.model.cosine_scale)         # type: ignore[operator]
    return head


COSINE_HEAD = Head(build=lambda linear, num_classes, seed: NormedCosine(linear.in_features, num_classes).to(
    linear.weight.device), init=_cosine_scale)


def make_model(cfg: Config, data: LTData, init: bool = True) -> nn.Module:
    """The timm model of cfg.model with this dataset's classes and channels, and the head of model.classifier.

    init=True builds the model a run starts from: the zero-shot head from its prompts, adapters injected
    (model.peft). init=False builds the architecture of a finished run's final.pt (LoRA merged into plain
    layers, heads folded, AdaptFormer branches kept), whose weights the caller loads: a stage-2 / post-hoc
    child of any parent."""
    m = cfg.model
    build = build_clip_model if m.embedding == "clip" else build_model
    # RIDE / SADE: the multi-expert form of a CIFAR ResNet (bench/models/cifar_resnet.py CifarResNetExperts) or of a
    # timm ResNet / ResNeXt (bench/models/experts.py ResNetExperts)
    experts = dict(num_experts=m.experts, expert_width=m.expert_width, expert_scale=m.expert_scale) \
        if m.experts > 1 else {}
    if experts and m.name not in MULTI_EXPERT_NAMES:
        model = build_resnet_experts(m.name, data.num_classes, data.in_chans, drop_rate=m.drop_rate,
                                     pretrained_file=m.pretrained_file, **experts)
    else:
        # model.zero_init_last reaches timm only when set: other architectures have no such argument
        zero = {} if m.zero_init_last is None else {"zero_init_last": m.zero_init_last}
        model = build(m.name, num_classes=data.num_classes, in_chans=data.in_chans,
                      pretrained_file=m.pretrained_file, drop_rate=m.drop_rate, **experts, **zero)
        if init and m.reinit_last_blocks:   # MiSLAS's Places-LT model: a new block where the pretrained one was
            reset_last_blocks(model, m.reinit_last_blocks)
    spec: Head = HEADS[m.classifier]
    head = spec.build(head_of(model), data.num_classes, cfg.seed)
    if init and spec.init is not None:
        head = spec.init(cfg, data, head)
    if head is not head_of(model):
        set_head(model, head)
    if init:
        apply_peft(model, m.peft)
    else:
        build_adapters(model, m.peft)      # the adapters final.pt keeps (AdaptFormer)
    return model
