"""The GPU check's report: the Markdown of perf.md's gpu section, from the dict bench/devtools/gpucheck.py returns.

Owns the rendering only (tables of the pipeline, models, foundation and end-to-end parts, the targets met or
not); it measures nothing and imports no torch.
"""

from __future__ import annotations

from typing import Any


def render(sec: dict[str, Any]) -> list[str]:
    """Markdown lines of the check's report (perf.md's gpu section)."""
    lines = [f"Machine: {sec.get('gpu') or 'no GPU'} x {sec.get('gpus', 0)}, {sec['cores']} cores; "
             f"check took {sec.get('check_s', '-')} s.", "", "### JPEG pipeline (CPU)", ""]
    pipe = sec["pipeline"]
    if pipe.get("rows"):
        lines += ["| shards | path | workers | images/s | per core | batch |", "|---|---|---|---|---|---|"]
    for r in pipe.get("rows", []):
        lines.append(f"| {r['shards']} | {r['path']} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_core']:.0f} | {'x'.join(map(str, r['shape']))} {r['dtype']} |")
    lines += ["", f"target: {pipe['target']}: {'met' if pipe['met'] else 'not met'}" if "target" in pipe else
              f"skipped: {pipe.get('skipped')}", "", "### Models", ""]
    models = sec["models"]
    if "skipped" in models:
        lines += [f"skipped: {models['skipped']}", ""]
    else:
        lines += ["| model | bare img/s | ltbench synthetic img/s | ratio | JPEG, decode=cpu img/s | ratio | "
                  "JPEG, decode=gpu img/s | ratio | GPU GiB (bare / synthetic / JPEG) | s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in models["rows"]:
            cells = [r["model"], f"{r['bare']['images_per_s']:.0f}", f"{r['synthetic']['images_per_s']:.0f}",
                     f"**{r['trainer / bare']:.3f}**"]
            for k in ("jpeg", "jpeg_gpu_decode"):
                cells += ([f"{r[k]['images_per_s']:.0f}", f"**{r[f'{k} / synthetic']:.3f}**"] if k in r else ["-", "-"])
            mem = [r["bare"].get("gpu_mem_gib"), r["synthetic"].get("gpu_mem_gib"),
                   (r.get("jpeg") or {}).get("gpu_mem_gib")]
            cells += [" / ".join(str(m) for m in mem if m is not None) or "-", str(r["section_s"])]
            lines.append("| " + " | ".join(cells) + " |")
        if models.get("skipped_items"):
            lines += ["", f"skipped (time budget): {', '.join(models['skipped_items'])}"]
        met = models.get("met")
        lines += ["", f"target: {models['target']}: " + ("met" if met else "not met" if met is False else "n/a"), ""]
    lines += render_foundation(sec.get("foundation", {"skipped": "not run (a report from before this part)"}))
    e2e = sec["end_to_end"]
    lines += ["### End to end", ""]
    if "skipped" in e2e:
        lines += [f"skipped: {e2e['skipped']}", ""]
    else:
        res = e2e["resume"]
        lines += [f"- stage 1 killed after its first checkpoint and resumed: "
                  f"test {res['killed and resumed']['all']:.2f} "
                  f"vs uninterrupted {res['uninterrupted']['all']:.2f}: {'equal' if res['equal'] else 'DIFFERENT'} "
                  f"({res['resumed_at']})",
                  f"- stage 2 on cached features: test all {e2e['stage2']['metrics']['all']:.2f}",
                  f"- torchrun --nproc_per_node {e2e['torchrun']['nproc_per_node']}: world size "
                  f"{e2e['torchrun']['world_size']}, backend {e2e['torchrun']['backend']}, test all "
                  f"{e2e['torchrun']['metrics']['all']:.2f}", "", "```", e2e["table"], "```", ""]
    return lines


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def render_foundation(fm: dict[str, Any]) -> list[str]:
    """The foundation part's Markdown lines: four rows (bare full fine-tune, bare LoRA, bare AdaptFormer,
    ltbench LoRA)."""
    lines = ["### Foundation model (ViT: LoRA, AdaptFormer)", ""]
    if "skipped" in fm:
        return lines + [f"skipped: {fm['skipped']}", ""]
    lo, amp = fm["lora"], fm["amp"]
    lora = f"LoRA r {lo['r']} on {', '.join(lo['target_modules'])}"
    amp = (f"{amp['bare']} autocast" if amp["bare"] == amp["trainer"] else
           f"{amp['bare']} autocast in the bare loops, train.amp={amp['trainer']} in the trainer")
    lines += [f"`{fm['model']}` (random weights, model.embedding={fm['embedding']}) at {fm['image']} px, batch "
              f"{fm['batch']}, {amp}, SGD; channels_last off: it does not apply to ViTs (the one "
              "convolution is the patch embedding, the blocks work on (batch, tokens, width) tensors).", "",
              "| run | img/s | trainable params | share | GPU GiB |", "|---|---|---|---|---|"]
    for label, r in (("bare loop, full fine-tune", fm["bare_full"]), (f"bare loop, {lora}", fm["bare_lora"]),
                     (f"bare loop, AdaptFormer r {fm['adaptformer']['r']} (LIFT)", fm["bare_adaptformer"]),
                     (f"ltbench trainer, {lora} (gpu_vit_lora.yaml)", fm["trainer_lora"])):
        tp = r["trainable_params"]
        mem = r.get("gpu_mem_gib")
        lines.append(f"| {label} | {r['images_per_s']:.0f} | {_count(tp['trainable'])} of {_count(tp['total'])} | "
                     f"{tp['share']:.4f} | {'-' if mem is None else mem} |")
    lines += ["", f"ltbench LoRA / bare full fine-tune: **{fm['lora trainer / bare full']:.3f}**; "
              f"ltbench LoRA / bare LoRA: **{fm['lora trainer / bare lora']:.3f}** ({fm['section_s']} s)", ""]
    return lines
