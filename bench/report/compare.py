"""A table against what others report: the published numbers of each cell's method and column
(datasets/published/), the difference and whether it is within the spread over seeds, and the notes on a
method run under two protocols."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from bench.config.protocols import PROTOCOL_NAMES
from bench.data.cards import dataset_title
from bench.report.aggregate import Table, method_key, row_label
from bench.report.collect import peeks_at_test


def protocol_notes(table: Table) -> list[str]:
    """--protocols: per method and column run under a reference protocol and under clean, the difference in
    `all` (what selecting on test, TTA and the reference's other choices add to the number)."""
    out = []
    for col in table.columns:
        by_method: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in table.rows:
            cell = table.cells.get((row, col))
            mean = cell.stats("all")[0] if cell is not None else None
            if mean is not None and row[1].split(",")[0] in PROTOCOL_NAMES:
                by_method[row[0]][row[1].split(",")[0]].append(mean)
        for method, found in sorted(by_method.items(), key=lambda kv: method_key(kv[0])):
            several = sorted(p for p, m in found.items() if len(m) > 1)
            if several and "clean" in found and len(found) > 1:
                # which of a protocol's settings to hold against clean would be a guess: say so instead
                out.append(f"{method}, {dataset_title(*col)}: several settings under {', '.join(several)}; no single "
                           "difference (compare its rows, or --select val)")
                continue
            means = {p: m[0] for p, m in found.items()}
            if "clean" in means:
                for proto, mean in sorted(means.items()):
                    if proto != "clean":
                        out.append(f"{method}, {dataset_title(*col)}: {proto} {mean:.2f} "
                                   f"vs clean {means['clean']:.2f}: {mean - means['clean']:+.2f} points under {proto}")
    return out


def _norm_backbone(name: str) -> str:
    """'resnext50_32x4d' / 'ResNeXt-50' -> 'resnext50'; 'resnet32_cifar' / 'ResNet-32' -> 'resnet32'."""
    return re.sub(r"[^a-z0-9]", "", name.lower().split("_")[0].split("(")[0])


def comparisons(table: Table) -> list[dict[str, Any]]:
    """Each reproduced cell beside the published value of the same method and column (--reference): the
    difference in points of `all`, a verdict, and what differs between our protocol and the paper's."""
    out = []
    for ref in table.reference:
        for row in table.rows:
            cell = table.cells.get((row, ref["column"]))
            if row[0] != ref["method"] or cell is None or ref.get("all") is None:
                continue
            mean, std, n = cell.stats("all")
            if mean is None:
                continue
            diff = mean - ref["all"]
            spread, rule = (2 * std, "2 std") if n >= 3 and std is not None else (1.0, "1 point, n < 3")
            verdict = ("within the seeds' spread" if abs(diff) <= spread else "above" if diff > 0 else "below")
            res = cell.runs[0].result or {}
            differs = []
            ours_model, theirs = str(res.get("model", "")), str(ref.get("backbone", ""))
            if ours_model and theirs and _norm_backbone(ours_model) != _norm_backbone(theirs):
                differs.append(f"backbone {ours_model} vs {theirs}")
            # a multi-expert row names its experts in the backbone ("ResNet-32, 6 experts"); a run records its own
            their_experts = re.search(r"(\d+) experts", str(ref.get("backbone", "")))
            ours_experts = int(res.get("experts") or 1)
            if (int(their_experts.group(1)) if their_experts else 1) != ours_experts:
                differs.append(f"experts {ours_experts} vs {their_experts.group(1) if their_experts else 1}")
            if isinstance(ref.get("epochs"), int) and res.get("epochs") not in (None, ref["epochs"]):
                differs.append(f"epochs {res['epochs']} vs {ref['epochs']}")
            # Peeking at test = choosing on the test split (the best epoch, a post-hoc tau), here or in a parent
            # run; every averaged run is checked. The paper's rule is its registry `selection`.
            known = [r for r in cell.runs if ((r.result or {}).get("selection") or {}).get("split")]
            peeks = [p for r in known if (p := peeks_at_test(r))]
            theirs = ref.get("selection", "unknown")
            if known and theirs != "unknown" and bool(peeks) != (theirs == "test"):
                if peeks:
                    ours = "; ".join(dict.fromkeys(x for p in peeks for x in p))
                    ours += f" ({len(peeks)} of {len(known)} runs)" if len(peeks) < len(known) else ""
                else:
                    sel = (known[0].result or {})["selection"]
                    ours = f"{sel.get('select', 'last')} epoch on {sel['split']}"
                differs.append(f"selection: {ours} vs {'the test set' if theirs == 'test' else theirs} in the paper")
            out.append({"row": row, "column": ref["column"], "source": ref["source"], "published": ref["all"],
                        "mean": mean, "std": std, "n": n, "diff": diff, "verdict": f"{verdict} ({rule})",
                        "differs": differs})
    return out


def comparison_lines(table: Table) -> list[str]:
    lines = []
    found = comparisons(table)
    if table.reference_asked and not found:
        cols = ", ".join(dataset_title(*c) for c in table.columns)
        return [f"no published number of these methods on {cols} in datasets/published/ (nothing to compare)"]
    for c in found:
        ours = f"{c['mean']:.2f}" + (f" ± {c['std']:.2f}" if c["std"] is not None else "") + f", n = {c['n']}"
        lines.append(f"{row_label(c['row'])}, {dataset_title(*c['column'])}: ours {ours}; {c['source']} "
                     f"{c['published']:.2f}: {c['diff']:+.2f} points, {c['verdict']}"
                     + (f"; protocol differs: {'; '.join(c['differs'])}" if c["differs"] else ""))
    return lines


PROTOCOL_NOTES_INTRO = "The same methods under two protocols (clean = everything chosen on validation, test read once):"
COMPARISON_INTRO = ("Against the published numbers (all; within = |difference| <= 2 std over seeds, or 1 point "
                    "with fewer than 3 seeds):")


