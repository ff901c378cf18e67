"""Expandable side mixture-of-experts: one side layer, then one side network per modality (paper §4.2-4.3).

A side layer ``i`` mixes the cached backbone output ``l_i`` and its experts applied to the previous
side output ``h_{i-1}`` with router weights (Eq. 3)::

    alpha = softmax(W_i h_{i-1})                    # [n, N+1]
    h_i   = alpha_0 l_i + sum_j alpha_j E_j(h_{i-1})

Experts are added and removed like PEFT adapters on the layer (:meth:`SideLayer.expand`,
:meth:`SideLayer.remove_expert`); which experts are frozen is structure (``SideLayer.frozen``), and
the trainable parameters are found by walking it (:meth:`SideLayer.trainable_parameters`).

Fused evaluation. With ``E_j(h) = U_j GELU(D_j h + c_j) + b_j + h`` the mixture is::

    sum_j alpha_j E_j(h) = [alpha_1 g_1 | ... | alpha_N g_N] [U_1 | ... | U_N]^T + alpha_{1:N} B + (sum_j alpha_j) h

with ``g_j = GELU(D_j h + c_j)``. The router weights sum to one, so the two skip terms are
``alpha_0 l + (1 - alpha_0) h = lerp(h, l, alpha_0)``, and the matmuls accumulate onto that
(``addmm``). One layer thus costs two matmuls over the concatenated weights (``[n, d] x [d, N d']``
and ``[n, N d'] x [N d', d]``) rather than ``2N`` small ones, and no ``[n, N, d]`` tensor is built.
Frozen and trainable experts are concatenated separately, so no weight gradient is ever computed
for a frozen expert, and the frozen concatenation is cached until a frozen weight changes.

Utilization (Eq. 5 as written, over the experts only, as DESIGN.md fixes)::

    r_j = ||alpha_j z_j|| / sum_{k=1..N} ||alpha_k z_k||,   z_j = E_j(h_{i-1})

so the scores of a layer's experts sum to one and the paper's τ grid {0.05 … 0.25} compares with
expert shares (with 9 experts the mean share is 0.11). The backbone's share ``alpha_0`` is reported
beside it (router weights), not mixed into the score. The score
is accumulated per sample (here: per unique item of a batch) as a plain sum of ratios and a count,
only in training mode while ``track_utilization`` is on, so batches and ranks merge by addition.
``track_weights`` counts a sample several times (an item that occurs in several batches is run once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .expert import Expert
from .router import Router


EXPERT_INITS = ("mean", "last")


@dataclass(frozen=True)
class ExpertStart:
    """How a new expert starts at expansion (``model.new_expert_init``, ``_share``, ``_copy_share``).

    ``init='mean'`` (the paper): weights and router row are the mean of the existing experts'.
    ``init='last'``: a copy of the newest expert (the one trained in the last window) and of its
    router row; the two then split that expert's share, ``copy_share`` of it to the copy (0.5:
    halves), so the layer's output is unchanged.
    ``share`` in (0, 1): the new output's logit is raised so that, where the old experts' logits
    equal their mean, the new expert takes that share of the experts' router mass; 0 leaves it at
    the mean logit (1/(N+1) of that mass), as the paper's mean initialisation implies.
    """

    init: str = "mean"
    share: float = 0.0
    copy_share: float = 0.5

    def __post_init__(self) -> None:
        if self.init not in EXPERT_INITS:
            raise ValueError(f"init must be one of {EXPERT_INITS}, got {self.init!r}")
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"share must be in [0, 1), got {self.share}")
        if not 0.0 < self.copy_share < 1.0:
            raise ValueError(f"copy_share must be in (0, 1), got {self.copy_share}")
        if self.copy_share != 0.5 and self.init != "last":
            raise ValueError(f"copy_share applies to init='last' only, got init={self.init!r}")

    def logit_offset(self, n_experts: int) -> float:
        """What the new router output's logit is raised by, with ``n_experts`` experts before it."""
        return math.log(self.share * n_experts / (1.0 - self.share)) if self.share > 0 else 0.0


def _cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


