"""One FFN expert of the side network (XSMoE paper §4.2, Eq. 1-2).

``E(h) = W_up(GELU(W_down h)) + h`` with ``W_down: d → d'`` and ``W_up: d' → d``. Both projections
carry a bias (the paper's parameter count in §4.5 leaves biases out; ``params.py`` gives the
bias-inclusive formula). At the first side layer the input is the cached embedding output,
``h_0 = l_0`` (Eq. 2); nothing here depends on the layer index.

The side layer (``side_moe.py``) evaluates all experts of a layer with two fused matmuls instead of
calling :meth:`Expert.forward` per expert; this module keeps the weights and the plain,
one-expert form of Eq. 1 that the fused form is tested against and that utilization uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    """Bottleneck FFN with a skip connection (Eq. 1). Input and output ``[n, d]``."""

    def __init__(self, d: int, d_prime: int) -> None:
        super().__init__()
        self.down = nn.Linear(d, d_prime)
        self.up = nn.Linear(d_prime, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(h))) + h

    @classmethod
    def mean_of(cls, experts: list["Expert"]) -> "Expert":
        """A new expert whose every weight is the mean of the given experts' (paper §4.2, expansion)."""
        first = experts[0]
        new = cls(first.down.in_features, first.down.out_features).to(first.down.weight.device)
        with torch.no_grad():
            for name, param in new.named_parameters():
                stacked = torch.stack([e.get_parameter(name).detach() for e in experts])
                param.copy_(stacked.mean(0))
        return new
