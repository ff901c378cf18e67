"""Window data: sequences, cases, popularity, rank-sharded batches."""

import numpy as np
import pytest

from tests.test_streaming import make_dataset
from xsmoe_ray.streaming import build_stream
from xsmoe_ray.train.data import (batch_occurrences, epoch_batches, log_popularity, split_rows, training_rows,
                                  window_data)


def loss_positions(stream, rows):
    """(user, item, position-in-user-history) of every loss position of the rows, from the rows alone."""
    L = stream.max_len
    seq, first, _ = split_rows(rows)
    out = []
    for r, f in zip(seq, first):
        for t in range(int(f), L + 1):
            out.append(int(r[t]))
    return out


def test_rows_cover_each_train_target_once_with_loss_only_on_this_chunk():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    for c in range(5):
        targets = s.train_targets(c)
        rows = training_rows(s, targets, "once")
        seq, first, _ = split_rows(rows)
        assert rows.shape[1] == s.max_len + 3 and ((first >= 1) & (first <= s.max_len)).all()
        # Every loss position's (input, target) pair is a D_c^train target with its previous item, once:
        # the multiset of targets equals the targets' items, and the count equals the number of targets.
        assert sorted(loss_positions(s, rows)) == sorted(s.item[targets].tolist())
        # ... and each (input, target) pair is a target's (previous item, item): no target without an input.
        pairs = sorted((int(r[t - 1]), int(r[t])) for r, f in zip(seq, first) for t in range(int(f), s.max_len + 1))
        assert sorted((int(s.context[r, -1]), int(s.item[r])) for r in targets) == pairs
        assert all(p != 0 for p, _ in pairs)
        # Context reaching into earlier chunks: some row of a later window has context before its loss span.
        if c >= 1:
            assert (first > 1).any()


def test_rows_context_is_the_targets_history_and_pieces_hold_at_most_L_targets():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=3)
    targets = s.train_targets(2)
    rows = training_rows(s, targets, "once")
    seq, first, _ = split_rows(rows)
    # Each row is a real stretch of one user's history: it equals some target's context + that target.
    ends = {(tuple(s.context[r]), int(s.item[r])) for r in targets}
    assert all((tuple(r[:-1]), int(r[-1])) in ends for r in seq)
    assert (s.max_len + 1 - first <= s.max_len).all()
    # One row per piece: a user with n targets gets ceil(n / L) rows.
    per_user = np.bincount(s.user[targets])
    assert len(rows) == int(np.ceil(per_user[per_user > 0] / s.max_len).sum())


def test_sliding_rows_end_at_every_target_and_train_each_in_up_to_L_contexts():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=3)
    L = s.max_len
    for c in range(5):
        targets = s.train_targets(c)
        rows = training_rows(s, targets, "sliding")
        seq, first, _ = split_rows(rows)
        # one row per target, each its target's context + the target, in time order
        assert len(rows) == len(targets)
        assert np.array_equal(seq[:, -1], s.item[targets]) and np.array_equal(seq[:, :-1], s.context[targets])
        # every loss position is a D_c^train target, each target trained in min(L, later targets of its user + 1)
        # rows: the j-th (from 0) of a user's n targets is in the rows of targets j..min(j+L, n)-1
        counts = {}
        for r, (row, f) in enumerate(zip(seq, first)):
            t = targets[r]
            for pos in range(int(f), L + 1):
                # position pos of the row ending at target t is the target L - pos steps earlier in t's history
                key = (int(s.user[t]), int(np.flatnonzero(s.user[targets] == s.user[t]).tolist().index(r)) - (L - pos))
                assert key[1] >= 0  # never before the user's first target in D_c: no replay
                counts[key] = counts.get(key, 0) + 1
        per_user = {}
        for t in targets:
            per_user.setdefault(int(s.user[t]), 0)
            per_user[int(s.user[t])] += 1
        for (u, j), n in counts.items():
            assert n == min(L, per_user[u] - j)
        assert len(counts) == len(targets)  # every target carries loss somewhere


def test_legacy_rows_train_every_position_and_once_is_the_fewest_rows():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=3)
    targets = s.train_targets(3)
    legacy, sliding, once = (training_rows(s, targets, k) for k in ("legacy", "sliding", "once"))
    assert (split_rows(legacy)[1] == 1).all() and np.array_equal(split_rows(legacy)[0], split_rows(sliding)[0])
    assert (split_rows(sliding)[1] >= split_rows(legacy)[1]).all() and (split_rows(sliding)[1] > 1).any()
    assert len(once) < len(sliding) == len(targets)
    with pytest.raises(ValueError, match="train.rows"):
        training_rows(s, targets, "all")


