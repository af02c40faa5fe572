"""Real 2-process gloo DDP through torchrun: one result, 1 x B equals 2 x B/2 (stage 2, and ViT adapters),
exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

SMOKE = str(REPO / "configs" / "smoke.yaml")
STAGE2 = str(REPO / "configs" / "smoke_stage2.yaml")
TAUNORM = str(REPO / "configs" / "smoke_taunorm.yaml")
FIXED = ["runtime.threads=1"]


def torchrun_args(*args: str, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "bench", *args]


def torchrun(*args: str, port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(torchrun_args(*args, port=port), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def _port(k: int) -> int:
    return 29600 + 10 * k + os.getpid() % 7


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (found through /proc before any of them dies)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def result(root: Path, pattern: str = "smoke/ce-*") -> dict:
    files = list(root.glob(f"{pattern}/result.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    r = torchrun("run", SMOKE, *FIXED, "--runs-root", str(root), port=_port(0))
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def test_two_processes_write_one_result(ddp_run):
    res = result(ddp_run)
    assert res["world_size"] == 2 and res["status"] == "complete"
    # counts summed over ranks: every test image once (balanced test set, 40 per class)
    assert res["metrics"]["all"] > 30
    run_json = json.loads(next(ddp_run.glob("smoke/ce-*/run.json")).read_text())
    assert run_json["world_size"] == 2
    lines = next(ddp_run.glob("smoke/ce-*/metrics.jsonl")).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]       # one writer, no duplicated lines


def test_two_processes_from_shards(tmp_path):
    shards = tmp_path / "shards"
    r = run_cli("prepare", "synthetic", "imbalance_factor=10", "val_per_class=10", "synthetic.train_per_class=200",
                "synthetic.test_per_class=40", "synthetic.image_size=16", "--out", str(shards),
                "--samples-per-shard", "100")
    assert r.returncode == 0, r.stderr
    r = torchrun("run", SMOKE, *FIXED, f"data.shards={shards}", "--runs-root", str(tmp_path / "runs"), port=_port(1))
    assert r.returncode == 0, r.stdout + r.stderr
    res = result(tmp_path / "runs")
    assert res["world_size"] == 2 and res["data_padded_per_epoch"] == 0 and res["metrics"]["all"] > 30


def test_one_process_batch_b_equals_two_processes_b_half(tmp_path):
    """Stage 2 on cached features (a linear classifier, no BatchNorm): the same data order and the
    rank-weighted loss make 2 processes compute what 1 does; only float summation order differs.
    Class-balanced CE under both normalisers: each rank's share is its sample count (batch) or its sum
    of class weights (weights); either wrong share moves the classifier far beyond the tolerance."""
    parent_root = tmp_path / "parent"
    assert run_cli("run", SMOKE, *FIXED, "--runs-root", str(parent_root)).returncode == 0
    parent = next(parent_root.glob("smoke/ce-*"))
    for norm in ("batch", "weights"):
        # batch 30 does not divide the 772 training features: the last global batch of 22 splits 11 / 11
        args = ["run", STAGE2, *FIXED, f"parent={parent}", "stage2.train.batch_size=30",
                f"stage2.train.loss.cb_normalizer={norm}"]
        one = run_cli(*args, "--runs-root", str(tmp_path / norm / "one"))
        assert one.returncode == 0, one.stderr
        two = torchrun(*args, "--runs-root", str(tmp_path / norm / "two"), port=_port(2))
        assert two.returncode == 0, two.stdout + two.stderr
        r1, r2 = result(tmp_path / norm / "one", "smoke/wb-*"), result(tmp_path / norm / "two", "smoke/wb-*")
        assert r2["world_size"] == 2 and r2["cached_features"]
        w1, w2 = (torch.load(next((tmp_path / norm / n).glob("smoke/wb-*/checkpoints/final.pt")),
                             weights_only=True)["model"] for n in ("one", "two"))
        head = [k for k in w1 if k.startswith("fc.")]
        assert head
        for k in head:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)   # documented tolerance
        assert r1["metrics"] == r2["metrics"] and r1["per_class_acc"] == r2["per_class_acc"]


def test_two_processes_report_the_model_they_save(tmp_path):
    """After an epoch's last step each rank holds its own BatchNorm running statistics (DDP sends rank 0's
    only at the start of a training forward); they are made rank 0's before evaluating, so the numbers a
    2-process run reports are those of the final.pt it saves. Checked by a 1-process tau-norm child at
    tau 0 (the identity) on that final.pt: it must score the parent's test and last-epoch val numbers.
    Before the fix: 61.25 reported against 63.00 for final.pt."""
    root = tmp_path / "runs"
    r = torchrun("run", SMOKE, *FIXED, "eval.select=last", "--runs-root", str(root), port=_port(3))
    assert r.returncode == 0, r.stdout + r.stderr
    parent = next(root.glob("smoke/ce-*"))
    child = run_cli("run", TAUNORM, *FIXED, f"parent={parent}", "posthoc.tau=0", "--runs-root", str(root))
    assert child.returncode == 0, child.stderr
    reported, rerun = result(root), result(root, "smoke/tau-norm-*")
    assert reported["world_size"] == 2 and rerun["world_size"] == 1
    assert rerun["metrics"] == reported["metrics"] and rerun["per_class_acc"] == reported["per_class_acc"]
    last_val = json.loads((parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert rerun["val_metrics"]["all"] == last_val["val"]["all"] == reported["val_metrics"]["all"]


def test_sigkill_both_ranks_mid_epoch_then_resume_is_exact(ddp_run, tmp_path):
    root = tmp_path / "kill"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = torchrun_args("run", SMOKE, *FIXED, "runtime.checkpoint_every_steps=4", "--runs-root", str(root),
                         port=_port(3))
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    t0 = time.time()
    while not list(root.glob("smoke/*/checkpoints/last.pt")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.02)
    kill_tree(proc.pid)   # the launcher and both ranks at once (torchrun gives its workers own sessions)
    proc.wait()
    saved = torch.load(next(root.glob("smoke/*/checkpoints/last.pt")), weights_only=True)
    assert len(saved["rng_ranks"]) == 2 and saved["data_layout"]["world_size"] == 2
    assert not list(root.glob("smoke/*/result.json"))
    r = torchrun("run", SMOKE, *FIXED, "runtime.checkpoint_every_steps=4", "--runs-root", str(root), port=_port(4))
    assert r.returncode == 0 and "resuming" in r.stdout, r.stdout + r.stderr
    a, b = result(root), result(ddp_run)
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch", "metrics_last_epoch"):
        assert a[key] == b[key], key


def test_resume_with_another_world_size_is_refused(ddp_run, tmp_path):
    import shutil

    run_dir = next(ddp_run.glob("smoke/ce-*"))
    copy = tmp_path / "smoke" / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "result.json").unlink()
    r = run_cli("run", SMOKE, *FIXED, "--runs-root", str(tmp_path))
    assert r.returncode == 2 and "world_size': 2" in r.stderr and "same world size" in r.stderr


def test_a_last_batch_smaller_than_the_ranks_repeats_a_sample_and_finishes(tmp_path):
    """793 training images in global batches of 132 leave 1 image for the last step of 2 ranks. The rank without
    one repeats the epoch's first image (data_padded_per_epoch 1, as the stream pads); before, it skipped the
    forward pass while the other ran DDP's buffer broadcast, and both waited for each other until killed."""
    root = tmp_path / "runs"
    r = torchrun("run", SMOKE, *FIXED, "data.synthetic.train_per_class=205", "train.batch_size=132",
                 "train.epochs=1", "--runs-root", str(root), port=_port(7), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = result(root)
    assert sum(res["class_counts"]) % 132 == 1 and res["data_padded_per_epoch"] == 1 and res["world_size"] == 2


def test_batch_not_divisible_by_world_size_is_a_clear_error(tmp_path):
    r = torchrun("run", SMOKE, *FIXED, "train.batch_size=33", "--runs-root", str(tmp_path), port=_port(5))
    assert r.returncode != 0
    assert "config key 'train.batch_size': 33 is not divisible by the 2 processes" in r.stderr
    assert not list(tmp_path.glob("smoke/*"))


@pytest.mark.parametrize("method", ["lora", "adaptformer"])
def test_peft_vit_one_process_equals_two(method, tmp_path):
    """Adapters train under DDP like every parameter: timm's test_vit (LayerNorm only, 6 blocks) with LoRA or
    AdaptFormer, no augmentation, batch 16 in one process against 8 + 8 in two: the same trained adapters
    and classifier, to float summation order. (At lr 0.05 this random ViT trains chaotically and the two
    drift apart from rounding alone; at 0.005 they agree to 1e-6.)"""
    pytest.importorskip("peft")
    args = ["run", SMOKE, *FIXED, "model.name=test_vit", "data.synthetic.image_size=32", "data.augment=none",
            "train.epochs=2", "train.batch_size=16", "train.lr=0.005", "eval.select=last",
            f"model.peft.method={method}", "model.peft.r=4"]
    one = run_cli(*args, "--runs-root", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, "--runs-root", str(tmp_path / "two"), port=_port(6 + (method == "lora")))
    assert two.returncode == 0, two.stdout + two.stderr
    assert result(tmp_path / "two")["world_size"] == 2
    w1, w2 = (torch.load(next((tmp_path / n).glob("smoke/ce-*/checkpoints/final.pt")), weights_only=True)["model"]
              for n in ("one", "two"))
    assert set(w1) == set(w2)
    trained = [k for k in w1 if "adaptformer" in k or k.startswith("head.")] if method == "adaptformer" else list(w1)
    assert len(trained) > 2
    if method == "adaptformer":          # the branches trained: their up-projections started at zero
        assert all(w1[k].abs().sum() > 0 for k in trained if k.endswith("adaptformer.up.weight"))
    for k in trained:          # LoRA: merged into qkv, so every weight is compared
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)
    r1, r2 = result(tmp_path / "one"), result(tmp_path / "two")
    assert r1["peft"] == r2["peft"] and r1["trainable_params"] == r2["trainable_params"]


