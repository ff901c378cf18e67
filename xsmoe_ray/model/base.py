"""What the window loop asks of a model, and the sequential two-tower part most models share.

:class:`StreamModel` is the interface of ``train/worker.py``, ``train/window.py``, checkpoints,
evaluation and serving. Its structure hooks (``begin_window``, utilization, ``prune``, router
reports, ``set_user_count``, ``set_window_rows``) are no-ops by default, so a model without experts
implements its towers, loss and structure only, and the loop has no model-specific branch; a model
with its own streaming mechanism (GAG, SSRM) sets ``samples_update_set`` and implements
``informativeness``.

:class:`SequentialModel` is a :class:`StreamModel` with the causal sequence encoder as user tower
(Eq. 6), dot-product scores (Eq. 7), the in-batch debiased cross-entropy (Eq. 8) and, when
``distill`` is set, ``kd_weight * KL(teacher || student)`` to a frozen copy taken at each window
start (the ``_kd`` variants). A subclass supplies the item tower: ``_item_inputs()`` (what the tower
reads besides ids, shared with the teacher; e.g. the cached features) and ``_embed(ids, inputs)``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from torch import nn

from .encoder import SequenceEncoder
from .loss import batch_candidates, debiased_ce, distillation_kl, fused_debiased_ce, masked_logits


class StreamModel(nn.Module, ABC):
    """The model interface of the window loop (see the module docstring)."""

    variant: str = ""
    replay: bool = False  # the trainer mixes a reservoir of earlier training rows into batches
    # The model's own streaming (GAG, SSRM): each window after the warm-up trains on an *update set*
    # drawn from a reservoir and the new rows by :meth:`informativeness` (``replay.update_set``).
    samples_update_set: bool = False
    tracks_utilization: bool = False  # whether the utilization pass after training means anything
    reads_context: bool = True  # False: the user vector comes from the user's id alone (LGMRec)

    # ---- required: a model that lacks one cannot be constructed (abstract methods) ---------------
    @abstractmethod
    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """Hand the model the cached layer states ``{modality: [n_items+1, G+1, d]}`` (or their row count)."""

    @property
    @abstractmethod
    def n_item_rows(self) -> int:
        """Rows of the item id space: ``n_items + 1`` (row 0 = padding)."""

    @abstractmethod
    def item_embeddings(self, item_ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """``[n]`` item ids → ``[n, D]`` scoring embeddings."""

    @abstractmethod
    def user_embedding(self, context: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                       users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` contexts → user vectors ``[B, D]``; ``users`` [B]: user codes, -1 for a session
        without one (models that do not embed users ignore them)."""

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the window's optimizer updates."""

    @abstractmethod
    def structure(self) -> dict:
        """Plain types from which :meth:`from_structure` rebuilds the architecture; has ``variant``."""

    @classmethod
    @abstractmethod
    def from_structure(cls, structure: dict) -> "StreamModel":
        """The architecture of :meth:`structure`, before ``load_state_dict``."""

    # ---- optional: no-ops for models without feature statistics, experts or routers -------------
    def fit_feature_norm(self, item_ids: torch.Tensor) -> None:
        pass

    def begin_window(self) -> bool:
        """Called at the start of every window after the warm-up; True when the structure grew."""
        return False

    def set_utilization_tracking(self, on: bool, weights: torch.Tensor | None = None) -> None:
        """Collect utilization sums in training-mode item-tower calls while ``on``; ``weights`` [n] count
        each item of the next calls that many times (None: once)."""
        pass

    def reset_utilization(self) -> None:
        pass

    def utilization_sums(self) -> dict[str, torch.Tensor]:
        return {}

    def utilization(self, sums: dict[str, torch.Tensor] | None = None) -> dict[str, list[list[float]]]:
        return {}

    def router_weights(self) -> dict[str, list[list[float]]]:
        return {}

    def prune(self, tau: float, sums: dict[str, torch.Tensor] | None = None) -> dict[str, dict[int, int]]:
        return {}

    def experts_per_layer(self) -> dict[str, list[int]]:
        return {}

    def set_user_count(self, n_users: int) -> None:
        """The stream's number of users (codes ``0..n_users-1``); models with a user table grow it."""

    def set_window_rows(self, rows, replayed=None) -> None:
        """The rows ``[N, L+3]`` (numpy) the coming window trains on and the reservoir's rows it
        replays (``_rh``; None otherwise), before its first step: for models that build a structure
        from them (LGMRec's graph)."""

    @torch.no_grad()
    def informativeness(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``[N, L+3]`` training rows → ``[N]`` scores, higher = more worth replaying (read when
        ``samples_update_set``). This default rates every row alike, so an update set is drawn
        uniformly; GAG and SSRM rate rows by their uncertainty."""
        return torch.zeros(len(rows))

    def parameter_parts(self) -> dict[str, nn.Module]:
        """Named components for the parameter report (Table 3)."""
        return {"model": self}


class SequentialModel(StreamModel):
    """Causal sequence encoder over item embeddings, Eq. 8 loss, optional distillation (module docstring).

    ``last_position_only``: the user state of a row exists at its last position only (a model whose
    context mixing is not causal, or that reads the whole context at once): the loss is taken there,
    whatever ``first`` says, so no position is trained on a target its input has seen.
    """

    last_position_only: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["teacher"] = None  # unregistered: not a parameter, not in state_dict, not seen by DDP

    def _init_user_tower(self, *, embed_dim: int, max_len: int, seq_blocks: int, seq_heads: int, dropout: float,
                         distill: bool = False, kd_weight: float = 1.0) -> None:
        """Called by the subclass after it built its item tower (creation order fixes the seeded init)."""
        self.max_len, self.kd_weight, self.distill = max_len, kd_weight, distill
        self.encoder = SequenceEncoder(embed_dim, max_len, seq_blocks, seq_heads, dropout)

    # ---- item tower (subclass) --------------------------------------------------------------------
    def _item_inputs(self):
        """What the item tower reads besides ids (shared with the teacher, never copied)."""
        return None

    @abstractmethod
    def _embed(self, item_ids: torch.Tensor, inputs) -> torch.Tensor:
        """The item tower: ``[n]`` ids → ``[n, D]``."""

    def item_embeddings(self, item_ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """``[n]`` int64 item ids → ``[n, D]`` (ids need not be unique); ``chunk_size`` bounds the working
        set when embedding a whole catalogue."""
        inputs = self._item_inputs()
        if chunk_size is None or item_ids.numel() <= chunk_size:
            return self._embed(item_ids, inputs)
        return torch.cat([self._embed(part, inputs) for part in item_ids.split(chunk_size)])

    # ---- user tower --------------------------------------------------------------------------------
    def _states(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table`` [U, D], ``index`` [B, L] into it (-1 = padding) → user states ``[B, L, D]`` (Eq. 6)."""
        real = index >= 0
        items = table[index.clamp_min(0)] * real.unsqueeze(-1).to(table.dtype)  # [B, L, D], zeros at padding
        return self.encoder(items, real)

    def user_states(self, seq_ids: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """Left-padded ``[B, L]`` ids → states ``[B, L, D]``; the item tower runs once per unique item.

        ``known = (table [n_items+1, D], have [n_items+1] bool)``: item embeddings already computed
        (an evaluation's candidate table, by item id); only items without one go through the tower.
        ``users``: the rows' user codes, for models with a user table (not used here).
        """
        ids, index = batch_candidates(seq_ids)
        if known is None:
            return self._states(self.item_embeddings(ids), index)
        table, have = known
        emb = table[ids]
        missing = ~have[ids]
        if bool(missing.any()):
            emb[missing] = self.item_embeddings(ids[missing]).to(emb.dtype)
        return self._states(emb, index)

    def user_embedding(self, context: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                       users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` left-padded context → ``[B, D]``, the state at the last position (``known``,
        ``users``: as :meth:`user_states`)."""
        return self.user_states(context, known, users)[:, -1]

    def score_all(self, context: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Full ranking: ``[B, L]`` contexts against ``[C]`` candidates → scores ``[B, C]`` (Eq. 7).

        For many user chunks, compute ``item_embeddings(candidates, chunk_size)`` once and multiply by
        ``user_embedding(context)`` per chunk instead (``xsmoe_ray.scoring.ItemTable``).
        """
        return self.user_embedding(context) @ self.item_embeddings(candidate_ids, chunk_size=8192).T

    # ---- training loss -----------------------------------------------------------------------------
    def _towers(self, seq: torch.Tensor, inputs, users: torch.Tensor | None = None):
        """Unique ids [U], their index [B, L+1], item table [U, D] and user states [B, L, D] of a batch."""
        ids, index = batch_candidates(seq)
        table = self._embed(ids, inputs)
        return ids, index, table, self._states(table, index[:, :-1])

    def _first(self, seq: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor | None:
        if not self.last_position_only:
            return first
        return torch.full((seq.shape[0],), seq.shape[1] - 1, dtype=torch.long, device=seq.device)

    def _logits(self, seq: torch.Tensor, log_pop: torch.Tensor, inputs, first: torch.Tensor | None = None,
                users: torch.Tensor | None = None):
        ids, index, table, states = self._towers(seq, inputs, users)
        return masked_logits(states, table, index, log_pop[ids], self._first(seq, first))  # [P, U], [P]

    def forward(self, seq: torch.Tensor, log_pop: torch.Tensor, first: torch.Tensor | None = None,
                users: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Training loss of a batch. ``seq`` [B, L+1] int64 (0 = left padding): positions ``0..L-1`` are
        inputs, ``1..L`` targets; ``log_pop`` [n_items+1] = log p_i; ``first`` [B]: the first position
        of each row that carries loss (default 1; a position also needs a real input and target);
        ``users`` [B]: the rows' user codes (-1: none; read by models with a user table). With
        ``last_position_only`` the loss is at position ``L`` only.

        Returns ``(loss, stats)``; stats hold detached tensors / ints: ce, kd, loss, targets, unique_items.
        """
        inputs = self._item_inputs()
        first = self._first(seq, first)
        ids, index, table, states = self._towers(seq, inputs, users)
        kd = torch.zeros((), device=states.device)
        if self.distill and self.teacher is not None and self.training:
            logits, pos = masked_logits(states, table, index, log_pop[ids], first)
            ce, n_targets = debiased_ce(logits, pos), pos.numel()
            with torch.no_grad():
                t_logits, _ = self.teacher._logits(seq, log_pop, inputs, first, users)
            kd = distillation_kl(logits, t_logits)
        else:
            ce, n_targets = fused_debiased_ce(states, table, index, log_pop[ids], first)
        loss = ce + self.kd_weight * kd
        aux = self._auxiliary_loss()
        if aux is not None:
            loss = loss + aux
        stats = {"loss": loss.detach(), "ce": ce.detach(), "kd": kd.detach(), "targets": n_targets,
                 "unique_items": ids.numel()}
        return loss, stats

    loss = forward  # ``model.loss(seq, log_pop)``; call the DDP wrapper itself under DDP

    def _auxiliary_loss(self) -> torch.Tensor | None:
        """A model's own extra loss terms of the batch :meth:`_towers` just ran (LGMRec's); none here."""
        return None

    # ---- distillation --------------------------------------------------------------------------------
    def _shared_tensors(self) -> list[torch.Tensor]:
        """Tensors the teacher must share rather than copy (e.g. the cached features)."""
        return []

    def snapshot_teacher(self) -> None:
        """Keep a frozen eval-mode copy of the current model; it shares no feature memory."""
        memo = {id(t): None for t in self._shared_tensors()}
        memo[id(self.teacher)] = None
        teacher = copy.deepcopy(self, memo)
        teacher.requires_grad_(False)
        self.__dict__["teacher"] = teacher.eval()

    def begin_window(self) -> bool:
        """Window ``s >= 1`` start: a new teacher for the ``_kd`` variants (subclasses may also grow)."""
        if self.distill:
            self.snapshot_teacher()
        return False

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)  # the teacher follows .to(device) / .half()
        return self
