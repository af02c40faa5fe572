"""What the demo's table must show: the two papers' claims, checked on the mean test accuracy over the
seeds the demo ran (every choice was made on val before; test is read here only to report), and every
place where the demo's recipe departs from the papers'.

Claims (WB: Alshammari et al., CVPR 2022; HS: Hasegawa & Sato, ICLR 2024):
  1. tuned weight decay beats the naive model (WB, Table 1: CE 38.4 -> CE + WD 46.1 on CIFAR-100-LT);
  2. WB stage 2 (class-balanced loss + WD + MaxNorm) beats its WD stage 1 (WB: 46.1 -> 53.4);
  3. tau-norm beats the WD model (WB: 46.1 -> 51.3);
  4. the HS single stage with its logit adjustment is at least on par with WB (HS's claim);
  5. no final method (tau-norm, WB, HS) leaves a class at 0 % test accuracy, in any seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.report.collect import per_class

ON_PAR_PTS = 0.5          # "at least on par": HS all >= WB all - 0.5 points
FINAL_METHODS = ("tau-norm", "wb", "hs")


@dataclass
class Claim:
    text: str
    holds: bool | None    # None: a row it needs is missing
    detail: str


def check_claims(rows: dict[str, dict[str, Any]]) -> list[Claim]:
    """rows: method -> {"all": mean test top-1 (%), "per_class_min": each class's lowest test accuracy (%) over
    the seeds}: a class emptied in one seed is emptied, whatever the other seeds' mean."""
    def all_of(m: str) -> float | None:
        return rows[m]["all"] if m in rows and rows[m].get("all") is not None else None

    def beats(a: str, b: str, text: str, slack: float = 0.0) -> Claim:
        x, y = all_of(a), all_of(b)
        if x is None or y is None:
            return Claim(text, None, f"no {a if x is None else b} row")
        ok = x > y if slack == 0 else x >= y - slack
        return Claim(text, ok, f"{a} {x:.2f} vs {b} {y:.2f} ({x - y:+.2f})")

    claims = [beats("wd", "naive", "WD beats naive (WB)"),
              beats("wb", "wd", "WB stage 2 beats WD (WB)"),
              beats("tau-norm", "wd", "tau-norm beats WD (WB)"),
              beats("hs", "wb", f"HS + LA at least on par with WB (HS; within {ON_PAR_PTS} points)", ON_PAR_PTS)]
    present = [m for m in FINAL_METHODS if any(v is not None for v in rows.get(m, {}).get("per_class_min") or [])]
    if not present:
        claims.append(Claim("no final method leaves a class at 0 %", None, "no per-class accuracies"))
    else:
        worst = {m: min(v for v in rows[m]["per_class_min"] if v is not None) for m in present}
        zero = [m for m, v in worst.items() if v <= 0]
        claims.append(Claim("no final method leaves a class at 0 %", not zero and len(present) == len(FINAL_METHODS),
                            "lowest class in any seed: " + ", ".join(f"{m} {v:.1f}" for m, v in worst.items())
                            + ("" if len(present) == len(FINAL_METHODS) else " (rows missing)")))
    return claims


def rows_from_table(table: Any) -> dict[str, dict[str, Any]]:
    """method -> mean test all over the complete runs of its (chosen) cell, and each class's lowest accuracy
    over those runs (None for a class no run measured)."""
    rows: dict[str, dict[str, Any]] = {}
    for (method, label), _col in table.cells:
        cell = table.cells[((method, label), _col)]
        if method in rows:   # the demo's table has one row per method; a second would silently replace the first
            raise RuntimeError(f"claims: two rows of {method} in the demo's table")
        per = [v for r in cell.runs if (v := per_class(r).get("per_class_acc"))]
        rows[method] = {"all": cell.stats("all")[0], "seeds": len(cell.runs),
                        "per_class_min": [min((x for x in v if x is not None), default=None) for v in zip(*per)]
                        if per else None}
    return rows


def format_claims(claims: list[Claim], seeds: int, not_shown: dict[str, str] | None = None) -> str:
    """Markdown lines; not_shown maps a claim's text prefix to why this budget cannot show it."""
    mark = {True: "holds", False: "NOT shown", None: "not checked"}
    out = [f"Claims, on the mean test accuracy over {seeds} seed{'s' if seeds != 1 else ''} (all choices made on val):"]
    for c in claims:
        why = next((w for k, w in (not_shown or {}).items() if c.text.startswith(k)), "")
        out.append(f"- [{mark[c.holds]}] {c.text}: {c.detail}" + (f" -- {why}" if why and not c.holds else ""))
    return "\n".join(out)


