"""The parent run a stage-2 / post-hoc run starts from, and its frozen backbone's features.

With no augmentation and BatchNorm in eval mode the backbone is a fixed function, so its pooled features are
extracted once (cached in the parent's run directory, keyed by what they depend on) and the classifier trains
or is adjusted on them: the same classifier, far faster."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from bench.config import Config, ConfigError, load_yaml, parent_path, stored_config
from bench.experiment import load_parent
from bench.data.batches import Split, eval_batches
from bench.data.lt import LTData
from bench.methods.classifiers import make_model
from bench.registry import POSTHOC
from bench.models.parts import encode
from bench.runtime import dist
from bench.runtime.progress import log
from bench.runtime.rundir import RunDir, check_owner
from bench.train import checkpoint as ckpt


def finished_run(ref: str, rel: str | None, owner_hash: str | None, cfg: Config, runs_root: str | Path,
                 base: Path, what: str = "parent") -> RunDir:
    """The finished run `ref` (a run directory, or an experiment YAML whose run is `rel` under the runs root) that
    cfg's `what` (parent, teacher) names; a clear error if it is missing or incomplete."""
    cand = parent_path(ref, base)
    key = "parent" if what == "parent" else "train.distill.teacher"
    if cand.is_dir():
        run = RunDir(cand)
    elif rel:                     # the lineage load_config resolved
        run = RunDir(Path(runs_root) / rel)
    else:                         # a config stored before parent_run was recorded
        run = RunDir.for_config(load_parent(ref, cfg.seed, base, key=key), runs_root)
    if not run.path.is_dir():
        raise ConfigError(f"{cfg.stage} needs its {what} run {run.path}, which does not exist: run "
                          f"`ltbench run {ref} seed={cfg.seed}` first")
    if not run.is_complete() or not run.final_ckpt.is_file():
        raise ConfigError(f"{cfg.stage} needs its {what} run {run.path} to be complete (no result.json / "
                          f"final.pt yet): finish it with `ltbench run {ref} seed={cfg.seed}`")
    if owner_hash is not None:   # the files must be the run this config was resolved against
        check_owner(run.result_file, run.read_result().get("config_hash"), owner_hash, f"{what} config")
    return run


def parent_run(cfg: Config, runs_root: str | Path, base: Path = Path(".")) -> RunDir:
    """The finished run a stage2/posthoc config starts from; a clear error if it is missing or incomplete."""
    assert cfg.parent is not None
    run = finished_run(cfg.parent, cfg.parent_run, cfg.parent_hash, cfg, runs_root, base)
    result = run.read_result()
    kind = (result.get("posthoc") or {}).get("kind")
    if kind in POSTHOC and POSTHOC[kind].logits is not None:  # type: ignore[index]
        raise ConfigError(f"config key 'parent': {run.path} is a logit-adjustment run ({kind}); its final.pt holds "
                          "the unadjusted classifier, so start from its own parent instead")
    return run


# What a teacher must share with its student's data: the long-tailed set and the model input
TEACHER_DATA_KEYS = ("dataset", "imbalance_factor", "profile", "n_max", "rounding", "selection", "selection_seed",
                     "val_per_class", "synthetic", "to_rgb", "pad_to", "mean", "std", "image_size", "eval_resize",
                     "resize", "input_stats")


def teacher_run(cfg: Config, runs_root: str | Path, base: Path = Path(".")) -> RunDir | None:
    """The finished run train.distill.teacher names (None without distillation)."""
    d = cfg.train.distill
    if d.teacher is None:
        return None
    return finished_run(d.teacher, d.teacher_run, d.teacher_hash, cfg, runs_root, base, what="teacher")


def load_teacher(cfg: Config, data: LTData, teacher: RunDir, device: torch.device) -> torch.nn.Module:
    """The teacher's final model (its own architecture, from its config.yaml), on the student's data."""
    tcfg = stored_config(load_yaml(teacher.path / "config.yaml"))
    # the teacher reads the student's batches: the same long-tailed set and the same input (size, normalisation)
    for key in TEACHER_DATA_KEYS:
        mine, theirs = getattr(cfg.data, key), getattr(tcfg.data, key)
        if mine != theirs:
            raise ConfigError(f"config key 'train.distill.teacher': {teacher.path} has data.{key} = {theirs!r}, "
                              f"this run {mine!r}; a teacher reads this run's batches")
    return load_parent_model(tcfg, data, teacher, device, owner_hash=cfg.train.distill.teacher_hash)


