"""The vectorised in-batch debiased CE (Eq. 8) against the all-positions loop in bench/loss_reference.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from xsmoe_ray.model import (batch_candidates, build_model, debiased_ce, distillation_kl, fused_debiased_ce,
                             masked_logits)

_spec = importlib.util.spec_from_file_location(
    "loss_reference", Path(__file__).resolve().parents[1] / "bench" / "loss_reference.py")
loss_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loss_reference)

N_ITEMS, L = 25, 5


def random_batch(seed: int, B: int = 6) -> torch.Tensor:
    """Left-padded [B, L+1] sequences with repeats across and within users."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    lengths = torch.randint(2, L + 2, (B,), generator=g)
    pad = torch.arange(L + 1)[None, :] < (L + 1 - lengths)[:, None]
    return seq.masked_fill(pad, 0)


def random_first(seed: int, B: int = 6) -> torch.Tensor:
    return torch.randint(1, L + 1, (B,), generator=torch.Generator().manual_seed(seed + 100))


def n_loss_positions(seq: torch.Tensor, first: torch.Tensor | None = None) -> int:
    valid = (seq[:, 1:] > 0) & (seq[:, :-1] > 0)
    if first is not None:
        valid &= torch.arange(1, L + 1)[None, :] >= first[:, None]
    return int(valid.sum())