# The papers' recipes, key -> (value, where it comes from). Stage 1 is shared by naive, wd and hs-stage1.
STAGE1_RECIPE: dict[str, tuple[Any, str]] = {
    "model.name": ("resnet32_cifar", "WB paper ResNet-32; WB code and HS ResNet-34"),
    "train.epochs": (320, "WB code and HS; WB paper 200"),
    "train.lr": (0.01, "WB, HS"),
    "train.batch_size": (64, "WB, HS"),
    "train.momentum": (0.9, "WB, HS"),
    "train.schedule": ("cosine", "WB, HS"),
    "data.n_max": ("full", "the full training pool"),
}
RECIPES: dict[str, dict[str, tuple[Any, str]]] = {
    "naive": {**STAGE1_RECIPE, "train.weight_decay": (0.0, "WB naive")},
    "wd": {**STAGE1_RECIPE, "train.weight_decay": (5e-3, "WB CIFAR-100-LT, tuned"),
           "train.wd_scope": ("all", "WB")},
    "hs-stage1": {**STAGE1_RECIPE, "model.classifier": ("etf", "HS"), "train.weight_decay": (0.0, "HS: WD in the loss"),
                  "train.wd_in_loss": (5e-3, "HS"), "train.feature_reg": (0.01, "HS")},
    "wb": {"stage2.train.epochs": (10, "WB"), "stage2.train.lr": (0.01, "WB"),
           "stage2.train.weight_decay": (0.1, "WB"), "stage2.train.loss.cb_beta": (0.9999, "WB"),
           "stage2.maxnorm_thresh": (0.1, "WB"),
           "stage2.train.loss.name": ("cb_bce_softmax", "WB code; HS weighted CE"),
           "stage2.bn_mode": ("train", "WB code"), "stage2.augment": ("crop_flip", "WB code")},
    "tau-norm": {"posthoc.tau": (1.9, "WB code on the WD model")},
    "hs": {"posthoc.tau": ("chosen on val", "HS")},
}
STAGE1_METHODS = ("naive", "wd", "hs-stage1")
COMMON_RECIPE = {"eval.tta_flip": (True, "WB reports with flip TTA; HS without")}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differs(got: Any, paper: Any) -> bool:
    if isinstance(got, (int, float)) and isinstance(paper, (int, float)):
        return abs(got - paper) > 1e-12 * max(1.0, abs(paper))
    return got != paper


def deviations(configs: dict[str, dict[str, Any]], chosen_on_val: dict[str, tuple[list[str], str]] | None = None,
               full_n_max: int | None = None) -> list[str]:
    """Lines naming where each method's config (a to_dict()) departs from its paper's recipe; what the
    stage-1 runs share is said once. chosen_on_val: method -> (config keys the demo chooses on val instead
    of fixing them, a sentence saying so); full_n_max: the head class of the full training pool."""
    chosen_on_val = chosen_on_val or {}
    diffs: dict[str, list[str]] = {}
    for method, cfg in configs.items():
        flat = flatten(cfg)
        recipe = {**RECIPES.get(method, {}), **(COMMON_RECIPE if method in STAGE1_METHODS else {})}
        keys, text = chosen_on_val.get(method, ([], ""))
        diffs[method] = []
        for key, (paper, source) in recipe.items():
            got = flat.get(key)
            if key == "posthoc.tau" and got is None:
                got = "chosen on val"
            if key == "data.n_max" and got in (None, full_n_max):
                got = "full"
            if key not in keys and _differs(got, paper):
                diffs[method].append(f"{key.removeprefix('train.')} {got} (paper {paper}: {source})")
        diffs[method] += [text] if text else []
    stage1 = [m for m in STAGE1_METHODS if m in diffs]
    shared = [d for d in (diffs[stage1[0]] if stage1 else []) if all(d in diffs[m] for m in stage1)]
    lines = [f"- stage 1 ({', '.join(stage1)}): " + "; ".join(shared)] if shared else []
    for method, ds in diffs.items():
        ds = [d for d in ds if d not in shared or method not in stage1]
        if ds:
            lines.append(f"- {method}: " + "; ".join(ds))
    return lines
