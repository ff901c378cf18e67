"""The streaming protocol (paper §3 and §5.1.3; DESIGN.md §4): chunks, k-core, splits, cases.

All interactions are sorted by time (stable), cut into ``chunks`` parts of equal row count
D_0..D_T, filtered per chunk by an iterative k-core on users and items, and split per chunk
into the first ``train_frac`` (by time) for training and the rest for validation.

Cases. A row's *context* is the user's previous ``<= max_len`` kept interactions in time order,
which may reach into earlier chunks (context only), left-padded with item 0. A row with no
earlier interaction of its user has no context and is never a target nor an eval case.

* train targets of chunk c: its train-split rows that have a context;
* val cases of chunk c: its val-split rows that have a context;
* test cases of chunk c: all its rows that have a context (the model trained on c-1 is tested on c);
* candidates for chunk c: every item seen (kept) in D_0..D_c; items new in D_c are cold-start
  and are scored from content.

Departure noted in the docs: the context is drawn from kept (post-k-core) interactions, so the
model sees exactly the stream it is trained and evaluated on.

Everything is vectorised numpy: no per-user Python loop, deterministic for a given input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xsmoe_ray.data.schema import Dataset

TRAIN, VAL = 0, 1


class StreamError(ValueError):
    """The protocol cannot be applied with these settings (e.g. a k-core empties a chunk)."""


@dataclass
class Stream:
    """Kept interactions in time order, each with its chunk, split and context.

    Shapes: ``user``, ``item``, ``ts``, ``chunk``, ``split``, ``has_history`` are [n];
    ``context`` is [n, L] int32 (0 = padding, most recent item last);
    ``item_first_chunk`` is [n_items + 1] int16 (-1 for items never kept).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    chunk: np.ndarray
    split: np.ndarray
    has_history: np.ndarray
    context: np.ndarray
    item_first_chunk: np.ndarray
    n_chunks: int
    stats: list[dict] = field(default_factory=list)

    @property
    def max_len(self) -> int:
        return self.context.shape[1]

    def rows(self, c: int) -> slice:
        """Rows of chunk ``c`` (rows are time ordered, so a chunk is one contiguous range)."""
        lo, hi = np.searchsorted(self.chunk, [c, c + 1])
        return slice(int(lo), int(hi))

    def train_targets(self, c: int) -> np.ndarray:
        """Row indices of chunk ``c``'s training targets."""
        return self._select(c, (self.split == TRAIN) & self.has_history)

    def val_cases(self, c: int) -> np.ndarray:
        return self._select(c, (self.split == VAL) & self.has_history)

    def test_cases(self, c: int) -> np.ndarray:
        return self._select(c, self.has_history)

    def candidates(self, c: int) -> np.ndarray:
        """Item codes seen in D_0..D_c, ascending."""
        first = self.item_first_chunk
        return np.flatnonzero((first >= 0) & (first <= c)).astype(np.int32)

    def _select(self, c: int, mask: np.ndarray) -> np.ndarray:
        r = self.rows(c)
        return (np.flatnonzero(mask[r]) + r.start).astype(np.int64)


def chunk_ids(n: int, chunks: int) -> np.ndarray:
    """Chunk index of each of ``n`` time-ordered rows; chunk sizes differ by at most one."""
    return ((np.arange(n, dtype=np.int64) * chunks) // max(n, 1)).astype(np.int16)


def kcore_mask(user: np.ndarray, item: np.ndarray, chunk: np.ndarray, k: int) -> np.ndarray:
    """Rows that survive an iterative k-core on users and items, run inside each chunk.

    All chunks are filtered at once by keying counts on (chunk, user) and (chunk, item).
    """
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    ukey = chunk.astype(np.int64) * n_users + user
    ikey = chunk.astype(np.int64) * n_items + item
    alive = np.arange(len(user), dtype=np.int64)
    while len(alive):
        u_count = np.bincount(ukey)
        i_count = np.bincount(ikey)
        ok = (u_count[ukey] >= k) & (i_count[ikey] >= k)
        if ok.all():
            break
        # Compact every round: later rounds touch only what is left.
        alive, ukey, ikey = alive[ok], ukey[ok], ikey[ok]
    mask = np.zeros(len(user), dtype=bool)
    mask[alive] = True
    return mask


def split_in_chunks(chunk: np.ndarray, n_chunks: int, train_frac: float) -> np.ndarray:
    """TRAIN for the first ``train_frac`` of each chunk's rows (by time), VAL for the rest."""
    sizes = np.bincount(chunk, minlength=n_chunks)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(chunk)) - starts[chunk]
    n_train = np.floor(sizes * train_frac).astype(np.int64)
    return np.where(rank < n_train[chunk], TRAIN, VAL).astype(np.int8)


