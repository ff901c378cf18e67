"""The streaming window loop (paper Algorithm 1; DESIGN.md §4, §6), run by every Ray Train worker.

Window 0 warms a fresh model up on D_0. Window s = 1..T-1: expand (``begin_window``) → train on
D_s with early stopping on D_s's val split → test on D_{s+1} → prune experts under τ → report
metrics and a checkpoint. Structural changes happen identically on every rank (all-reduced
utilization sums, deterministic decisions), the model is re-wrapped in DDP and the optimizer
rebuilt each window, and a parameter hash is compared across ranks after every window.

The loop takes its ``report`` and ``get_checkpoint`` functions as arguments, so the same code runs
under Ray Train (``train_loop_per_worker``) and as a one-worker Ray Tune trial.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xsmoe_ray.cache import load_grouped, open_cache
from xsmoe_ray.config import ExperimentConfig, ModelConfig, from_dict
from xsmoe_ray.model import ExpertStart, ReservoirBuffer, StreamModel, build_model
from xsmoe_ray.model.replay import update_set
from xsmoe_ray.model.params import parameter_report
from xsmoe_ray.prepared import load_prepared
from xsmoe_ray.train.checkpoint import WindowState, load_state, save_state
from xsmoe_ray.train.data import chunk_counts, unseen_rows, window_data
from xsmoe_ray.train.sync import (all_reduce_sum, broadcast_from_rank0, check_same_across_ranks, parameter_hash,
                                  rank_and_world, wrap)
from xsmoe_ray.train.window import evaluate_cases, evaluate_popularity, train_window

ReportFn = Callable[[dict, "object | None"], None]


def rank0_log(message: str) -> None:
    """Progress lines from rank 0 only (Ray forwards worker output to the driver).

    Written to the process's real stdout: Train V2 patches ``print`` in workers to tee into both a
    wrapped ``sys.stdout`` and its logger, which showed every line twice on the driver.
    """
    if rank_and_world()[0] == 0:
        print(message, file=sys.__stdout__ or sys.stdout, flush=True)


def new_model(cfg: ExperimentConfig, features: dict[str, torch.Tensor], n_users: int = 0) -> StreamModel:
    """The configured model over these cached features; ``n_users``: for models with a user table."""
    dims = {m: int(t.shape[-1]) for m, t in features.items()}
    first = next(iter(features.values()))
    n_groups = int(first.shape[1]) - 1
    return build_model(cfg.model.variant, text_dim=dims.get("text"), image_dim=dims.get("image"),
                       n_item_rows=int(first.shape[0]), n_user_rows=n_users + 1,
                       n_groups=n_groups, d_prime=cfg.model.d_prime, embed_dim=cfg.model.embed_dim,
                       max_len=cfg.data.max_len, seq_blocks=cfg.model.seq_blocks, seq_heads=cfg.model.seq_heads,
                       dropout=cfg.model.dropout, modalities=tuple(features), kd_weight=cfg.model.kd_weight,
                       feature_norm=cfg.model.feature_norm, expert_start=expert_start(cfg.model),
                       item_ids=cfg.model.item_ids, item_id_dropout=cfg.model.item_id_dropout)


def expert_start(model: ModelConfig) -> ExpertStart:
    return ExpertStart(init=model.new_expert_init, share=model.new_expert_share, copy_share=model.new_expert_copy_share)


def stream_users(stream) -> int:
    """Number of user codes of the stream (codes are ``0..n-1``)."""
    return int(stream.user.max()) + 1 if len(stream.user) else 0


def model_features(cfg: ExperimentConfig, cache: str | Path, device) -> dict[str, torch.Tensor]:
    """The cached layer states the configured variant reads, grouped (``visual``/``textual``: one modality)."""
    modalities = list(open_cache(cache).arrays)
    if cfg.model.variant in ("visual", "textual"):
        wanted = "image" if cfg.model.variant == "visual" else "text"
        modalities = [m for m in modalities if m == wanted] or modalities
    return load_grouped(cache, cfg.model.layers_per_group, modalities, device)


def warm_up_items(stream) -> torch.Tensor:
    """The items of D_0 (every split): the only items the feature standardisation is fitted on."""
    return torch.from_numpy(np.unique(stream.item[stream.rows(0)]).astype(np.int64))


def restore(checkpoint) -> WindowState | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_state(d)


def reduced_utilization(model: StreamModel) -> dict[str, torch.Tensor]:
    return {k: all_reduce_sum(v) for k, v in model.utilization_sums().items()}


def maybe_fail(config: dict, window: int) -> None:
    """Test-only switches: crash this worker once at the start of ``fail_at_window``; or, once, hold
    rank 0 at the start of ``hold_at_window`` (``hold_marker`` written, then a long sleep) so that a
    test can kill the driver mid-run."""
    hold_at, held = config.get("hold_at_window"), config.get("hold_marker")
    if hold_at is not None and window == hold_at and held and not Path(held).exists() and rank_and_world()[0] == 0:
        Path(held).write_text(f"holding at window {window}\n")
        time.sleep(600)
    fail_at, marker = config.get("fail_at_window"), config.get("fail_marker")
    if fail_at is None or window != fail_at or not marker or Path(marker).exists():
        return
    Path(marker).write_text(f"failed at window {window}\n")
    raise RuntimeError(f"injected worker failure at window {window} (test switch fail_at_window)")


def run_windows(config: dict, report: ReportFn, get_checkpoint: Callable[[], object],
                device: torch.device) -> None:
    """All windows from the one after the latest checkpoint; see the module docstring."""
    cfg = from_dict(config["cfg"])
    rank, _ = rank_and_world()
    prepared = load_prepared(config["prepared"])
    stream = prepared.stream
    features = model_features(cfg, config["cache"], device)
    state = restore(get_checkpoint())
    if state is None:
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank and every run
        state = WindowState(window=-1, model=new_model(cfg, features, stream_users(stream)))
    else:
        rank0_log(f"[stream] resuming after window {state.window}")
    raw = state.model
    raw.set_item_features(features)
    raw.set_user_count(stream_users(stream))  # a continued run's stream may have new users
    if state.window < 0:
        raw.fit_feature_norm(warm_up_items(stream))  # fixed at warm-up; a resume loads it from the checkpoint
    raw.to(device)
    keeps_reservoir = raw.replay or raw.samples_update_set
    replay = ReservoirBuffer(cfg.model.replay_size, seed=cfg.run.seed) if keeps_reservoir else None
    if replay is not None and state.replay:
        replay.load_state_dict(state.replay)
    last = stream.n_chunks - 2 if cfg.train.last_window < 0 else min(cfg.train.last_window, stream.n_chunks - 2)
    for w in range(state.window + 1, last + 1):
        maybe_fail(config, w)
        row = run_one_window(cfg, raw, stream, prepared.n_items, w, device, replay)
        state.history = [r for r in state.history if r["window"] != w] + [row]  # a re-run replaces
        state.window = w
        state.replay = replay.state_dict() if replay is not None else None
        _report(report, row, state, config, rank)


def run_one_window(cfg: ExperimentConfig, raw: StreamModel, stream, n_items: int, w: int, device, replay) -> dict:
    torch.manual_seed(cfg.run.seed * 100_003 + w)  # a re-run window repeats exactly
    if w >= 1:
        raw.begin_window()
    model = wrap(raw, device)
    data = window_data(stream, w, n_items, cfg.train.rows)
    fresh = data.train_rows
    rank0_log(f"[stream] window {w}: train on D_{w} ({data.n_targets:,} targets in {len(data.train_rows):,} rows)"
              + (f", test on D_{w + 1} ({len(data.test):,} cases)" if w >= 1 else " (warm-up)"))
    if raw.samples_update_set and replay is not None and len(replay):
        data.train_rows = sampled_update_set(raw, stream, w, data.train_rows, replay, device)
    replayed = replay.data[:len(replay)] if raw.replay and replay is not None and len(replay) else None
    raw.set_window_rows(data.train_rows, replayed)
    result = train_window(model, data, cfg.train, device, seed=cfg.run.seed * 1000 + w,
                          mask_history=cfg.data.mask_history, replay=None if raw.samples_update_set else replay,
                          log=rank0_log)
    test = evaluate_cases(model, data.test, device, cfg.data.mask_history) if w >= 1 else None
    popular = (evaluate_popularity(torch.from_numpy(chunk_counts(stream, w, n_items)), data.test, device,
                                   cfg.data.mask_history) if test else None)
    sums = reduced_utilization(raw)
    utilization, router = raw.utilization(sums), raw.router_weights()  # before pruning: what it was decided on
    removed = raw.prune(cfg.model.tau, sums)
    if replay is not None:
        replay.add(torch.from_numpy(fresh))
    digest = parameter_hash(raw)
    check_same_across_ranks(digest)  # raises on every rank if any rank diverged
    params = parameter_report(raw)["model"]
    row = {
        "window": w, "test_chunk": w + 1 if w >= 1 else None,
        "hr10": test.hr if test else None, "ndcg10": test.ndcg_mean if test else None,
        "pop_hr10": popular.hr if popular else None, "pop_ndcg10": popular.ndcg_mean if popular else None,
        "cold_share": test.cold_share if test else None,
        "warm_hr10": test.warm.hr if test else None, "warm_ndcg10": test.warm.ndcg_mean if test else None,
        "pop_warm_ndcg10": popular.warm.ndcg_mean if popular else None,
        "val_ndcg10": result.best_val_ndcg, "epochs": result.epochs, "seconds": result.seconds,
        "steps": result.steps, "train_s": result.train_seconds, "val_s": result.val_seconds,
        "util_s": result.utilization_seconds,
        "experts": raw.experts_per_layer(), "pruned": {m: {str(k): v for k, v in d.items()} for m, d in removed.items()},
        "mp_mb": params["total_mb"], "trp_mb": params["trainable_mb"],
        "utilization": utilization, "router": router,
        "param_hash": digest,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    if test:
        rank0_log(f"[stream] window {w}: test D_{w + 1}  HR@10 {100 * test.hr:.2f}%  NDCG@10 "
                  f"{100 * test.ndcg_mean:.2f}%  (popularity {100 * popular.ndcg_mean:.2f}%; "
                  f"{result.epochs} epochs, {result.seconds:.1f} s, "
                  f"experts {row['experts']})")
    return row


def sampled_update_set(raw: StreamModel, stream, w: int, rows: np.ndarray, replay: ReservoirBuffer, device) -> np.ndarray:
    """The window's rows replaced by the model's update set (GAG, SSRM: ``replay.update_set``); the
    informativeness is rank 0's, so every rank draws the same rows."""
    def scores(pool: np.ndarray) -> np.ndarray:
        d = raw.informativeness(torch.from_numpy(pool), device).to(device=device, dtype=torch.float32)
        return broadcast_from_rank0(d).cpu().numpy()

    new = unseen_rows(stream, rows, w)
    picked, from_reservoir = update_set(rows, new, replay, scores)
    rank0_log(f"[stream] window {w}: update set of {len(picked):,} rows: {int(new.sum()):,} with a new user or item, "
              f"{from_reservoir:,} from the reservoir ({len(replay):,} rows), the rest sampled from the new rows")
    return picked


