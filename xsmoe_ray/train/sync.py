"""Collective steps between Ray Train ranks (DESIGN.md §6).

Structural changes (expansion, pruning) must happen identically on every rank: utilization sums
are all-reduced before a decision, every rank then changes its unwrapped module the same way,
re-wraps it in DDP and builds a new optimizer. After every window a hash of all parameters is
compared across ranks; a mismatch is a hard error, never a silent divergence.

Every helper here also works without ``torch.distributed`` (one process, tests, Tune trials).
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (in place, returned); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


DDP_KWARGS = {"find_unused_parameters": False}


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device and wrap in DDP when there are several ranks.

    :data:`DDP_KWARGS`: every trainable parameter of every variant gets a gradient in every step
    (the router is dense, frozen experts are not trainable, the teacher is outside the DDP module;
    ``tests/test_sync.py`` checks each variant across an expansion), so DDP skips the extra
    autograd-graph walk of ``find_unused_parameters=True``. Wrapping is collective and broadcasts
    rank 0's weights, so every rank must call it in the same window with the same structure.
    """
    model = model.to(device)
    _, world = rank_and_world()
    if world == 1:
        return model
    from ray.train.torch import prepare_model

    return prepare_model(model, move_to_device=False, parallel_strategy_kwargs=dict(DDP_KWARGS))


def parameter_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer that is saved (names, shapes and exact bytes)."""
    h = hashlib.sha256()
    for name, t in unwrap(model).state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_same_across_ranks(digest: str, what: str = "parameters") -> None:
    """Raise if any rank holds a different ``digest`` (compared as min == max over ranks)."""
    _, world = rank_and_world()
    if world == 1:
        return
    value = torch.tensor([int(digest[i: i + 15], 16) for i in range(0, 60, 15)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    lo, hi = value.clone(), value.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"{what} differ across ranks (hash mismatch): the ranks have diverged")


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (in place, returned); a no-op in a single process. For values a
    rank computes from identical weights that must also be bit-identical (a sampling weight)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src=0)
    return t
