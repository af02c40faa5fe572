"""Real tar shards: `ltbench prepare` on fake ImageNet-LT / Places-LT / iNat trees, streaming under 2-process
gloo DDP, bad data, training from shards (and its exact resume) against training from memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.data.shards import file_sha256
from tests.conftest import REPO, run_cli
from tests.shardtools import (SMOKE, SMOKE_DATA, TEST, TRAIN, VAL, make_inat_tree, make_split_file_tree,
                              rewrite_shard)

pytestmark = pytest.mark.slow

FIXED = ["runtime.threads=1"]
# smoke_shards (the smoke config's data as PNG shards) and cards (fake cards for the fake trees): conftest.py


def _tree(kind: str, root: Path) -> Path:
    return make_inat_tree(root) if kind == "inat2018" else make_split_file_tree(root, kind)


@pytest.mark.parametrize("kind", ["imagenet-lt", "places-lt", "inat2018"])
def test_prepare_fake_tree_matches_its_card(kind, cards, tmp_path):
    images = _tree(kind, tmp_path / "src")
    out = tmp_path / "shards"
    r = run_cli("prepare", kind, "--src", str(images), "--splits", str(tmp_path / "src" / "splits"), "--out", str(out),
                "--samples-per-shard", "7", env={"LTBENCH_DATASETS_DIR": str(cards)})
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"] == kind and m["num_classes"] == 5 and m["card_check"]["deviations"] == []
    splits = {"train": TRAIN, "test": [TEST] * 5} | ({} if kind == "inat2018" else {"val": [VAL] * 5})
    assert set(m["splits"]) == set(splits)
    for name, counts in splits.items():
        s = m["splits"][name]
        assert s["class_counts"] == counts and s["num_samples"] == sum(counts)
        assert sum(sh["samples"] for sh in s["shards"]) == sum(counts)
        assert Counter(lab for sh in s["shards"] for lab in sh["labels"]) == dict(enumerate(counts))
        for sh in s["shards"]:
            assert file_sha256(out / sh["name"]) == sh["sha256"] and (out / sh["name"]).stat().st_size == sh["bytes"]
    assert m["selection"]["class_counts"] == TRAIN and m["selection"]["profile"] == "files"
    assert set(m["sources"]) == set(json.loads(json.dumps(
        {"imagenet-lt": ["ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"],
         "places-lt": ["Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"],
         "inat2018": ["train2018.json", "val2018.json"]}[kind])))
    if kind == "imagenet-lt":
        assert m["class_names"] == [f"n{c:08d}" for c in range(5)]   # from the class folders
    if kind == "inat2018":
        assert m["class_names"][3] == "Species 3"
    r = run_cli("prepare", "--verify", kind, "--out", str(out))
    assert r.returncode == 0 and "match" in r.stdout


def test_prepare_stops_on_a_card_mismatch_unless_allowed(tmp_path):
    images = make_split_file_tree(tmp_path / "src", "imagenet-lt")
    args = ["prepare", "imagenet-lt", "--src", str(images), "--splits", str(tmp_path / "src" / "splits"),
            "--out", str(tmp_path / "out")]
    r = run_cli(*args)   # the real card: 115,846 training images expected
    assert r.returncode == 2
    assert "train samples 30 (card: 115846)" in r.stderr and "--allow-deviation" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "manifest.json").exists()
    r = run_cli(*args, "--allow-deviation")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["card_check"]["allowed"] and "train samples 30 (card: 115846)" in m["card_check"]["deviations"]


def test_prepare_errors_name_the_problem(cards, tmp_path):
    images = make_split_file_tree(tmp_path / "src", "places-lt")
    env = {"LTBENCH_DATASETS_DIR": str(cards)}
    (images / "c" / "class2").rename(images / "c" / "gone")
    r = run_cli("prepare", "places-lt", "--src", str(images), "--splits", str(tmp_path / "src" / "splits"),
                "--out", str(tmp_path / "o"), env=env)
    assert r.returncode == 2 and "5 images listed in" in r.stderr and str(images / "c" / "class2") in r.stderr
    (images / "c" / "gone").rename(images / "c" / "class2")
    bad = tmp_path / "src" / "splits" / "Places_LT_val.txt"
    bad.write_text("/c/class0/x.jpg zero\n")
    r = run_cli("prepare", "places-lt", "--src", str(images), "--splits", str(tmp_path / "src" / "splits"),
                "--out", str(tmp_path / "o"), env=env)
    assert r.returncode == 2 and f"{bad}:1: expected 'relative/path label'" in r.stderr


def test_prepare_is_idempotent_and_resumes_after_a_crash(tmp_path):
    out = tmp_path / "s"
    args = ["prepare", "synthetic", *SMOKE_DATA, "--out", str(out), "--samples-per-shard", "150"]
    assert run_cli(*args).returncode == 0
    first = {p.name: (file_sha256(p), p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    r = run_cli(*args)
    assert r.returncode == 0 and f"{len(first)} shards already done and verified, 0 to write" in r.stdout
    assert {p.name: (file_sha256(p), p.stat().st_mtime_ns) for p in out.glob("*.tar")} == first
    # a crash: one shard never written, one torn, a temporary file left behind
    (out / "train-000001.tar").unlink()
    with open(out / "test-000000.tar", "r+b") as f:
        f.truncate(5000)
    (out / ".train-000002.tar.tmp999").write_bytes(b"partial")
    r = run_cli(*args)
    assert r.returncode == 0 and "2 to write" in r.stdout, r.stdout
    assert {p.name: file_sha256(p) for p in out.glob("*.tar")} == {k: v[0] for k, v in first.items()}
    assert not list(out.glob(".*.tmp*"))


def test_shards_of_other_data_are_not_overwritten(smoke_shards, tmp_path):
    r = run_cli("prepare", "synthetic", "imbalance_factor=50", *SMOKE_DATA[1:], "--out", str(smoke_shards))
    assert r.returncode == 2 and "different preparation" in r.stderr


# --- streaming under DDP ------------------------------------------------------------------------

def _ddp_worker(rank: int, world: int, port: int, shards: str, workers: tuple[int, ...], out: str,
                sampler: str = "instance", epochs: tuple[int, ...] = (0, 1)) -> None:
    import multiprocessing

    import torch.distributed as dist

    from bench.experiment import load_config
    from bench.data.lt import build_lt_data

    # mp.spawn makes "spawn" this child's default, so each DataLoader would start its workers by importing torch
    # again (3 s each); ranks that torchrun or srun start fork them, as here
    multiprocessing.set_start_method("fork", force=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    res: dict = {}
    for w in workers:        # one process group for every worker count: the start-up is the slow part
        cfg = load_config(SMOKE, [f"data.shards={shards}", f"runtime.workers={w}"])
        data = build_lt_data(cfg.data)
        res[w] = {"train": {}, "eval": {}}
        loader = data.train_loader(16, 0, "crop_flip", False, sampler, w)   # global 16: 8 per rank
        for epoch in epochs:
            keys, shapes = [], set()
            for x, _y in loader.epoch(epoch):
                keys.append(list(loader.batch_keys))
                shapes.add(tuple(x.shape[1:]))
            res[w]["train"][epoch] = {"batches": len(keys), "len": len(loader), "keys": keys,
                                      "shapes": sorted(shapes)}
        for split in ("val", "test"):
            ys = [y.tolist() for _, y in data.eval_batches(split, 16, w)]
            res[w]["eval"][split] = sum(ys, [])
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def _run_ddp(shards: Path, workers: tuple[int, ...], out: Path, port: int, sampler: str = "instance",
             epochs: tuple[int, ...] = (0, 1)) -> dict[int, list[dict]]:
    """Each worker count's loaders in 2 gloo processes: {workers: [rank 0's batches, rank 1's]}."""
    import torch.multiprocessing as mp

    out.mkdir()
    mp.spawn(_ddp_worker, args=(2, port, str(shards), workers, str(out), sampler, epochs), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {w: [r[str(w)] for r in ranks] for w in workers}


@pytest.mark.ddp
def test_ddp_streaming_is_exact_with_0_and_2_workers(smoke_shards, tmp_path):
    m = json.loads((smoke_shards / "manifest.json").read_text())
    all_train = {f"{sh['name']}/{k:08d}" for sh in m["splits"]["train"]["shards"]
                 for k in range(int(sh["name"][-10:-4]) * 100, int(sh["name"][-10:-4]) * 100 + sh["samples"])}
    n_train = m["splits"]["train"]["num_samples"]
    assert len(all_train) == n_train == 772   # 772 = 2 ranks x 48 full batches of 8 + 4: no repeats needed
    runs = _run_ddp(smoke_shards, (0, 2), tmp_path / "ddp", 29500 + os.getpid() % 1000)
    for _workers, ranks in runs.items():
        for epoch in ("0", "1"):
            per_rank = [r["train"][epoch] for r in ranks]
            assert per_rank[0]["batches"] == per_rank[1]["batches"] == per_rank[0]["len"] == 49   # same count: no hang
            seen = [k for r in per_rank for b in r["keys"] for k in b]
            assert len(seen) == n_train and set(seen) == all_train       # every sample exactly once per epoch
            assert all(r["shapes"] == [[3, 16, 16]] for r in per_rank)
        assert ranks[0]["train"]["0"]["keys"] != ranks[0]["train"]["1"]["keys"]   # reshuffled every epoch
        for split in ("val", "test"):
            labels = ranks[0]["eval"][split] + ranks[1]["eval"][split]
            assert Counter(labels) == dict(enumerate(m["splits"][split]["class_counts"]))  # each sample once
    # the order does not depend on the number of DataLoader workers
    assert [r["train"] for r in runs[0]] == [r["train"] for r in runs[2]]


def test_workers_ignore_sigusr2(smoke_shards):
    """SLURM signals the whole process group before preemption; only the trainer may react to it."""
    code = f"""
import os, signal
from bench.experiment import load_config
from bench.data.lt import build_lt_data
got = []
signal.signal(signal.SIGUSR2, lambda *a: got.append(1))
cfg = load_config({SMOKE!r}, ["data.shards={smoke_shards}", "runtime.workers=2"])
loader = build_lt_data(cfg.data).train_loader(8, 0, "crop_flip", False, "instance", 2)
n = 0
for x, y in loader.epoch(0):
    if n == 3:
        os.killpg(os.getpgid(0), signal.SIGUSR2)
    n += 1
print("batches", n, "signals", len(got))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert "batches 97 signals 1" in r.stdout


# --- bad data -------------------------------------------------------------------------------------

def _copy_shards(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def _loader_error(shards: Path, workers: int = 0) -> str:
    from bench.experiment import load_config
    from bench.data.cards import DatasetError
    from bench.data.lt import build_lt_data

    cfg = load_config(SMOKE, [f"data.shards={shards}", f"runtime.workers={workers}"])
    with pytest.raises(DatasetError) as e:
        data = build_lt_data(cfg.data)
        for _ in data.train_loader(8, 0, "none", False, "instance", workers).epoch(0):
            pass
    assert "\n" not in str(e.value)   # one line, also when raised in a DataLoader worker
    return str(e.value)


def test_truncated_shard_is_named(smoke_shards, tmp_path):
    s = _copy_shards(smoke_shards, tmp_path / "s")
    with open(s / "train-000003.tar", "r+b") as f:
        f.truncate(40_000)
    msg = _loader_error(s)
    assert "train-000003.tar has 40000 bytes, the manifest says" in msg and "\n" not in msg
    # the same torn tar with a matching size in the manifest: found while reading
    doc = json.loads((s / "manifest.json").read_text())
    for sh in doc["splits"]["train"]["shards"]:
        if sh["name"] == "train-000003.tar":
            sh["bytes"] = 40_000
    (s / "manifest.json").write_text(json.dumps(doc))
    msg = _loader_error(s)
    assert "train-000003.tar after key" in msg and ("unreadable tar" in msg or "ends after" in msg)


def test_undecodable_image_and_missing_label_are_named(smoke_shards, tmp_path):
    s = _copy_shards(smoke_shards, tmp_path / "s")

    def garble(samples):
        samples[5]["png"] = b"\x89PNG not really"
        return samples

    rewrite_shard(s / "train-000002.tar", s / "manifest.json", garble)
    for workers in (0, 2):
        assert "train-000002.tar key 00000205: cannot decode .png" in _loader_error(s, workers)
    s2 = _copy_shards(smoke_shards, tmp_path / "s2")

    def unlabel(samples):
        del samples[0]["cls"]
        return samples

    rewrite_shard(s2 / "train-000001.tar", s2 / "manifest.json", unlabel)
    assert "train-000001.tar key 00000100: no label (.cls)" in _loader_error(s2)
    s3 = _copy_shards(smoke_shards, tmp_path / "s3")

    def relabel(samples):
        samples[1]["cls"] = b"99"
        return samples

    rewrite_shard(s3 / "train-000004.tar", s3 / "manifest.json", relabel)
    assert "train-000004.tar key 00000401: label 99 outside 0..9" in _loader_error(s3, 2)


def test_a_tear_between_samples_keeps_the_intact_ones(smoke_shards, tmp_path):
    """Cut a shard right at the first header of sample 10: samples 0-9 are whole and must all be read."""
    import tarfile

    from bench.data.cards import DatasetError
    from bench.data.shards import Hole, read_shard

    shard = tmp_path / "t.tar"
    shard.write_bytes((smoke_shards / "train-000000.tar").read_bytes())
    with tarfile.open(shard) as tf:
        cut = next(m.offset for m in tf.getmembers() if m.name.startswith("00000010."))
    with open(shard, "r+b") as f:
        f.truncate(cut + 100)   # inside the header of 00000010's first member
    got = list(read_shard(str(shard), 0, 10, "raise"))
    assert [g["__key__"] for g in got] == [f"{k:08d}" for k in range(10)]
    assert all("png" in g and "cls" in g for g in got)
    got = list(read_shard(str(shard), 8, 5, "skip"))
    assert [g["__key__"] for g in got[:2]] == ["00000008", "00000009"]
    assert all(isinstance(g, Hole) and "after key 00000009" in g.where for g in got[2:]) and len(got) == 5
    with pytest.raises(DatasetError, match="t.tar after key 00000009: (unreadable tar|ends after 10 samples)"):
        list(read_shard(str(shard), 0, 11, "raise"))


def test_eval_batches_come_in_manifest_order(smoke_shards):
    from bench.experiment import load_config
    from bench.data.lt import build_lt_data

    data = build_lt_data(load_config(SMOKE, [f"data.shards={smoke_shards}"]).data)
    for workers in (0, 2):
        ys = torch.cat([y for _, y in data.eval_batches("test", 16, workers)])   # 25 batches, 4 streams
        assert torch.equal(ys, data.labels("test"))


def test_crop_flip_rotate_from_shards_rotates_the_crop_flip_batches(smoke_shards):
    """data.augment=crop_flip_rotate (RIDE / SADE) from shards: the same samples as crop_flip, each batch the crop_flip
    one rotated by angles drawn after its crop and flip draws (black corners: normalised 0). Refused on the GPU
    decoder, which crops and flips only."""
    from bench.config import ConfigError
    from bench.data.batches import Normalize, apply_rotation, derived_generator
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config

    cfg = load_config(SMOKE, [f"data.shards={smoke_shards}"])
    data = build_lt_data(cfg.data)
    plain, rot = (next(iter(data.train_loader(8, 0, a, False, "instance", 0).epoch(1))) for a in ("crop_flip",
                                                                                                   "crop_flip_rotate"))
    assert torch.equal(plain[1], rot[1]) and not torch.equal(plain[0], rot[0])
    norm = Normalize(tuple(cfg.data.mean), tuple(cfg.data.std), plain[0].shape[1])
    raw = torch.round(plain[0] * norm.std + norm.mean).clamp(0, 255).to(torch.uint8)   # undo the normalisation
    gen = derived_generator(0, 1, 0, 0, 1)
    n = len(raw)
    torch.randint(0, 9, (n,), generator=gen), torch.randint(0, 9, (n,), generator=gen), torch.rand(n, generator=gen)
    angles = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * 15
    assert torch.allclose(norm(apply_rotation(raw, angles)), rot[0], atol=1e-5)
    with pytest.raises(ConfigError, match="crop_flip_rotate is done on the CPU"):
        load_config(SMOKE, [f"data.shards={smoke_shards}", "data.augment=crop_flip_rotate", "data.decode=gpu"])


def test_views_from_shards_are_a_function_of_the_stream_position(smoke_shards):
    """data.views from shards (PaCo, GPaCo, BCL): (B, V, C, H, W) batches, view v drawn per image from (seed, epoch,
    rank, batch index, v, place): the same with 0 and 2 workers and when an epoch resumes at a step; crop_flip views
    are the crop_flip loader's draws of the same batch."""
    from bench.data.batches import Normalize, derived_generator, random_crop_flip
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config

    cfg = load_config(SMOKE, [f"data.shards={smoke_shards}"])
    data = build_lt_data(cfg.data)
    names = ["crop_flip", "simclr"]
    epochs = {w: [x for x, _ in data.train_loader(16, 0, "none", False, "instance", w, views=names).epoch(1)]
              for w in (0, 2)}
    x0 = epochs[0][0]
    assert x0.shape[1:] == (2, 3, 16, 16) and all(torch.equal(a, b) for a, b in zip(epochs[0], epochs[2]))
    tail = [x for x, _ in data.train_loader(16, 0, "none", False, "instance", 0, views=names).epoch(1, start_step=3)]
    assert len(tail) == len(epochs[0]) - 3 and all(torch.equal(a, b) for a, b in zip(tail, epochs[0][3:]))
    plain = next(iter(data.train_loader(16, 0, "none", False, "instance", 0).epoch(1)))[0]
    norm = Normalize(tuple(cfg.data.mean), tuple(cfg.data.std), 3)
    raw = torch.round(plain * norm.std + norm.mean).clamp(0, 255).to(torch.uint8)
    want = norm(random_crop_flip(raw, derived_generator(0, 1, 0, 0, 1, 0), cfg.data.crop_padding, flip=True))
    assert torch.allclose(x0[:, 0], want, atol=1e-5) and not torch.equal(x0[:, 0], x0[:, 1])
    other = next(iter(data.train_loader(16, 0, "none", False, "instance", 0, views=names).epoch(2)))[0]
    assert not torch.equal(other, x0)


def test_npy_shards_hold_the_same_pixels_as_png_and_memory(smoke_shards, tmp_path):
    """`prepare --array-format npy`: the same images as PNG shards and as in memory, bit for bit."""
    from bench.experiment import load_config
    from bench.data.lt import build_lt_data

    out = tmp_path / "npy"
    r = run_cli("prepare", "synthetic", *SMOKE_DATA, "--out", str(out), "--samples-per-shard", "100",
                "--array-format", "npy")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoding"]["array_format"] == "npy"
    with tarfile.open(next(out.glob("test-*.tar"))) as tf:
        assert {Path(n).suffix for n in tf.getnames()} == {".npy", ".cls"}
    batches = {}
    for name, extra in (("memory", []), ("png", [f"data.shards={smoke_shards}"]), ("npy", [f"data.shards={out}"])):
        data = build_lt_data(load_config(SMOKE, extra).data)
        batches[name] = torch.cat([x for x, _ in data.eval_batches("test", 40, 0)])
    assert torch.equal(batches["npy"], batches["png"]) and torch.equal(batches["npy"], batches["memory"])
    bad = run_cli("prepare", "imagenet-lt", "--src", str(tmp_path), "--out", str(tmp_path / "x"),
                  "--array-format", "npy")
    assert bad.returncode == 2 and "--array-format applies to array datasets" in bad.stderr


def test_on_error_skip_survives_a_batch_of_only_bad_samples(smoke_shards, tmp_path):
    from bench.experiment import load_config
    from bench.data.lt import build_lt_data

    s = _copy_shards(smoke_shards, tmp_path / "s")

    def garble_last(samples):
        samples[-1]["png"] = b"garbage"
        return samples

    rewrite_shard(s / "test-000003.tar", s / "manifest.json", garble_last)
    data = build_lt_data(load_config(SMOKE, [f"data.shards={s}", "data.on_error=skip"]).data)
    sizes = [len(y) for _, y in data.eval_batches("test", 399, 2)]   # the second batch is test sample 399 alone
    assert sizes == [399] and data.eval_skipped["test"][0] == 1


def test_on_error_skip_counts_and_reports(smoke_shards, tmp_path):
    s = _copy_shards(smoke_shards, tmp_path / "s")

    def garble(samples):
        samples[5]["png"] = samples[9]["png"] = b"garbage"
        return samples

    rewrite_shard(s / "train-000002.tar", s / "manifest.json", garble)
    rewrite_shard(s / "test-000001.tar", s / "manifest.json", garble)
    r = run_cli("run", SMOKE, *FIXED, f"data.shards={s}", "data.on_error=skip", "--runs-root", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    res = json.loads(next((tmp_path / "runs").glob("smoke/*/result.json")).read_text())
    errs = res["data_errors"]
    assert errs["train_skipped"] == 2 * 3                     # 2 bad samples, every one of 3 epochs
    assert errs["eval_skipped"]["test"] == 2 and errs["eval_skipped"]["val"] == 0
    assert any("train-000002.tar key 00000205" in e for e in errs["examples"])
    assert sum(res["class_counts"]) == 772


# --- training from shards -------------------------------------------------------------------------

def test_shards_run_matches_memory_run_and_resumes_exactly(smoke_shards, tmp_path):
    mem = run_cli("run", SMOKE, *FIXED, "--runs-root", str(tmp_path / "mem"))
    assert mem.returncode == 0, mem.stderr
    ref = run_cli("run", SMOKE, *FIXED, f"data.shards={smoke_shards}", "--runs-root", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    r_mem = json.loads(next((tmp_path / "mem").glob("smoke/*/result.json")).read_text())
    r_ref = json.loads(next((tmp_path / "ref").glob("smoke/*/result.json")).read_text())
    # the same images (selection hash), a different but equally valid order: comparable accuracy
    assert r_ref["selection_hash"] == r_mem["selection_hash"] and r_ref["class_counts"] == r_mem["class_counts"]
    assert abs(r_ref["metrics"]["all"] - r_mem["metrics"]["all"]) < 12
    assert r_ref["config_hash"] != r_mem["config_hash"] and r_ref["data_manifest"]
    # SIGKILL in the middle of an epoch, move the shards (a node-local copy), resume: identical numbers
    root = tmp_path / "kill"
    here = _copy_shards(smoke_shards, tmp_path / "here")
    args = [sys.executable, "-m", "bench", "run", SMOKE, *FIXED, f"data.shards={here}",
            "runtime.checkpoint_every_steps=5", "--runs-root", str(root)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not list(root.glob("smoke/*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(next(root.glob("smoke/*/checkpoints/last.pt")), weights_only=True)
    assert saved["data_layout"] == {"world_size": 1, "streams": 4, "batch_size": 32}
    there = tmp_path / "there"
    here.rename(there)
    r = run_cli("run", SMOKE, *FIXED, f"data.shards={there}", "runtime.checkpoint_every_steps=5",
                "--runs-root", str(root))
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    r_new = json.loads(next(root.glob("smoke/*/result.json")).read_text())
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch"):
        assert r_new[key] == r_ref[key], key


def test_large_image_dataset_trains_from_shards(cards, tmp_path, monkeypatch):
    """A fake ImageNet-LT through the whole path: prepare, RandomResizedCrop training (+ colour jitter), resize +
    centre-crop evaluation, stage 2 on cached features, MiSLAS's stage 2 on class-aware batches, PaCo's views."""
    images = make_split_file_tree(tmp_path / "src", "imagenet-lt")
    env = {"LTBENCH_DATASETS_DIR": str(cards)}
    out = tmp_path / "shards"
    assert run_cli("prepare", "imagenet-lt", "--src", str(images), "--splits", str(tmp_path / "src" / "splits"),
                   "--out", str(out), "--samples-per-shard", "8", env=env).returncode == 0
    cfg = tmp_path / "inlt.yaml"
    cfg.write_text(f"""
name: fake-inlt
method: wd
protocol: clean
data: {{dataset: imagenet-lt, shards: {out}, augment: rrc_flip}}
model: {{name: resnet8_cifar}}
train: {{epochs: 2, batch_size: 8, lr: 0.05, weight_decay: 5.0e-4}}
runtime: {{threads: 1, workers: 2}}
""")
    r = run_cli("run", str(cfg), "--runs-root", str(tmp_path / "runs"), env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(next((tmp_path / "runs").glob("fake-inlt/*/result.json")).read_text())
    assert res["class_counts"] == TRAIN and res["groups"] == {"many": [], "medium": [], "few": [0, 1, 2, 3, 4]}
    resolved = (next((tmp_path / "runs").glob("fake-inlt/*/config.yaml"))).read_text()
    assert "image_size: 24" in resolved and "eval_resize: 28" in resolved and "profile: files" in resolved
    child = tmp_path / "wb.yaml"
    child.write_text(f"""
name: fake-inlt
method: wb
protocol: clean
stage: stage2
parent: {cfg}
stage2: {{train: {{epochs: 2, batch_size: 8}}, maxnorm: true, bn_mode: eval, augment: none}}
""")
    r = run_cli("run", str(child), "--runs-root", str(tmp_path / "runs"), env=env)
    assert r.returncode == 0, r.stderr
    # MiSLAS's stage 2 from the shards: BN re-estimated on class-aware batches of the stage-1 transform (random access
    # to the samples), the stage-1 classifier at 0.05 x lr with learned scales, label-aware smoothing
    mislas = tmp_path / "mislas.yaml"
    mislas.write_text(f"""
name: fake-inlt
method: mislas
protocol: clean
stage: stage2
parent: {cfg}
stage2:
  train: {{epochs: 1, batch_size: 8, sampler: class_aware, epoch_length: dataset_plus_one,
           loss: {{name: las, las_head: 0.3, las_tail: 0.0}}}}
  lws: true
  lws_rows_lr_factor: 0.05
  maxnorm: false
  bn_mode: train
  augment: rrc_flip_jitter
""")
    r = run_cli("run", str(mislas), "--runs-root", str(tmp_path / "runs"), env=env)
    assert r.returncode == 0, r.stderr
    res3 = json.loads(next((tmp_path / "runs").glob("fake-inlt/mislas-*/result.json")).read_text())
    assert res3["cached_features"] is False and res3["steps_per_epoch"] == 5    # ceil(30 / 8) + 1
    before, after = (torch.load(next((tmp_path / "runs").glob(f"fake-inlt/{m}-*/checkpoints/final.pt")),
                                weights_only=True)
                     for m in ("wd", "mislas"))
    before, after = (d.get("model", d) for d in (before, after))
    bn = [k for k in before if k.endswith("running_mean")]
    convs = [k for k in before if k.endswith("conv1.weight")]
    assert bn and all(not torch.equal(before[k], after[k]) for k in bn)      # BN statistics re-estimated
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)    # the backbone itself frozen
    assert not torch.equal(before["fc.weight"], after["fc.weight"])          # the rows scaled and trained
    # rrc_flip_jitter (RIDE's / SADE's ImageNet-LT transform): the rrc_flip batch, each image colour-jittered
    from bench.data.batches import Normalize
    from bench.data.lt import build_lt_data
    from bench.data.views import colour_jitter
    from bench.experiment import load_config

    from bench.data import cards as card_cache

    monkeypatch.setenv("LTBENCH_DATASETS_DIR", str(cards))
    card_cache.load_card.cache_clear()     # the fake cards must not outlive this test in this process
    try:
        c = load_config(cfg, ["data.augment=rrc_flip_jitter"])
        data = build_lt_data(c.data)
        plain, jit = (next(iter(data.train_loader(8, 0, a, False, "instance", 0).epoch(0)))
                      for a in ("rrc_flip", "rrc_flip_jitter"))
    finally:
        card_cache.load_card.cache_clear()
    norm = Normalize(tuple(c.data.mean), tuple(c.data.std), 3)
    raw = torch.round(plain[0] * norm.std + norm.mean).clamp(0, 255).to(torch.uint8)
    assert torch.equal(plain[1], jit[1]) and not torch.equal(plain[0], jit[0])
    assert torch.allclose(norm(colour_jitter(raw, (0, 0, 0, 0))), jit[0], atol=1e-5)
    # PaCo from the same shards with its ImageNet-LT views: RandomResizedCrop + RandAugment / SimCLR-style views of
    # the decoded images
    paco = tmp_path / "paco.yaml"
    paco.write_text(cfg.read_text().replace("method: wd", "method: paco").replace("augment: rrc_flip", (
        "augment: none, views: [rrc_randaugment, rrc_sim]")).replace("epochs: 2, batch_size: 8", (
            "epochs: 1, batch_size: 8, drop_last: true, contrast: {method: paco, dim: 8, queue: 16}")))
    r = run_cli("run", str(paco), "--runs-root", str(tmp_path / "runs"), env=env)
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "runs").glob("fake-inlt/paco-*"))
    assert json.loads((run / "result.json").read_text())["epochs"] == 1
    assert "- rrc_randaugment\n  - rrc_sim" in (run / "config.yaml").read_text()
    res2 = json.loads(next((tmp_path / "runs").glob("fake-inlt/wb-*/result.json")).read_text())
    assert res2["cached_features"] is True and res2["data_manifest"] == res["data_manifest"]
    parent_dir = next((tmp_path / "runs").glob("fake-inlt/wd-*"))
    assert {p.name for p in (parent_dir / "features").iterdir()} == {"train.pt", "val.pt", "test.pt"}
    # the parent run's shards moved: a child names the new place, the digest proves it is the same data
    moved = tmp_path / "moved"
    out.rename(moved)
    child.write_text(child.read_text().replace(f"parent: {cfg}", f"parent: {parent_dir}\ndata: {{shards: {moved}}}")
                     .replace("epochs: 2", "epochs: 1"))
    r = run_cli("run", str(child), "--runs-root", str(tmp_path / "runs"), env=env)
    assert r.returncode == 0, r.stderr
    assert "features of train: reusing" in r.stdout and "features of test: reusing" in r.stdout


def test_config_errors_for_shard_datasets(tmp_path):
    plain = tmp_path / "inlt.yaml"
    plain.write_text("data: {dataset: imagenet-lt}\n")
    r = run_cli("config", str(plain))
    assert r.returncode == 2 and "is read from shards" in r.stderr and "ltbench prepare imagenet-lt" in r.stderr
    r = run_cli("config", SMOKE, f"data.shards={tmp_path}")
    assert r.returncode == 2 and "manifest.json not found" in r.stderr
    r = run_cli("config", SMOKE, "data.dataset=inat2018", f"data.shards={tmp_path}", "data.imbalance_factor=10")
    assert r.returncode == 2 and "inat2018 split files fix it at 500.0" in r.stderr


@pytest.mark.ddp
def test_ddp_takes_no_step_on_a_global_batch_of_only_bad_samples(smoke_shards, tmp_path):
    """Every training sample unreadable (data.on_error=skip): one process skips every step, and so must two.
    Before, their optimiser still stepped on zero gradients, and weight decay and momentum moved the weights."""
    from tests.integration.test_ddp import torchrun

    s = _copy_shards(smoke_shards, tmp_path / "s")

    def garble_all(samples):
        for sample in samples:
            sample["png"] = b"garbage"
        return samples

    for shard in sorted(s.glob("train-*.tar")):
        rewrite_shard(shard, s / "manifest.json", garble_all)
    args = ["run", SMOKE, *FIXED, f"data.shards={s}", "data.on_error=skip", "train.epochs=1"]
    one = run_cli(*args, "--runs-root", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, "--runs-root", str(tmp_path / "two"), port=29700 + os.getpid() % 97)
    assert two.returncode == 0, two.stdout + two.stderr
    w1, w2 = (torch.load(next((tmp_path / n).glob("smoke/ce-*/checkpoints/final.pt")), weights_only=True)["model"]
              for n in ("one", "two"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    r2 = json.loads(next((tmp_path / "two").glob("smoke/ce-*/result.json")).read_text())
    assert r2["world_size"] == 2 and r2["data_errors"]["train_skipped"] == 772


@pytest.mark.ddp
def test_ddp_skips_a_step_where_one_process_has_no_readable_sample(smoke_shards, tmp_path):
    """Every training shard but the first unreadable (data.on_error=skip): in many steps one process has readable
    samples and the other none. That process cannot run the forward pass whose collectives the other waits on,
    so both skip the step and say so; before, the run hung."""
    from tests.integration.test_ddp import torchrun

    s = _copy_shards(smoke_shards, tmp_path / "s")

    def garble_all(samples):
        for sample in samples:
            sample["png"] = b"garbage"
        return samples

    for shard in sorted(s.glob("train-*.tar"))[1:]:
        rewrite_shard(shard, s / "manifest.json", garble_all)
    two = torchrun("run", SMOKE, *FIXED, f"data.shards={s}", "data.on_error=skip", "train.epochs=1",
                   "--runs-root", str(tmp_path / "two"), port=29800 + os.getpid() % 97, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "a process has no readable sample in this step: every process skips it" in two.stdout
    r2 = json.loads(next((tmp_path / "two").glob("smoke/ce-*/result.json")).read_text())
    assert r2["world_size"] == 2 and r2["data_errors"]["train_skipped"] == 672
