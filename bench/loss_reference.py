"""Straightforward all-positions reference of the in-batch debiased cross-entropy (XSMoE Eq. 8, IISAN).

Kept out of the package on purpose: it loops over users and positions in Python and builds one
candidate column per *batch position* (duplicates included), the way IISAN's code builds its logits,
and exists only to check (tests) and time (bench/train_step.py) the vectorised
``xsmoe_ray.model.loss``, which keeps one column per unique item plus ``log n_j``.
"""

from __future__ import annotations

import torch


def reference_loss(states: torch.Tensor, item_table: torch.Tensor, seq: torch.Tensor,
                   log_pop: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the loss positions of ``-log softmax`` over every position of the batch.

    ``states`` [B, L, D] user states for the inputs ``seq[:, :-1]``; ``item_table`` [n_items+1, D]
    item embeddings indexed by id; ``seq`` [B, L+1] ids (0 = padding); ``log_pop`` [n_items+1];
    ``first`` [B] the first target position (1..L) that carries loss (default 1). A position
    carries loss when its target and its input are real items. The candidates are all non-padding
    positions ``(b', t')`` of the batch, each scored ``y - log p``; a candidate is dropped from a
    row when its item belongs to the row's user, except the row's own target position (Eq. 8 sums
    over ``j in [B]``, so an item present n times enters n times).
    """
    B, L = seq.shape[0], seq.shape[1] - 1
    first = torch.ones(B, dtype=torch.long) if first is None else first
    columns = [(b, t) for b in range(B) for t in range(L + 1) if int(seq[b, t]) != 0]
    col_items = torch.tensor([int(seq[b, t]) for b, t in columns], device=item_table.device)
    losses = []
    for b in range(B):
        user_items = {int(i) for i in seq[b].tolist() if i != 0}
        for t in range(L):
            target, prev = int(seq[b, t + 1]), int(seq[b, t])
            if target == 0 or prev == 0 or t + 1 < int(first[b]):
                continue
            keep = [k for k, (bb, tt) in enumerate(columns)
                    if (bb, tt) == (b, t + 1) or int(col_items[k]) not in user_items]
            cand = col_items[keep]
            row = states[b, t].float() @ item_table[cand].float().T - log_pop[cand].float()
            losses.append(torch.logsumexp(row, 0) - row[keep.index(columns.index((b, t + 1)))])
    return torch.stack(losses).mean()
