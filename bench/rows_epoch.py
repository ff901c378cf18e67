"""Epoch time of the training rows (issue 10): one row per target (old) against pieces of ≤ L targets (new).

    python bench/rows_epoch.py                 # synth_medium preset, window 1; ~2-4 minutes on 2 CPU cores
    python bench/rows_epoch.py --config ml1m data.path=... backbone.text=...

Builds the preset's prepared stream and layer cache with the project's own data stages (reused when
current), then times full training epochs of one window through the real ``train_window`` step
(``model(seq, log_pop, first)``, Adam, the preset's batch size and precision) on:

* ``old``: the layout before issue 10 — one row per D_s target (its L previous items + the target) with
  loss at every real position, so each interaction is predicted in up to L overlapping rows and
  positions whose target lies in an earlier chunk carry loss;
* ``new``: ``train/data.py``'s rows — each D_s target once, loss only on D_s targets.

The predicted factor is the ratio of row counts (same batch size, same row width, so the same cost
per step); the measured one is the ratio of median epoch times. Last line:
``old_rows= new_rows= predicted_factor= old_epoch_s= new_epoch_s= measured_factor= old_loss_positions= new_loss_positions=``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsmoe_ray.cache import load_grouped, open_cache  # noqa: E402
from xsmoe_ray.config import load_config  # noqa: E402
from xsmoe_ray.prepared import load_prepared  # noqa: E402
from xsmoe_ray.stream import data_stages  # noqa: E402
from xsmoe_ray.train.data import epoch_batches, split_rows, window_data  # noqa: E402
from xsmoe_ray.train.window import _step  # noqa: E402
from xsmoe_ray.train.worker import new_model, warm_up_items  # noqa: E402


def old_rows(stream, c: int) -> np.ndarray:
    """The pre-issue-10 layout in the new format: context + target per D_c target, loss from position 1."""
    t = stream.train_targets(c)
    L = stream.max_len
    rows = np.empty((len(t), L + 2), dtype=np.int64)
    rows[:, :L], rows[:, L], rows[:, L + 1] = stream.context[t], stream.item[t], 1
    return rows


def loss_positions(rows: np.ndarray) -> int:
    seq, first = split_rows(rows)
    pos = np.arange(1, seq.shape[1])
    return int((((seq[:, 1:] > 0) & (seq[:, :-1] > 0)) & (pos[None, :] >= first[:, None])).sum())


def time_epochs(model, rows: np.ndarray, log_pop: torch.Tensor, cfg, epochs: int) -> list[float]:
    params = model.trainable_parameters()
    opt = torch.optim.Adam(params, lr=cfg.train.lr)
    data = torch.from_numpy(rows)
    out = []
    for e in range(epochs):
        t0 = time.perf_counter()
        for idx in epoch_batches(len(data), cfg.train.batch_size, seed=0, epoch=e):
            _step(model, opt, None, data[idx], log_pop, torch.device("cpu"), cfg.train.precision)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/rows_epoch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="synth_medium")
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per layout (median reported)")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "xsmoe_rows_epoch")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [f"run.out={args.root / 'run'}", *args.overrides]
                      + ([f"data.path={args.root / 'data'}"] if load_config(args.config).data.format == "synthetic" else []))
    prepared, cache = data_stages(cfg, args.root / "run")
    stream = load_prepared(prepared).stream
    n_items = load_prepared(prepared).n_items
    features = load_grouped(cache, cfg.model.layers_per_group, list(open_cache(cache).arrays), torch.device("cpu"))
    data = window_data(stream, args.window, n_items)
    log_pop = torch.from_numpy(data.log_pop)
    layouts = {"old": old_rows(stream, args.window), "new": data.train_rows}
    times = {}
    for name, rows in layouts.items():
        torch.manual_seed(0)
        model = new_model(cfg, features)
        model.set_item_features(features)
        model.fit_feature_norm(warm_up_items(stream))
        model.train()
        times[name] = statistics.median(time_epochs(model, rows, log_pop, cfg, args.epochs))
        print(f"{name}: {len(rows):,} rows, {loss_positions(rows):,} loss positions, epoch {times[name]:.2f} s", flush=True)
    o, n = layouts["old"], layouts["new"]
    print(f"old_rows={len(o)} new_rows={len(n)} predicted_factor={len(o) / len(n):.2f} old_epoch_s={times['old']:.2f} "
          f"new_epoch_s={times['new']:.2f} measured_factor={times['old'] / times['new']:.2f} "
          f"old_loss_positions={loss_positions(o)} new_loss_positions={loss_positions(n)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
