"""Build any timm model by name, optionally initialised from a local weights file.

Weights are only ever read from a local file, through timm's own mechanism
(``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``), so that the
classifier is dropped when the class count differs and the stem conv is adapted to ``in_chans``
exactly as timm does for its hosted weights. Nothing here touches the network.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg, load_state_dict, parse_model_name, split_model_name_tag

from bench.errors import UserError, one_line

from . import cifar_resnet  # noqa: F401  (registers the CIFAR ResNets with timm)
from .experts import ResNetExperts

__all__ = ['ModelError', 'build_model']


class ModelError(UserError, ValueError):
    """A model cannot be built or its weights cannot be loaded (one-line, user-facing message)."""


def _unknown_model_message(name: str) -> str:
    arch = split_model_name_tag(name)[0]
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    if len(close) < 5:  # also offer registry names containing the given one (timm wildcard filter)
        close += [n for n in timm.list_models(f'*{arch}*') if n not in close][:5 - len(close)]
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see timm.list_models()"
    return f"model.name: unknown model {name!r}{hint}"


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint the way timm's load_pretrained will (EMA > 'state_dict' > 'model' > top level,
    'module.' / '_orig_mod.' prefixes stripped, weights_only unpickling)."""
    try:
        sd = load_state_dict(str(path))
    except Exception as e:  # truncated zip, not a pickle, unsafe globals, bad safetensors header, ...
        raise ModelError(
            f"model.pretrained_file: {path} is not a readable PyTorch/safetensors checkpoint "
            f"({type(e).__name__}: {one_line(e)})") from e
    if not isinstance(sd, Mapping) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ModelError(f"model.pretrained_file: {path} does not contain a state_dict of tensors")
    return dict(sd)


def _check_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], classifiers: tuple[str, ...],
                path: Path, name: str) -> None:
    """Every non-classifier tensor of the model must come from the file and vice versa.

    timm loads non-strictly when the classifier is dropped, which would silently leave missing
    layers randomly initialised (e.g. resnet20 weights into resnet32); refuse that here.
    """
    def relevant(k: str) -> bool:
        return not k.endswith('num_batches_tracked') and not any(k.startswith(c + '.') for c in classifiers)

    model_keys = {k for k in model.state_dict() if relevant(k)}
    file_keys = {k for k in sd if relevant(k)}
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelError(f"model.pretrained_file: {path} does not match model {name!r}: "
                         f"{'; '.join(parts)} tensors")


