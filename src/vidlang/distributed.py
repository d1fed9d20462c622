"""Data-parallel training and evaluation under ``torchrun`` (gloo or NCCL), one code path.

Nothing happens at import: :func:`init_from_env` (called inside ``train()``) joins the process
group only when torchrun's ``WORLD_SIZE`` > 1; otherwise every helper answers as for one process
(rank 0, world 1, gathers return their input). See docs/distributed.md for the exact semantics.

Contrastive features are gathered as in open_clip's ``gather_features``: ``all_gather``, then
the local slice is replaced by the local tensor so it keeps its gradient. ``sum_grads=True``
also sums the gathered tensor's gradient over ranks in backward, for loss terms that each rank
computes only for its own anchors.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidlang.errors import ConfigError

_GROUP = None  # our own collectives (features, evaluation); DDP's gradient all-reduce uses the default group


# ----------------------------------------------------------------------------- process group
def init_from_env(backend: str = "auto", device: torch.device | str = "cpu") -> bool:
    """Join the torchrun process group (``env://``) if ``WORLD_SIZE`` > 1. Idempotent.

    ``backend`` "auto" is NCCL for a CUDA ``device`` and gloo otherwise. Returns whether distributed.
    """
    global _GROUP
    if dist.is_available() and dist.is_initialized():
        if _GROUP is None:
            _GROUP = dist.new_group(backend=dist.get_backend())
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE is set but {key} is not: launch with torchrun")
    device = torch.device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"train.dist_backend must be auto, gloo or nccl, not {backend!r}")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    _GROUP = dist.new_group(backend=backend)
    atexit.register(shutdown)
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (registered at exit by :func:`init_from_env`)."""
    global _GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_group())


def _group():
    return _GROUP if _GROUP is not None else dist.group.WORLD


def _device() -> torch.device:
    """Where small bookkeeping tensors must live for the backend (NCCL: this process's GPU)."""
    if dist.get_backend(_group()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- splitting work
def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Contiguous near-equal split of ``range(n)``: rank r gets ``[lo, hi)``, sizes differ by <= 1."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


@dataclass(frozen=True)
class Shard:
    """This rank's place in a global batch: rows ``[offset, offset + size)`` of ``total``."""

    rank: int = 0
    world: int = 1
    offset: int = 0
    size: int = 0
    total: int = 0

    @classmethod
    def single(cls, n: int) -> Shard:
        return cls(0, 1, 0, n, n)

    @property
    def rows(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    def gather(self, x: torch.Tensor, *, sum_grads: bool = False, pad_value: Any = 0) -> torch.Tensor:
        return x if self.world == 1 else gather_features(x, sum_grads=sum_grads, pad_value=pad_value)

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world == 1 else all_sum(x)


def batch_shard(local_size: int) -> Shard:
    """The :class:`Shard` of a local batch of ``local_size`` rows (one tiny all-gather)."""
    if not is_distributed():
        return Shard.single(local_size)
    sizes = [int(s) for s in all_gather_list(torch.tensor([local_size], device=_device()))]
    r = rank()
    return Shard(r, len(sizes), sum(sizes[:r]), local_size, sum(sizes))


# ----------------------------------------------------------------------------- collectives
def _pad_dim1(x: torch.Tensor, length: int, value: Any) -> torch.Tensor:
    if x.dim() < 2 or x.shape[1] == length:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, length - x.shape[1]]
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), pad, value=int(value)).bool()
    return F.pad(x, pad, value=value)


def all_gather_list(x: torch.Tensor, pad_value: Any = 0) -> list[torch.Tensor]:
    """Every rank's ``x`` (no gradient), in rank order. Dims 0 and 1 may differ across ranks:
    dim 0 comes back as each rank had it, dim 1 padded with ``pad_value`` to the longest."""
    if not is_distributed():
        return [x]
    group = _group()
    shape = torch.tensor([x.shape[0], x.shape[1] if x.dim() > 1 else 0], device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape, group=group)
    rows = [int(s[0]) for s in shapes]
    length = max(int(s[1]) for s in shapes)
    padded = _pad_dim1(x.detach(), length, pad_value)
    buffer = torch.zeros((max(rows), *padded.shape[1:]), dtype=padded.dtype, device=x.device)
    buffer[: x.shape[0]] = padded
    out = [torch.empty_like(buffer) for _ in rows]
    dist.all_gather(out, buffer, group=group)
    return [o[:n] for o, n in zip(out, rows)]


def assemble(pieces: list[torch.Tensor], rank: int, local: torch.Tensor, pad_value: Any = 0) -> torch.Tensor:
    """``cat(pieces)`` with piece ``rank`` replaced by ``local`` (padded like the others), so that
    the result carries ``local``'s gradient and no other (open_clip's gather_features)."""
    length = max(p.shape[1] for p in pieces) if local.dim() > 1 else None
    pieces = [p.detach() for p in pieces]
    pieces[rank] = _pad_dim1(local, length, pad_value) if length is not None else local
    return torch.cat(pieces)


class _SumGradsOverRanks(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the incoming gradient over ranks."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=_group())
        return grad


def gather_features(x: torch.Tensor, *, sum_grads: bool = False, pad_value: Any = 0) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order (dim 1 padded to the longest).

    Only the local slice carries a gradient (it *is* ``x``). Without ``sum_grads`` that gradient
    is this rank's own loss w.r.t. its own rows, which is right when every rank computes the same
    whole loss (the sum over ranks of those gradients is the full gradient). With ``sum_grads``
    the gathered tensor's gradient is summed over ranks before it reaches the local slice, which is
    right when each rank computes only its part of the loss and the parts sum to the whole.
    Either way the caller multiplies its loss by the world size, since DDP averages gradients.
    Every rank must call this in the same order, and with ``sum_grads`` must use the result.
    """
    if not is_distributed():
        return x
    out = assemble(all_gather_list(x, pad_value), rank(), x, pad_value)
    return _SumGradsOverRanks.apply(out) if sum_grads and x.requires_grad else out


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (no gradient)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, group=_group())
    return x


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_group())
    return out


def gather_rows_into(local: torch.Tensor, total: int) -> torch.Tensor:
    """Row blocks of ``local`` from every rank (split by :func:`shard_bounds`), stacked into one
    (total, ...) tensor without an intermediate copy of the whole."""
    if not is_distributed():
        return local
    world = world_size()
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    width = -(-total // world)
    views = [out[slice(*shard_bounds(total, world, r))] for r in range(world)]
    # all_gather needs equal shapes: ranks with one row fewer send a padded block into scratch
    scratch = [v if v.shape[0] == width else torch.empty((width, *local.shape[1:]), dtype=local.dtype,
                                                          device=local.device) for v in views]
    send = local if local.shape[0] == width else torch.cat([local, local.new_zeros((width - local.shape[0],
                                                                                   *local.shape[1:]))])
    dist.all_gather(scratch, send.contiguous(), group=_group())
    for v, s in zip(views, scratch):
        if s is not v:
            v.copy_(s[: v.shape[0]])
    return out
