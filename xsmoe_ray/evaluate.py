"""Full-ranking HR@K and NDCG@K, one function for validation and test (paper §5.1.3).

Every case is scored against every candidate item (all items seen so far, DESIGN.md §4); no
sampled negatives. Ties are broken pessimistically: the target's rank counts every other
candidate scoring at least as high (or NaN), so a model that scores everything alike, or a diverged
one, gets no credit.
Masking of the user's history is optional (off by default: repeat purchases are real targets);
the target itself is never masked.

Results are plain sums (hits, ndcg, count) so that shards of cases on different ranks merge by
addition (``all_reduce``) before dividing.

Memory and speed: one ``[batch, C]`` float32 score buffer is allocated per call and reused by every
batch (a fresh 0.43 GB tensor per 1,024 cases at 105k candidates costs its page faults again each
time), and ranks are counted in place in it (``lt_`` then a float sum, exact below 2^24 candidates),
which is ~3x cheaper on CPU than a separate boolean tensor summed into int64 (docs/BENCHMARKS.md).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class RankingSums:
    """Additive HR/NDCG accumulators; ``warm``: the same over the cases whose target is warm (an item
    seen before the evaluated chunk), when the caller marked cold targets."""

    hits: float = 0.0
    ndcg: float = 0.0
    count: int = 0
    warm: "RankingSums | None" = None

    def __add__(self, other: "RankingSums") -> "RankingSums":
        if self.warm is not None and other.warm is not None:
            warm = self.warm + other.warm
        else:
            warm = self.warm if self.warm is not None else other.warm
        return RankingSums(self.hits + other.hits, self.ndcg + other.ndcg, self.count + other.count, warm)

    def as_tensor(self, device=None) -> torch.Tensor:
        values = [self.hits, self.ndcg, float(self.count)]
        if self.warm is not None:
            values += [self.warm.hits, self.warm.ndcg, float(self.warm.count)]
        return torch.tensor(values, dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "RankingSums":
        values = t.tolist()
        warm = cls.from_tensor(t[3:]) if len(values) == 6 else None
        hits, ndcg, count = values[:3]
        return cls(hits, ndcg, int(round(count)), warm)

    @property
    def cold_share(self) -> float | None:
        """Share of cases whose target is cold (None when cold targets were not marked)."""
        return None if self.warm is None or not self.count else 1.0 - self.warm.count / self.count

    @property
    def hr(self) -> float:
        return self.hits / self.count if self.count else 0.0

    @property
    def ndcg_mean(self) -> float:
        return self.ndcg / self.count if self.count else 0.0


def ranks_of_targets(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each row's target. scores [B, C], target_col [B] → [B].

    The rank counts the candidates *not below* the target rather than those ``>=`` it, so a NaN
    (a diverged model) is pessimistic too: a NaN candidate outranks the target and a NaN target
    ranks last, instead of ``>=`` being false everywhere and the target ranking -1 (a hit with
    an infinite gain)."""
    target = scores.gather(1, target_col[:, None])  # [B, 1]
    return scores.shape[1] - (scores < target).sum(dim=1) - 1


def ranking_sums(ranks: torch.Tensor, k: int) -> RankingSums:
    hit = ranks < k
    gains = torch.where(hit, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros_like(ranks, dtype=torch.float64))
    return RankingSums(float(hit.sum()), float(gains.sum()), int(ranks.numel()))


def ranks_in_place(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """:func:`ranks_of_targets`, overwriting ``scores`` [B, C] with 0/1 flags to count them without
    another [B, C] tensor. Float counts are exact below 2^24 candidates; beyond that, a boolean count."""
    if scores.shape[1] >= 2**24:
        return ranks_of_targets(scores, target_col)
    target = scores.gather(1, target_col[:, None])  # [B, 1]
    return scores.shape[1] - scores.lt_(target).sum(dim=1).long() - 1


@torch.inference_mode()
def evaluate(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    contexts: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    *,
    k: int = 10,
    batch_size: int = 1024,
    mask_history: bool = False,
    cold: torch.Tensor | None = None,
    users: torch.Tensor | None = None,
) -> RankingSums:
    """Rank each case's target among ``candidates``.

    ``score_fn(contexts [B, L], out [B, C]) -> [B, C]`` scores a batch of contexts against the
    candidates (in the order of ``candidates`` [C], ascending item ids), ideally writing into ``out``
    (float32, reused across batches) and returning it; a different tensor returned is copied into
    ``out``. ``targets`` [N] are item ids that must be among the candidates. Cases are processed in
    batches, so scores never take more than one ``batch_size × C`` buffer. ``cold`` [N] bool marks
    cases with a cold target; the result's ``warm`` then holds the sums over the others. ``users``
    [N] (user codes), when given, reach ``score_fn`` as ``users=`` with each batch, for models that
    embed users.
    """
    if len(targets) == 0:
        return RankingSums(warm=RankingSums() if cold is not None else None)
    device = candidates.device
    col = torch.searchsorted(candidates, targets.to(device))
    if bool((col >= len(candidates)).any()) or bool((candidates[col.clamp(max=len(candidates) - 1)] != targets.to(device)).any()):
        raise ValueError("every evaluation target must be among the candidates")
    total = RankingSums()
    buffer = torch.empty(min(batch_size, len(targets)), len(candidates), dtype=torch.float32, device=device)
    for lo in range(0, len(targets), batch_size):
        ctx = contexts[lo: lo + batch_size].to(device)
        out = buffer[: len(ctx)]
        if users is None:
            scores = score_fn(ctx, out)
        else:
            scores = score_fn(ctx, out, users=users[lo: lo + batch_size].to(device))
        if scores.data_ptr() != out.data_ptr():
            out.copy_(scores)
        tcol = col[lo: lo + batch_size]
        if mask_history:
            _mask_history_(out, ctx, candidates, tcol)
        ranks = ranks_in_place(out, tcol)
        part = ranking_sums(ranks, k)
        if cold is not None:
            part.warm = ranking_sums(ranks[~cold[lo: lo + batch_size].to(ranks.device)], k)
        total = total + part
    return total


def _mask_history_(scores: torch.Tensor, ctx: torch.Tensor, candidates: torch.Tensor, tcol: torch.Tensor) -> None:
    """Set the scores of items in each context to -inf, in place, except the row's target."""
    pos = torch.searchsorted(candidates, ctx)  # [B, L]
    inside = ((pos < len(candidates)) & (candidates[pos.clamp(max=len(candidates) - 1)] == ctx) & (ctx > 0)
              & (pos != tcol[:, None]))
    rows = torch.arange(len(ctx), device=ctx.device)[:, None].expand_as(ctx)
    scores[rows[inside], pos[inside]] = float("-inf")
