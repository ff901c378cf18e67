"""In-batch debiased cross-entropy (XSMoE paper Eq. 8, as in IISAN) and the iisan_kd distillation term.

Eq. 8 scores the user state of every loss position against every *position* ``j`` of the batch,
duplicates included, with the popularity correction ``y_uj - log p_j``; the positive is the next
item, and every other column holding an item of the same user's sequence is masked, so a user's own
history never counts as a negative::

    D_ui = exp(y_ui - log p_i) + sum_{j in [B], item(j) not in I_u} exp(y_uj - log p_j)
    L_CE = - mean over loss positions of log(exp(y_ui - log p_i) / D_ui)

Here the item tower runs once per *unique* item, so the columns are the ``U`` unique items and an
item present ``n_j`` times among the batch's entries gets ``+ log n_j`` (``n_j exp(y) = exp(y + log
n_j)``): exactly Eq. 8's sum over positions. The positive keeps weight one, as in IISAN, where its
other copies are the user's own and are masked.

Loss positions: position ``t`` (1..L) of a row ``[B, L+1]`` carries loss when its target and its
input ``t-1`` are real items (IISAN masks by the input: no "first item from nothing"), and
``t >= first`` of the row (the training rows of ``train/data.py`` put earlier targets of older
chunks in front as context only; ``first`` = 1 trains every position).

Departure: the paper sums over users and items; this takes the mean over loss positions so the loss
scale does not depend on the batch size. Everything is vectorised: one ``[P, U]`` logit matrix for
``P`` loss positions. Logits are float32 before the correction and masking, and masked entries take
float32's most negative finite value, so the loss is the same under bf16/fp16 autocast and the KL
term never meets ``0 * inf``. Two implementations give the same value: :func:`masked_logits` +
:func:`debiased_ce` (plain autograd; its logits also feed the KD term) and
:func:`fused_debiased_ce` (one custom autograd op that reuses a single ``[P, U]`` buffer, used for
training when no KD term is needed; ``bench/train_step.py`` shows why). ``bench/loss_reference.py``
is the all-positions reference both are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_candidates(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique non-padding ids of a batch and every entry's index among them.

    ``seq`` [B, T] int64 (0 = padding) → ``ids`` [U] sorted, ``index`` [B, T] with -1 at padding.
    """
    flat = F.pad(seq.flatten(), (1, 0))  # a leading 0 makes id 0 always present, and first once sorted
    ids, inverse = torch.unique(flat, return_inverse=True)
    return ids[1:], (inverse[1:] - 1).view_as(seq)


MASKED = torch.finfo(torch.float32).min