def test_paco_queue_takes_every_ranks_keys(tmp_path):
    """PaCo under 2 processes (each contrasts its own half batch with the shared queue, as its code): after the
    run, the queue has advanced by the GLOBAL batch every step (keys gathered over ranks, in rank order) and holds
    unit keys with training labels, and the two-view batches came through DDP; checkpoints hold the queue."""
    root = tmp_path / "runs"
    args = ["run", SMOKE, *FIXED, "train.epochs=1", "train.batch_size=32", "train.drop_last=true",
            "train.contrast.method=paco", "train.contrast.queue=100", "train.contrast.dim=8",
            "data.views=[crop_flip,simclr]", "data.augment=none", "--runs-root", str(root)]
    r = torchrun(*args, port=_port(6))
    assert r.returncode == 0, r.stdout + r.stderr
    res = result(root)
    assert res["world_size"] == 2
    saved = torch.load(next(root.glob("smoke/ce-*/checkpoints/last.pt")), weights_only=True)
    steps = sum(res["class_counts"]) // 32
    queue, labels, ptr = saved["loss"]["queue"], saved["loss"]["queue_labels"], saved["loss"]["queue_ptr"]
    assert int(ptr) == (steps * 32) % 100                     # 32 keys a step, not a rank's 16
    newest = (int(ptr) - 1) % 100
    assert torch.allclose(queue[newest].norm(), torch.tensor(1.0), atol=1e-5) and 0 <= int(labels[newest]) < 10
    assert any(k.startswith("key_model.") for k in saved["model"])


