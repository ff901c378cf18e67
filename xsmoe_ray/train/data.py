"""One window's training rows, evaluation cases and batches, from a prepared stream.

Training rows (DESIGN.md §5): window ``c`` trains on the targets of D_c's train split. A row is
``L+1`` items of one user's history ending in a target, plus the first position that carries loss.
Contexts reach into earlier chunks, but in the two study layouts no position whose target lies
outside D_c^train carries loss (that would be silent replay, which only ``iisan_rh`` may do).
``train.rows`` picks the layout:

* ``sliding`` (default, chosen on validation, docs/RESULTS.md): one row per target, loss at every
  position whose target is a D_c^train target. Each target is predicted in up to L rows with
  different context lengths (SASRec's prefix augmentation), so a dense user's targets give L times
  the optimizer signal of ``once``.
* ``once``: each target exactly once per epoch. A user's targets in D_c are cut into pieces of at
  most L targets, counted from the latest, and each piece is one row ending in its last target; the
  earliest piece is the short one, so it gets the most context. About 1/L of ``sliding``'s rows:
  on MovieLens-1M it starved the windows of optimizer steps (issue 18).
* ``legacy``: the layout before issue 10, for comparisons only: one row per target with loss at
  every real position, so earlier chunks' targets in the context are trained again (replay).

Pure functions over numpy arrays. Batches are sharded across ranks so that every rank runs the
same number of steps (DDP needs that): the epoch's permutation is padded by wrapping around
before it is dealt out ``perm[rank::world]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xsmoe_ray.config import ROW_LAYOUTS
from xsmoe_ray.streaming import Stream


@dataclass
class Cases:
    """Evaluation cases: contexts [N, L], targets [N], candidates [C] (ascending item ids); ``cold`` [N]
    (test cases only): the target is an item first seen in the evaluated chunk, so no model has
    trained on it (an ID model scores it from its initial embedding, a content model from content)."""

    contexts: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray
    cold: np.ndarray | None = None
    users: np.ndarray | None = None  # [N] user codes, for models that embed users

    def shard(self, rank: int, world: int) -> "Cases":
        # contiguous copies: torch.searchsorted and the batch slices would copy strided views per call
        def part(a):
            return None if a is None else np.ascontiguousarray(a[rank::world])

        return Cases(part(self.contexts), part(self.targets), self.candidates, part(self.cold), part(self.users))

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class WindowData:
    """What one window trains on (chunk ``c``) and is tested on (chunk ``c + 1``, if any).

    ``train_rows`` [N, L+3] int64: columns ``0..L`` one row's items, left padded with 0, column
    ``L+1`` the first position (1..L) that carries loss (see the module docstring) and column
    ``L+2`` the row's user code, for models that embed users (the model's
    ``forward(seq, log_pop, first, users)`` takes the parts, :func:`split_rows`; the user travels
    with a row into the replay reservoir). ``n_targets`` is the
    number of loss positions, D_c^train's targets. ``log_pop`` [n_items+1] is the log popularity
    used to debias the in-batch loss (Eq. 8), from this window's training targets.
    """

    chunk: int
    train_rows: np.ndarray
    n_targets: int
    log_pop: np.ndarray
    val: Cases
    test: Cases | None


def window_data(stream: Stream, c: int, n_items: int, layout: str = "sliding") -> WindowData:
    """``layout``: ``train.rows`` (see the module docstring)."""
    targets = stream.train_targets(c)
    rows = training_rows(stream, targets, layout)
    val = eval_cases(stream, stream.val_cases(c), stream.candidates(c))
    test = None
    if c + 1 < stream.n_chunks:
        cases = stream.test_cases(c + 1)
        test = eval_cases(stream, cases, stream.candidates(c + 1))
        test.cold = stream.item_first_chunk[stream.item[cases]] == c + 1
    return WindowData(c, rows, len(targets), log_popularity(stream.item[targets], n_items), val, test)


def training_rows(stream: Stream, targets: np.ndarray, layout: str = "sliding") -> np.ndarray:
    """Rows ``[N, L+3]`` over ``targets`` (time-ordered row indices of one chunk's train split).

    Relies on a user's targets being consecutive in their history (a chunk's train split precedes
    its val split in time; only a user's first-ever row has no context, and it is no target).
    """
    if layout not in ROW_LAYOUTS:
        raise ValueError(f"train.rows must be one of {ROW_LAYOUTS}, got {layout!r}")
    L = stream.max_len
    user = stream.user[targets]
    order = np.argsort(user, kind="stable")  # by user, time order kept inside a user
    u = user[order]
    new_user = np.concatenate([[True], u[1:] != u[:-1]]) if len(u) else np.zeros(0, bool)
    starts = np.flatnonzero(new_user)
    sizes = np.diff(np.concatenate([starts, [len(u)]]))
    fwd = np.arange(len(u)) - np.repeat(starts, sizes)  # 0 for a user's earliest target in the chunk
    if layout == "once":
        # targets numbered from the latest back; a piece of min(L, n_u - back) targets ends at back % L == 0
        back = np.repeat(sizes, sizes) - 1 - fwd
        ends = back % L == 0
        first = L + 1 - np.minimum(L, fwd[ends] + 1)  # k = min(L, n_u - back) targets, and n_u - back = fwd + 1
    else:
        ends = np.ones(len(u), bool)
        # sliding: the row's current targets are the user's targets up to this one, at most L of them
        first = np.ones(len(u), np.int64) if layout == "legacy" else L + 1 - np.minimum(L, fwd + 1)
    end_rows = targets[order[ends]]
    rows = np.empty((len(end_rows), L + 3), dtype=np.int64)
    rows[:, :L] = stream.context[end_rows]
    rows[:, L] = stream.item[end_rows]
    rows[:, L + 1] = first
    rows[:, L + 2] = stream.user[end_rows]
    order_in_time = np.argsort(end_rows, kind="stable")  # deterministic, time-ordered rows
    return rows[order_in_time]


def unseen_rows(stream: Stream, rows: np.ndarray, c: int) -> np.ndarray:
    """``[N]`` bool: rows of ``rows`` ([N, L+3], chunk ``c``'s) whose user or one of whose items no
    training row of chunks ``< c`` held (as context or target): GAG's "new" sessions."""
    earlier = np.concatenate([stream.train_targets(k) for k in range(c)]) if c else np.zeros(0, np.int64)
    items = np.zeros(int(rows[:, :-2].max(initial=0)) + 1 if len(rows) else 1, bool)
    seen = np.concatenate([stream.item[earlier], stream.context[earlier].ravel()])
    items[seen[(seen > 0) & (seen < len(items))]] = True
    items[0] = True  # padding
    users = np.zeros(int(rows[:, -1].max(initial=0)) + 1 if len(rows) else 1, bool)
    known = stream.user[earlier]
    users[known[known < len(users)]] = True
    return ~users[rows[:, -1]] | ~items[rows[:, :-2]].all(axis=1)


def split_rows(rows):
    """``[B, L+3]`` training rows → items ``[B, L+1]``, first loss position ``[B]`` and user ``[B]``
    (numpy or torch)."""
    return rows[:, :-2], rows[:, -2], rows[:, -1]


def chunk_counts(stream: Stream, c: int, n_items: int) -> np.ndarray:
    """Interactions per item in chunk ``c`` (all splits): the popularity reference's scores."""
    return np.bincount(stream.item[stream.rows(c)], minlength=n_items + 1).astype(np.float32)


def eval_cases(stream: Stream, rows: np.ndarray, candidates: np.ndarray) -> Cases:
    return Cases(stream.context[rows].astype(np.int64), stream.item[rows].astype(np.int64), candidates.astype(np.int64),
                 users=stream.user[rows].astype(np.int64))


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


def batch_occurrences(rows: np.ndarray, batches: list[np.ndarray], group: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-padding item ids of ``batches`` (indices into training ``rows``) and the number of
    batches each occurs in: ``(ids [U] sorted, counts [U])``.

    Per-batch statistics over each batch's unique items (the utilization pass, Eq. 5) whose per-item
    value does not depend on the batch are the same sums as one value per item times these counts.
    ``group`` batches are counted at a time, which bounds the working memory at any window size.
    """
    if not batches:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.asarray(rows)
    width = int(split_rows(rows)[0].max()) + 1
    counts = np.zeros(width, np.int64)
    for lo in range(0, len(batches), group):
        part = batches[lo: lo + group]
        items = split_rows(rows[np.concatenate(part)])[0].astype(np.int64)  # [R, L+1]
        batch_no = np.repeat(np.arange(len(part), dtype=np.int64), [len(b) for b in part])
        pairs = np.unique((batch_no[:, None] * width + items)[items > 0])  # one (batch, item) pair each
        counts += np.bincount(pairs % width, minlength=width)
    ids = np.flatnonzero(counts)
    return ids, counts[ids]