class SideLayer(nn.Module):
    """Experts + router of one side layer: ``(h_{i-1} [n, d], l_i [n, d]) → h_i [n, d]`` (Eq. 1-3)."""

    def __init__(self, d: int, d_prime: int, n_experts: int = 1) -> None:
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"a side layer needs at least one expert, got {n_experts}")
        self.d, self.d_prime = d, d_prime
        self.experts = nn.ModuleList(Expert(d, d_prime) for _ in range(n_experts))
        self.frozen = [False] * n_experts  # structure: which experts are frozen
        self.router = Router(d, n_experts)
        self.track_utilization = False
        self.track_weights: torch.Tensor | None = None  # [n] times each sample of the next forward counts
        self._frozen_cache: tuple | None = None  # (key, concatenated frozen weights), see _weights
        self.reset_utilization()

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    # ---- forward -------------------------------------------------------------------------------
    def _groups(self) -> list[list[int]]:
        """Expert indices evaluated by one fused matmul pair: frozen ones, then trainable ones."""
        groups = [[j for j, f in enumerate(self.frozen) if f], [j for j, f in enumerate(self.frozen) if not f]]
        return [g for g in groups if g]

    def _weights(self, idx: list[int]) -> tuple[torch.Tensor, ...]:
        """``W_down`` [k d', d], ``b_down`` [k d'], ``W_up`` [d, k d'], ``B_up`` [k, d] of experts ``idx``.

        A frozen group's concatenation is cached until one of its weights changes (new storage, e.g.
        ``.to(device)``, or an in-place write such as ``load_state_dict``, which bumps ``_version``).
        """
        experts = [self.experts[j] for j in idx]
        params = [p for e in experts for p in (e.down.weight, e.down.bias, e.up.weight, e.up.bias)]
        cacheable = all(self.frozen[j] for j in idx) and not any(p.requires_grad for p in params)
        key = (tuple(idx), tuple((p.data_ptr(), p._version, p.dtype) for p in params))
        if cacheable and self._frozen_cache is not None and self._frozen_cache[0] == key:
            return self._frozen_cache[1]
        weights = (_cat([e.down.weight for e in experts]), _cat([e.down.bias for e in experts]),
                   _cat([e.up.weight for e in experts], 1), _cat([e.up.bias.unsqueeze(0) for e in experts]))
        self._frozen_cache = (key, weights) if cacheable else self._frozen_cache
        return weights

    def forward(self, h: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        n, device = h.shape[0], h.device.type
        alpha = self.router(h)  # [n, N+1]
        # Matmul precision: the autocast dtype when autocast is on (as nn.Linear would), else h's.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        # Skips: alpha_0 l + (sum_j alpha_j) h = lerp(h, l, alpha_0) since the weights sum to one. The
        # expert terms are then accumulated in place (addmm_): lerp and addmm keep no copy of it.
        out = torch.lerp(h, l.to(h.dtype), alpha[:, :1].to(h.dtype)).to(dtype)  # [n, d]
        for idx in self._groups():
            w_down, b_down, w_up, b_up = self._weights(idx)
            k = len(idx)
            a = alpha[:, 1 + idx[0]:2 + idx[-1]] if idx == list(range(idx[0], idx[-1] + 1)) \
                else alpha[:, [1 + j for j in idx]]  # [n, k]
            g = F.gelu(F.linear(h, w_down, b_down))  # [n, k*d']
            g = (g.view(n, k, self.d_prime) * a.unsqueeze(-1).to(g.dtype)).view(n, k * self.d_prime)
            out.addmm_(a.to(dtype), b_up.to(dtype))  # + sum_j alpha_j b_j
            out.addmm_(g.to(dtype), w_up.t().to(dtype))  # + sum_j U_j (alpha_j g_j)
        if self.track_utilization and self.training:
            self._accumulate(h.detach(), alpha.detach())
        return out

    @torch.no_grad()
    def _accumulate(self, h: torch.Tensor, alpha: torch.Tensor) -> None:
        z = torch.stack([e(h) for e in self.experts], 1).float()  # [n, N, d]
        norms = z.norm(dim=-1) * alpha[:, 1:].float()  # [n, N]
        ratios = norms / norms.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        if self._util_sum.device != ratios.device:
            self._util_sum, self._util_count, self._alpha_sum = (
                t.to(ratios.device) for t in (self._util_sum, self._util_count, self._alpha_sum))
        weights = self.track_weights
        if weights is None:
            weights = torch.ones(h.shape[0], dtype=torch.float64, device=h.device)
        elif weights.shape != (h.shape[0],):
            raise ValueError(f"track_weights must be [{h.shape[0]}] (one per sample), got {tuple(weights.shape)}")
        weights = weights.to(device=ratios.device, dtype=torch.float64)
        self._util_sum += weights @ ratios.double()
        self._util_count += weights.sum()
        self._alpha_sum += weights @ alpha.double()

    # ---- utilization ---------------------------------------------------------------------------
    def reset_utilization(self) -> None:
        device = self.router.proj.weight.device
        self._util_sum = torch.zeros(self.n_experts, dtype=torch.float64, device=device)  # [N]
        self._util_count = torch.zeros(1, dtype=torch.float64, device=device)
        self._alpha_sum = torch.zeros(self.n_experts + 1, dtype=torch.float64, device=device)  # [N+1]

    def utilization_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of r_j over samples [N], sample count [1])``, float64, on the layer's device."""
        device = self.router.proj.weight.device
        return self._util_sum.to(device), self._util_count.to(device)

    def router_sums(self) -> torch.Tensor:
        """Sum of the router weights ``alpha_0..alpha_N`` over the tracked samples ``[N+1]`` (for reports;
        divide by the count of :meth:`utilization_sums`)."""
        return self._alpha_sum.to(self.router.proj.weight.device)

    # ---- structure -----------------------------------------------------------------------------
    def trainable_parameters(self):
        """The router and every expert not marked frozen (by structure, never by name)."""
        yield from self.router.parameters()
        for expert, frozen in zip(self.experts, self.frozen):
            if not frozen:
                yield from expert.parameters()

    def expand(self, start: ExpertStart = ExpertStart()) -> None:
        """Freeze every expert, append a new one and its router output (§4.2), started as ``start`` says."""
        last = start.init == "last"
        offset = start.logit_offset(self.n_experts)
        new = Expert.mean_of([self.experts[-1]] if last else list(self.experts))
        self.frozen = [True] * self.n_experts + [False]
        self._frozen_cache = None
        self.experts.append(new)
        self.router.add_output(offset, copy_of=self.n_experts - 1 if last else None, copy_share=start.copy_share)
        self.reset_utilization()

    def remove_expert(self, j: int) -> None:
        """Drop expert ``j`` (0-based) and its router output ``j+1``; the last expert is never dropped."""
        if self.n_experts == 1:
            raise ValueError("cannot remove the last remaining expert of a side layer")
        del self.experts[j]
        self.frozen.pop(j)
        self._frozen_cache = None
        self.router.remove_output(j + 1)
        self.reset_utilization()

    def prune_candidate(self, tau: float, sums: torch.Tensor, count: torch.Tensor) -> int | None:
        """The single expert with the lowest mean utilization below ``tau`` (§4.3), or None."""
        if self.n_experts == 1 or float(count) <= 0:
            return None
        scores = sums.double() / float(count)
        j = int(torch.argmin(scores))
        return j if float(scores[j]) < tau else None

    def set_frozen(self, frozen: list[bool]) -> None:
        """Rebuild to ``len(frozen)`` experts with these flags (weights are then loaded from a checkpoint)."""
        if not frozen:
            raise ValueError("a side layer needs at least one expert")
        while self.n_experts < len(frozen):
            self.experts.append(Expert(self.d, self.d_prime).to(self.router.proj.weight.device))
            self.router.add_output()
        while self.n_experts > len(frozen):
            self.remove_expert(self.n_experts - 1)
        self.frozen = [bool(f) for f in frozen]
        self._frozen_cache = None
        self.reset_utilization()