def test_window_rows_popularity_and_cases_use_next_chunk():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    w = window_data(s, 1, n_items=40)
    targets = s.train_targets(1)
    assert w.n_targets == len(targets)
    assert np.allclose(w.log_pop, log_popularity(s.item[targets], 40))
    assert len(w.test) == len(s.test_cases(2)) and np.array_equal(w.test.candidates, s.candidates(2))
    assert np.isin(w.test.targets, w.test.candidates).all() and np.isin(w.val.targets, w.val.candidates).all()
    assert window_data(s, 4, n_items=40).test is None


def test_log_popularity_counts_each_target_once():
    lp = log_popularity(np.array([1, 2, 1, 1, 3, 2]), n_items=4)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert lp[1] > lp[2] > lp[3] > lp[4]
    assert np.isclose(lp[1] - lp[4], np.log(4.0))  # add-one smoothing: 3+1 against 0+1


def test_ranks_split_each_global_batch_and_get_equal_step_counts():
    for n, world, bs in [(10, 1, 3), (11, 2, 4), (12, 2, 4), (7, 3, 2), (1, 2, 5)]:
        shards = [epoch_batches(n, bs, seed=0, epoch=1, rank=r, world=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
        seen = np.concatenate([np.concatenate(s) for s in shards])
        assert set(seen) == set(range(n))
        assert all(len(b) >= 1 for s in shards for b in s)
        if bs >= world and n % bs in (0, *range(world, bs)):  # no batch short of one row per rank:
            # the ranks' shares of step k make up exactly the one-worker batch k
            single = epoch_batches(n, bs, seed=0, epoch=1)
            for k, batch in enumerate(single):
                assert sorted(np.concatenate([s[k] for s in shards])) == sorted(batch)
    a = epoch_batches(20, 4, seed=0, epoch=1)
    b = epoch_batches(20, 4, seed=0, epoch=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(a, epoch_batches(20, 4, seed=0, epoch=1)))


def test_batch_occurrences_count_the_batches_each_item_is_in_once_per_batch():
    # rows are [L+1 items | first | user]; padding 0 never counts, a repeat within a batch counts once
    rows = np.array([[0, 3, 5, 1, 7], [3, 3, 4, 1, 8], [0, 0, 5, 2, 9], [6, 4, 5, 1, 7]])
    batches = [np.array([0, 1]), np.array([2]), np.array([3, 0])]
    for group in (1, 2, 256):  # counted a few batches at a time, or all at once: the same counts
        ids, counts = batch_occurrences(rows, batches, group=group)
        assert ids.tolist() == [3, 4, 5, 6]
        assert counts.tolist() == [2, 2, 3, 1]  # 3: batches 0 and 2; 4: 0, 2; 5: 0, 1, 2; 6: 2
    empty_ids, empty_counts = batch_occurrences(rows, [])
    assert len(empty_ids) == 0 and len(empty_counts) == 0


def test_test_cases_mark_targets_first_seen_in_the_test_chunk_as_cold():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    for c in range(1, 4):
        data = window_data(s, c, int(s.item.max()))
        first = s.item_first_chunk[data.test.targets]
        assert np.array_equal(data.test.cold, first == c + 1)
        assert (first <= c + 1).all() and data.val.cold is None
        shard = data.test.shard(1, 2)
        assert np.array_equal(shard.cold, data.test.cold[1::2])


def test_every_row_and_case_carries_its_user():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    data = window_data(s, 2, int(s.item.max()))
    for layout in ("sliding", "once", "legacy"):
        targets = s.train_targets(2)
        rows = training_rows(s, targets, layout)
        seq, _, users = split_rows(rows)
        by_target = {(int(s.user[t]), int(s.item[t])) for t in targets}
        assert all((int(u), int(i)) in by_target for u, i in zip(users, seq[:, -1]))  # the target's own user
    assert np.array_equal(data.test.users, s.user[s.test_cases(3)])
    assert np.array_equal(data.val.users, s.user[s.val_cases(2)])
    assert np.array_equal(data.test.shard(0, 2).users, data.test.users[0::2])
