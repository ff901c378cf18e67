"""SSRM (Guo et al., KDD'19): a GRU session encoder with attention from a matrix-factorisation user
vector, mixed with that vector, streamed through a reservoir and an informativeness-sampled update set.

With ``q_j = E[x_j]`` the context's item embeddings, ``p_u = U[user]`` and ``h_1..h_L`` the GRU's
states over the context (padding skipped: the GRU starts at the first real click):

    α_j = softmax_j(p_uᵀ q_j)                  (over the real positions)
    c = [Σ_j α_j h_j ; h_L]
    r = w p_u + (1 − w) B c,   w = 0.5

Score ``r · E[j] = w p_uᵀ q_j + (1 − w) (B c)ᵀ q_j``: a matrix-factorisation score plus a session
score. Training: Eq. 8 at the row's last position (like every model here) instead of a full softmax.

Streaming: SSRM keeps a reservoir and updates on a sample weighted by how informative each session
is; the paper's informativeness score could not be read (no official code; its description in
GAG's paper: "evaluating how informative each session is"). Here it shares GAG's machinery
(``replay.update_set``): rows with a new user or item always, the rest drawn from reservoir ∪ new
rows by ``exp(rank(1 − p(target))/N)`` (``session_model.SessionModel.informativeness``). Say so
when citing the SSRM row.

Departures: the architecture follows the static re-implementation in twchen/SEFrame (an attention
keyed on the input item embeddings, not the GRU states; ``w = 0.5``), without its ``max_norm=1``
on the embedding rows; hidden size ``model.embed_dim``; the reservoir holds ``model.replay_size``
rows (SSRM's best was |D|/20); the project's optimizer, epochs and early stopping. Ids never
trained keep their ``N(0, 0.02²)`` start (``id_table.py``); a session without a user code reads a
zero user vector, so its score is the session part alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .session_model import SessionModel

VARIANTS = ("ssrm",)
USER_WEIGHT = 0.5


class SSRM(SessionModel):
    VARIANTS = VARIANTS

    def __init__(self, *, variant: str, n_item_rows: int, n_user_rows: int, embed_dim: int, max_len: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown SSRM variant {variant!r}; one of {list(VARIANTS)}")
        self.variant = variant
        self.args = dict(variant=variant, n_item_rows=int(n_item_rows), n_user_rows=int(n_user_rows),
                         embed_dim=embed_dim, max_len=max_len, dropout=dropout)
        self._init_tables(n_item_rows, n_user_rows, embed_dim)
        self.gru = nn.GRU(embed_dim, embed_dim, batch_first=True)
        self.mix = nn.Linear(2 * embed_dim, embed_dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def _session(self, table: torch.Tensor, index: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        real = index >= 0
        q = self.drop(table[index.clamp_min(0)] * real.unsqueeze(-1).to(table.dtype))  # [B, L, D]
        p = self.drop(users)
        h = self._gru_skipping_padding(q, real)
        scores = (q * p.unsqueeze(1)).sum(-1).masked_fill(~real, float("-inf"))
        alpha = torch.softmax(scores, dim=1).nan_to_num(0.0).unsqueeze(-1)  # all-padding rows: zeros
        c = torch.cat([(alpha * h).sum(dim=1), h[:, -1]], dim=-1)
        return USER_WEIGHT * p + (1 - USER_WEIGHT) * self.mix(c)

    def _gru_skipping_padding(self, q: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """GRU states ``[B, L, D]`` of left-padded inputs, starting at each row's first real click.

        Rows are shifted to left alignment, packed by length (cuDNN / the CPU kernel skip the tail)
        and shifted back, so a padded position never feeds the recurrence.
        """
        B, L, D = q.shape
        lengths = real.sum(dim=1)
        shift = (L - lengths).unsqueeze(1)  # left padding per row
        cols = (torch.arange(L, device=q.device).unsqueeze(0) + shift) % L
        left = q.gather(1, cols.unsqueeze(-1).expand(B, L, D))  # row content first, padding after
        packed = nn.utils.rnn.pack_padded_sequence(left, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
        back = (torch.arange(L, device=q.device).unsqueeze(0) - shift) % L
        return out.gather(1, back.unsqueeze(-1).expand(B, L, D)) * real.unsqueeze(-1).to(out.dtype)

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {"item_table": self.item_table, "user_table": self.user_table, "gru": self.gru, "mix": self.mix}
