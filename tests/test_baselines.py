"""Baselines that are not XSMoE variants (issue 19): shapes, causality, overfitting one batch,
checkpoint round trip and exact resume, the id rule for new items, the reservoir's uniformity,
GAG's session graphs and update sets, two DDP ranks staying identical, and runs on Ray Train; the
round trip covers XSMoE's own item-ID table too (model.item_ids, tests/test_item_ids.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from xsmoe_ray.model import GAG, LGMRec, MMMLP, SSRM, ReservoirBuffer, SASRecID, build_model, model_from_structure
from xsmoe_ray.model.baselines.session_graph import SessionGraph
from xsmoe_ray.model.loss import batch_candidates, fused_debiased_ce
from xsmoe_ray.model.replay import update_set
from xsmoe_ray.train.checkpoint import WindowState, load_state, save_state

N_ITEMS, N_USERS, L, D = 40, 12, 5, 16
ID_VARIANTS = SASRecID.VARIANTS + MMMLP.VARIANTS + GAG.VARIANTS + SSRM.VARIANTS + LGMRec.VARIANTS
LAST_POSITION_VARIANTS = ("mmmlp",) + GAG.VARIANTS + SSRM.VARIANTS + ("lgmrec",)
FEATURES = {"text": torch.randn(N_ITEMS + 1, 2, 3, generator=torch.Generator().manual_seed(3)),
            "image": torch.randn(N_ITEMS + 1, 2, 4, generator=torch.Generator().manual_seed(4))}
LOG_POP = torch.log(torch.full((N_ITEMS + 1,), 1.0 / N_ITEMS))


def make(variant: str, seed: int = 0, dropout: float = 0.0, **extra):
    """A tiny model of ``variant``; two modalities (LGMRec's contrastive term needs both); LGMRec gets
    the graph of the test batches' rows. ``extra``: more ``build_model`` arguments."""
    torch.manual_seed(seed)
    model = build_model(variant, text_dim=3, image_dim=4, n_groups=1, d_prime=2, embed_dim=D, max_len=L,
                        seq_blocks=1, seq_heads=2, dropout=dropout, modalities=("image", "text"), kd_weight=0.5,
                        n_item_rows=N_ITEMS + 1, n_user_rows=N_USERS + 1, **extra)
    model.set_item_features(FEATURES)
    model.set_window_rows(np.concatenate([rows_of(batch(0)), rows_of(batch(1))]))
    return model


def batch(seed: int = 0, B: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L + 1), generator=g)
    seq[: B // 2, :2] = 0
    return seq


def users_of(seq: torch.Tensor) -> torch.Tensor:
    """Row k belongs to user ``k % N_USERS``."""
    return torch.arange(len(seq)) % N_USERS


def rows_of(seq: torch.Tensor) -> np.ndarray:
    """Training rows ``[B, L+3]``: items, first loss position 1, user."""
    return torch.cat([seq, torch.ones(len(seq), 1, dtype=torch.long), users_of(seq)[:, None]], dim=1).numpy()


def steps(model, seq, n: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(n):
        loss, _ = model(seq, LOG_POP, None, users_of(seq))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("variant", ID_VARIANTS)
def test_shapes_and_flags(variant):
    model = make(variant)
    assert model.item_embeddings(torch.tensor([1, 2, 2, 7])).shape == (4, D)
    assert model.user_embedding(batch()[:, :-1], users=users_of(batch())).shape == (8, D)
    loss, stats = model(batch(), LOG_POP, None, users_of(batch()))
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


def test_mmmlp_mixes_the_whole_context():
    """Token mixing is not causal: an earlier position sees later ones, so no loss may sit there."""
    model = make("mmmlp").eval()
    seq = batch()
    later = seq.clone()
    later[:, -2] = (later[:, -2] % N_ITEMS) + 1  # the last context item
    a, b = model.user_states(seq[:, :-1]), model.user_states(later[:, :-1])
    assert not torch.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("variant", LAST_POSITION_VARIANTS)
def test_models_reading_the_whole_context_train_at_the_last_position_only(variant):
    """The user vector reads the context and never the target, and each row carries exactly one loss
    position, whatever ``first`` asks for: no prediction sees the item it predicts."""
    model = make(variant).eval()
    seq, users = batch(), users_of(batch())
    other = seq.clone()
    other[:, -1] = (other[:, -1] % N_ITEMS) + 1  # only the target changes
    assert torch.equal(model.user_embedding(seq[:, :-1], users=users), model.user_embedding(other[:, :-1], users=users))
    _, stats = model(seq, LOG_POP, torch.ones(len(seq), dtype=torch.long), users)  # asks for every position
    assert stats["targets"] == len(seq)
    if variant != "lgmrec":  # LGMRec is not sequential: the context does not reach its user vector
        changed = seq.clone()
        changed[:, -2] = (changed[:, -2] % N_ITEMS) + 1
        assert not torch.allclose(model.user_embedding(seq[:, :-1], users=users),
                                  model.user_embedding(changed[:, :-1], users=users))


@pytest.mark.parametrize("variant", ID_VARIANTS)
def test_one_batch_is_driven_to_near_zero_loss(variant):
    model = make(variant)  # window 0: no teacher yet, so the _kd variant's loss is its cross-entropy
    seq = torch.arange(1, 8 * (L + 1) + 1).reshape(8, L + 1) % N_ITEMS + 1  # distinct targets per row
    losses = steps(model, seq, 300, lr=3e-2)
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("variant,extra", [(v, {}) for v in ID_VARIANTS] + [("xsmoe", {"item_ids": True}),
                                                  ("xsmoe", {"item_ids": True, "item_id_dropout": 0.3})])
def test_checkpoint_round_trip_and_exact_resume(variant, extra, tmp_path):
    model = make(variant, dropout=0.1, **extra)
    steps(model, batch(0), 3)
    model.begin_window()
    save_state(tmp_path, WindowState(window=1, model=model), {"cfg": "test"})
    loaded = load_state(tmp_path).model
    loaded.set_item_features(FEATURES)
    assert type(loaded) is type(model) and loaded.structure() == model.structure()
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
    model.eval(), loaded.eval()
    assert torch.equal(model.user_embedding(batch(2)[:, :-1], users=users_of(batch(2))),
                       loaded.user_embedding(batch(2)[:, :-1], users=users_of(batch(2))))


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
    new_rows = model.item_table.weight.detach()[N_ITEMS + 1:]
    assert 0.01 < float(new_rows.std()) < 0.04  # drawn at the table's own scale (0.02)
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


def _variant_on_two_ranks(variant: str, rank: int, **extra) -> str:
    """Three DDP steps per window over two windows, each rank on its half of every batch (replay mixed
    in for _rh, a teacher for _kd, an expansion for xsmoe), then the parameter hash compared across
    ranks. Its own function so that the DDP wrappers, which hold the process group, are gone when it
    returns. ``extra``: more ``build_model`` arguments."""
    from xsmoe_ray.train.sync import check_same_across_ranks, parameter_hash

    model = make(variant, dropout=0.1, **extra)
    replay = ReservoirBuffer(16, seed=0) if model.replay else None
    try:
        for window in range(2):
            if window:
                model.begin_window()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
            for step in range(3):
                rows = batch(10 * window + step, B=16)[rank::2]
                if replay is not None and len(replay):
                    rows = replay.mix(rows, rank=rank, world=2)
                torch.manual_seed(100 * window + step + rank)  # each rank its own dropout, as in Ray Train
                loss, _ = ddp(rows, LOG_POP, None, users_of(rows))
                opt.zero_grad()
                loss.backward()
                opt.step()
            if replay is not None:
                replay.add(batch(10 * window, B=16))
        check_same_across_ranks(parameter_hash(model))
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported to the parent, per variant
        return f"{type(e).__name__}: {e}"


def _two_ranks(rank: int, port: int, out: str) -> None:
    """Every ID variant on two gloo ranks; the per-variant verdicts go to a file per rank."""
    import json

    from .test_sync import join_group, leave_group

    join_group(rank, 2, port)
    results = {variant: _variant_on_two_ranks(variant, rank) for variant in ID_VARIANTS}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(results, f)
    leave_group()


def test_two_ddp_ranks_stay_identical(tmp_path):
    import json

    import torch.multiprocessing as mp

    from .test_sync import free_port

    out = str(tmp_path / "rank")
    mp.spawn(_two_ranks, args=(free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads(open(f"{out}.{rank}").read()) == {v: "ok" for v in ID_VARIANTS}


@pytest.mark.parametrize("variant", ["gag", "lgmrec_rh"])  # update set and users; graph, replay, features
def test_runs_on_ray_train(variant, tmp_path, ray_session, capsys):
    """The whole job on Ray Train: windows, checkpoints, outputs, with no expert structure (the
    unit tests above cover each model; these two take the loop's model-specific hooks)."""
    from xsmoe_ray.stream import run

    from .test_stream import tiny

    cfg = tiny(tmp_path, variant, f"model.variant={variant}", "train.last_window=2")
    history = run(cfg)
    assert [r["window"] for r in history] == [0, 1, 2]
    assert all(r["experts"] == {} and 0.0 <= r["ndcg10"] <= 1.0 for r in history[1:])
    assert all(r["cold_share"] is not None and r["warm_ndcg10"] is not None for r in history[1:])
    # the kept checkpoint (LGMRec's graph, the user tables) re-evaluates to the recorded figure
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.recommender import Recommender
    from xsmoe_ray.train.data import window_data
    from xsmoe_ray.train.window import evaluate_cases

    rec = Recommender(cfg.run.out, window=2)
    cases = window_data(load_prepared(f"{cfg.run.out}/prepared").stream, 2, rec.model.n_item_rows - 1).test
    assert evaluate_cases(rec.model, cases, torch.device("cpu")).ndcg_mean == pytest.approx(history[2]["ndcg10"],
                                                                                             abs=1e-9)
    # the CLI says what the user vector is made of: the sequence, or (LGMRec) the user's own row
    import pyarrow.parquet as pq

    from xsmoe_ray.recommend import main as recommend_main

    user = str(pq.read_table(f"{cfg.run.out}/prepared/users.parquet").column("user_id")[0])
    capsys.readouterr()
    assert recommend_main(["--run", cfg.run.out, "--users", user, "-k", "3"]) == 0
    said = capsys.readouterr().out
    assert ("does not read the sequence" in said) == variant.startswith("lgmrec")
    assert ("encoded from" in said) == (not variant.startswith("lgmrec"))


def test_a_model_missing_part_of_the_interface_cannot_be_built():
    from xsmoe_ray.model import SequentialModel

    class NoItemTower(SequentialModel):  # no _embed, no structure, ...
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoItemTower()


def test_session_graph_counts_transitions_between_distinct_items():
    """Clicks 3 5 3 5 7 after two pads: nodes 3, 5, 7 at their first positions; 3→5 twice, 5→3
    once, 5→7 once; GAG's in-direction weight divides by the distinct edges into the target."""
    graph = SessionGraph.of(torch.tensor([[-1, -1, 3, 5, 3, 5, 7]]))
    assert graph.alias.tolist() == [[0, 1, 2, 3, 2, 3, 6]]
    assert graph.node.tolist() == [[False, False, True, True, False, False, True]]
    edges = {(u, v): float(graph.counts[0, u, v]) for u, v in graph.counts[0].nonzero().tolist()}
    assert edges == {(2, 3): 2.0, (3, 2): 1.0, (3, 6): 1.0}
    w = graph.normalised(incoming=True)[0]
    # node 3 (item 5): in-edges from 2 only, so the count stays 2; then a self-loop of 1; source 2's
    # weighted degree is 2 + 1, node 3's is 1 + 1 + 1
    assert float(w[2, 3]) == pytest.approx(2 / (3 ** 0.5 * 3 ** 0.5))
    assert float(w[6, 6]) == pytest.approx(1.0) and float(w[0].abs().sum()) == 0.0  # padding has no edges
    per_row = SessionGraph.of(torch.tensor([[1, 2, 3], [-1, 4, 4]]))
    assert per_row.counts[1, 1, 1] == 1.0 and per_row.node[1].tolist() == [False, True, False]


def test_ssrm_recurrence_starts_at_the_first_click():
    """A left-padded row's GRU states equal the GRU run on its clicks alone: padding never enters."""
    model = make("ssrm")
    q = torch.randn(2, L, D)
    real = torch.tensor([[False, False, True, True, True], [True] * L])
    out = model._gru_skipping_padding(q, real)
    alone, _ = model.gru(q[:1, 2:])
    assert torch.allclose(out[0, 2:], alone[0], atol=1e-6) and float(out[0, :2].detach().abs().sum()) == 0.0
    full, _ = model.gru(q[1:])
    assert torch.allclose(out[1], full[0], atol=1e-6)


def test_update_set_keeps_new_rows_and_prefers_uncertain_ones():
    """As many rows as the window's; every new row in it; the rest drawn ∝ exp(rank(d)/N) from
    reservoir ∪ the other rows, so rows the model is least sure of are drawn more often (over seeded
    draws: the top ten ranks' weights are ~2.1x the bottom ten's); deterministic per seed."""
    rows = np.arange(40).reshape(-1, 1) * np.ones((1, 4), np.int64)
    new = np.zeros(40, bool)
    new[:30] = True
    picks = {}
    for seed in range(300):
        reservoir = ReservoirBuffer(30, seed=seed)
        reservoir.add(torch.from_numpy(rows[:30] + 100))  # older rows, ids 100..129: the 30 highest d
        picked, from_reservoir = update_set(rows, new, reservoir, lambda pool: pool[:, 0])
        assert len(picked) == len(rows) and set(range(30)) <= set(picked[:, 0].tolist())
        assert from_reservoir == int((picked[:, 0] >= 100).sum())
        for i in picked[30:, 0]:
            picks[int(i)] = picks.get(int(i), 0) + 1
    bottom = sum(picks.get(i, 0) for i in range(30, 40))  # ranks 1..10 of the pool of 40
    top = sum(picks.get(i, 0) for i in range(120, 130))  # ranks 31..40
    assert top > 1.6 * bottom, (top, bottom)
    a, b = ReservoirBuffer(30, seed=1), ReservoirBuffer(30, seed=1)
    a.add(torch.from_numpy(rows + 100)), b.add(torch.from_numpy(rows + 100))
    assert np.array_equal(update_set(rows, new, a, lambda p: p[:, 0])[0], update_set(rows, new, b, lambda p: p[:, 0])[0])


def test_unseen_rows_are_those_with_a_new_user_or_item():
    from types import SimpleNamespace

    from xsmoe_ray.train.data import unseen_rows

    # chunk 0 trained user 0 on items 1, 2 (item 2 also as context); chunk 1's rows below
    stream = SimpleNamespace(train_targets=lambda c: np.array([0, 1]), item=np.array([1, 2]),
                             context=np.array([[0, 0], [0, 1]]), user=np.array([0, 0]))
    rows = np.array([[1, 2, 1, 1, 0],   # old user, old items
                     [1, 2, 3, 1, 0],   # a new target item
                     [0, 1, 2, 1, 1]])  # a new user
    assert unseen_rows(stream, rows, 1).tolist() == [False, True, True]
    assert unseen_rows(stream, rows, 0).tolist() == [True, True, True]  # nothing trained before


def test_lgmrec_graph_is_the_window_rows_and_travels_with_the_checkpoint(tmp_path):
    model = make("lgmrec")
    rows = rows_of(batch(3))
    model.set_window_rows(rows)
    pairs = {(int(u), int(i)) for u, i in model.edges.T.tolist()}
    want = {(int(r[-1]) + 1, int(i)) for r in rows for i in r[:-2] if i > 0}
    assert pairs == want
    replayed = rows_of(batch(4))
    model.set_window_rows(rows, replayed)  # _rh: the reservoir's rows join the graph
    assert {(int(u), int(i)) for u, i in model.edges.T.tolist()} == want | {
        (int(r[-1]) + 1, int(i)) for r in replayed for i in r[:-2] if i > 0}
    model.set_window_rows(rows)
    save_state(tmp_path, WindowState(window=0, model=model), {"cfg": "test"})
    loaded = load_state(tmp_path).model
    loaded.set_item_features(FEATURES)
    assert torch.equal(loaded.edges, model.edges)
    model.eval(), loaded.eval()
    assert torch.equal(model.item_embeddings(torch.arange(1, 9)), loaded.item_embeddings(torch.arange(1, 9)))


def test_user_models_refuse_unknown_users_and_grow_their_table():
    model = make("gag")
    with pytest.raises(ValueError, match="past this model"):
        model.user_embedding(batch()[:, :-1], users=torch.full((8,), N_USERS + 3))
    before = model.user_table.weight.detach().clone()
    model.set_user_count(N_USERS + 5)
    assert model.structure()["n_user_rows"] == N_USERS + 6
    assert torch.equal(model.user_table.weight[: N_USERS + 1], before)
    assert model.user_embedding(batch()[:, :-1], users=torch.full((8,), N_USERS + 3)).shape == (8, D)


def test_stream_help_lists_every_variant():
    from xsmoe_ray.config import VARIANTS
    from xsmoe_ray.model import ALL_VARIANTS
    from xsmoe_ray.stream import build_parser

    text = " ".join(build_parser().format_help().split())
    assert set(VARIANTS) == set(ALL_VARIANTS)  # the config accepts exactly the variants the registry builds
    assert all(v in text for v in VARIANTS) and "train.rows" in text


def test_a_model_without_its_own_criterion_rates_every_row_alike():
    """The interface default: equal informativeness, so an update set is a uniform draw."""
    rows = torch.from_numpy(rows_of(batch(0)))
    assert torch.equal(make("sasrec_id").informativeness(rows, torch.device("cpu")), torch.zeros(len(rows)))
    assert make("gag").informativeness(rows, torch.device("cpu")).shape == (len(rows),)


@pytest.mark.parametrize("variant", GAG.VARIANTS + SSRM.VARIANTS + LGMRec.VARIANTS)
def test_user_states_hold_the_user_vector_at_the_last_position(variant):
    model = make(variant).eval()
    seq, users = batch()[:, :-1], users_of(batch())
    with torch.no_grad():
        states = model.user_states(seq, users=users)
        assert torch.equal(states[:, -1], model.user_embedding(seq, users=users))
    assert states.shape == (8, L, D) and float(states[:, :-1].abs().sum()) == 0.0


def test_mmmlp_last_position_path_equals_the_full_mixer():
    """Training and ranking compute each mixer's final block at the last position only; that must be
    the full mixer's last position, and the loss must not depend on which path ran."""
    model = make("mmmlp").eval()
    seq = batch()
    full = model.user_states(seq[:, :-1])[:, -1]
    assert torch.allclose(model.user_embedding(seq[:, :-1]), full, atol=1e-5)
    states = model._towers(seq, model._item_inputs())[3]
    assert states.shape == (len(seq), L, D) and torch.allclose(states[:, -1], full, atol=1e-5)
    ids, index = batch_candidates(seq)
    first = torch.full((len(seq),), L, dtype=torch.long)
    reference, _ = fused_debiased_ce(model.user_states(seq[:, :-1]), model.item_embeddings(ids), index,
                                     LOG_POP[ids], first)
    assert torch.allclose(model(seq, LOG_POP)[0], reference, atol=1e-5)
