"""MMMLP (Liang et al., WWW'23): one MLP-Mixer per stream (item ID, text, image), fused, scored by ID.

Streams: for the ``L`` context items, the ID stream is ``E[i]`` (``id_table.IdTable``); each content
stream is ``W_m l_M^m(i) + b_m``, the frozen backbone's last cached layer (what ``noft`` reads: the
cache holds pooled states, not the patches or tokens the original mixes) projected to ``D``.
Padding positions are zero in every stream. Each stream goes through ``LayerNorm`` and
``seq_blocks`` mixer blocks, each a pre-norm residual *token* MLP across the ``L`` positions
(``L → 4L → L``, GELU) and a pre-norm residual *channel* MLP (``D → 4D → D``), each with
``model.dropout`` on its output (not on its 4× wide hidden layer: drawing that mask was 37 % of a
CPU step and made MMMLP slower per epoch than ``iisan_rh``, docs/BENCHMARKS.md). Fusion:
``u = LayerNorm(W_f LayerNorm([x_id; x_text; x_image]) + b_f)`` at the last position (the most
recent item). Score: ``u · E[j]``, by ID as in the original's output layer.

Token mixing is not causal, so every position sees the whole context: only the last position may
carry loss, so training uses one row per target (``train.rows`` gives that row) with the loss at its
last position only (``first = L``), through the project's Eq. 8 in-batch debiased cross-entropy
rather than the original's full-softmax CE (the same loss every model here is trained with).
Training and ranking therefore run each mixer's final block at the last position only
(``MixerBlock.last``, the same function; it took about 40 % off the step, docs/BENCHMARKS.md);
``user_states`` still returns every position, for inspection.

Variants: ``mmmlp``; ``mmmlp_rh`` (reservoir replay, as ``iisan_rh``); ``mmmlp_kd`` (KL to the
previous window's model, as ``iisan_kd``); the paper's Table 1 has the last two.

Departures from the public code (Applied-Machine-Learning-Lab/MMMLP, incomplete): there the text and
image mixers apply the same block to the stream's input in every loop step instead of chaining the
blocks; here the blocks are chained, as in the ID stream and the paper's description. Ids never
trained (items first seen in a test chunk) follow ``id_table.py``'s rule: they keep their random
``N(0, 0.02²)`` start, so they score near 0, since scoring is by ID even though the context uses
content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import SequentialModel
from ..loss import batch_candidates
from .frozen_features import LastLayerFeatures
from ..id_table import IdTable, match_catalogue

VARIANTS = {"mmmlp": {}, "mmmlp_rh": {"replay": True}, "mmmlp_kd": {"distill": True}}
EXPANSION = 4


class _MLP(nn.Sequential):
    """``dim → 4 dim → dim`` with GELU; dropout on the output only (module docstring)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, EXPANSION * dim), nn.GELU(), nn.Linear(EXPANSION * dim, dim),
                         nn.Dropout(dropout))


