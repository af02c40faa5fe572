"""CIFAR-style ResNets registered in timm's model registry.

Two families, both following timm's model API (``forward_features`` / ``forward_head`` /
``get_classifier`` / ``reset_classifier``, ``num_features``, ``pretrained_cfg``) so that
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` works for
them exactly as for native timm models:

* ``resnet{8,20,32,44,56,110}_cifar``: He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016, sec. 4.2 (CIFAR-10 experiments). 3x3 conv stem with 16 channels, three stages of
  n BasicBlocks with 16/32/64 channels (strides 1/2/2), global average pooling and a linear
  classifier; depth 6n+2. Shortcut option "A" (parameter-free identity: stride-2 subsampling plus
  zero-padding of the extra channels) as in the paper's CIFAR experiments and in the LDAM-DRW code
  (kaidic/LDAM-DRW, models/resnet_cifar.py), with its kaiming-normal init of conv and linear weights.
* ``resnet34_wb``: the CIFAR ResNet-34 of the weight-balancing reference code (Alshammari et al.,
  "Long-Tailed Recognition via Weight Balancing", CVPR 2022; ShadeAlsha/LTR-weight-balancing,
  utils/network_arch_resnet.py): torchvision's resnet34 with the 7x7/2 stem conv replaced by a 3x3/1
  conv, the max-pool skipped, 1x1-conv+BN projection shortcuts, a 4x4 average pool (= global pool at
  32x32 input) giving a 512-d feature and a linear classifier.

State-dict keys follow torchvision/timm naming (``conv1``, ``bn1``, ``layer{i}.{j}.conv1``, ...,
``layer{i}.0.downsample.{0,1}``, ``fc``). ``checkpoint_filter_fn`` additionally accepts checkpoints of
the two reference codes (WB's ``encoder.`` prefix, LDAM-DRW's ``linear`` classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from bench.models.experts import MultiExpertNet

__all__ = ['CifarResNet', 'CifarResNetExperts', 'BasicBlock', 'ShortcutA',
           'checkpoint_filter_fn', 'CIFAR_MODEL_NAMES', 'MULTI_EXPERT_NAMES']

# Normalisation constants used by both reference codes (LDAM-DRW and weight balancing).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class ShortcutA(nn.Module):
    """Parameter-free shortcut, option "A" of He et al. 2016 (sec. 4.2).

    Subsamples spatially by ``stride`` and zero-pads the new channels, half before and half after
    the existing ones (LDAM-DRW: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f'option-A shortcut cannot reduce channels ({in_chs} -> {out_chs})')
        self.stride = stride
        self.pad_front = (out_chs - in_chs) // 2
        self.pad_back = out_chs - in_chs - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_front or self.pad_back:
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back), 'constant', 0.0)
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (He et al. 2016, Fig. 2 left)."""

    expansion = 1

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            shortcut: str = 'A',
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(out_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            if shortcut == 'A':
                self.downsample = ShortcutA(in_chs, out_chs, stride)
            elif shortcut == 'B':
                # projection shortcut (torchvision / WB reference: 1x1 conv + BN)
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False, **dd),
                    nn.BatchNorm2d(out_chs, **dd),
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x = x + shortcut
        return self.act2(x)


class CifarResNet(nn.Module):
    """ResNet for small (32x32) images: 3x3 stride-1 stem, no max-pool, BasicBlock stages.

    Args:
        layers: number of BasicBlocks per stage.
        channels: output channels per stage (the first stage has stride 1, the others stride 2).
        stem_width: channels of the 3x3 stem conv.
        shortcut: 'A' (parameter-free, He et al. CIFAR) or 'B' (1x1 conv + BN projection).
        init: 'he_cifar' (kaiming-normal conv+linear, as LDAM-DRW) or 'torchvision'
            (kaiming-normal fan_out convs, default Linear init, as the WB reference code).
        num_classes: classifier outputs; 0 gives an ``nn.Identity`` head (timm convention).
        in_chans: input image channels.
        drop_rate: dropout probability before the classifier.
        global_pool: timm pooling type ('avg' as in both references).
    """

    def __init__(
            self,
            layers: Sequence[int] = (3, 3, 3),
            channels: Sequence[int] = (16, 32, 64),
            stem_width: int = 16,
            shortcut: str = 'A',
            init: str = 'he_cifar',
            num_classes: int = 10,
            in_chans: int = 3,
            drop_rate: float = 0.0,
            global_pool: str = 'avg',
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError(f'layers {tuple(layers)} and channels {tuple(channels)} differ in length')
        if init not in ('he_cifar', 'torchvision'):
            raise ValueError(f"init must be 'he_cifar' or 'torchvision', got {init!r}")
        dd: dict[str, Any] = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.init_mode = init
        self.grad_checkpointing = False

        # stem: 3x3 stride-1 conv + BN + ReLU, no max-pool (He et al. sec. 4.2; WB reference skips maxpool)
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_width, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=stem_width, reduction=1, module='act1')]

        in_chs = stem_width
        reduction = 1
        self.stage_names: tuple[str, ...] = tuple(f'layer{i + 1}' for i in range(len(layers)))
        for i, (n, chs) in enumerate(zip(layers, channels)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_chs, chs, stride if j == 0 else 1, shortcut=shortcut, **dd))
                in_chs = chs
            self.add_module(self.stage_names[i], nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=self.stage_names[i]))

        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Initialise weights as the reference implementation of this variant does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.init_mode == 'he_cifar':
                    nn.init.kaiming_normal_(m.weight)  # LDAM-DRW _weights_init (fan_in)
                else:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')  # torchvision resnet
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_fc()

    def _init_fc(self) -> None:
        # LDAM-DRW applies kaiming_normal_ to nn.Linear too; torchvision/WB keep the default Linear init.
        if self.init_mode == 'he_cifar' and isinstance(self.fc, nn.Linear):
            nn.init.kaiming_normal_(self.fc.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Regexes grouping parameters into stem / blocks (timm layer-decay API)."""
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable or disable activation checkpointing of the residual blocks."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        """The classifier module (``nn.Linear``; ``nn.Identity`` when num_classes == 0)."""
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self._init_fc()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled feature map (B, num_features, H', W')."""
        x = self.act1(self.bn1(self.conv1(x)))
        stages = [getattr(self, n) for n in self.stage_names]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(stages, x, flatten=True)
        else:
            for stage in stages:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pool (+ dropout); return the pooled features if ``pre_logits`` else logits."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNetExperts(MultiExpertNet):
    """The multi-expert CIFAR ResNet of RIDE (Wang et al., ICLR 2021; frank-xwang/RIDE-LongTailRecognition,
    model/ldam_drw_resnets/ride_resnet_cifar.py), which SADE reuses: the stem and the first stage shared, the
    later stages one copy per expert (widths scaled by `expert_width`: RIDE's reduce_dimension makes 32 / 64 into
    24 / 48), each expert pooled and classified by its own cosine classifier times `expert_scale`.

    The timm API of CifarResNet: forward_features gives (B, K, c, H', W'), forward_head(pre_logits=True) the
    pooled features side by side (B, K c), the classifier (get_classifier) the experts' logits (B, K, C)."""

    def __init__(
            self,
            layers: Sequence[int] = (5, 5, 5),
            channels: Sequence[int] = (16, 32, 64),
            stem_width: int = 16,
            num_experts: int = 3,
            expert_width: float = 1.0,
            expert_scale: float = 30.0,
            shortcut: str = 'A',
            init: str = 'he_cifar',
            num_classes: int = 10,
            in_chans: int = 3,
            drop_rate: float = 0.0,
            global_pool: str = 'avg',
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1 or global_pool != 'avg' or init != 'he_cifar':
            raise ValueError(f"experts: num_experts >= 1, global_pool 'avg' and init 'he_cifar' only (got "
                             f"{num_experts}, {global_pool!r}, {init!r})")
        dd: dict[str, Any] = {'device': device, 'dtype': dtype}
        self.in_chans, self.drop_rate = in_chans, drop_rate
        self.num_experts, self.expert_scale = num_experts, expert_scale
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_width, **dd)
        self.act1 = nn.ReLU(inplace=True)

        def stage(in_chs: int, chs: int, n: int, stride: int) -> nn.Sequential:
            return nn.Sequential(*[BasicBlock(in_chs if j == 0 else chs, chs, stride if j == 0 else 1,
                                              shortcut=shortcut, **dd) for j in range(n)])

        self.layer1 = stage(stem_width, channels[0], layers[0], 1)
        widths = [round(c * expert_width) for c in channels[1:]]
        ins = [channels[0], *widths[:-1]]
        self.experts = nn.ModuleList(
            nn.Sequential(*[stage(i, w, n, 2) for i, w, n in zip(ins, widths, layers[1:])]) for _ in range(num_experts))
        self.expert_features = widths[-1]
        self._finish(num_classes, **dd)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)     # RIDE's _weights_init (fan_in), as LDAM-DRW
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Stem, the shared stage's blocks, then each expert (timm layer-decay API)."""
        return dict(stem=r'^conv1|bn1', blocks=r'^(layer1|experts)\.(\d+)' if coarse else
                    r'^(layer1\.\d+|experts\.\d+)')

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.act1(self.bn1(self.conv1(x))))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Map reference-code checkpoints onto this module's key names.

    * WB reference (``ResnetEncoder``) wraps torchvision's resnet as ``self.encoder``: strip ``encoder.``.
    * LDAM-DRW names the classifier ``linear``: rename to ``fc``. Its ``NormedLinear`` (weight stored
      transposed, no bias) is not an ``nn.Linear`` and is dropped.
    Keys already in this module's format pass through unchanged.
    """
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        if k.startswith('encoder.'):
            k = k[len('encoder.'):]
        if k.startswith('linear.'):
            k = 'fc.' + k[len('linear.'):]
        out[k] = v
    if 'fc.weight' in out and 'fc.bias' not in out:
        # NormedLinear (LDAM-DRW use_norm=True): not loadable into nn.Linear
        del out['fc.weight']
    return out


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    # features_only: stem + one feature map per stage (timm's default out_indices assume 4 stages)
    num_stages = len(kwargs.get('layers', ()))
    # num_experts (model.experts > 1): the same depth as RIDE's multi-expert model
    experts = 'num_experts' in kwargs and kwargs['num_experts'] > 1
    return build_model_with_cfg(
        CifarResNetExperts if experts else CifarResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(num_stages + 1))),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No hosted weights: loading is from a local file via pretrained_cfg_overlay=dict(file=...).
    return {
        'url': '',
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        **kwargs,
    }


_HE_PAPER = 'Deep Residual Learning for Image Recognition (He et al., CVPR 2016), sec. 4.2'
_WB_PAPER = 'Long-Tailed Recognition via Weight Balancing (Alshammari et al., CVPR 2022)'

default_cfgs = generate_default_cfgs({
    **{
        f'resnet{d}_cifar': _cfg(paper_name=_HE_PAPER, paper_ids='arXiv:1512.03385',
                                 origin_url='https://github.com/kaidic/LDAM-DRW')
        for d in (8, 20, 32, 44, 56, 110)
    },
    'resnet34_wb': _cfg(
        num_classes=100, pool_size=(4, 4), paper_name=_WB_PAPER, paper_ids='arXiv:2203.14197',
        origin_url='https://github.com/ShadeAlsha/LTR-weight-balancing'),
})


def _he_cifar(variant: str, depth: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """He et al. CIFAR ResNet of depth 6n+2 (n BasicBlocks per stage, option-A shortcuts)."""
    assert (depth - 2) % 6 == 0, depth
    n = (depth - 2) // 6
    model_args = dict(layers=(n, n, n), channels=(16, 32, 64), stem_width=16, shortcut='A', init='he_cifar')
    return _create_cifar_resnet(variant, pretrained, **dict(model_args, **kwargs))


@register_model
def resnet8_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-8 for CIFAR (n=1, 0.08M params at 10 classes)."""
    return _he_cifar('resnet8_cifar', 8, pretrained, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-20 for CIFAR (n=3; He et al. Table 6: 0.27M params)."""
    return _he_cifar('resnet20_cifar', 20, pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-32 for CIFAR (n=5; He et al. Table 6: 0.46M params). The LDAM-DRW CIFAR-LT backbone."""
    return _he_cifar('resnet32_cifar', 32, pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-44 for CIFAR (n=7; He et al. Table 6: 0.66M params)."""
    return _he_cifar('resnet44_cifar', 44, pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-56 for CIFAR (n=9; He et al. Table 6: 0.85M params)."""
    return _he_cifar('resnet56_cifar', 56, pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-110 for CIFAR (n=18; He et al. Table 6: 1.7M params)."""
    return _he_cifar('resnet110_cifar', 110, pretrained, **kwargs)


@register_model
def resnet34_wb(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-34 of the weight-balancing reference code: [3,4,6,3] BasicBlocks, 64-512 channels,
    3x3/1 stem, no max-pool, projection shortcuts, 512-d feature (21.3M params at 100 classes)."""
    model_args = dict(layers=(3, 4, 6, 3), channels=(64, 128, 256, 512), stem_width=64, shortcut='B',
                      init='torchvision')
    return _create_cifar_resnet('resnet34_wb', pretrained, **dict(model_args, **kwargs))


# the He et al. family, which has a multi-expert form (model.experts > 1: CifarResNetExperts, RIDE / SADE)
MULTI_EXPERT_NAMES: tuple[str, ...] = tuple(f'resnet{d}_cifar' for d in (8, 20, 32, 44, 56, 110))
CIFAR_MODEL_NAMES: tuple[str, ...] = (
    'resnet8_cifar', 'resnet20_cifar', 'resnet32_cifar', 'resnet44_cifar', 'resnet56_cifar',
    'resnet110_cifar', 'resnet34_wb',
)