def _bcl_worker(rank: int, world: int, port: int, sizes: list[int], out: str) -> None:
    """One rank of test_bcl_gathered_contrast_is_the_whole_batchs: its part of a fixed global batch."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from bench.methods.contrast import balanced_supcon

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b, lo = sum(sizes), sum(sizes[:rank])
    f, y, proto = _bcl_batch(b)
    mine = torch.cat([f[lo:lo + sizes[rank]], f[b + lo:b + lo + sizes[rank]]]).requires_grad_(True)
    p = proto.clone().requires_grad_(True)
    res = {}
    for gather in (True, False):
        mine.grad = p.grad = None
        loss = balanced_supcon(mine, F.normalize(p, dim=1), y[lo:lo + sizes[rank]], 0.5, gather=gather)
        (loss * world * sizes[rank] / b).backward()      # the loop's share of the global batch (rank_shares)
        dist.all_reduce(p.grad)                           # DDP's average of a parameter's gradients
        res[gather] = {"loss": float(loss), "features": (mine.grad / world).tolist(),
                       "proto": (p.grad / world).tolist()}
    torch.save(res, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _bcl_batch(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2 * b, 5, generator=g), dim=1)   # [views 1; views 2]
    return f, torch.randint(0, 3, (b,), generator=g), torch.randn(3, 5, generator=g)


def test_bcl_gathered_contrast_is_the_whole_batchs(tmp_path):
    """train.contrast.gather (BCL's DataParallel computes its loss on the whole batch): 2 ranks holding 3 and 5 of
    8 images, each anchoring its own views against every rank's, give the one-process loss of the 8 (their
    losses weighted by their shares), and, once DDP averages, its gradients for every view and for the
    prototypes' parameters. Without gather each rank contrasts its own part, and the numbers differ."""
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    from bench.methods.contrast import balanced_supcon

    sizes, b = [3, 5], 8
    mp.spawn(_bcl_worker, args=(2, _port(9), sizes, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    f, y, proto = _bcl_batch(b)
    f.requires_grad_(True)
    p = proto.clone().requires_grad_(True)
    loss = balanced_supcon(f, F.normalize(p, dim=1), y, 0.5)
    loss.backward()
    for gather in (True, False):
        weighted = sum(r[gather]["loss"] * n / b for r, n in zip(ranks, sizes))
        grads = [torch.tensor(r[gather]["features"]) for r in ranks]
        got = torch.cat([grads[0][:3], grads[1][:5], grads[0][3:], grads[1][5:]])   # back to [views 1; views 2]
        same = (abs(weighted - loss.item()) < 1e-5 and torch.allclose(got, f.grad, atol=1e-6)
                and all(torch.allclose(torch.tensor(r[gather]["proto"]), p.grad, atol=1e-6) for r in ranks))
        assert same == gather, gather
    # and through the training loop: the gather's backward collective beside DDP's gradient all-reduce
    root = tmp_path / "runs"
    r = torchrun("run", SMOKE, *FIXED, "train.epochs=1", "train.batch_size=32", "train.contrast.method=bcl",
                 "train.contrast.gather=true", "train.contrast.dim=8", "model.classifier=cosine",
                 "data.views=[crop_flip,simclr,simclr]", "data.augment=none", "--runs-root", str(root), port=_port(8))
    assert r.returncode == 0, r.stdout + r.stderr
    assert result(root)["world_size"] == 2