def build_model(
        name: str,
        num_classes: int,
        in_chans: int = 3,
        pretrained_file: str | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build the timm model ``name`` with ``num_classes`` outputs and ``in_chans`` input channels.

    If ``pretrained_file`` is given its weights are loaded through timm's
    ``pretrained_cfg_overlay=dict(file=...)`` path: the classifier is kept only if its class count
    matches ``num_classes`` (otherwise it is freshly initialised), and the first conv is adapted when
    the file's input channels differ from ``in_chans`` (timm's ``adapt_input_conv``). All other
    tensors must be present in the file. Extra ``kwargs`` go to the model constructor
    (e.g. ``drop_rate``). Raises ``ModelError`` for unknown names and unusable weight files.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model.name: expected a timm model name, got {name!r}")
    try:
        source, _ = parse_model_name(name)
    except ValueError as e:
        raise ModelError(f"model.name: {one_line(e)}") from e
    if source is not None:
        raise ModelError(f"model.name: {name!r} names a '{source}:' source; only timm registry names are "
                         f"supported (use model.pretrained_file for weights; no network access)")
    if not timm.is_model(name):
        raise ModelError(_unknown_model_message(name))
    for key in ('pretrained', 'pretrained_cfg_overlay', 'checkpoint_path'):
        if key in kwargs:
            raise ModelError(f"model: {key!r} is not supported here; give a local file as model.pretrained_file")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ModelError(f"model.num_classes: expected an integer >= 0, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ModelError(f"model.in_chans: expected an integer >= 1, got {in_chans!r}")

    if pretrained_file is None:
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
        except Exception as e:
            raise ModelError(f"model {name!r} could not be built: {one_line(e)}") from e

    path = Path(pretrained_file).expanduser()
    if not path.exists():
        raise ModelError(f"model.pretrained_file: {path} does not exist")
    if not path.is_file():
        raise ModelError(f"model.pretrained_file: {path} is not a file")

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # invalid pretrained tag
        raise ModelError(f"model.name: {one_line(e)}") from e
    classifiers = _names(cfg.classifier if cfg is not None else None)
    first_convs = _names(cfg.first_conv if cfg is not None else None)
    arch = split_model_name_tag(name)[0]

    # Peek at the file so the overlay describes *this* checkpoint, not the registry's hosted weights.
    sd = _read_state_dict(path)
    if arch in cifar_resnet.CIFAR_MODEL_NAMES:
        sd = cifar_resnet.checkpoint_filter_fn(sd)  # the same filter build_model_with_cfg applies
    overlay: dict[str, Any] = dict(file=str(path), source=None, label_offset=None)
    clip_prefix = _open_clip_prefix(sd)
    if clip_prefix is not None and classifiers:
        # an open_clip checkpoint (both towers): timm's ViT filter turns its image tower into timm keys, the
        # CLIP projection `visual.proj` (width x embed) becoming the classifier `head` (embed x width)
        proj = sd.get(clip_prefix + 'proj')
        overlay['num_classes'] = int(proj.shape[1]) if proj is not None and proj.ndim == 2 else 0
    elif classifiers:
        w = sd.get(classifiers[0] + '.weight')
        # a headless checkpoint (no classifier tensors) counts as 0 classes -> classifier freshly initialised
        overlay['num_classes'] = int(w.shape[0]) if w is not None and w.ndim >= 1 else 0
    if arch in cifar_resnet.CIFAR_MODEL_NAMES and first_convs:
        # Our stems are plain convs, so the file's input channels are read off the stem weight; this lets
        # timm adapt e.g. a 1-channel checkpoint to a 3-channel model (native models keep timm's cfg).
        w = sd.get(first_convs[0] + '.weight')
        if w is not None and w.ndim == 4 and cfg is not None:
            overlay['input_size'] = (int(w.shape[1]),) + tuple(cfg.input_size[1:])

    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                  num_classes=num_classes, in_chans=in_chans, **kwargs)
    except ModelError:
        raise
    except Exception as e:  # size mismatch, missing keys under strict load, ...
        raise ModelError(f"model.pretrained_file: {path} could not be loaded into {name!r}: "
                         f"{type(e).__name__}: {one_line(e)}") from e
    if clip_prefix is not None:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        if not isinstance(model, VisionTransformer):
            raise ModelError(f"model.pretrained_file: {path} is an open_clip checkpoint; its image tower loads into "
                             f"a timm CLIP ViT (e.g. vit_base_patch16_clip_quickgelu_224), not {name!r}")
        sd = checkpoint_filter_fn(sd, model)   # the keys timm loaded, to check that all of them were there
    _check_keys(model, sd, classifiers, path, name)
    return model


def _open_clip_prefix(sd: Mapping[str, torch.Tensor]) -> str | None:
    """'visual.' (or 'module.visual.') when `sd` is an open_clip / OpenAI CLIP checkpoint with a ViT image tower."""
    for prefix in ('visual.', 'module.visual.'):
        if prefix + 'class_embedding' in sd:
            return prefix
    return None


def build_resnet_experts(name: str, num_classes: int, in_chans: int, num_experts: int, expert_width: float,
                         expert_scale: float, drop_rate: float = 0.0, pretrained_file: str | None = None) -> nn.Module:
    """ResNetExperts of the timm model `name` (its experts copies of the pretrained layer3 / layer4 when
    `pretrained_file` is given, loaded as build_model loads it), or a one-line ModelError."""
    if not timm.is_model(name):
        raise ModelError(f"model.name: {name!r} is not a timm model")
    base = None if pretrained_file is None else build_model(name, 0, in_chans, pretrained_file, zero_init_last=False)
    try:
        return ResNetExperts(name, num_classes, in_chans, num_experts, expert_width, expert_scale, drop_rate, base)
    except (ValueError, TypeError) as e:
        raise ModelError(f"model.experts: {num_experts} experts need a CIFAR ResNet or a timm ResNet / ResNeXt; "
                         f"{name} has no multi-expert form ({one_line(e)})") from e
