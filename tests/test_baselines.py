"""Baselines that are not XSMoE variants (issue 19): shapes, causality, overfitting one batch,
checkpoint round trip and exact resume, the id rule for new items, the reservoir's uniformity,
and two Ray Train ranks agreeing with one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from xsmoe_ray.model import ReservoirBuffer, SASRecID, build_model, model_from_structure
from xsmoe_ray.train.checkpoint import WindowState, load_state, save_state

N_ITEMS, L, D = 40, 5, 16
ID_VARIANTS = SASRecID.VARIANTS
FEATURES = {"text": torch.zeros(N_ITEMS + 1, 2, 3)}  # only the row count is read
LOG_POP = torch.log(torch.full((N_ITEMS + 1,), 1.0 / N_ITEMS))


def make(variant: str, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    model = build_model(variant, text_dim=3, image_dim=None, n_groups=1, d_prime=2, embed_dim=D, max_len=L,
                        seq_blocks=1, seq_heads=2, dropout=dropout, modalities=("text",), kd_weight=0.5,
                        n_item_rows=N_ITEMS + 1)
    model.set_item_features(FEATURES)
    return model


def batch(seed: int = 0, B: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    seq[: B // 2, :2] = 0
    return seq


def steps(model, seq, n: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(n):
        loss, _ = model(seq, LOG_POP)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("variant", ID_VARIANTS)
def test_shapes_and_flags(variant):
    model = make(variant)
    assert model.item_embeddings(torch.tensor([1, 2, 2, 7])).shape == (4, D)
    assert model.user_embedding(batch()[:, :-1]).shape == (8, D)
    loss, stats = model(batch(), LOG_POP)
    assert loss.dim() == 0 and torch.isfinite(loss) and stats["targets"] > 0
    assert model.replay == variant.endswith("_rh") and model.distill == variant.endswith("_kd")
    assert model.experts_per_layer() == {} and model.prune(0.5) == {} and model.begin_window() is False


def test_no_position_sees_a_later_item():
    model = make("sasrec_id").eval()
    seq = batch()[:, :-1]
    later = seq.clone()
    later[:, -1] = (later[:, -1] % N_ITEMS) + 1  # change only the last item
    a, b = model.user_states(seq), model.user_states(later)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("variant", ID_VARIANTS)
def test_one_batch_is_driven_to_near_zero_loss(variant):
    model = make(variant)  # window 0: no teacher yet, so the _kd variant's loss is its cross-entropy
    seq = torch.arange(1, 8 * (L + 1) + 1).reshape(8, L + 1) % N_ITEMS + 1  # distinct targets per row
    losses = steps(model, seq, 300, lr=3e-2)
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("variant", ID_VARIANTS)
def test_checkpoint_round_trip_and_exact_resume(variant, tmp_path):
    model = make(variant, dropout=0.1)
    steps(model, batch(0), 3)
    model.begin_window()
    save_state(tmp_path, WindowState(window=1, model=model), {"cfg": "test"})
    loaded = load_state(tmp_path).model
    loaded.set_item_features(FEATURES)
    assert type(loaded) is SASRecID and loaded.structure() == model.structure()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    if model.distill:
        loaded.begin_window(), model.begin_window()  # a resumed window starts by taking its teacher
    torch.manual_seed(5)
    steps(model, batch(1), 2)
    torch.manual_seed(5)
    steps(loaded, batch(1), 2)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_new_items_get_seeded_rows_and_old_rows_stay():
    model = make("sasrec_id")
    before = model.item_table.weight.detach().clone()
    grown = {"text": torch.zeros(N_ITEMS + 11, 2, 3)}
    model.set_item_features(grown)
    twin = make("sasrec_id")
    twin.set_item_features(grown)
    assert model.n_item_rows == N_ITEMS + 11 and model.structure()["n_item_rows"] == N_ITEMS + 11
    assert torch.equal(model.item_table.weight[: N_ITEMS + 1], before)
    assert torch.equal(model.item_table.weight, twin.item_table.weight)  # every rank, every resume alike
    assert model.item_table.weight[N_ITEMS + 1:].abs().max() < 0.2
    assert model_from_structure(model.structure()).n_item_rows == N_ITEMS + 11
    with pytest.raises(ValueError, match="cannot be removed"):
        model.set_item_features(FEATURES)


def test_reservoir_keeps_a_uniform_sample():
    """Every row offered has the same chance cap/n of being kept (chi-square over 400 seeded runs)."""
    from scipy.stats import chisquare

    n, cap, runs = 200, 20, 400
    rows = torch.arange(n).reshape(-1, 1).expand(-1, 3).contiguous()
    kept = np.zeros(n)
    for seed in range(runs):
        buf = ReservoirBuffer(cap, seed=seed)
        for lo in range(0, n, 16):  # offered in batches, as the trainer does
            buf.add(rows[lo: lo + 16])
        kept[buf.data[: buf.size, 0]] += 1
    assert kept.sum() == cap * runs
    assert chisquare(kept).pvalue > 0.001
    assert abs(kept[: n // 2].sum() - kept[n // 2:].sum()) < 0.1 * kept.sum()  # early and late rows alike


def test_the_item_table_is_the_whole_model_report():
    from xsmoe_ray.model import parameter_report

    model = make("sasrec_id")
    report = parameter_report(model)
    assert set(report) == {"item_table", "encoder", "model"}
    assert report["item_table"]["total"] == (N_ITEMS + 1) * D
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # plain tensors only
    assert buf.tell() > 0


def test_two_ray_train_ranks_agree_with_one(tmp_path, ray_session):
    """sasrec_id_rh on Ray Train: one worker and two (gloo) give the same structure and close metrics;
    every window ended with a cross-rank parameter-hash check, which raises on any divergence."""
    from xsmoe_ray.stream import run

    from .test_stream import tiny

    one = run(tiny(tmp_path, "one", "model.variant=sasrec_id_rh", "train.last_window=2"))
    two = run(tiny(tmp_path, "two", "model.variant=sasrec_id_rh", "train.last_window=2", "train.num_workers=2"))
    assert [r["window"] for r in one] == [r["window"] for r in two] == [0, 1, 2]
    assert all(r["experts"] == {} for r in one + two)
    for key in ("hr10", "ndcg10"):
        a, b = (sum(r[key] for r in h[1:]) / len(h[1:]) for h in (one, two))
        assert abs(a - b) <= 0.1, (key, a, b)
