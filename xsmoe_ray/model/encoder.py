"""Causal SASRec-style sequence encoder (XSMoE paper §4.4, Eq. 6).

``e_u = SeqEncoder([e_1 .. e_L])``: learned positional embeddings are added, then LayerNorm and
dropout, then ``n_blocks`` Transformer blocks (multi-head causal self-attention and a position-wise
GELU FFN, each with a residual connection and LayerNorm). The state at position ``t`` sees items
``1..t`` only, so one pass gives next-item predictions at every position (SASRec training).

Departures / choices the paper leaves open: blocks are pre-LN (LayerNorm inside the residual
branch, as nanoGPT) with a final LayerNorm; the FFN is ``4D`` wide. Sequences are left padded
with id 0; padded keys are masked out of attention, and a padded query attends to itself only so
that no softmax row is empty (its output is never used). A sequence shorter than ``max_len`` uses
the *last* positions of the table, so the most recent item always gets the same position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask ``[B, 1, L, L]`` (True = may attend)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by seq_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, nh, L, hs]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, L, D)  # [B, L, D]
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.ffn(self.ln_2(x))


class SequenceEncoder(nn.Module):
    """Item embeddings ``[B, L, D]`` of a left-padded sequence → user states ``[B, L, D]`` (Eq. 6)."""

    def __init__(self, dim: int, max_len: int, n_blocks: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, dim)
        self.ln_in = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout) for _ in range(n_blocks))
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``items`` [B, L, D] (zeros at padding), ``real`` [B, L] bool (False at padding)."""
        B, L, _ = items.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        positions = torch.arange(self.max_len - L, self.max_len, device=items.device)
        x = self.dropout(self.ln_in(items + self.pos(positions)))  # [B, L, D]
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()  # [L, L]
        eye = torch.eye(L, dtype=torch.bool, device=items.device)
        mask = (causal & (real[:, None, :] | eye)).unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)
