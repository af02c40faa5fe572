"""A timm model's own input preprocessing (its pretrained_cfg), for configs with data.input_stats=model."""

from __future__ import annotations

from typing import Any

from bench.config import ConfigError


def model_preprocessing(name: str) -> dict[str, Any]:
    """A timm model's own preprocessing from its pretrained_cfg: mean, std, input size, eval crop fraction."""
    import timm  # local: only configs that ask for the model's statistics load timm (and torch)
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise ConfigError(f"config key 'data.input_stats': model {name!r} is not a timm model, so it has no "
                          "preprocessing of its own (use data.input_stats=card)")
    pc = get_pretrained_cfg(name)
    if pc is None:
        raise ConfigError(f"config key 'data.input_stats': timm has no pretrained_cfg for {name!r} "
                          "(name its weights tag, e.g. vit_base_patch16_clip_quickgelu_224.openai, or use card)")
    return {"mean": [float(v) for v in pc.mean], "std": [float(v) for v in pc.std],
            "image_size": int(pc.input_size[-1]), "crop_pct": float(pc.crop_pct)}
