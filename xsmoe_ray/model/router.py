"""The per-layer router of the side network (XSMoE paper §4.2, Eq. 3).

``alpha_i = softmax(W_i h_{i-1}) ∈ R^{N_i+1}``: output 0 weights the frozen backbone output ``l_i``,
outputs ``1..N_i`` weight the experts. The router is a single linear layer ``d → N_i+1``; unlike the
paper's count in §4.5 it has a bias (``N_i+1`` extra parameters).

Outputs are added and removed together with experts (:meth:`add_output`, :meth:`remove_output`),
keeping the rows that stay bit-identical. A new row starts as the mean of the existing expert rows
(the paper leaves this open): the new expert then receives the logit the experts get on average. A
copy of one expert's row (``copy_of``) splits that expert's mass with it: ``copy_share`` to the copy.
``logit_offset`` raises that logit (``model.new_expert_share``): with ``N`` experts at the mean logit,
an offset of ``log(s N / (1 - s))`` gives the new expert the share ``s`` of the experts' router mass.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Router(nn.Module):
    """Softmax gate over the backbone output and ``n_experts`` experts: ``[n, d] → [n, n_experts+1]``."""

    def __init__(self, d: int, n_experts: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, n_experts + 1)

    @property
    def n_outputs(self) -> int:
        return self.proj.out_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(h), dim=-1)  # [n, N+1], sums to 1 per row

    def _replace(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        proj = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)
        proj.requires_grad_(self.proj.weight.requires_grad)
        self.proj = proj

    @torch.no_grad()
    def add_output(self, logit_offset: float = 0.0, copy_of: int | None = None, copy_share: float = 0.5) -> None:
        """Append one output (for a new expert): the mean of the expert rows 1..N, or a copy of row
        ``copy_of`` whose bias is set so that the copy takes ``copy_share`` of the original's softmax
        mass and the original keeps the rest (the sum, and so the softmax elsewhere, unchanged); its bias
        raised by ``logit_offset``."""
        if not 0.0 < copy_share < 1.0:
            raise ValueError(f"copy_share must be in (0, 1), got {copy_share}")
        w, b = self.proj.weight, self.proj.bias.clone()
        rows = slice(1, None) if copy_of is None else slice(copy_of, copy_of + 1)
        new_b = b[rows].mean(0, keepdim=True)
        if copy_of is not None:  # exp(b + log s) + exp(b + log(1 - s)) = exp(b): the pair keeps the mass
            new_b = new_b + math.log(copy_share)
            b[copy_of] += math.log1p(-copy_share)
        self._replace(torch.cat([w, w[rows].mean(0, keepdim=True)]), torch.cat([b, new_b + logit_offset]))

    @torch.no_grad()
    def remove_output(self, index: int) -> None:
        """Drop output ``index`` (``1..N``; 0 is the backbone and is never removed)."""
        if not 1 <= index < self.n_outputs:
            raise IndexError(f"router output {index} is not an expert output (1..{self.n_outputs - 1})")
        keep = [i for i in range(self.n_outputs) if i != index]
        self._replace(self.proj.weight[keep], self.proj.bias[keep])
