"""Epoch time and peak memory of the training-row layouts (``train.rows``: sliding, once, legacy).

    python bench/rows_epoch.py                 # synth_medium preset, window 1; ~3-5 minutes on 2 CPU cores
    python bench/rows_epoch.py --config ml1m data.path=data/ml1m/ml-1m backbone.text=data/ml1m/all-MiniLM-L6-v2
    python bench/rows_epoch.py --config hm --prepared /tmp/xsmoe_hm_scale/prepared \\
        --cache /tmp/xsmoe_hm_scale/cache --window 0 --max-steps 20     # full-H&M-sized windows (bench/hm_scale.py)

Builds the preset's prepared stream and layer cache with the project's own data stages (reused when
current; or takes ``--prepared``/``--cache`` as written by ``bench/hm_scale.py``), then for each layout
of ``xsmoe_ray/train/data.py``, in a fresh process so its peak resident memory is its own:

* builds the window's rows (``window_data(..., layout)``; seconds and MB of the row array);
* times training epochs through the real step (``model(seq, log_pop, first)``, Adam, the preset's
  batch size and precision). With ``--max-steps`` an epoch is estimated as the median step time ×
  the epoch's batches (for windows too large to train whole on this machine);
* reports the process's peak RSS (``ru_maxrss``: data, cache, model and rows together, so the
  difference between layouts is what the rows cost).

Layouts: ``sliding`` one row per target, loss on every position whose target is this window's;
``once`` each target once per epoch (pieces of ≤ L targets); ``legacy`` the layout before issue 10
(one row per target, loss at every position, earlier chunks replayed). Last line:
``<layout>_rows= <layout>_loss_positions= <layout>_epoch_s= <layout>_peak_rss_mb=`` for each layout.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsmoe_ray.cache import load_grouped, open_cache  # noqa: E402
from xsmoe_ray.config import ROW_LAYOUTS, load_config  # noqa: E402
from xsmoe_ray.prepared import load_prepared  # noqa: E402
from xsmoe_ray.train.data import epoch_batches, split_rows, window_data  # noqa: E402
from xsmoe_ray.train.window import _step  # noqa: E402
from xsmoe_ray.train.worker import new_model, warm_up_items  # noqa: E402


def loss_positions(rows: np.ndarray) -> int:
    seq, first, _ = split_rows(rows)
    pos = np.arange(1, seq.shape[1])
    return int((((seq[:, 1:] > 0) & (seq[:, :-1] > 0)) & (pos[None, :] >= first[:, None])).sum())


def step_times(model, rows: np.ndarray, log_pop: torch.Tensor, cfg, epochs: int, max_steps: int) -> list[float]:
    """Seconds per epoch (``max_steps`` = 0) or per step (the steps of one capped epoch)."""
    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.train.lr)
    data = torch.from_numpy(rows)
    out = []
    for e in range(1 if max_steps else epochs):
        t0 = time.perf_counter()
        for idx in epoch_batches(len(data), cfg.train.batch_size, seed=0, epoch=e)[: max_steps or None]:
            t_step = time.perf_counter()
            _step(model, opt, None, data[idx], log_pop, torch.device("cpu"), cfg.train.precision)
            if max_steps:
                out.append(time.perf_counter() - t_step)
        if not max_steps:
            out.append(time.perf_counter() - t0)
    return out


def measure(layout: str, args) -> dict:
    """One layout, in this process: rows, epoch time and this process's peak RSS."""
    cfg = load_config(args.config, [f"run.out={args.root / 'run'}", *args.overrides])
    loaded = load_prepared(args.prepared)
    stream, n_items = loaded.stream, loaded.n_items
    features = load_grouped(args.cache, cfg.model.layers_per_group, list(open_cache(args.cache).arrays),
                            torch.device("cpu"))
    t0 = time.perf_counter()
    data = window_data(stream, args.window, n_items, layout)
    build_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = new_model(cfg, features)
    model.set_item_features(features)
    model.fit_feature_norm(warm_up_items(stream))
    model.train()
    times = step_times(model, data.train_rows, torch.from_numpy(data.log_pop), cfg, args.epochs, args.max_steps)
    batches = -(-len(data.train_rows) // cfg.train.batch_size)
    epoch_s = statistics.median(times) * (batches if args.max_steps else 1)
    return {"rows": len(data.train_rows), "targets": data.n_targets, "loss_positions": loss_positions(data.train_rows),
            "build_s": build_s, "rows_mb": data.train_rows.nbytes / 2**20, "epoch_s": epoch_s,
            "estimated": bool(args.max_steps), "batches": batches,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/rows_epoch.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="synth_medium")
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per layout (median reported)")
    p.add_argument("--max-steps", type=int, default=0, help="time this many steps and estimate the epoch (0: whole epochs)")
    p.add_argument("--layouts", nargs="+", default=list(ROW_LAYOUTS), choices=ROW_LAYOUTS)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "xsmoe_rows_epoch")
    p.add_argument("--prepared", type=Path, help="a prepared stream (default: built from the preset)")
    p.add_argument("--cache", type=Path, help="its layer cache (default: built from the preset)")
    p.add_argument("--only", choices=ROW_LAYOUTS, help=argparse.SUPPRESS)  # the per-layout child process
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return 0
    if not (args.prepared and args.cache):
        from xsmoe_ray.stream import data_stages

        synthetic = load_config(args.config).data.format == "synthetic"
        cfg = load_config(args.config, [f"run.out={args.root / 'run'}", *args.overrides]
                          + ([f"data.path={args.root / 'data'}"] if synthetic else []))
        args.prepared, args.cache = data_stages(cfg, args.root / "run")
    results = {}
    for layout in args.layouts:
        cmd = [sys.executable, __file__, "--only", layout, "--config", args.config, "--window", str(args.window),
               "--epochs", str(args.epochs), "--max-steps", str(args.max_steps), "--root", str(args.root),
               "--prepared", str(args.prepared), "--cache", str(args.cache), *args.overrides]
        child = subprocess.run(cmd, capture_output=True, text=True)
        if child.returncode != 0:  # the child's own error, not a bare CalledProcessError
            raise SystemExit(f"rows_epoch: layout {layout} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        r = results[layout] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{layout:<8} {r['rows']:>11,} rows ({r['rows_mb']:.0f} MB, built in {r['build_s']:.1f} s), "
              f"{r['loss_positions']:>11,} loss positions for {r['targets']:,} targets, epoch "
              f"{r['epoch_s']:.2f} s{' (estimated from steps)' if r['estimated'] else ''}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(" ".join(f"{k}_rows={r['rows']} {k}_loss_positions={r['loss_positions']} {k}_epoch_s={r['epoch_s']:.2f} "
                   f"{k}_peak_rss_mb={r['peak_rss_mb']:.0f}" for k, r in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
