"""What the streaming session baselines (GAG, SSRM) share: id tables for items and users, one session
vector per row, and the informativeness their update sets are sampled by.

A subclass implements ``_session(table, index, users) → [B, D]`` from the batch's unique item
embeddings ``table`` [U, D], the context ``index`` [B, L] into them (-1 = padding) and the rows'
user codes. The session vector is the row's user state at its last position, so these models train
with one loss position per row (``last_position_only``: the target after the whole context) through
the project's Eq. 8 in-batch debiased cross-entropy, and score items by ``session · E[j]``.

Users: ``user_table`` row ``code + 1`` (row 0, for sessions without a user, stays zero). Items and
users never trained keep their random start (``id_table.py``'s rule, the same for every ID model).

Streaming (``samples_update_set``): after the warm-up, each window trains on an *update set*
(``replay.update_set``) built from a reservoir of earlier rows and the window's new rows, sampled by
:meth:`informativeness`: ``1 − p(target)`` under the model's softmax over the whole catalogue.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from ..base import SequentialModel
from ..loss import batch_candidates
from ..id_table import IdTable, match_catalogue


class SessionModel(SequentialModel):
    last_position_only = True
    samples_update_set = True
    ID_STD = 0.02

    def _init_tables(self, n_item_rows: int, n_user_rows: int, dim: int) -> None:
        self.item_table = IdTable(n_item_rows, dim, std=self.ID_STD)
        self.user_table = IdTable(n_user_rows, dim, std=self.ID_STD)
        self.max_len, self.distill, self.kd_weight = self.args["max_len"], False, 1.0

    @abstractmethod
    def _session(self, table: torch.Tensor, index: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Session vectors ``[B, D]`` (module docstring)."""

    # ---- ids ---------------------------------------------------------------------------------------
    @property
    def n_item_rows(self) -> int:
        return self.item_table.rows

    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """The cache is not read; only its row count, so that a grown catalogue gets new id rows."""
        match_catalogue(self, features)

    def set_user_count(self, n_users: int) -> None:
        if n_users + 1 != self.user_table.rows:
            self.user_table.grow(n_users + 1)
            self.args["n_user_rows"] = n_users + 1

    def _users(self, users: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """User table rows of ``users`` (None or -1: row 0, zeros); codes past the table are refused."""
        if users is None:
            return self.user_table(torch.zeros(batch, dtype=torch.long, device=device))
        rows = users.to(device=device, dtype=torch.long) + 1
        if rows.numel() and int(rows.max()) >= self.user_table.rows:
            raise ValueError(f"user code {int(rows.max()) - 1} is past this model's {self.user_table.rows - 1} users")
        return self.user_table(rows.clamp_min(0))

    def _embed(self, item_ids: torch.Tensor, inputs) -> torch.Tensor:
        return self.item_table(item_ids)

    # ---- towers --------------------------------------------------------------------------------------
    def _last_states(self, table: torch.Tensor, index: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``[B, L, D]`` with the session vector at the last position and zeros before it."""
        session = self._session(table, index, self._users(users, index.shape[0], table.device))
        states = torch.zeros(index.shape[0], index.shape[1], session.shape[-1], device=session.device,
                             dtype=session.dtype)
        states[:, -1] = session
        return states

    def _towers(self, seq: torch.Tensor, inputs, users: torch.Tensor | None = None):
        ids, index = batch_candidates(seq)
        table = self._embed(ids, inputs)
        return ids, index, table, self._last_states(table, index[:, :-1], users)

    def user_states(self, seq_ids: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` contexts and their user codes → ``[B, L, D]``: the session vector at the last
        position, zeros before it (``known``: as ``SequentialModel.user_states``)."""
        ids, index = batch_candidates(seq_ids)
        table = self._embed(ids, None)
        if known is not None:
            known_table, have = known
            table = torch.where(have[ids].unsqueeze(-1), known_table[ids].to(table.dtype), table)
        return self._last_states(table, index, users)

    # ---- streaming ---------------------------------------------------------------------------------
    @torch.no_grad()
    def informativeness(self, rows: torch.Tensor, device: torch.device, chunk: int = 1024) -> torch.Tensor:
        """``1 − p(target)`` per row, the softmax over every item row (module docstring).

        This is the Wasserstein-1 distance between the model's predictive distribution and the
        one-hot target under the 0/1 ground metric on items (GAG's sampling criterion, as its paper
        describes it; see ``gag.py`` on its public code).
        """
        was = self.training
        self.eval()
        items = self.item_table.weight[1:]
        out = []
        for part in rows.split(chunk):
            part = part.to(device)
            seq, users = part[:, :-2], part[:, -1]
            session = self.user_embedding(seq[:, :-1], users=users)
            logp = torch.log_softmax(session.float() @ items.float().T, dim=1)
            out.append(1.0 - logp.gather(1, (seq[:, -1:] - 1).clamp_min(0)).squeeze(1).exp())
        self.train(was)
        return torch.cat(out).cpu() if out else torch.zeros(0)

    # ---- structure -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def structure(self) -> dict:
        return dict(self.args)

    @classmethod
    def from_structure(cls, structure: dict):
        return cls(**structure)
