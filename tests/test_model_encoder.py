"""Sequence encoder (Eq. 6): causal, blind to left padding, positions aligned to the most recent item."""

from __future__ import annotations

import torch

from xsmoe_ray.model import SequenceEncoder

D, L = 8, 5


def encoder() -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder(D, max_len=L, n_blocks=2, n_heads=2, dropout=0.0).eval()


def test_states_are_causal():
    enc, x = encoder(), torch.randn(2, L, D)
    real = torch.ones(2, L, dtype=torch.bool)
    y = x.clone()
    y[:, 3:] = torch.randn(2, 2, D)  # change the future of position 2
    assert torch.allclose(enc(x, real)[:, :3], enc(y, real)[:, :3], atol=1e-6)


def test_padding_content_is_ignored():
    enc, x = encoder(), torch.randn(3, L, D)
    real = torch.arange(L)[None, :] >= torch.tensor([[2], [0], [4]])  # left padding of 2, 0, 4
    y = torch.where(real.unsqueeze(-1), x, torch.randn(3, L, D))
    out_x, out_y = enc(x, real), enc(y, real)
    assert torch.allclose(out_x[real], out_y[real], atol=1e-6) and torch.isfinite(out_x).all()


def test_shorter_context_uses_the_last_positions():
    enc, x = encoder(), torch.randn(2, L, D)
    real = torch.ones(2, L, dtype=torch.bool)
    real[:, :2] = False
    full = enc(x, real)[:, -1]
    short = enc(x[:, 2:], torch.ones(2, L - 2, dtype=torch.bool))[:, -1]
    assert torch.allclose(full, short, atol=1e-5)
