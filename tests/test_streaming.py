"""The streaming protocol checked against plain-Python reference implementations on small data."""

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from xsmoe_ray.data.schema import ITEMS_SCHEMA, Dataset, LoadReport, finish
from xsmoe_ray.streaming import TRAIN, VAL, StreamError, build_stream, chunk_ids, contexts, kcore_mask


def make_dataset(n=3000, n_users=60, n_items=40, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n).astype(np.int32)
    item = (rng.zipf(1.5, n) % n_items + 1).astype(np.int32)
    ts = np.sort(rng.integers(0, 50, n)).astype(np.int64)  # many ties, like H&M's days
    items = pa.table({
        "item": pa.array(np.arange(1, n_items + 1), pa.int32()),
        "item_id": [f"i{k}" for k in range(1, n_items + 1)],
        "text": [f"text {k}" for k in range(1, n_items + 1)],
        "image": pa.array([None] * n_items, pa.string()),
    }, schema=ITEMS_SCHEMA)
    return finish("toy", user, item, ts, items, pa.array([f"u{u}" for u in range(n_users)]),
                  LoadReport("toy"), dedup=False)


def reference_kcore(user, item, chunk, k):
    keep = np.ones(len(user), bool)
    for c in np.unique(chunk):
        rows = np.flatnonzero(chunk == c)
        alive = set(rows.tolist())
        while True:
            uc, ic = defaultdict(int), defaultdict(int)
            for r in alive:
                uc[user[r]] += 1
                ic[item[r]] += 1
            bad = {r for r in alive if uc[user[r]] < k or ic[item[r]] < k}
            if not bad:
                break
            alive -= bad
        keep[rows] = False
        keep[list(alive)] = True
    return keep


def reference_contexts(user, item, L):
    seen = defaultdict(list)
    ctx, hist = np.zeros((len(user), L), np.int32), np.zeros(len(user), bool)
    for r in range(len(user)):
        prev = seen[user[r]][-L:]
        if prev:
            ctx[r, L - len(prev):] = prev
            hist[r] = True
        seen[user[r]].append(item[r])
    return ctx, hist


def test_chunks_have_equal_row_counts():
    for n, c in [(100, 10), (1003, 10), (17, 3)]:
        sizes = np.bincount(chunk_ids(n, c))
        assert len(sizes) == c and sizes.sum() == n and sizes.max() - sizes.min() <= 1
        assert np.all(np.diff(chunk_ids(n, c)) >= 0)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kcore_matches_reference(k):
    ds = make_dataset()
    user, item = ds.column("user"), ds.column("item")
    chunk = chunk_ids(len(user), 5)
    got = kcore_mask(user, item, chunk, k)
    assert np.array_equal(got, reference_kcore(user, item, chunk, k))
    for c in range(5):  # the result really is a k-core in every chunk
        m = got & (chunk == c)
        if m.any():
            assert np.bincount(user[m]).max() >= k
            assert np.bincount(user[m])[np.unique(user[m])].min() >= k
            assert np.bincount(item[m])[np.unique(item[m])].min() >= k


@pytest.mark.parametrize("L", [1, 3, 10])
def test_contexts_match_reference(L):
    ds = make_dataset(n=800)
    user, item = ds.column("user"), ds.column("item")
    ctx, hist = contexts(user, item, L)
    ref_ctx, ref_hist = reference_contexts(user, item, L)
    assert np.array_equal(ctx, ref_ctx) and np.array_equal(hist, ref_hist)


def test_build_stream_protocol():
    ds = make_dataset()
    s = build_stream(ds, chunks=5, k_core=2, train_frac=0.85, max_len=4)
    assert np.all(np.diff(s.ts) >= 0) and np.all(np.diff(s.chunk) >= 0)
    for c in range(5):
        r = s.rows(c)
        split = s.split[r]
        n_train = int(np.floor((r.stop - r.start) * 0.85))
        assert np.all(split[:n_train] == TRAIN) and np.all(split[n_train:] == VAL)
        # targets: train rows with a history; tests: every row with a history
        tr, va, te = s.train_targets(c), s.val_cases(c), s.test_cases(c)
        assert np.all(s.split[tr] == TRAIN) and np.all(s.split[va] == VAL)
        assert set(tr) | set(va) == set(te) and np.all(s.has_history[te])
        assert len(te) == int(s.has_history[r].sum())
        # candidates: every item kept in chunks 0..c, and the test items are among them
        seen = np.unique(s.item[: r.stop])
        assert np.array_equal(s.candidates(c), seen)
    # the context reaches across chunks: some chunk-1 row has items from chunk 0 in its context
    r1 = s.rows(1)
    first_rows_of_users = {}
    for row in range(r1.start, r1.stop):
        first_rows_of_users.setdefault(s.user[row], row)
    assert any(s.has_history[row] for row in first_rows_of_users.values())


def test_every_train_interaction_is_a_target_once_except_first_ever():
    ds = make_dataset()
    s = build_stream(ds, chunks=4, k_core=1, train_frac=0.85, max_len=3)
    targets = np.concatenate([s.train_targets(c) for c in range(4)])
    assert len(np.unique(targets)) == len(targets)
    first_ever = np.unique(s.user, return_index=True)[1]
    expected = np.setdiff1d(np.flatnonzero(s.split == TRAIN), first_ever)
    assert np.array_equal(np.sort(targets), expected)


def test_kcore_that_empties_a_chunk_is_a_clear_error():
    ds = make_dataset(n=300)
    with pytest.raises(StreamError, match="smaller data.k_core"):
        build_stream(ds, chunks=10, k_core=50, train_frac=0.85, max_len=3)


def test_stream_is_deterministic():
    a = build_stream(make_dataset(seed=3), 5, 2, 0.85, 5)
    b = build_stream(make_dataset(seed=3), 5, 2, 0.85, 5)
    assert np.array_equal(a.context, b.context) and np.array_equal(a.user, b.user)