def window_metrics(row: dict, history: list[dict]) -> dict:
    """What a window reports to Ray: its row without the per-expert utilization and router weights
    (those stay in the checkpoint's history, history.json), plus the mean test metrics of ``history``
    (the windows so far, this one included) and the mean of their best val NDCG@10 (warm-up
    included): the figure sweeps select on, since choosing by the test means is test-set selection."""
    metrics = {k: v for k, v in row.items() if v is not None and k not in ("utilization", "router")}
    metrics["mean_val_ndcg10"] = _mean([r["val_ndcg10"] for r in history if r.get("val_ndcg10") is not None])
    metrics["mean_test_ndcg10"] = _mean([r["ndcg10"] for r in history if r.get("ndcg10") is not None])
    metrics["mean_test_hr10"] = _mean([r["hr10"] for r in history if r.get("hr10") is not None])
    return metrics


def _report(report: ReportFn, row: dict, state: WindowState, config: dict, rank: int) -> None:
    metrics = window_metrics(row, state.history)
    if rank != 0:
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, state, config["cfg"])
        from ray.train import Checkpoint

        report(metrics, Checkpoint.from_directory(tmp))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: the window loop with Train's report/checkpoint and this worker's device."""
    import ray.train
    import ray.train.torch

    def report(metrics, checkpoint):
        w = int(metrics["window"])
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"window_{w:04d}")

    device = ray.train.torch.get_device() if config["cfg"]["train"]["use_gpu"] else torch.device("cpu")
    run_windows(config, report, ray.train.get_checkpoint, device)
