"""Full-ranking metrics against a plain reference, ties, masking, additivity."""

import math

import pytest
import torch

from xsmoe_ray.evaluate import RankingSums, evaluate


def reference(scores, targets_col, k):
    hits = ndcg = 0.0
    for row, t in zip(scores.tolist(), targets_col.tolist()):
        rank = sum(1 for j, s in enumerate(row) if s >= row[t] and j != t)
        if rank < k:
            hits += 1
            ndcg += 1 / math.log2(rank + 2)
    return hits / len(scores), ndcg / len(scores)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_matches_reference(batch_size):
    g = torch.Generator().manual_seed(0)
    candidates = torch.tensor([1, 3, 4, 8, 9, 12, 15, 20, 21, 30, 31, 40, 41])
    n = 50
    table = torch.randn(n, len(candidates), generator=g)
    contexts = torch.arange(n)[:, None].expand(n, 3).clone()  # row id carried in the context
    tcol = torch.randint(0, len(candidates), (n,), generator=g)
    sums = evaluate(lambda ctx, out: table[ctx[:, 0]], contexts, candidates[tcol], candidates, k=5, batch_size=batch_size)
    hr, ndcg = reference(table, tcol, 5)
    assert sums.count == n and sums.hr == pytest.approx(hr) and sums.ndcg_mean == pytest.approx(ndcg)


def test_scores_written_into_one_reused_buffer():
    g = torch.Generator().manual_seed(1)
    candidates = torch.arange(1, 31)
    users, table = torch.randn(23, 4, generator=g), torch.randn(30, 4, generator=g)
    targets = torch.randint(1, 31, (23,), generator=g)
    seen = []

    def into(ctx, out):
        seen.append((out.data_ptr(), tuple(out.shape)))
        return torch.mm(users[ctx[:, 0]], table.T, out=out)

    ctx = torch.arange(23)[:, None]
    sums = evaluate(into, ctx, targets, candidates, k=5, batch_size=10)
    hr, ndcg = reference(users @ table.T, targets - 1, 5)
    assert sums.hr == pytest.approx(hr) and sums.ndcg_mean == pytest.approx(ndcg)
    assert {p for p, _ in seen} == {seen[0][0]}  # one buffer for every batch
    assert [s for _, s in seen] == [(10, 30), (10, 30), (3, 30)]


def test_in_place_ranks_keep_pessimistic_ties():
    from xsmoe_ray.evaluate import ranks_in_place, ranks_of_targets

    scores = torch.tensor([[1.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0], [0.0, 1.0, float("-inf"), 2.0]])
    tcol = torch.tensor([1, 0, 2])
    want = ranks_of_targets(scores, tcol)
    assert ranks_in_place(scores.clone(), tcol).tolist() == want.tolist() == [1, 3, 3]


def test_nan_scores_are_pessimistic_not_a_hit():
    """A NaN target once ranked -1: a hit with an infinite NDCG gain. A NaN candidate now outranks
    the target, and a NaN target ranks last, in both rank functions."""
    from xsmoe_ray.evaluate import ranks_in_place, ranks_of_targets

    nan = float("nan")
    scores = torch.tensor([[nan, nan, nan, nan], [2.0, nan, 1.0, 0.0], [nan, 1.0, 0.0, 3.0]])
    tcol = torch.tensor([2, 0, 1])
    want = ranks_of_targets(scores, tcol)
    assert ranks_in_place(scores.clone(), tcol).tolist() == want.tolist() == [3, 1, 2]
    candidates = torch.arange(1, 5)
    sums = evaluate(lambda c, out: scores[c[:, 0]], torch.arange(3)[:, None], candidates[tcol], candidates, k=1)
    assert (sums.hits, sums.ndcg, sums.count) == (0.0, 0.0, 3)


def test_constant_scores_get_no_credit():
    candidates = torch.arange(1, 21)
    ctx = torch.zeros(4, 2, dtype=torch.long)
    sums = evaluate(lambda c, out: torch.zeros(len(c), 20), ctx, torch.tensor([1, 2, 3, 4]), candidates, k=10)
    assert sums.hits == 0.0


def test_mask_history_removes_seen_items_but_not_the_target():
    candidates = torch.arange(1, 6)
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    ctx = torch.tensor([[1, 2]])  # the two best-scored items were seen
    fn = lambda c, out: scores
    assert evaluate(fn, ctx, torch.tensor([3]), candidates, k=1).hits == 0
    assert evaluate(fn, ctx, torch.tensor([3]), candidates, k=1, mask_history=True).hits == 1
    assert evaluate(fn, ctx, torch.tensor([1]), candidates, k=1, mask_history=True).hits == 1


def test_target_outside_candidates_is_an_error():
    with pytest.raises(ValueError, match="among the candidates"):
        evaluate(lambda c, out: torch.zeros(1, 3), torch.zeros(1, 2, dtype=torch.long), torch.tensor([7]),
                 torch.tensor([1, 2, 3]))


def test_sums_merge_by_addition():
    a, b = RankingSums(1, 0.5, 4), RankingSums(2, 1.0, 6)
    c = RankingSums.from_tensor(a.as_tensor() + b.as_tensor())
    assert (c.hits, c.ndcg, c.count) == (3, 1.5, 10) and c.hr == 0.3


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_warm_sums_are_the_sums_over_warm_targets_alone(batch_size):
    g = torch.Generator().manual_seed(1)
    candidates = torch.arange(1, 31)
    n = 40
    table = torch.randn(n, len(candidates), generator=g)
    contexts = torch.arange(n)[:, None].expand(n, 2).clone()
    targets = candidates[torch.randint(0, len(candidates), (n,), generator=g)]
    cold = torch.rand(n, generator=g) < 0.3
    score = lambda ctx, out: table[ctx[:, 0]]  # noqa: E731
    sums = evaluate(score, contexts, targets, candidates, k=5, batch_size=batch_size, cold=cold)
    warm = evaluate(score, contexts[~cold], targets[~cold], candidates, k=5, batch_size=batch_size)
    plain = evaluate(score, contexts, targets, candidates, k=5, batch_size=batch_size)
    assert (sums.hits, sums.count) == (plain.hits, plain.count) and sums.ndcg == pytest.approx(plain.ndcg)
    assert (sums.warm.hits, sums.warm.count) == (warm.hits, warm.count)
    assert sums.warm.ndcg == pytest.approx(warm.ndcg)
    assert sums.cold_share == pytest.approx(float(cold.float().mean()))
    assert plain.warm is None and plain.cold_share is None


def test_warm_sums_survive_the_all_reduce_round_trip():
    a = RankingSums(1, 0.5, 4, RankingSums(1, 0.5, 3))
    b = RankingSums(2, 1.0, 6, RankingSums(0, 0.0, 2))
    c = RankingSums.from_tensor(a.as_tensor() + b.as_tensor())
    assert (c.warm.hits, c.warm.count) == (1, 5) and c.cold_share == pytest.approx(0.5)
    d = a + b
    assert (d.warm.hits, d.warm.count, d.count) == (1, 5, 10)


def test_users_reach_the_score_function_batch_by_batch():
    candidates = torch.arange(1, 6)
    contexts = torch.arange(7)[:, None].expand(7, 2).clone()
    targets = torch.tensor([1, 2, 3, 4, 5, 1, 2])
    users = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    seen = []

    def score(ctx, out, users=None):
        seen.append(users.tolist())
        return torch.zeros(len(ctx), len(candidates))

    evaluate(score, contexts, targets, candidates, k=2, batch_size=3, users=users)
    assert seen == [[10, 11, 12], [13, 14, 15], [16]]
