"""One window's epochs: train, validate, early-stop, keep the best weights (paper §5.2).

Adam at ``lr`` (reset every window) decayed ×``lr_decay`` per epoch down to ``lr_min``; early stop
after ``patience`` epochs without a gain in val NDCG@10; the best epoch's weights are restored at
the end. Utilization sums (Eq. 5) that drive pruning describe the *kept* weights: after the
restore, one forward pass of the item tower over the window's training rows collects them (the
sums of a later, discarded epoch would prune by weights that are no longer there).

Precision: ``auto`` (default) is fp16 autocast with a GradScaler on CUDA and float32 on CPU;
``half`` also uses bf16 autocast on CPU, which rounds away the small item-specific part of raw
cached states (docs/RESULTS.md), while evaluation always scores in float32; ``full`` is float32.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from xsmoe_ray.config import TrainConfig
from xsmoe_ray.evaluate import RankingSums, evaluate
from xsmoe_ray.scoring import ItemTable
from xsmoe_ray.train.data import Cases, WindowData, batch_occurrences, epoch_batches, split_rows
from xsmoe_ray.train.sync import all_reduce_sum, rank_and_world, unwrap


@dataclass
class WindowResult:
    epochs: int
    best_val_ndcg: float
    seconds: float
    losses: list[float] = field(default_factory=list)
    steps: int = 0  # optimizer steps, all epochs
    train_seconds: float = 0.0  # in the step loops only (no validation, no utilization pass)
    val_seconds: float = 0.0  # in the per-epoch validations
    utilization_seconds: float = 0.0  # the pass after the restore


def autocast_for(device: torch.device, precision: str):
    if precision == "full" or (precision == "auto" and device.type != "cuda"):
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def uses_grad_scaler(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision in ("half", "auto")


def _ranked(score_fn, cases: Cases, candidates: torch.Tensor, mask_history: bool, batch_size: int) -> RankingSums:
    """Full-ranking sums of this rank's share of ``cases`` under ``score_fn``, summed over all ranks."""
    rank, world = rank_and_world()
    mine = cases.shard(rank, world)
    cold = None if mine.cold is None else torch.from_numpy(mine.cold)
    users = None if mine.users is None else torch.from_numpy(mine.users)
    sums = evaluate(score_fn, torch.from_numpy(mine.contexts), torch.from_numpy(mine.targets), candidates, k=10,
                    batch_size=batch_size, mask_history=mask_history, cold=cold, users=users)
    return RankingSums.from_tensor(all_reduce_sum(sums.as_tensor(candidates.device)).cpu())


@torch.inference_mode()
def evaluate_cases(model: torch.nn.Module, cases: Cases, device: torch.device, mask_history: bool = False,
                   batch_size: int = 1024) -> RankingSums:
    """Full-ranking HR@10/NDCG@10 of this rank's share of ``cases``, summed over all ranks."""
    raw = unwrap(model)
    was_training = raw.training
    raw.eval()
    items = ItemTable(raw, torch.from_numpy(cases.candidates).to(device))  # once per evaluation
    sums = _ranked(items.scores, cases, items.candidates, mask_history, batch_size)
    raw.train(was_training)
    return sums


@torch.inference_mode()
def evaluate_popularity(counts: torch.Tensor, cases: Cases, device: torch.device, mask_history: bool = False,
                        batch_size: int = 1024) -> RankingSums:
    """The reference ranking on the same cases: candidates by ``counts`` [n_items+1] (interactions in
    the chunk before the test chunk), same tie rule, masking and sharding as :func:`evaluate_cases`."""
    candidates = torch.from_numpy(cases.candidates).to(device)
    row = counts.to(device=device, dtype=torch.float32)[candidates]  # [C]
    return _ranked(lambda ctx, out, users=None: out.copy_(row.expand(len(ctx), -1)), cases, candidates, mask_history,
                   batch_size)