def _targets(index: torch.Tensor, first: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss positions of ``index`` [B, L+1]: ``valid`` [B, L] bool, positive column ``pos`` [P], and
    the columns ``own`` [P, L+1] of every item of the row's user (padding entries point at ``pos``).

    Position ``t`` (column ``t-1`` of ``valid``) counts when target ``t`` and input ``t-1`` are real
    and ``t >= first`` (``first`` [B], default 1).
    """
    targets = index[:, 1:]  # [B, L]
    valid = (targets >= 0) & (index[:, :-1] >= 0)
    if first is not None:
        position = torch.arange(1, index.shape[1], device=index.device)  # [L]: 1..L
        valid &= position[None, :] >= first[:, None]
    pos = targets[valid]  # [P]
    own = index[valid.nonzero()[:, 0]]  # [P, L+1]
    return valid, pos, torch.where(own < 0, pos[:, None], own)


def log_multiplicity(index: torch.Tensor, n_columns: int) -> torch.Tensor:
    """``log n_j`` [U]: how often each unique column occurs among the batch's non-padding entries."""
    counts = torch.bincount(index[index >= 0], minlength=n_columns)
    return counts.clamp_min(1).float().log()


def _column_bias(index: torch.Tensor, log_pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unique column ``log n_j - log p_j`` (Eq. 8 over positions) and ``log n_j`` itself."""
    log_n = log_multiplicity(index, log_pop.numel())
    return log_n - log_pop.float(), log_n


def _mask_own(logits: torch.Tensor, own: torch.Tensor, pos: torch.Tensor, positive: torch.Tensor,
              inplace: bool) -> torch.Tensor:
    """Set the user's items to ``MASKED``, then write the positive's logit ``positive`` [P, 1] back
    (so no ``[P, U]`` boolean mask is ever built)."""
    if inplace:
        return logits.scatter_(1, own, MASKED).scatter_(1, pos[:, None], positive)
    return logits.scatter(1, own, MASKED).scatter(1, pos[:, None], positive)


def masked_logits(states: torch.Tensor, table: torch.Tensor, index: torch.Tensor, log_pop: torch.Tensor,
                  first: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Debiased, masked in-batch logits of every loss position (differentiable, plain autograd).

    ``states`` [B, L, D] user states for inputs ``index[:, :-1]``; ``table`` [U, D] embeddings of the
    batch's unique items; ``index`` [B, L+1] position of each entry in ``table`` (-1 = padding);
    ``log_pop`` [U] log popularity of those items; ``first`` [B] first loss position per row.
    Returns ``logits`` [P, U] float32 (Eq. 8's columns merged per item, ``+ log n_j``) and the
    positive column ``pos`` [P].
    """
    valid, pos, own = _targets(index, first)
    bias, log_n = _column_bias(index, log_pop)
    logits = (states[valid] @ table.T).float() + bias  # [P, U], Eq. 7 minus log p_j plus log n_j
    positive = logits.gather(1, pos[:, None]) - log_n[pos, None]  # the positive counts once
    return _mask_own(logits, own, pos, positive, inplace=False), pos


def debiased_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Eq. 8 from :func:`masked_logits` output: mean over target positions."""
    return F.cross_entropy(logits, pos)


class _FusedDebiasedCE(torch.autograd.Function):
    """Eq. 8 with one ``[P, U]`` buffer: logits, in-place masking and softmax, gradient in place.

    Forward: ``addmm`` (logits plus the column bias in one pass), mask, ``exp(x - max)``, normalise; the
    softmax is kept. Backward: ``(softmax - onehot(pos)) / P`` written over it, then two matmuls.
    Equivalent to :func:`masked_logits` + :func:`debiased_ce`, with ~3x fewer passes over
    ``[P, U]`` and no autograd intermediates of that size.
    """

    @staticmethod
    def forward(ctx, states, table, bias, log_n, own, pos):
        logits = torch.addmm(bias, states, table.T)  # [P, U]: y - log p + log n
        positive = logits.gather(1, pos[:, None]) - log_n[pos, None]  # [P, 1], before masking; counts once
        _mask_own(logits, own, pos, positive, inplace=True)
        top = logits.max(1, keepdim=True).values  # [P, 1]
        probs = logits.sub_(top).exp_()  # [P, U], unnormalised softmax
        total = probs.sum(1, keepdim=True)
        probs.div_(total)
        ctx.save_for_backward(states, table, probs, pos)
        ctx.used = False
        return (top + total.log() - positive).mean()

    @staticmethod
    def backward(ctx, grad):
        if ctx.used:
            raise RuntimeError("fused debiased CE: backward can run once (its softmax buffer is reused)")
        ctx.used = True
        states, table, probs, pos = ctx.saved_tensors
        P = probs.shape[0]
        probs[torch.arange(P, device=pos.device), pos] -= 1.0  # softmax - onehot, in place
        g = probs.mul_(grad / P)  # [P, U]
        g_states = g @ table if ctx.needs_input_grad[0] else None
        g_table = g.T @ states if ctx.needs_input_grad[1] else None
        return g_states, g_table, None, None, None, None


def fused_debiased_ce(states: torch.Tensor, table: torch.Tensor, index: torch.Tensor, log_pop: torch.Tensor,
                      first: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """:func:`masked_logits` + :func:`debiased_ce` in one fused op (float32, autocast off inside).

    Same arguments as :func:`masked_logits`; returns ``(loss, P)``. Use it when nothing else needs
    the logits (the iisan_kd distillation does).
    """
    valid, pos, own = _targets(index, first)
    bias, log_n = _column_bias(index, log_pop)
    with torch.autocast(states.device.type, enabled=False):
        loss = _FusedDebiasedCE.apply(states[valid].float(), table.float(), bias, log_n, own, pos)
    return loss, pos.numel()


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per target row, averaged (iisan_kd).

    Both ``[P, U]`` masked logits over the same in-batch candidates; masked entries have zero
    teacher probability and contribute nothing.
    """
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                    reduction="batchmean")
