"""The item-ID embedding table of the ID-based baselines, and the one rule for ids never trained.

Every row starts from ``N(0, 0.02²)`` (row 0, the padding, at zero). A row that no training batch
reached keeps that start, so an item first seen in a test chunk (a *cold* target, reported apart
in results.md) scores ``≈ 0 ± 0.02·|u|`` for every ID model alike: neither favoured nor buried.
When the catalogue grows (a continued run), the new rows are drawn the same way from a generator
seeded by the table's old size, so every rank and every resume gets the same rows.
"""

from __future__ import annotations

import torch
from torch import nn

INIT_STD = 0.02


class IdTable(nn.Module):
    """``[rows, dim]`` item embeddings by id; :meth:`grow` appends rows for new items."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim))
        with torch.no_grad():
            self.weight.normal_(0.0, INIT_STD)
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
        new = (torch.randn(rows - old.shape[0], old.shape[1], generator=gen) * INIT_STD).to(old.device, old.dtype)
        self.weight = nn.Parameter(torch.cat([old, new]), requires_grad=self.weight.requires_grad)
