"""Window data: sequences, cases, popularity, rank-sharded batches."""

import numpy as np

from tests.test_streaming import make_dataset
from xsmoe_ray.streaming import build_stream
from xsmoe_ray.train.data import epoch_batches, log_popularity, window_data


def test_window_sequences_end_in_the_target_and_cases_use_next_chunk():
    s = build_stream(make_dataset(), chunks=5, k_core=2, train_frac=0.85, max_len=4)
    w = window_data(s, 1, n_items=40)
    rows = s.train_targets(1)
    assert w.train_seq.shape == (len(rows), 5)
    assert np.array_equal(w.train_seq[:, -1], s.item[rows]) and np.array_equal(w.train_seq[:, :-1], s.context[rows])
    assert len(w.test) == len(s.test_cases(2)) and np.array_equal(w.test.candidates, s.candidates(2))
    assert np.isin(w.test.targets, w.test.candidates).all() and np.isin(w.val.targets, w.val.candidates).all()
    assert window_data(s, 4, n_items=40).test is None


def test_log_popularity_orders_items_by_count():
    seq = np.array([[0, 1, 2], [1, 1, 3]])
    lp = log_popularity(seq, n_items=4)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert lp[1] > lp[2] == lp[3] > lp[4]


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
