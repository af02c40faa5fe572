"""Zero-shot classifier weights from class-name prompts through a CLIP text tower (Radford et al. 2021).

For class c with name n_c and templates T_1..T_m (model.zeroshot.templates, '{}' = the name):

    e_cj = E_text(T_j(n_c)) / ||E_text(T_j(n_c))||          (each prompt embedding normalised)
    t_c  = mean_j e_cj / ||mean_j e_cj||                      (averaged, renormalised: CLIP's prompt ensembling)

and the classifier scores the normalised image embedding f with logits z_c = s * <f, t_c> = s cos(f, t_c),
s = model.zeroshot.logit_scale (None = the checkpoint's exp(logit_scale), 100 for CLIP). The text tower is
open_clip's (extra `foundation`), loaded from a local checkpoint only; it is imported here, when a
zero-shot classifier is built, so no other run loads it. Underscores in class names become spaces (LIFT).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.config import ConfigError, ZeroShotConfig
from bench.errors import one_line

EncodeText = Callable[[list[str]], torch.Tensor]


@torch.no_grad()
def prompt_weights(encode_text: EncodeText, class_names: Sequence[str], templates: Sequence[str],
                   chunk: int = 256) -> torch.Tensor:
    """(C, D) float32 unit rows t_c: the renormalised mean of each class's normalised prompt embeddings."""
    prompts = [t.format(name.replace("_", " ")) for name in class_names for t in templates]
    emb = torch.cat([encode_text(prompts[i:i + chunk]).float().cpu() for i in range(0, len(prompts), chunk)])
    emb = F.normalize(emb, dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def read_class_names(path: str, num_classes: int) -> list[str]:
    """One class name per line, in label order (blank lines ignored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config key 'model.zeroshot.class_names_file': {p} does not exist")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ConfigError(f"config key 'model.zeroshot.class_names_file': {p} has {len(names)} names, the dataset "
                          f"{num_classes} classes")
    return names


def load_text_encoder(zs: ZeroShotConfig, pretrained_file: str | None,
                      device: torch.device | None = None) -> tuple[EncodeText, float]:
    """(prompts -> text embeddings, the checkpoint's logit scale exp(logit_scale)) of an open_clip model whose
    weights come from a local file: model.zeroshot.text_weights_file, else model.pretrained_file."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError("config key 'model.classifier': zeroshot needs open_clip, which is not installed: "
                          "pip install 'ltbench[foundation]' (open_clip_torch)") from None
    path = zs.text_weights_file or pretrained_file
    key = "model.zeroshot.text_weights_file" if zs.text_weights_file else "model.pretrained_file"
    if path is None:
        raise ConfigError("config key 'model.zeroshot.text_weights_file': a zero-shot classifier needs the text "
                          "tower's weights as a local open_clip checkpoint (or model.pretrained_file pointing at one)")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config key '{key}': {file} does not exist (weights are read from local files only)")
    name = zs.text_model
    if name.endswith(".json"):           # a model config of its own (open_clip's JSON format)
        cfg_file = Path(name).expanduser()
        if not cfg_file.is_file():
            raise ConfigError(f"config key 'model.zeroshot.text_model': {cfg_file} does not exist")
        open_clip.add_model_config(cfg_file)
        name = cfg_file.stem
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise ConfigError(f"config key 'model.zeroshot.text_model': unknown open_clip model {name!r}"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    try:
        model = open_clip.create_model(name, pretrained=str(file), device="cpu")
    except Exception as e:   # a file of another architecture, a timm-only checkpoint without the text tower, ...
        raise ConfigError(f"config key '{key}': {file} could not be loaded as open_clip model {name!r}: "
                          f"{type(e).__name__}: {one_line(e)}") from None
    model = model.to(device or torch.device("cpu")).eval()
    tokenizer = open_clip.get_tokenizer(name)

    def encode(prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts).to(device or torch.device("cpu"))
        return model.encode_text(tokens)

    return encode, float(model.logit_scale.detach().exp())


def zeroshot_classifier(zs: ZeroShotConfig, pretrained_file: str | None, class_names: Sequence[str],
                        embed_dim: int) -> tuple[torch.Tensor, float]:
    """(t, s): unit class directions (C, D) from the prompts and the logit scale of model.zeroshot."""
    if zs.class_names_file is not None:
        class_names = read_class_names(zs.class_names_file, len(class_names))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    encode, checkpoint_scale = load_text_encoder(zs, pretrained_file, device)
    t = prompt_weights(encode, class_names, zs.templates)
    if t.shape[1] != embed_dim:
        raise ConfigError(f"config key 'model.zeroshot.text_model': its text embeddings have {t.shape[1]} dimensions, "
                          f"the image embedding of the model {embed_dim} (use the two towers of one CLIP model)")
    return t, zs.logit_scale if zs.logit_scale is not None else checkpoint_scale
