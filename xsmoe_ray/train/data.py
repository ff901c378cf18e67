"""One window's training sequences, evaluation cases and batches, from a prepared stream.

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
        return Cases(self.contexts[rank::world], self.targets[rank::world], self.candidates)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class WindowData:
    """What one window trains on (chunk ``c``) and is tested on (chunk ``c + 1``, if any).

    ``train_seq`` [N, L+1] is each training target's context followed by the target itself, left
    padded with 0, ready for next-item prediction at every position. ``log_pop`` [n_items+1] is
    the log popularity used to debias the in-batch loss (Eq. 8), from this window's training items.
    """

    chunk: int
    train_seq: np.ndarray
    log_pop: np.ndarray
    val: Cases
    test: Cases | None


def window_data(stream: Stream, c: int, n_items: int) -> WindowData:
    rows = stream.train_targets(c)
    train_seq = np.concatenate([stream.context[rows], stream.item[rows, None]], axis=1).astype(np.int64)
    val = eval_cases(stream, stream.val_cases(c), stream.candidates(c))
    test = None
    if c + 1 < stream.n_chunks:
        test = eval_cases(stream, stream.test_cases(c + 1), stream.candidates(c + 1))
    return WindowData(c, train_seq, log_popularity(train_seq, n_items), val, test)


def eval_cases(stream: Stream, rows: np.ndarray, candidates: np.ndarray) -> Cases:
    return Cases(stream.context[rows].astype(np.int64), stream.item[rows].astype(np.int64), candidates.astype(np.int64))


def log_popularity(seq: np.ndarray, n_items: int) -> np.ndarray:
    """log p_i with add-one smoothing over every item occurrence in the sequences."""
    counts = np.bincount(seq[seq > 0].ravel(), minlength=n_items + 1).astype(np.float64) + 1.0
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