def contexts(user: np.ndarray, item: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's previous ``<= max_len`` items of the same user, and whether it has any.

    Rows must be in time order. Returns ``context`` [n, max_len] int32, left-padded with 0 and
    most recent last, and ``has_history`` [n] bool.
    """
    n = len(user)
    order = np.argsort(user, kind="stable")  # groups users, keeps time order inside a user
    u_sorted = user[order]
    starts = np.flatnonzero(np.concatenate([[True], u_sorted[1:] != u_sorted[:-1]])) if n else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.concatenate([starts, [n]])))
    pos = np.arange(n) - group_start  # position of the row in its user's sequence
    items_sorted = item[order].astype(np.int32)
    context = np.zeros((n, max_len), dtype=np.int32)
    for j in range(max_len):
        back = max_len - j  # column j holds the item `back` steps before the row
        valid = pos >= back
        src = np.where(valid, np.arange(n) - back, 0)
        context[order, j] = np.where(valid, items_sorted[src], 0)
    has_history = np.empty(n, dtype=bool)
    has_history[order] = pos > 0
    return context, has_history


def first_chunk_of_items(item: np.ndarray, chunk: np.ndarray, n_items: int) -> np.ndarray:
    """[n_items + 1] int16: the first chunk each item appears in, -1 if never."""
    first = np.full(n_items + 1, -1, dtype=np.int16)
    # Rows are time ordered, so an item's first row lies in its first chunk.
    uniq, idx = np.unique(item, return_index=True)
    first[uniq] = chunk[idx]
    return first


def build_stream(ds: Dataset, chunks: int, k_core: int, train_frac: float, max_len: int) -> Stream:
    """Apply the protocol to a loaded dataset (see the module docstring)."""
    n = ds.interactions.num_rows
    if n < chunks:
        raise StreamError(f"{ds.name}: {n} interactions cannot fill {chunks} chunks")
    return stream_from_chunks(ds, chunk_ids(n, chunks), chunks, k_core, train_frac, max_len)


def stream_from_chunks(ds: Dataset, chunk: np.ndarray, chunks: int, k_core: int, train_frac: float,
                       max_len: int) -> Stream:
    """:func:`build_stream` with the chunk of every row given (``chunk`` [n], non-decreasing); a
    continued run keeps its old boundaries this way (xsmoe_ray/live.py)."""
    user, item, ts = ds.column("user"), ds.column("item"), ds.column("ts")
    keep = kcore_mask(user, item, chunk, k_core)
    before = np.bincount(chunk, minlength=chunks)
    after = np.bincount(chunk[keep], minlength=chunks)
    empty = np.flatnonzero(after == 0)
    if len(empty):
        c = int(empty[0])
        raise StreamError(
            f"{ds.name}: chunk {c} is empty after per-chunk {k_core}-core filtering "
            f"({before[c]:,} interactions before); use a smaller data.k_core or fewer data.chunks"
        )
    user, item, ts, chunk = user[keep], item[keep], ts[keep], chunk[keep]
    split = split_in_chunks(chunk, chunks, train_frac)
    context, has_history = contexts(user, item, max_len)
    stream = Stream(
        user=user.astype(np.int32), item=item.astype(np.int32), ts=ts.astype(np.int64), chunk=chunk,
        split=split, has_history=has_history, context=context,
        item_first_chunk=first_chunk_of_items(item, chunk, ds.n_items), n_chunks=chunks,
    )
    stream.stats = chunk_stats(stream, before)
    return stream


def chunk_stats(stream: Stream, before: np.ndarray) -> list[dict]:
    """Per-chunk counts, like the paper's dataset paragraph, for the summary JSON."""
    stats = []
    for c in range(stream.n_chunks):
        r = stream.rows(c)
        users, items = np.unique(stream.user[r]), np.unique(stream.item[r])
        stats.append({
            "chunk": c,
            "interactions_before_kcore": int(before[c]),
            "interactions": int(r.stop - r.start),
            "users": int(len(users)),
            "items": int(len(items)),
            "new_items": int((stream.item_first_chunk[items] == c).sum()),
            "train": int((stream.split[r] == TRAIN).sum()),
            "val": int((stream.split[r] == VAL).sum()),
            "train_targets": int(len(stream.train_targets(c))),
            "val_cases": int(len(stream.val_cases(c))),
            "test_cases": int(len(stream.test_cases(c))),
            "candidates": int(len(stream.candidates(c))),
            "ts_min": int(stream.ts[r.start]),
            "ts_max": int(stream.ts[r.stop - 1]),
        })
    return stats