def train_window(model, data: WindowData, cfg: TrainConfig, device: torch.device, *, seed: int,
                 mask_history: bool = False, replay=None, log=print) -> WindowResult:
    """Run the epochs of one window on ``model`` (DDP-wrapped or not); returns what happened."""
    raw = unwrap(model)
    t0 = time.perf_counter()
    rank, world = rank_and_world()
    seqs = torch.from_numpy(data.train_rows)
    log_pop = torch.from_numpy(data.log_pop).to(device)
    params = raw.trainable_parameters()
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if uses_grad_scaler(device, cfg.precision) else None
    best, best_state, stale, result = -1.0, None, 0, WindowResult(0, 0.0, 0.0)
    max_epochs = cfg.max_epochs if len(data.val) else min(cfg.max_epochs, cfg.patience)
    for epoch in range(max_epochs if len(seqs) else 0):
        for group in optimizer.param_groups:
            group["lr"] = max(cfg.lr * cfg.lr_decay ** epoch, cfg.lr_min)
        raw.train()
        losses, t_steps = [], time.perf_counter()
        batches = epoch_batches(len(seqs), cfg.batch_size, seed, epoch, rank, world)
        for idx in batches[: cfg.max_steps or None]:
            batch = seqs[idx]
            if replay is not None and len(replay):
                batch = replay.mix(batch, rank=rank, world=world)
            losses.append(_step(model, optimizer, scaler, batch.to(device), log_pop, device, cfg.precision))
        if losses:
            float(losses[-1])  # wait for the device, so the step time is the steps'
        result.train_seconds += time.perf_counter() - t_steps
        result.steps += len(losses)
        result.epochs = epoch + 1
        result.losses.append(float(torch.stack(losses).float().mean()) if losses else float("nan"))
        t_val = time.perf_counter()
        val = evaluate_cases(model, data.val, device, mask_history).ndcg_mean if len(data.val) else 0.0
        result.val_seconds += time.perf_counter() - t_val
        log(f"  epoch {epoch + 1:>2}  loss {result.losses[-1]:.4f}  val NDCG@10 {100 * val:.2f}%  "
            f"lr {optimizer.param_groups[0]['lr']:.2e}")
        if val > best:
            best, stale = val, 0
            best_state = copy.deepcopy(raw.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        raw.load_state_dict(best_state)
    t_util = time.perf_counter()
    track_utilization(raw, seqs, cfg.batch_size, device, rank, world)
    result.utilization_seconds = time.perf_counter() - t_util
    result.best_val_ndcg, result.seconds = max(best, 0.0), time.perf_counter() - t0
    return result


@torch.no_grad()
def track_utilization(raw, rows: torch.Tensor, batch_size: int, device: torch.device, rank: int, world: int,
                      chunk: int = 2048) -> None:
    """Utilization sums (Eq. 5) of the current weights over this rank's share of the training rows.

    Per batch's unique items as in training, over one epoch's deterministic batches (the same on a
    re-run). An item's score depends on the item alone (the side networks have no dropout and see
    no context), so the tower runs once per distinct item, counted as often as the item occurs in a
    batch: the per-batch sums, at the cost of one tower call per item rather than per batch entry
    (at full H&M scale on CPU the per-batch pass took most of a window).
    """
    raw.reset_utilization()
    if not raw.tracks_utilization:  # no side network (noft, ID models): nothing to track
        return
    batches = epoch_batches(len(rows), batch_size, seed=0, epoch=0, rank=rank, world=world)
    ids, counts = (torch.from_numpy(a) for a in batch_occurrences(rows, batches))
    was_training = raw.training
    raw.train()  # tracking counts training-mode calls only
    for lo in range(0, len(ids), chunk):
        raw.set_utilization_tracking(True, counts[lo:lo + chunk].to(device))
        raw.item_embeddings(ids[lo:lo + chunk].to(device))
    raw.set_utilization_tracking(False)
    raw.train(was_training)


def _step(model, optimizer, scaler, batch, log_pop, device, precision) -> torch.Tensor:
    """One optimizer step; the loss stays on the device (no host sync per step)."""
    optimizer.zero_grad(set_to_none=True)
    seq, first, users = split_rows(batch)
    with autocast_for(device, precision):
        loss, _ = model(seq, log_pop, first, users)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()
