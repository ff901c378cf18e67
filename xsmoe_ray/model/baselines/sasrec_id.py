"""SASRec-ID: the project's sequence encoder and loss over an item-ID embedding (an extra row, issue 19).

Not a row of the paper's Table 1; it tells a user whether content features help on their data at
all. Item tower: ``e_i = E[i]``, one learned ``D``-vector per item id (no content). User tower,
scores and loss as XSMoE (Eq. 6-8, ``base.SequentialModel``), trained window by window with the
same rows, early stopping and evaluation:

* ``sasrec_id``: fine-tuned on each window in turn;
* ``sasrec_id_rh``: plus reservoir replay of earlier windows' rows (``replay.ReservoirBuffer``,
  ``model.replay_size``), as ``iisan_rh``;
* ``sasrec_id_kd``: plus ``kd_weight * KL(teacher || student)`` to the model of the previous
  window, as ``iisan_kd``.

Ids never trained (items first seen in a test chunk, or never in a training row) follow the one
rule of ``id_table.py``: they keep their random start, here ``N(0, 0.02²)``, so they score near 0.
The start was chosen on validation: rows at the positional table's scale (std 1) trained far worse
(guard sample, seed 0: val NDCG@10 0.36 against 3.59; docs/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import SequentialModel
from ..id_table import IdTable, match_catalogue

VARIANTS = {"sasrec_id": {}, "sasrec_id_rh": {"replay": True}, "sasrec_id_kd": {"distill": True}}


class SASRecID(SequentialModel):
    VARIANTS = tuple(VARIANTS)

    def __init__(self, *, variant: str, n_item_rows: int, embed_dim: int, max_len: int, seq_blocks: int,
                 seq_heads: int, dropout: float, kd_weight: float = 1.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown SASRec-ID variant {variant!r}; one of {sorted(VARIANTS)}")
        self.variant = variant
        self.args = dict(variant=variant, n_item_rows=int(n_item_rows), embed_dim=embed_dim, max_len=max_len,
                         seq_blocks=seq_blocks, seq_heads=seq_heads, dropout=dropout, kd_weight=kd_weight)
        self.item_table = IdTable(n_item_rows, embed_dim, std=0.02)  # chosen on validation (module docstring)
        self._init_user_tower(embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks, seq_heads=seq_heads,
                              dropout=dropout, distill=bool(VARIANTS[variant].get("distill")), kd_weight=kd_weight)

    @property
    def replay(self) -> bool:
        return bool(VARIANTS[self.variant].get("replay"))

    @property
    def n_item_rows(self) -> int:
        return self.item_table.rows

    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """The cache is not read; only its row count, so that a grown catalogue gets new id rows."""
        match_catalogue(self, features)

    def _embed(self, item_ids: torch.Tensor, inputs) -> torch.Tensor:
        return self.item_table(item_ids)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.item_table.parameters()) + list(self.encoder.parameters())

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {"item_table": self.item_table, "encoder": self.encoder}

    def structure(self) -> dict:
        return dict(self.args)

    @classmethod
    def from_structure(cls, structure: dict) -> "SASRecID":
        return cls(**structure)
