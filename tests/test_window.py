"""One window's training: pruning statistics of the kept weights, precision, popularity reference."""

import numpy as np
import torch

from tests.test_streaming import make_dataset
from xsmoe_ray.config import TrainConfig
from xsmoe_ray.model import build_model
from xsmoe_ray.streaming import build_stream
from xsmoe_ray.model.loss import batch_candidates
from xsmoe_ray.train.data import chunk_counts, epoch_batches, split_rows, window_data
from xsmoe_ray.train.window import (autocast_for, evaluate_popularity, track_utilization, train_window,
                                    uses_grad_scaler)

N_ITEMS = 40


def setup(seed=0):
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    torch.manual_seed(seed)
    m = build_model("xsmoe", text_dim=8, image_dim=None, n_groups=2, d_prime=4, embed_dim=8, max_len=4,
                    seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",))
    m.set_item_features({"text": torch.randn(N_ITEMS + 1, 3, 8)})
    return s, m


def test_pruning_statistics_describe_the_restored_best_weights():
    s, m = setup()
    m.begin_window()
    data = window_data(s, 1, N_ITEMS)
    cfg = TrainConfig(batch_size=32, lr=0.05, lr_decay=1.0, max_epochs=4, patience=4, precision="full")
    states = []
    # Record the weights after every epoch's evaluation: the restored ones are one of them.
    val_scores = iter([0.9, 0.1, 0.2, 0.3])  # epoch 1 is best; later epochs move the weights on
    import xsmoe_ray.train.window as window

    real = window.evaluate_cases

    def fake_eval(model, cases, device, mask_history=False, batch_size=1024):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        out = real(model, cases, device, mask_history, batch_size)
        out.ndcg, out.count = next(val_scores), 1
        return out

    window.evaluate_cases = fake_eval
    try:
        result = train_window(m, data, cfg, torch.device("cpu"), seed=0, log=lambda *_: None)
    finally:
        window.evaluate_cases = real
    assert result.epochs == 4
    assert all(torch.equal(v, states[0][k]) for k, v in m.state_dict().items())  # epoch 1 restored
    kept = {k: v.clone() for k, v in m.utilization_sums().items()}
    track_utilization(m, torch.from_numpy(data.train_rows), cfg.batch_size, torch.device("cpu"), 0, 1)
    again = m.utilization_sums()
    assert all(torch.allclose(kept[k], again[k]) for k in kept)
    assert all(float(kept[k].sum()) > 0 for k in kept if k.endswith(".count"))
    # ...and they differ from the statistics of the last epoch's weights (what the pruning used before).
    m.load_state_dict(states[-1])
    track_utilization(m, torch.from_numpy(data.train_rows), cfg.batch_size, torch.device("cpu"), 0, 1)
    last = m.utilization_sums()
    assert not all(torch.allclose(kept[k], last[k]) for k in kept if k.endswith(".sum"))


def per_batch_sums(m, rows, batch_size, rank=0, world=1):
    """The utilization pass as training sees it: the item tower over each batch's unique items."""
    m.reset_utilization()
    m.set_utilization_tracking(True)
    m.train()
    with torch.no_grad():
        for idx in epoch_batches(len(rows), batch_size, seed=0, epoch=0, rank=rank, world=world):
            m.item_embeddings(batch_candidates(split_rows(rows[idx])[0])[0])
    m.set_utilization_tracking(False)
    return {k: v.clone() for k, v in m.utilization_sums().items()}, m.router_weights()


def test_utilization_pass_runs_each_item_once_and_gives_the_per_batch_sums():
    s, m = setup()
    for _ in range(2):  # three experts per layer, made to differ so every share is its own
        m.begin_window()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
    rows = torch.from_numpy(window_data(s, 1, N_ITEMS).train_rows)
    cpu = torch.device("cpu")
    for rank, world in [(0, 1), (0, 2), (1, 2)]:
        want, want_router = per_batch_sums(m, rows, 7, rank, world)
        calls = []
        real = m.item_embeddings
        m.item_embeddings = lambda ids, chunk_size=None: calls.append(len(ids)) or real(ids, chunk_size)
        try:  # small chunks: several weighted tower calls
            track_utilization(m, rows, 7, cpu, rank, world, chunk=5)
        finally:
            del m.item_embeddings
        got = m.utilization_sums()
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(torch.tensor(m.router_weights()["text"]), torch.tensor(want_router["text"]))
        batches = epoch_batches(len(rows), 7, seed=0, epoch=0, rank=rank, world=world)
        distinct = np.unique(split_rows(rows.numpy()[np.concatenate(batches)])[0])
        assert sum(calls) == len(distinct[distinct > 0]) and max(calls) <= 5  # each item once
        assert float(want["text.0.count"]) > sum(calls)  # items recur across batches: counts weigh them


def test_cpu_default_precision_is_float32_and_half_is_bf16():
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    with autocast_for(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for(cpu, "half"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not uses_grad_scaler(cpu, "auto") and uses_grad_scaler(torch.device("cuda"), "auto")
    assert not uses_grad_scaler(torch.device("cuda"), "full")


def test_popularity_reference_ranks_by_previous_chunk_counts():
    s, _ = setup()
    data = window_data(s, 2, N_ITEMS)
    counts = chunk_counts(s, 2, N_ITEMS)
    sums = evaluate_popularity(torch.from_numpy(counts), data.test, torch.device("cpu"))
    # Hand computation: rank = number of candidates with a count >= the target's, minus one.
    c = counts[data.test.candidates]
    ranks = np.array([(c >= counts[t]).sum() - 1 for t in data.test.targets])
    assert sums.count == len(data.test)
    assert np.isclose(sums.hits, (ranks < 10).sum())
    assert np.isclose(sums.ndcg, (1 / np.log2(ranks[ranks < 10] + 2)).sum())


def test_validation_honours_mask_history(monkeypatch):
    import xsmoe_ray.train.window as window

    s, m = setup()
    seen = []
    real = window.evaluate_cases

    def spy(model, cases, device, mask_history=False, batch_size=1024):
        seen.append(mask_history)
        return real(model, cases, device, mask_history, batch_size)

    monkeypatch.setattr(window, "evaluate_cases", spy)
    cfg = TrainConfig(batch_size=64, max_epochs=1, patience=1, precision="full")
    train_window(m, window_data(s, 1, N_ITEMS), cfg, torch.device("cpu"), seed=0, mask_history=True, log=lambda *_: None)
    assert seen == [True]


def test_max_steps_caps_optimizer_steps_per_epoch():
    s, m = setup()
    data = window_data(s, 1, N_ITEMS)
    batches = -(-len(data.train_rows) // 8)
    assert batches > 3
    for cap, want in [(0, batches), (3, 3)]:
        cfg = TrainConfig(batch_size=8, max_epochs=2, patience=5, precision="full", max_steps=cap)
        result = train_window(m, data, cfg, torch.device("cpu"), seed=0, log=lambda *_: None)
        assert (result.epochs, result.steps) == (2, 2 * want)
        assert 0 < result.train_seconds and 0 < result.val_seconds
        assert result.train_seconds + result.val_seconds <= result.seconds
