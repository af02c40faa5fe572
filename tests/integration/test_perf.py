"""`ltbench perf` runs and writes its report on the tiny synthetic setting (speed itself is measured in
BENCHMARKS.md, never asserted in tests)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_perf_quick_writes_its_report(tmp_path):
    out = tmp_path / "perf"
    # stage 2 (cached == recomputed) has its own test in test_pipeline; here the four other sections
    r = run_cli("perf", "--quick", "--repeats", "1", "--only", "trainer,data,access,gpu", "--threads", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "perf.json").read_text())
    assert list(report["sections"]) == ["trainer", "data", "access", "gpu"]
    a = report["sections"]["access"]
    assert a["ratios"]["random access / stream"] > 0 and a["ratios"]["header scan: s per 100k samples"] > 0
    t = report["sections"]["trainer"]
    assert {row[0] for row in t["rows"]} == {"bare loop", "bare loop, glibc malloc defaults", "ltbench",
                                            "ltbench + crop/flip"}
    assert t["ratios"]["ltbench / bare loop"] > 0 and isinstance(t["met"], bool)
    d = report["sections"]["data"]
    assert {"npy shards, 2 workers / memory, training", "npy shards, 0 workers / memory, training"} <= set(d["ratios"])
    assert all(v == "pipeline" or v.startswith("model (loading ") for v in d["bound"].values()) and len(d["bound"]) == 2
    g = report["sections"]["gpu"]
    # the CPU side of the GPU check runs everywhere: both JPEG sets, training and evaluation paths, 224 px
    assert [(r["shards"], r["path"][:5]) for r in g["pipeline"]["rows"] if r["workers"] == 0] == [
        ("original", "train"), ("original", "eval:"), ("shorter-256", "train"), ("shorter-256", "eval:")]
    assert all(r["images_per_s"] > 0 and r["dtype"] == "torch.uint8" for r in g["pipeline"]["rows"])
    if g["gpu"] is None:
        assert g["models"] == g["foundation"] == g["end_to_end"] == {"skipped": "no GPU", "met": None}
    md = (out / "perf.md").read_text()
    assert md.startswith("# ltbench perf: quick") and "target: ltbench >= 0.97 x bare loop" in md
    assert "### JPEG pipeline (CPU)" in md and ("skipped: no GPU" in md or "torch.compile" in md)
    assert "### Foundation model (ViT: LoRA, AdaptFormer)" in md
    assert not list(out.glob("work-*"))                  # the scratch runs are removed
    bad = run_cli("perf", "--only", "nope", "--out", str(out))
    assert bad.returncode == 2 and "unknown section(s) nope" in bad.stderr
    bad = run_cli("perf", "--only", "gpu", "--gpu-parts", "models,nope", "--out", str(out))
    assert bad.returncode == 2 and "unknown part(s) nope" in bad.stderr


def test_perf_scale_quick_goes_through_every_step(tmp_path):
    """`ltbench perf --only scale --quick`: the iNaturalist-shaped path at 50 classes, 100 run directories and a
    100-run sweep (the full size, with its second stage-2 run and the cRT epoch, is a benchmark: BENCHMARKS.md).
    Every step ran and was measured; no target is judged at this size."""
    out = tmp_path / "perf"
    r = run_cli("perf", "--quick", "--only", "scale", "--threads", "1", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    sec = json.loads((out / "perf.json").read_text())["sections"]["scale"]
    assert [k.split(" (")[0].split(",")[0] for k in sec["steps"]] == [
        "prepare", "stage-1 epoch", "WB stage 2", "MiSLAS stage 2 from the shards", "table over 100 runs",
        "status over 100 runs", "submit --dry-run"]
    assert all(v["wall_s"] > 0 and v["peak_rss_mib"] > 0 for v in sec["steps"].values())
    f = sec["figures"]
    assert f["run directories for table / status"] == 100
    assert f["stage 2 on cached features: ltbench samples/s"] > 0 and sec["met"] is None
    assert set(sec["targets"]) == {"table <= 10 s", "status <= 5 s", "dry-run <= 10 s", "stage 2 >= 0.8 x bare"}
    md = (out / "perf.md").read_text()
    assert "| status over 100 runs |" in md and "| stage 2 / bare linear loop |" in md


def test_wbref_needs_a_clone_of_the_reference_code(tmp_path):
    """The side-by-side with the WB reference code runs only against a clone of it (never a stand-in): without
    one the section says why it is skipped; a folder that is not one is a one-line error."""
    out = tmp_path / "perf"
    r = run_cli("perf", "--only", "wbref", "--repeats", "1", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    sec = json.loads((out / "perf.json").read_text())["sections"]["wbref"]
    assert sec["met"] is None and sec["skipped"].startswith("needs --wb-reference DIR")
    bad = run_cli("perf", "--only", "wbref", "--wb-reference", str(tmp_path), "--out", str(out))
    assert bad.returncode == 2 and "holds no utils/trainval.py" in bad.stderr and "Traceback" not in bad.stderr
