"""Training time per epoch of every model on the same window, against ``iisan_rh`` (issue 19).

    python bench/baseline_speed.py --config ml1m data.path=data/ml1m/ml-1m \\
        backbone.text=data/ml1m/all-MiniLM-L6-v2 data.sample_users=400     # ~10 minutes on 2 CPU cores

Builds the preset's prepared stream and layer cache with the project's own data stages (reused when
current), then for each variant trains window ``--window`` (default 1) the way the window loop
does: a model fitted on nothing (speed does not depend on the weights), the window's rows as
``train.rows`` lays them out, a reservoir holding the earlier windows' rows for the ``_rh``
variants (mixed into every batch), GAG's and SSRM's update set drawn from it, LGMRec's graph of the
window's rows, and ``train.window.train_window`` itself for ``--epochs`` epochs without early
stopping. The figure is its step-loop time per epoch (no validation, no utilization pass). Each
variant runs twice, in forward then reverse order, and keeps its faster pass, so that load from
other jobs on the machine hits every variant alike.

Last line: ``<variant>_epoch_s=`` and ``<variant>_over_iisan_rh=`` for each variant (a ratio
``<= 1`` means at least as fast as ``iisan_rh``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsmoe_ray.cache import load_grouped, open_cache  # noqa: E402
from xsmoe_ray.config import VARIANTS, load_config  # noqa: E402
from xsmoe_ray.model import ReservoirBuffer  # noqa: E402
from xsmoe_ray.prepared import load_prepared  # noqa: E402
from xsmoe_ray.train.data import window_data  # noqa: E402
from xsmoe_ray.train.window import train_window  # noqa: E402
from xsmoe_ray.train.worker import new_model, sampled_update_set, stream_users, warm_up_items  # noqa: E402

DEFAULT = ("iisan_rh", "xsmoe", "sasrec_id", "sasrec_id_rh", "mmmlp", "mmmlp_rh", "gag", "ssrm", "lgmrec",
           "lgmrec_rh")


def epoch_seconds(variant: str, args, prepared, features) -> dict:
    """One variant's window ``args.window``: step-loop seconds per epoch and its rows."""
    cfg = load_config(args.config, [f"run.out={args.root / 'run'}", f"model.variant={variant}",
                                    f"train.max_epochs={args.epochs}", f"train.patience={args.epochs + 1}",
                                    *args.overrides])
    stream, w, device = prepared.stream, args.window, torch.device("cpu")
    torch.manual_seed(0)
    model = new_model(cfg, features, stream_users(stream))
    model.set_item_features(features)
    model.fit_feature_norm(warm_up_items(stream))
    replay = None
    if model.replay or model.samples_update_set:
        replay = ReservoirBuffer(cfg.model.replay_size, seed=0)
        for earlier in range(w):
            replay.add(torch.from_numpy(window_data(stream, earlier, prepared.n_items, cfg.train.rows).train_rows))
    if w >= 1:
        model.begin_window()
    data = window_data(stream, w, prepared.n_items, cfg.train.rows)
    if model.samples_update_set and replay is not None and len(replay):
        data.train_rows = sampled_update_set(model, stream, w, data.train_rows, replay, device)
    replayed = replay.data[:len(replay)] if model.replay and replay is not None and len(replay) else None
    model.set_window_rows(data.train_rows, replayed)
    result = train_window(model, data, cfg.train, device, seed=0, replay=replay if model.replay else None,
                          log=lambda *_: None)
    return {"epoch_s": result.train_seconds / max(result.epochs, 1), "rows": len(data.train_rows),
            "steps": result.steps // max(result.epochs, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/baseline_speed.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ml1m")
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per pass")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT), metavar="VARIANT",
                   help=f"models to time (iisan_rh is always added); one or more of {', '.join(VARIANTS)}")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "xsmoe_baseline_speed")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=... (as for xsmoe_ray.stream)")
    args = p.parse_args(argv)
    # --variants takes every word after it, so key=value overrides written after it land there
    args.overrides += [v for v in args.variants if "=" in v]
    args.variants = [v for v in args.variants if "=" not in v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"unknown variant(s) {unknown or '(none given)'}; one or more of {', '.join(VARIANTS)}")
    if "iisan_rh" not in args.variants:
        args.variants.insert(0, "iisan_rh")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from xsmoe_ray.stream import data_stages

    if load_config(args.config).data.format == "synthetic":
        args.overrides.insert(0, f"data.path={args.root / 'data'}")  # generated there on first use
    cfg = load_config(args.config, [f"run.out={args.root / 'run'}", *args.overrides])
    prepared_dir, cache_dir = data_stages(cfg, args.root / "run")
    prepared = load_prepared(prepared_dir)
    features = load_grouped(cache_dir, cfg.model.layers_per_group, list(open_cache(cache_dir).arrays),
                            torch.device("cpu"))
    best: dict[str, dict] = {}
    for order in (args.variants, args.variants[::-1]):
        for variant in order:
            t0 = time.perf_counter()
            r = epoch_seconds(variant, args, prepared, features)
            if variant not in best or r["epoch_s"] < best[variant]["epoch_s"]:
                best[variant] = r
            print(f"{variant:<14} {r['epoch_s']:7.2f} s/epoch ({r['rows']:,} rows, {r['steps']} steps; pass "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    base = best["iisan_rh"]["epoch_s"]
    print("\n| variant | rows | steps per epoch | epoch (s) | / iisan_rh |\n|---|---:|---:|---:|---:|")
    for v in args.variants:
        r = best[v]
        print(f"| `{v}` | {r['rows']:,} | {r['steps']} | {r['epoch_s']:.2f} | {r['epoch_s'] / base:.2f} |")
    print(" ".join(f"{v}_epoch_s={best[v]['epoch_s']:.2f} {v}_over_iisan_rh={best[v]['epoch_s'] / base:.2f}"
                   for v in args.variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
