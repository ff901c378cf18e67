"""One window's training rows, evaluation cases and batches, from a prepared stream.

Training rows (DESIGN.md §5, SASRec's way): window ``c`` trains on the targets of D_c's train split,
each exactly once per epoch. A user's targets in D_c (consecutive in their history) are cut into
pieces of at most L targets, counted from the latest, and each piece is one row of ``L+1`` items
ending in its last target; the items in front of the piece's first target are context only (they
come from earlier chunks, or are an earlier piece's targets). So contexts reach into earlier chunks
but no position whose target lies outside D_c^train carries loss (that would be silent replay), and
a window costs about 1/L of the old one-row-per-target layout, where every target was predicted
in up to L overlapping rows. The earliest piece is the short one, so it gets the most context.

Pure functions over numpy arrays. Batches are sharded across ranks so that every rank runs the
same number of steps (DDP needs that): the epoch's permutation is padded by wrapping around
before it is dealt out ``perm[rank::world]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xsmoe_ray.streaming import Stream


@dataclass
class Cases:
    """Evaluation cases: contexts [N, L], targets [N], candidates [C] (ascending item ids)."""

    contexts: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray

    def shard(self, rank: int, world: int) -> "Cases":
        # contiguous copies: torch.searchsorted and the batch slices would copy strided views per call
        return Cases(np.ascontiguousarray(self.contexts[rank::world]), np.ascontiguousarray(self.targets[rank::world]),
                     self.candidates)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class WindowData:
    """What one window trains on (chunk ``c``) and is tested on (chunk ``c + 1``, if any).

    ``train_rows`` [N, L+2] int64: columns ``0..L`` one row's items, left padded with 0, and column
    ``L+1`` the first position (1..L) that carries loss (see the module docstring; the model's
    ``forward(seq, log_pop, first)`` takes the two parts, :func:`split_rows`). ``n_targets`` is the
    number of loss positions, D_c^train's targets. ``log_pop`` [n_items+1] is the log popularity
    used to debias the in-batch loss (Eq. 8), from this window's training targets.
    """

    chunk: int
    train_rows: np.ndarray
    n_targets: int
    log_pop: np.ndarray
    val: Cases
    test: Cases | None


def window_data(stream: Stream, c: int, n_items: int) -> WindowData:
    targets = stream.train_targets(c)
    rows = training_rows(stream, targets)
    val = eval_cases(stream, stream.val_cases(c), stream.candidates(c))
    test = None
    if c + 1 < stream.n_chunks:
        test = eval_cases(stream, stream.test_cases(c + 1), stream.candidates(c + 1))
    return WindowData(c, rows, len(targets), log_popularity(stream.item[targets], n_items), val, test)


def training_rows(stream: Stream, targets: np.ndarray) -> np.ndarray:
    """Rows ``[N, L+2]`` covering each of ``targets`` (time-ordered row indices) exactly once.

    Per user, targets are numbered from the latest back (``back`` = 0, 1, ...); a piece ends at every
    ``back % L == 0`` and holds ``min(L, n_u - back)`` targets, so the row ending there is that
    target's context (its previous ``L`` items) plus the target, with loss from position
    ``L + 1 - k``. Relies on a user's targets being consecutive in their history (a chunk's train
    split precedes its val split in time; only a user's first-ever row has no context).
    """
    L = stream.max_len
    user = stream.user[targets]
    order = np.argsort(user, kind="stable")  # by user, time order kept inside a user
    u = user[order]
    new_user = np.concatenate([[True], u[1:] != u[:-1]]) if len(u) else np.zeros(0, bool)
    starts = np.flatnonzero(new_user)
    sizes = np.diff(np.concatenate([starts, [len(u)]]))
    back = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(u))  # 0 for a user's latest target
    piece_end = back % L == 0  # a piece ends at its latest target
    k = np.minimum(L, np.repeat(sizes, sizes)[piece_end] - back[piece_end])  # targets in each piece
    end_rows = targets[order[piece_end]]
    rows = np.empty((len(end_rows), L + 2), dtype=np.int64)
    rows[:, :L] = stream.context[end_rows]
    rows[:, L] = stream.item[end_rows]
    rows[:, L + 1] = L + 1 - k
    order_in_time = np.argsort(end_rows, kind="stable")  # deterministic, time-ordered rows
    return rows[order_in_time]


def split_rows(rows):
    """``[B, L+2]`` training rows → items ``[B, L+1]`` and first loss position ``[B]`` (numpy or torch)."""
    return rows[:, :-1], rows[:, -1]


def chunk_counts(stream: Stream, c: int, n_items: int) -> np.ndarray:
    """Interactions per item in chunk ``c`` (all splits): the popularity reference's scores."""
    return np.bincount(stream.item[stream.rows(c)], minlength=n_items + 1).astype(np.float32)


def eval_cases(stream: Stream, rows: np.ndarray, candidates: np.ndarray) -> Cases:
    return Cases(stream.context[rows].astype(np.int64), stream.item[rows].astype(np.int64), candidates.astype(np.int64))


def log_popularity(items: np.ndarray, n_items: int) -> np.ndarray:
    """log p_i with add-one smoothing, p_i = item i's share of ``items``.

    Called with the window's training targets (each D_c^train interaction once): "popularity" is
    the item's share of the window's training interactions, as IISAN counts it over its training
    interactions. Context items from earlier chunks are not this window's data, and counting a
    target once per row it appears in would weight items by their users' activity.
    """
    items = np.asarray(items).ravel()
    counts = np.bincount(items[items > 0], minlength=n_items + 1).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """This rank's share of every global batch of one epoch.

    ``batch_size`` is the global batch: step k's rows over all ranks are exactly the one-worker run's
    batch k, so N workers take the same optimizer steps over the same rows as one (only each rank's
    in-batch negatives differ). Every rank gets the same number of steps and at least one row per
    step (a last batch smaller than ``world`` borrows rows from the epoch's start).
    """
    if n == 0:
        return []
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    shares = []
    for lo in range(0, n, batch_size):
        rows = perm[lo: lo + batch_size]
        if len(rows) < world:
            rows = np.concatenate([rows, np.resize(perm, world - len(rows))])
        shares.append(rows[rank::world])
    return shares
