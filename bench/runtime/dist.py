"""Distributed runtime: rank / local rank / world size from the launcher, the process group, reductions.

Launchers: torchrun (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and SLURM tasks
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, as submitit exports them; MASTER_ADDR / MASTER_PORT must be
set by the job script, see slurm/). Without them, one process. The backend is gloo on CPU and NCCL on
GPUs (one device per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world: int


def from_env() -> DistInfo:
    """The process's place in the job, from torchrun's variables, else SLURM's, else a single process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return DistInfo(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return DistInfo(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]))
    return DistInfo(0, 0, 1)


def init(use_cuda: bool) -> DistInfo:
    """Join the process group when the launcher started several processes (idempotent)."""
    info = from_env()
    if info.world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world)
    return info


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank: from the process group, or before it exists from the launcher's variables."""
    return dist.get_rank() if active() else from_env().rank


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only global rank 0 writes files, plots, logs and tracking."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    """NCCL moves CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if t.device.type != "cpu" and dist.get_backend() == "gloo" else t.device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (exact for integer counts)."""
    if active():
        dev = _comm_device(t)
        buf = t.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf)
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics). DDP sends rank 0's buffers to the
    others only at the start of each training forward, so after an epoch's last step every rank holds its own
    update; evaluated like that, each rank's share of val / test would be scored by a different model, and
    none of them the one rank 0 saves."""
    if not active():
        return
    for b in module.buffers():
        buf = b.data.to(_comm_device(b))
        dist.broadcast(buf, 0)
        if buf is not b.data:
            b.data.copy_(buf)


def _gather_sizes(t: torch.Tensor) -> list[int]:
    """Every rank's len(t) (the count made on the device the backend moves; t itself is not copied)."""
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=_comm_device(t))
    sizes = [torch.zeros_like(n) for _ in range(world())]
    dist.all_gather(sizes, n)
    return [int(s.item()) for s in sizes]


def _cat_over_ranks(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    home, t = t.device, t.to(_comm_device(t))
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(home)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's tensor (sizes may differ along dim 0) in rank order, on every rank."""
    if not active():
        return t
    return _cat_over_ranks(t, _gather_sizes(t))


class _GatherCat(torch.autograd.Function):
    """gather_cat forward; backward, each rank's rows take the sum over ranks of their copies' gradients (every
    rank's loss may read every row), as if one process had computed all the losses on the whole batch."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.start, ctx.n = sum(sizes[: rank()]), t.shape[0]
        return _cat_over_ranks(t.detach(), sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        home, g = grad.device, grad.contiguous().to(_comm_device(grad))
        if g is grad:
            g = g.clone()        # autograd's gradient buffer is not ours to reduce in place
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g[ctx.start: ctx.start + ctx.n].to(home), None


def gather_cat_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows in rank order, differentiable (_GatherCat), and where this rank's rows start in it."""
    if not active():
        return t, 0
    sizes = _gather_sizes(t)
    return _GatherCat.apply(t, sizes), sum(sizes[: rank()])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(n: int, r: int, w: int) -> tuple[int, int]:
    """Contiguous (start, length) of rank r when n items are split as evenly as possible, in rank order."""
    length = n // w + (r < n % w)
    start = r * (n // w) + min(r, n % w)
    return start, length
