"""Scoring users against the whole catalogue: one item table per model state.

Evaluation (``train.window.evaluate_cases``) and serving (``xsmoe_ray.recommender``) score through
this one class, so a recommendation for a test case ranks items exactly as the evaluation did.
Every candidate's embedding is computed once (the item tower is the larger cost at 105k items,
docs/BENCHMARKS.md); a batch of users then costs one sequence-encoder pass and one
``[B, D] x [D, C]`` product. Context items are looked up in the same table by id, and only items
outside it (never seen, so not candidates) go through the item tower.
"""

from __future__ import annotations

import torch


class ItemTable:
    """Candidates ``[C]`` (ascending item ids) and their embeddings ``[C, D]`` under ``model``'s
    current weights. Build a new one after the weights change."""

    @torch.inference_mode()
    def __init__(self, model, candidates: torch.Tensor, chunk_size: int = 8192) -> None:
        self.model = model
        self.candidates = candidates
        table = model.item_embeddings(candidates, chunk_size=chunk_size)  # [C, D]
        rows = model.n_item_rows
        self.by_id = torch.zeros(rows, table.shape[1], dtype=table.dtype, device=table.device)
        self.have = torch.zeros(rows, dtype=torch.bool, device=table.device)
        self.by_id[candidates], self.have[candidates] = table, True
        self.table = table.float()

    def __len__(self) -> int:
        return len(self.candidates)

    @torch.inference_mode()
    def users(self, contexts: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` left-padded item ids (and user codes ``[B]``, -1 for none) → user vectors ``[B, D]``."""
        return self.model.user_embedding(contexts, (self.by_id, self.have), users=users).float()

    @torch.inference_mode()
    def scores(self, contexts: torch.Tensor, out: torch.Tensor | None = None,
               users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` contexts → scores ``[B, C]`` in candidate order, written into ``out`` when given."""
        return torch.mm(self.users(contexts, users), self.table.T, out=out)

    def columns(self, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Column of each id in the table, and whether it is a candidate at all."""
        col = torch.searchsorted(self.candidates, item_ids)
        inside = col < len(self.candidates)
        inside &= self.candidates[col.clamp(max=len(self.candidates) - 1)] == item_ids
        return col, inside
