"""Reservoir replay for the ``_rh`` variants (``iisan_rh``, ``sasrec_id_rh``, ...).

A :class:`ReservoirBuffer` holds a uniform sample of every training sequence seen so far (Vitter's
Algorithm R, seeded, deterministic); replayed sequences are appended to each training batch
(:meth:`ReservoirBuffer.mix`). The buffer lives with the trainer, not in the model, and is
checkpointed through :meth:`state_dict` / :meth:`load_state_dict`. (The ``_kd`` variants'
distillation is in ``base.SequentialModel``.)
"""

from __future__ import annotations

import numpy as np
import torch


class ReservoirBuffer:
    """Uniform reservoir of fixed-width training sequences ``[L+1]`` (int64, 0 = left padding)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.data: np.ndarray | None = None  # [size, L+1]
        self.size = 0
        self.seen = 0

    def __len__(self) -> int:
        return self.size

    def add(self, seqs: torch.Tensor) -> None:
        """Offer a batch ``[B, L+1]``: row ``k`` (the ``t``-th sequence ever seen) is kept with prob. ``cap/t``."""
        rows = seqs.detach().cpu().numpy().astype(np.int64, copy=False)
        if self.data is None:
            self.data = np.zeros((self.capacity, rows.shape[1]), dtype=np.int64)
        if rows.shape[1] != self.data.shape[1]:
            raise ValueError(f"sequences of width {rows.shape[1]} offered to a reservoir of width {self.data.shape[1]}")
        fill = min(self.capacity - self.size, len(rows))  # free slots first
        self.data[self.size:self.size + fill] = rows[:fill]
        self.size += fill
        rest = rows[fill:]
        t = self.seen + fill + np.arange(1, len(rest) + 1)  # 1-based stream position of each remaining row
        slots = self.rng.integers(0, t)  # uniform in [0, t)
        keep = slots < self.capacity
        slots, rest = slots[keep], rest[keep]
        # Sequential semantics: when two rows draw the same slot, the later one wins.
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        self.data[slots[last]] = rest[last]
        self.seen += len(rows)

    def sample(self, n: int) -> torch.Tensor:
        """``min(n, len)`` distinct stored sequences ``[n, L+1]``, drawn without replacement."""
        if self.size == 0 or n <= 0:
            width = 0 if self.data is None else self.data.shape[1]
            return torch.zeros(0, width, dtype=torch.int64)
        picks = self.rng.choice(self.size, size=min(n, self.size), replace=False)
        return torch.from_numpy(self.data[np.sort(picks)].copy())

    def mix(self, batch: torch.Tensor, n_replay: int | None = None, rank: int = 0, world: int = 1) -> torch.Tensor:
        """``batch`` [B, L+1] with replayed sequences appended: ``[B + r, L+1]``, ``r = n_replay or B // 2``.

        Under DDP every rank holds the same reservoir and generator; one draw of ``r * world`` rows is
        dealt out ``[rank::world]``, so the ranks replay different rows and their generators stay equal.
        """
        n = batch.shape[0] // 2 if n_replay is None else n_replay
        replay = self.sample(n * world)[rank::world]
        if replay.numel() == 0:
            return batch
        return torch.cat([batch, replay.to(batch.device)])

    def state_dict(self) -> dict:
        """Plain types and a tensor only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {"capacity": self.capacity, "seed": self.seed, "size": self.size, "seen": self.seen,
                "data": None if self.data is None else torch.from_numpy(self.data[:self.size].copy()),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.seed = state["capacity"], state["seed"]
        self.size, self.seen = state["size"], state["seen"]
        self.data = None
        if state["data"] is not None:
            data = np.asarray(state["data"])  # a tensor (or an array from an older checkpoint)
            self.data = np.zeros((self.capacity, data.shape[1]), dtype=np.int64)
            self.data[:self.size] = data
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]


def update_set(rows: np.ndarray, new: np.ndarray, reservoir: ReservoirBuffer, scores) -> tuple[np.ndarray, int]:
    """GAG's update set (also SSRM's here): as many rows as ``rows`` (this window's), made of every
    row of ``new`` (a user or item not trained before), then rows drawn without replacement from
    reservoir ∪ the other new rows with probability ∝ ``exp(rank(d) / N)``, ``d = scores(pool)``
    the model's informativeness per row (rank 1 = least informative; GAG's weighting, at most a
    factor e between rows). Draws use the reservoir's seeded generator (checkpointed with it).

    Returns the rows and how many of them came from the reservoir.
    """
    fixed = rows[new]
    pool = np.concatenate([reservoir.data[:reservoir.size], rows[~new]]) if reservoir.size else rows[~new]
    wanted = len(rows) - len(fixed)
    if wanted <= 0 or wanted >= len(pool):
        return rows, 0
    d = np.asarray(scores(pool), dtype=np.float64)
    ranks = np.empty(len(pool))
    ranks[np.argsort(d, kind="stable")] = np.arange(1, len(pool) + 1)
    p = np.exp(ranks / len(pool))
    picks = np.sort(reservoir.rng.choice(len(pool), size=wanted, replace=False, p=p / p.sum()))
    return np.concatenate([fixed, pool[picks]]), int((picks < reservoir.size).sum())