class SideNetwork(nn.Module):
    """``n_layers`` side layers over one modality's grouped cache: ``[n, G+1, d] → e = h_G [n, d]``.

    Input index 0 is the embedding output ``l_0 = h_0`` (Eq. 2), index ``i`` is ``l_i`` for side layer ``i``.
    """

    def __init__(self, d: int, d_prime: int, n_layers: int, n_experts: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SideLayer(d, d_prime, n_experts) for _ in range(n_layers))

    def forward(self, cache: torch.Tensor) -> torch.Tensor:
        if cache.shape[1] != len(self.layers) + 1:
            raise ValueError(f"expected {len(self.layers) + 1} cached states per item, got shape {tuple(cache.shape)}")
        h = cache[:, 0]  # [n, d], h_0 = l_0
        for i, layer in enumerate(self.layers):
            h = layer(h, cache[:, i + 1])
        return h

    def trainable_parameters(self):
        for layer in self.layers:
            yield from layer.trainable_parameters()

    def expand(self, start: ExpertStart = ExpertStart()) -> None:
        for layer in self.layers:
            layer.expand(start)

    def structure(self) -> list[list[bool]]:
        """Per layer, one frozen flag per expert."""
        return [list(layer.frozen) for layer in self.layers]

    def set_structure(self, frozen: list[list[bool]]) -> None:
        if len(frozen) != len(self.layers):
            raise ValueError(f"structure has {len(frozen)} layers, the network {len(self.layers)}")
        for layer, flags in zip(self.layers, frozen):
            layer.set_frozen(flags)