def test_batch_candidates_indexes_unique_ids():
    seq = torch.tensor([[0, 0, 5, 3], [0, 3, 3, 9]])
    ids, index = batch_candidates(seq)
    assert ids.tolist() == [3, 5, 9]
    assert index.tolist() == [[-1, -1, 1, 0], [-1, 0, 0, 2]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_first", [False, True])
def test_unique_columns_equal_the_all_positions_reference(seed, with_first):
    """One column per unique item plus log n_j == Eq. 8 with every batch position a column."""
    torch.manual_seed(seed)
    seq = random_batch(seed, B=8)
    seq[1, -3:] = torch.tensor([7, 7, 7])  # repeated positives inside a row
    seq[2, -2:] = torch.tensor([7, 9])  # the same positive in another user's row
    first = random_first(seed, B=8) if with_first else None
    table = torch.randn(N_ITEMS + 1, 4)
    log_pop = torch.log(torch.rand(N_ITEMS + 1) + 0.1)
    ids, index = batch_candidates(seq)
    assert len(ids) < int((seq > 0).sum())  # duplicates present: the test is about them
    states = torch.randn(seq.shape[0], L, 4)
    logits, pos = masked_logits(states, table[ids], index, log_pop[ids], first)
    expected = loss_reference.reference_loss(states, table, seq, log_pop, first)
    assert pos.numel() == n_loss_positions(seq, first)
    assert torch.allclose(debiased_ce(logits, pos), expected, atol=1e-5)
    fused, n = fused_debiased_ce(states, table[ids], index, log_pop[ids], first)
    assert n == pos.numel() and torch.allclose(fused, expected, atol=1e-5)


def test_duplicates_weigh_in_by_their_count():
    """Two rows share negative 5: with it present twice, its column weighs as two (log 2)."""
    seq = torch.tensor([[1, 2], [3, 5], [4, 5]])
    ids, index = batch_candidates(seq)
    table = torch.zeros(len(ids), 2)
    logits, pos = masked_logits(torch.zeros(3, 1, 2), table, index, torch.zeros(len(ids)))
    col5 = ids.tolist().index(5)
    assert torch.isclose(logits[0, col5], torch.log(torch.tensor(2.0)))  # row 0 (target 2): 5 twice in the batch
    assert torch.isclose(logits[1, col5], torch.tensor(0.0))  # row 1's positive is 5: it counts once


def test_no_loss_on_targets_with_a_padding_input_or_before_first():
    seq = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5]])
    ids, index = batch_candidates(seq)
    _, pos = masked_logits(torch.zeros(2, L, 2), torch.zeros(len(ids), 2), index, torch.zeros(len(ids)))
    assert [int(ids[p]) for p in pos] == [4, 5, 6, 2, 3, 4, 5]  # item 3 (row 0) and 1 (row 1) follow padding
    _, pos = masked_logits(torch.zeros(2, L, 2), torch.zeros(len(ids), 2), index, torch.zeros(len(ids)),
                           first=torch.tensor([5, 3]))
    assert [int(ids[p]) for p in pos] == [6, 3, 4, 5]


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_loss_and_gradients_equal_the_autograd_path(seed):
    torch.manual_seed(seed)
    seq = random_batch(seed)
    ids, index = batch_candidates(seq)
    log_pop = torch.log(torch.rand(len(ids)) + 0.1)
    grads = []
    for fused in (True, False):
        states = torch.randn(seq.shape[0], L, 4, generator=torch.Generator().manual_seed(seed)).requires_grad_()
        table = torch.randn(len(ids), 4, generator=torch.Generator().manual_seed(seed + 9)).requires_grad_()
        if fused:
            loss, n_targets = fused_debiased_ce(states, table, index, log_pop)
            assert n_targets == n_loss_positions(seq)
        else:
            loss = debiased_ce(*masked_logits(states, table, index, log_pop))
        (3.0 * loss).backward()
        grads.append((loss.detach(), states.grad, table.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_model_loss_equals_reference_loop():
    torch.manual_seed(0)
    model = build_model("xsmoe", text_dim=6, image_dim=5, n_groups=2, d_prime=2, embed_dim=4, max_len=L,
                        seq_blocks=1, seq_heads=2, dropout=0.0).eval()
    model.set_item_features({"text": torch.randn(N_ITEMS + 1, 3, 6), "image": torch.randn(N_ITEMS + 1, 3, 5)})
    model.expand()
    seq, log_pop, first = random_batch(3), torch.log(torch.rand(N_ITEMS + 1) + 0.1), random_first(3)
    loss, stats = model.loss(seq, log_pop, first)
    with torch.no_grad():
        expected = loss_reference.reference_loss(model.user_states(seq[:, :-1]),
                                                 model.item_embeddings(torch.arange(N_ITEMS + 1)), seq, log_pop, first)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert stats["targets"] == n_loss_positions(seq, first)


def test_own_items_are_masked_but_positive_is_not():
    seq = torch.tensor([[1, 2, 1], [3, 4, 5]])
    ids, index = batch_candidates(seq)
    logits, pos = masked_logits(torch.zeros(2, 2, 3), torch.zeros(5, 3), index, torch.zeros(5))
    masked = logits < -1e30
    assert pos.tolist() == [1, 0, 3, 4]
    assert masked.tolist() == [[True, False, False, False, False],  # user 0, target 2: own item 1 masked
                               [False, True, False, False, False],  # target 1 (a repeat): item 2 masked
                               [False, False, True, False, True],  # user 1, target 4: items 3 and 5 masked
                               [False, False, True, True, False]]


@pytest.mark.parametrize("variant", ["xsmoe", "iisan_kd"])
def test_loss_is_finite_under_bf16_autocast(variant):
    torch.manual_seed(0)
    model = build_model(variant, text_dim=6, image_dim=None, n_groups=2, d_prime=2, embed_dim=4, max_len=L,
                        seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",))
    model.set_item_features({"text": torch.randn(N_ITEMS + 1, 3, 6).half()})
    model.begin_window()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(random_batch(1), torch.zeros(N_ITEMS + 1))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_distillation_is_zero_for_identical_logits_and_positive_otherwise():
    torch.manual_seed(0)
    seq = random_batch(0)
    ids, index = batch_candidates(seq)
    logits, _ = masked_logits(torch.randn(6, L, 3), torch.randn(len(ids), 3), index, torch.zeros(len(ids)))
    assert distillation_kl(logits, logits).abs() < 1e-6
    assert distillation_kl(logits, logits.roll(1, -1).masked_fill(logits < -1e30, -3e38)) > 0