class MixerBlock(nn.Module):
    """Pre-norm residual token mixing across positions, then channel mixing: ``[B, L, D] → [B, L, D]``."""

    def __init__(self, length: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.token_norm, self.token = nn.LayerNorm(dim), _MLP(length, dropout)
        self.channel_norm, self.channel = nn.LayerNorm(dim), _MLP(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel(self.channel_norm(x))

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s output at the last position only, ``[B, L, D] → [B, D]``.

        Token mixing still reads every position, but only the last output row of its second linear
        and one position's channel MLP are computed: about a sixth of the block's matmul work at
        ``L = 10``, ``D = 64``, and all that one loss position needs.
        """
        expand, act, out, dropout = self.token
        hidden = act(expand(self.token_norm(x).transpose(1, 2)))  # [B, D, 4L]
        y = x[:, -1] + dropout(F.linear(hidden, out.weight[-1:], out.bias[-1:]).squeeze(-1))
        return y + self.channel(self.channel_norm(y))


class StreamMixer(nn.Sequential):
    def __init__(self, length: int, dim: int, blocks: int, dropout: float) -> None:
        super().__init__(nn.LayerNorm(dim), *[MixerBlock(length, dim, dropout) for _ in range(blocks)])

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``[B, L, D] → [B, L, D]``, or ``[B, 1, D]`` (the last position) with ``last_only``."""
        x, blocks = self[0](x), list(self)[1:]
        if not last_only:
            for block in blocks:
                x = block(x)
            return x
        if not blocks:
            return x[:, -1:]
        for block in blocks[:-1]:
            x = block(x)
        return blocks[-1].last(x)[:, None]


class MMMLP(LastLayerFeatures, SequentialModel):
    VARIANTS = tuple(VARIANTS)
    last_position_only = True  # token mixing is not causal (module docstring)

    def __init__(self, *, variant: str, n_item_rows: int, dims: dict[str, int], embed_dim: int, max_len: int,
                 seq_blocks: int, dropout: float, kd_weight: float = 1.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown MMMLP variant {variant!r}; one of {sorted(VARIANTS)}")
        self.variant = variant
        self.modalities = tuple(sorted(dims))
        self.args = dict(variant=variant, n_item_rows=int(n_item_rows), dims={m: int(d) for m, d in dims.items()},
                         embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks, dropout=dropout,
                         kd_weight=kd_weight)
        self.item_table = IdTable(n_item_rows, embed_dim, std=0.02)  # as the public code; LayerNorm follows
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], embed_dim) for m in self.modalities})
        streams = ("id",) + self.modalities
        self.mixers = nn.ModuleDict({s: StreamMixer(max_len, embed_dim, seq_blocks, dropout) for s in streams})
        self.fuse_norm = nn.LayerNorm(len(streams) * embed_dim)
        self.fuse = nn.Linear(len(streams) * embed_dim, embed_dim)
        self.out_norm = nn.LayerNorm(embed_dim)
        self.max_len, self.kd_weight, self.distill = max_len, kd_weight, bool(VARIANTS[variant].get("distill"))
        self._register_feature_buffers()

    @property
    def replay(self) -> bool:
        return bool(VARIANTS[self.variant].get("replay"))

    # ---- inputs --------------------------------------------------------------------------------------
    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """Keeps each modality's last cached layer ``[n_items+1, d]``; grows the id table with the catalogue."""
        self._keep_last_layers(features, self.fuse.weight.device)
        match_catalogue(self, features)

    @property
    def n_item_rows(self) -> int:
        return self.item_table.rows

    # ---- towers --------------------------------------------------------------------------------------
    def _embed(self, item_ids: torch.Tensor, inputs) -> torch.Tensor:
        return self.item_table(item_ids)  # scores are by ID

    def _mix(self, ids: torch.Tensor, index: torch.Tensor, inputs, last_only: bool = False) -> torch.Tensor:
        """Unique ids [U] and a context ``index`` [B, L] into them (-1 = padding) → states ``[B, L, D]``
        (``[B, 1, D]``, the last position, with ``last_only``)."""
        real = (index >= 0).unsqueeze(-1)
        at = index.clamp_min(0)
        streams = [self.mixers["id"](self.item_table(ids)[at] * real, last_only)]
        for m in self.modalities:
            content = self.project[m](inputs[m].index_select(0, ids).float())  # [U, D]
            streams.append(self.mixers[m](content[at] * real, last_only))
        return self.out_norm(self.fuse(self.fuse_norm(torch.cat(streams, dim=-1))))

    def _towers(self, seq: torch.Tensor, inputs, users: torch.Tensor | None = None):
        ids, index = batch_candidates(seq)
        last = self._mix(ids, index[:, :-1], inputs, last_only=True)  # [B, 1, D]
        # The loss reads position L only (``last_position_only``); a view, not a copy, fills the rest.
        return ids, index, self._embed(ids, inputs), last.expand(-1, seq.shape[1] - 1, -1)

    def user_states(self, seq_ids: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` contexts → ``[B, L, D]``; only the last position is a user vector (not causal)."""
        ids, index = batch_candidates(seq_ids)
        return self._mix(ids, index, self._item_inputs())

    def user_embedding(self, context: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                       users: torch.Tensor | None = None) -> torch.Tensor:
        ids, index = batch_candidates(context)
        return self._mix(ids, index, self._item_inputs(), last_only=True)[:, 0]

    # ---- structure -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {"item_table": self.item_table, "project": self.project, "mixers": self.mixers, "fuse": self.fuse}

    def structure(self) -> dict:
        return {**self.args, "dims": dict(self.args["dims"])}

    @classmethod
    def from_structure(cls, structure: dict) -> "MMMLP":
        return cls(**structure)
