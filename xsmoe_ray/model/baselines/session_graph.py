"""Dense per-row session graphs for the graph baselines (GAG): no graph library, no loop over rows.

A row's context is ``L`` left-padded positions. Its *nodes* are its distinct items, each held at the
position of its first occurrence (``alias[b, p]``: that position for position ``p``); its edges are
the consecutive clicks ``alias[p] → alias[p+1]``, counted (a repeated transition has weight 2).
With ``L = 10`` an ``[B, L, L]`` adjacency per batch costs less than any sparse format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SessionGraph:
    """``real`` [B, L] bool; ``alias`` [B, L] long (first position of the same item; itself for
    padding); ``node`` [B, L] bool (real first occurrences); ``counts`` [B, L, L] float: transitions
    ``u → v`` between node positions."""

    real: torch.Tensor
    alias: torch.Tensor
    node: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, index: torch.Tensor) -> "SessionGraph":
        """``index`` [B, L]: item keys per position (any ids; ``< 0`` = padding)."""
        B, L = index.shape
        real = index >= 0
        same = (index.unsqueeze(2) == index.unsqueeze(1)) & real.unsqueeze(2) & real.unsqueeze(1)
        positions = torch.arange(L, device=index.device).expand(B, L)
        # first True along the row: argmax returns the first maximal index
        alias = torch.where(real, same.to(torch.uint8).argmax(dim=2), positions)
        node = real & (alias == positions)
        step = real[:, :-1] & real[:, 1:]
        b, p = step.nonzero(as_tuple=True)
        counts = torch.zeros(B, L, L, device=index.device)
        counts.index_put_((b, alias[b, p], alias[b, p + 1]), torch.ones(len(b), device=index.device), accumulate=True)
        return cls(real, alias, node, counts)

    def gather(self, nodes: torch.Tensor) -> torch.Tensor:
        """Node states ``[B, L, D]`` (at node positions) → the state of each position's item ``[B, L, D]``."""
        return nodes.gather(1, self.alias.unsqueeze(-1).expand_as(nodes))

    def normalised(self, incoming: bool) -> torch.Tensor:
        """GAG's edge weights for one direction, symmetrically normalised: ``[B, L, L]`` (source, target).

        Weight of ``u → v``: its count divided by the number of distinct edges into ``v``
        (``incoming``) or out of ``u``; a node without a self-loop gets one of weight 1; then
        ``D^-1/2 W D^-1/2`` with ``D`` each source's weighted out-degree.
        """
        has = (self.counts > 0).to(self.counts.dtype)
        distinct = has.sum(dim=1, keepdim=True) if incoming else has.sum(dim=2, keepdim=True)
        w = self.counts / distinct.clamp_min(1.0)
        eye = torch.eye(w.shape[1], device=w.device, dtype=w.dtype)
        loops = (w.diagonal(dim1=1, dim2=2) == 0) & self.node
        w = w + eye * loops.unsqueeze(-1).to(w.dtype)
        deg = w.sum(dim=2)
        scale = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
        return scale.unsqueeze(2) * w * scale.unsqueeze(1)
