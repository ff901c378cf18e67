"""Per-layer standardisation of the cached backbone states (DESIGN.md §5, ``model.feature_norm``).

The cached states of different backbone layers live at very different scales, and most of a layer's
vector is shared by every item (BERT-family states have a large common component). The side
network sees each cached layer ``l_i`` as ``(l_i - mu_i) / s_i`` where ``mu_i`` [d] is the mean over
the items of D_0 and ``s_i`` the mean over dimensions of their per-dimension std. The statistics
are fitted once, at warm-up, from D_0's items only (later windows' items never leak into them),
kept as buffers (saved in every checkpoint, compared by the per-window parameter hash, so every rank
holds the same), and applied to every variant, ``noft`` included, so comparisons stay fair.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6  # floor for s_i: a layer that is constant over D_0 (e.g. [CLS] l_0) stays finite


class LayerStandardizer(nn.Module):
    """``[n, G+1, d]`` cached states → ``(x - mu) / s`` per layer, with statistics from :meth:`fit`."""

    def __init__(self, n_layers: int, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_layers, d))
        self.register_buffer("scale", torch.ones(n_layers, 1))
        self.register_buffer("fitted", torch.zeros(()))  # 1.0 once fitted (float: DDP broadcasts buffers)
        self._ready = False  # host-side copy of ``fitted``: checked once, not synced on every forward

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read ``fitted`` from the loaded buffers on the next forward

    @torch.no_grad()
    def fit(self, states: torch.Tensor) -> None:
        """``states`` [n, G+1, d] of the fitting items (float16 or float32); computed in float64."""
        if states.shape[0] < 2:
            raise ValueError(f"feature standardisation needs at least 2 items, got {states.shape[0]}")
        x = states.double()
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0, unbiased=False).mean(-1, keepdim=True).clamp_min(EPS))
        self.fitted.fill_(1.0)
        self._ready = True

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            self._ready = bool(self.fitted.item())
            if not self._ready:
                raise RuntimeError("feature standardisation was never fitted: call model.fit_feature_norm first")
        return (states - self.mean) / self.scale  # [n, G+1, d]
