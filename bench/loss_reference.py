"""Straightforward per-row reference of the in-batch debiased cross-entropy (XSMoE Eq. 8, IISAN style).

Kept out of the package on purpose: it loops over users and positions in Python, the way the
original IISAN code builds its masks, and exists only to check (tests) and time (bench/train_step.py)
the vectorised ``xsmoe_ray.model.loss``.
"""

from __future__ import annotations

import torch


def reference_loss(states: torch.Tensor, item_table: torch.Tensor, seq: torch.Tensor,
                   log_pop: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding targets of ``-log softmax`` over the batch's unique items.

    ``states`` [B, L, D] user states for the inputs ``seq[:, :-1]``; ``item_table`` [n_items+1, D]
    item embeddings indexed by id; ``seq`` [B, L+1] ids (0 = padding); ``log_pop`` [n_items+1].
    A candidate is dropped from a row when the row's user has it and it is not the row's positive.
    """
    B, L = seq.shape[0], seq.shape[1] - 1
    batch_items = sorted({int(i) for i in seq.flatten().tolist() if i != 0})
    losses = []
    for b in range(B):
        user_items = {int(i) for i in seq[b].tolist() if i != 0}
        for t in range(L):
            target = int(seq[b, t + 1])
            if target == 0:
                continue
            keep = [j for j in batch_items if j == target or j not in user_items]
            cand = torch.tensor(keep, device=item_table.device)
            row = states[b, t].float() @ item_table[cand].float().T - log_pop[cand].float()
            losses.append(torch.logsumexp(row, 0) - row[keep.index(target)])
    return torch.stack(losses).mean()