def load_parent_model(cfg: Config, data: LTData, parent: RunDir, device: torch.device,
                      owner_hash: str | None = None) -> torch.nn.Module:
    model = make_model(cfg, data, init=False)   # final.pt's architecture: plain layers, its weights loaded below
    saved = ckpt.load(parent.final_ckpt)
    if cfg.parent_hash is not None:
        check_owner(parent.final_ckpt, saved.get("config_hash"), cfg.parent_hash, "parent config")
    if owner_hash is not None:
        check_owner(parent.final_ckpt, saved.get("config_hash"), owner_hash, "teacher config")
    with ckpt.fitting(parent.final_ckpt):
        model.load_state_dict(saved["model"])
    return model.to(device)


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device, tta_flip: bool = False) -> Split:
    """Pooled features of a split in eval mode (and, for TTA, the mean with the flipped image's features:
    the head is affine, so head(mean) equals the mean of the two logits)."""
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        x = x.to(device)
        h = encode(model, x)
        if tta_flip:
            h = (h + encode(model, x.flip(3))) / 2
        feats.append(h.float().cpu())
        labels.append(y)
    return Split(torch.cat(feats), torch.cat(labels))


def parent_features(model: torch.nn.Module, parent: RunDir, data: LTData, split: str, batch_size: int,
                    device: torch.device, tta_flip: bool = False, workers: int = 0) -> Split:
    """Features of the parent's final model, extracted once and kept in its run directory.

    A finished run's final.pt never changes, so every stage-2 / post-hoc child (a hyperparameter grid,
    say) reuses them; a feature file that does not match the split is recomputed.
    """
    path = parent.path / "features" / f"{split}{'-tta' if tta_flip else ''}.pt"
    # The cache is keyed by what was read: the labels in order, and for shards the manifest digest.
    source = {"manifest": data.manifest_digest, "selection_hash": data.selection_hash}
    labels = data.labels(split)
    if path.is_file():
        try:
            saved = ckpt.load(path)
            if saved.get("source") == source and torch.equal(saved["y"], labels):
                log(f"features of {split}: reusing {path}")
                return Split(saved["x"], saved["y"])
        except ckpt.CheckpointError:
            pass
    feats = extract_features(model, data.eval_batches(split, batch_size, workers), device, tta_flip)
    # Under DDP each rank extracted its contiguous part; gathered in rank order, they are the whole split.
    feats = Split(dist.gather_cat(feats.x), dist.gather_cat(feats.y))
    if not torch.equal(feats.y, labels):  # on_error=skip dropped samples: usable, but never cached
        return feats
    if dist.is_main():
        ckpt.save_atomic({"x": feats.x, "y": feats.y, "source": source}, path)
    return feats


def eval_features(model: torch.nn.Module, parent: RunDir, data: LTData, cfg: Config, device: torch.device,
                  selects: bool = True) -> dict[tuple[str, bool], Split]:
    """Parent features of the evaluated splits by (split, flip TTA): every split as reported (eval.tta_flip)
    and, when something is selected on it, the selection split as selected on (eval.select_tta_flip)."""
    splits = ("val", "test") if data.val is not None else ("test",)
    want = {(s, cfg.eval.tta_flip) for s in splits}
    if selects and cfg.eval.selection_split in splits:
        want.add((cfg.eval.selection_split, cfg.eval.select_tta_flip))
    return {key: parent_features(model, parent, data, key[0], cfg.eval.batch_size, device, key[1],
                                 cfg.runtime.workers)  # type: ignore[arg-type]  # set by setup_runtime
            for key in sorted(want)}   # one order on every rank: extraction gathers across them


def feature_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cached features in order; under DDP this rank's part (the evaluator sums counts over ranks)."""
    return eval_batches(split, batch_size, None, dist.rank(), dist.world())


