"""Whole-model properties per variant: training, trainable set, structure round trip, accounting, baselines."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from xsmoe_ray.config import ConfigError, load_config
from xsmoe_ray.model import (VARIANTS, ExpertStart, ReservoirBuffer, build_model, count_parameters, format_report,
                             model_from_structure, paper_side_parameters, parameter_report, side_parameters)
from xsmoe_ray.model.xsmoe import XSMoE
from xsmoe_ray.train.worker import new_model

N_ITEMS, L, G, DT, DI, DP = 30, 4, 2, 8, 6, 3
FEATURES = {"text": torch.randn(N_ITEMS + 1, G + 1, DT, generator=torch.Generator().manual_seed(1)).half(),
            "image": torch.randn(N_ITEMS + 1, G + 1, DI, generator=torch.Generator().manual_seed(2)).half()}


def make(variant: str, modalities=("image", "text"), seed: int = 0) -> XSMoE:
    torch.manual_seed(seed)
    model = build_model(variant, text_dim=DT, image_dim=DI if "image" in modalities else None, n_groups=G,
                        d_prime=DP, embed_dim=8, max_len=L, seq_blocks=1, seq_heads=2, dropout=0.0,
                        modalities=modalities, kd_weight=0.5)
    model.set_item_features(FEATURES)
    return model


def batch(seed: int = 0, B: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    seq[: B // 2, :2] = 0  # some left padding
    return seq


LOG_POP = torch.log(torch.full((N_ITEMS + 1,), 1.0 / N_ITEMS))


def train(model: XSMoE, seq: torch.Tensor, steps: int, buffer: ReservoirBuffer | None = None) -> list[float]:
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        x = buffer.mix(seq) if buffer is not None else seq
        loss, _ = model(x, LOG_POP)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if buffer is not None:
            buffer.add(seq)
    return losses


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_and_its_loss_falls(variant):
    model = make(variant)
    buffer = ReservoirBuffer(16, seed=0) if model.spec.replay else None
    warm = train(model, batch(0), 8, buffer)
    model.begin_window()  # window 1: expands xsmoe/visual/textual, snapshots the iisan_kd teacher
    later = train(model, batch(1), 8, buffer)
    assert warm[-1] < warm[0] and later[-1] < later[0]


@pytest.mark.parametrize("variant, experts", [("xsmoe", 2), ("visual", 2), ("textual", 2), ("static", 1),
                                              ("iisan_rh", 1), ("iisan_kd", 1), ("noft", 0)])
def test_expansion_by_variant(variant, experts):
    model = make(variant)
    model.begin_window()
    assert all(len(layer) == experts for flags in model.structure()["experts"].values() for layer in flags)


def test_trainable_parameters_after_expansion_are_newest_experts_routers_fusion_encoder():
    model = make("xsmoe")
    model.expand()
    expected = {id(p) for p in [*model.fusion.parameters(), *model.encoder.parameters()]}
    for side in model.sides.values():
        for layer in side.layers:
            expected |= {id(p) for p in [*layer.router.parameters(), *layer.experts[-1].parameters()]}
    assert {id(p) for p in model.trainable_parameters()} == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected


def test_frozen_experts_stay_bit_identical_while_training():
    model = make("xsmoe")
    model.expand()
    frozen = {n: p.clone() for n, p in model.named_parameters() if ".experts.0." in n}
    train(model, batch(2), 3)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, model.get_parameter(n.replace(".experts.1.", ".experts.0.")))
               for n, p in model.named_parameters() if ".experts.1." in n)


def test_structure_round_trips_through_a_checkpoint():
    model = make("xsmoe")
    model.expand()
    model.expand()
    sums = model.utilization_sums()
    sums["text.1.sum"] += torch.tensor([0.5, 0.05, 0.9]) * 10
    sums["text.1.count"] += 10
    assert model.prune(0.1, sums) == {"text": {1: 1}}
    buf = io.BytesIO()
    torch.save({"structure": model.structure(), "model": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    assert not any(k.startswith("features_") for k in ckpt["model"])
    restored = XSMoE.from_structure(ckpt["structure"])
    restored.load_state_dict(ckpt["model"])
    restored.set_item_features(FEATURES)
    assert restored.structure() == model.structure()
    assert {n for n, p in restored.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        assert torch.equal(restored.eval().item_embeddings(ids), model.eval().item_embeddings(ids))


def test_cached_frozen_weights_follow_load_state_dict():
    a, b = make("xsmoe", seed=0).eval(), make("xsmoe", seed=1).eval()
    for model in (a, b):
        model.expand()
        model.expand()  # two frozen experts per layer: their concatenation is a cached copy
    ids = torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        a.item_embeddings(ids)  # fills the frozen-weight cache
        a.load_state_dict(b.state_dict())
        assert torch.equal(a.item_embeddings(ids), b.item_embeddings(ids))


def test_model_utilization_sums_merge_by_addition():
    model = make("xsmoe").train()
    model.expand()
    model.set_utilization_tracking(True)
    ids = torch.arange(1, N_ITEMS + 1)
    model.item_embeddings(ids)
    whole = model.utilization_sums()
    model.reset_utilization()
    model.item_embeddings(ids[:11])
    first = model.utilization_sums()
    model.reset_utilization()
    model.item_embeddings(ids[11:])
    second = model.utilization_sums()
    assert whole.keys() == first.keys() == {f"{m}.{i}.{k}" for m in ("image", "text") for i in range(G)
                                            for k in ("sum", "count")}
    assert all(torch.allclose(whole[k], first[k] + second[k]) for k in whole)


def test_visual_on_text_only_data_is_a_clear_error():
    with pytest.raises(ValueError, match="'visual'.*'image'"):
        make("visual", modalities=("text",))


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"visual"}))
def test_other_variants_run_on_text_only_data(variant):
    model = make(variant, modalities=("text",))
    assert model.modalities == ("text",)
    loss, _ = model(batch(0), LOG_POP)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("expansions", [0, 1, 3])
def test_parameter_counts_equal_the_formulas(expansions):
    model = make("xsmoe")
    for _ in range(expansions):
        model.expand()
    n = expansions + 1
    for m, d in (("text", DT), ("image", DI)):
        counts = count_parameters(model.sides[m])
        assert counts["total"] == side_parameters(d, DP, G, n)
        assert counts["trainable"] == side_parameters(d, DP, G, n, trainable=True)
        # the formula is the paper's §4.5 plus the biases: experts (d'+d) each, router N+1
        assert side_parameters(d, DP, G, n) == paper_side_parameters(d, DP, G, n) + G * (n * (DP + d) + n + 1)
        assert side_parameters(d, DP, G, n, trainable=True) == \
            paper_side_parameters(d, DP, G, n, trainable=True) + G * (DP + d + n + 1)
    report = parameter_report(model)
    assert report["model"]["total_mb"] == report["model"]["total"] * 4 / 2 ** 20
    assert "| model |" in format_report(report)
    assert report["model"]["total"] == sum(r["total"] for k, r in report.items() if k != "model")


def test_score_all_is_user_embedding_times_item_table():
    model = make("static").eval()
    context, cands = batch(3)[:, :-1], torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        scores = model.score_all(context, cands)
        expected = model.user_embedding(context) @ model.item_embeddings(cands).T
    assert scores.shape == (8, N_ITEMS) and torch.allclose(scores, expected, atol=1e-5)


def test_kd_teacher_is_a_frozen_copy_outside_the_state_dict():
    model = make("iisan_kd")
    model.begin_window()
    teacher = model.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.features_text is None  # the cache is shared by passing it in, never copied
    assert not any("teacher" in k for k in model.state_dict())
    loss, stats = model(batch(0), LOG_POP)
    assert stats["kd"] >= 0 and model._ddp_params_and_buffers_to_ignore == ["features_image", "features_text"]


def sequential_reservoir(stream: np.ndarray, capacity: int, seed: int) -> np.ndarray:
    """Algorithm R, one row at a time (the draws match ReservoirBuffer's vectorised ones)."""
    rng, store = np.random.default_rng(seed), []
    for t, row in enumerate(stream, start=1):
        if len(store) < capacity:
            store.append(row)
        else:
            j = rng.integers(0, t)
            if j < capacity:
                store[j] = row
    return np.stack(store)


def test_reservoir_buffer_is_seeded_algorithm_r():
    stream = np.arange(1, 1 + 40 * 3).reshape(40, 3)
    buffer = ReservoirBuffer(7, seed=5)
    for chunk in np.array_split(stream, 6):
        buffer.add(torch.from_numpy(chunk))
    assert len(buffer) == 7 and buffer.seen == 40
    assert np.array_equal(buffer.data, sequential_reservoir(stream, 7, 5))


def test_reservoir_state_round_trips_and_mix_appends():
    buffer = ReservoirBuffer(5, seed=1)
    buffer.add(torch.arange(1, 25).view(8, 3))
    clone = ReservoirBuffer(1)
    clone.load_state_dict(buffer.state_dict())
    assert torch.equal(buffer.sample(3), clone.sample(3))
    mixed = buffer.mix(torch.ones(4, 3, dtype=torch.int64))
    assert mixed.shape == (6, 3) and torch.equal(mixed[:4], torch.ones(4, 3, dtype=torch.int64))


def test_ranks_replay_different_rows_and_keep_equal_generators():
    """iisan_rh under DDP: every rank holds the same reservoir; each replays its own share of one draw."""
    buffers = [ReservoirBuffer(40, seed=1) for _ in range(2)]
    for b in buffers:
        b.add(torch.arange(1, 601).view(100, 6))
    batch = torch.zeros(8, 6, dtype=torch.long)
    mixed = [b.mix(batch, rank=r, world=2)[8:] for r, b in enumerate(buffers)]
    rows = [{tuple(x.tolist()) for x in m} for m in mixed]
    assert len(mixed[0]) == len(mixed[1]) == 4 and not rows[0] & rows[1]  # disjoint shares
    assert buffers[0].rng.bit_generator.state == buffers[1].rng.bit_generator.state
    # One worker draws exactly what it drew before the change (world = 1 deals out everything).
    a, b = ReservoirBuffer(40, seed=1), ReservoirBuffer(40, seed=1)
    for buf in (a, b):
        buf.add(torch.arange(1, 601).view(100, 6))
    assert torch.equal(a.mix(batch)[8:], b.sample(4))


def test_user_embedding_from_known_item_rows_matches_the_item_tower():
    model = make("xsmoe").eval()
    context = batch(4)[:, :-1]
    with torch.no_grad():
        want = model.user_embedding(context)
        full = model.item_embeddings(torch.arange(model.n_item_rows))
        have = torch.ones(model.n_item_rows, dtype=torch.bool)
        assert torch.allclose(model.user_embedding(context, (full, have)), want, atol=1e-5)
        # rows not known (here every odd id) go through the item tower instead of the stale table
        have[1::2] = False
        stale = torch.where(have[:, None], full, torch.full_like(full, 1e6))
        assert torch.allclose(model.user_embedding(context, (stale, have)), want, atol=1e-5)


def test_new_expert_copy_share_flows_from_config_to_expansion_and_checkpoint():
    cfg = load_config("demo", ["model.new_expert_init=last", "model.new_expert_copy_share=0.9"])
    model = new_model(cfg, {m: FEATURES[m] for m in ("text",)})
    restored = model_from_structure(model.structure())  # a window-0 checkpoint, expanded on resume
    restored.load_state_dict(model.state_dict())
    assert restored.expert_start == model.expert_start == ExpertStart(init="last", copy_share=0.9)
    layer = model.sides["text"].layers[0]
    h = torch.randn(4, DT)
    share = layer.router(h)[:, 1].detach()
    for m in (model, restored):
        assert m.expand()
    for m in (model, restored):
        alpha = m.sides["text"].layers[0].router(h).detach()
        assert torch.allclose(alpha[:, 2], 0.9 * share, atol=1e-6)
        assert torch.allclose(alpha[:, 1], 0.1 * share, atol=1e-6)
    # the default halves, and leaves the structure a checkpoint records as it was before the key existed
    plain = new_model(load_config("demo", ["model.new_expert_init=last"]), {"text": FEATURES["text"]})
    assert "new_expert_copy_share" not in plain.structure()
    # a structure written before the expansion keys existed starts new experts as the paper does
    old = {k: v for k, v in plain.structure().items() if not k.startswith("new_expert_")}
    assert model_from_structure(old).expert_start == ExpertStart()


@pytest.mark.parametrize("overrides, message", [
    (["model.new_expert_copy_share=0.9"], "needs model.new_expert_init=last"),
    (["model.new_expert_init=last", "model.new_expert_copy_share=1.0"], "must be in"),
    (["model.new_expert_init=last", "model.new_expert_copy_share=0"], "must be in"),
])
def test_new_expert_copy_share_refusals_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=f"model.new_expert_copy_share {message}"):
        load_config("demo", overrides)
