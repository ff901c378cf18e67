"""The item-ID embedding table (the ID-based baselines, XSMoE's ``model.item_ids``) and the one rule
for ids never trained.

A row starts from ``N(0, std²)`` (row 0, the padding, at zero), ``std`` set by its model (0.02 for
SASRec-ID and MMMLP, as in their reference code). The rule, the same for every ID model: a row that
no training batch reached keeps its start, so an item first seen in a test chunk (a *cold* target,
reported apart in results.md) is scored from an untrained random row, near 0 at std 0.02. When the
catalogue grows (a continued run), the new rows are drawn the same way from a generator seeded by
the table's old size, so every rank and every resume gets the same rows.
"""

from __future__ import annotations

import torch
from torch import nn

class IdTable(nn.Module):
    """``[rows, dim]`` item embeddings by id; :meth:`grow` appends rows for new items."""

    def __init__(self, rows: int, dim: int, std: float) -> None:
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.empty(rows, dim))
        with torch.no_grad():
            self.weight.normal_(0.0, std)
            self.weight[0].zero_()

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]

    def grow(self, rows: int) -> None:
        if rows < self.rows:
            raise ValueError(f"the item table has {self.rows} rows but the cache only {rows}: "
                             "items cannot be removed from a run")
        if rows == self.rows:
            return
        old = self.weight.detach()
        gen = torch.Generator().manual_seed(old.shape[0])
        new = (torch.randn(rows - old.shape[0], old.shape[1], generator=gen) * self.std).to(old.device, old.dtype)
        self.weight = nn.Parameter(torch.cat([old, new]), requires_grad=self.weight.requires_grad)


def match_catalogue(model, features: dict[str, torch.Tensor]) -> None:
    """Grow ``model.item_table`` to the cache's row count (a continued run's new items); the model's
    ``args`` follow, and a teacher of the old size is dropped (the next window takes a new one)."""
    rows = int(next(iter(features.values())).shape[0])
    if rows != model.item_table.rows:
        model.item_table.grow(rows)
        model.args["n_item_rows"] = rows
        model.__dict__["teacher"] = None
