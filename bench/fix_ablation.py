"""Before/after of each loss and input fix (issues 10 and 13), one at a time, on one window's val NDCG@10.

    python bench/fix_ablation.py                          # synth_medium preset (~3-6 minutes on 2 CPU cores)
    python bench/fix_ablation.py --config ml1m data.path=data/ml1m/ml-1m backbone.text=data/ml1m/all-MiniLM-L6-v2

Trains the warm-up window (D_0, early stopping on D_0's val split, the preset's epochs and patience)
from the same initial weights with everything as shipped ("all fixes"), then with exactly one fix
reverted, and prints the best val NDCG@10 of each. The reverted versions are reconstructed here, not
kept in the package:

* ``log n_j``: the loss's unique-item columns without ``+ log n_j`` (rare items over-weighted, issue 13.1);
* ``padding inputs``: targets whose input is padding are trained too (issue 13.2);
* ``log p over rows``: log p counts every item occurrence of every row instead of the window's targets (13.3);
* ``bf16``: bf16 autocast on CPU (``train.precision=half``; 13.4);
* ``old rows``: one row per target with loss at every position (issue 10.3);
* ``feature_norm <other>``: the other per-layer standardisation setting than the preset's (issue 10.2;
  ``none`` is the default since issue 18's study, ``demo``/``synth_medium`` set ``layer``).

Run with ``cache.pooling=cls`` to see the same on [CLS] states. Last line: ``<fix>=<val NDCG@10 %>`` per row.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import xsmoe_ray.model.loss as loss_module  # noqa: E402
from xsmoe_ray.cache import load_grouped, open_cache  # noqa: E402
from xsmoe_ray.config import load_config  # noqa: E402
from xsmoe_ray.prepared import load_prepared  # noqa: E402
from xsmoe_ray.stream import data_stages  # noqa: E402
from xsmoe_ray.train.data import log_popularity, split_rows, training_rows, window_data  # noqa: E402
from xsmoe_ray.train.window import train_window  # noqa: E402
from xsmoe_ray.train.worker import new_model, warm_up_items  # noqa: E402


@contextmanager
def patched(name: str, value):
    old = getattr(loss_module, name)
    setattr(loss_module, name, value)
    try:
        yield
    finally:
        setattr(loss_module, name, old)


def _targets_with_padding_inputs(index, first):
    """The loss positions before issue 13.2: any real target, whatever its input."""
    targets = index[:, 1:]
    valid = targets >= 0
    if first is not None:
        valid &= torch.arange(1, index.shape[1], device=index.device)[None, :] >= first[:, None]
    pos = targets[valid]
    own = index[valid.nonzero()[:, 0]]
    return valid, pos, torch.where(own < 0, pos[:, None], own)


def run(cfg, stream, n_items, features, data, seed: int) -> float:
    torch.manual_seed(seed)
    model = new_model(cfg, features)
    model.set_item_features(features)
    model.fit_feature_norm(warm_up_items(stream))
    result = train_window(model, data, cfg.train, torch.device("cpu"), seed=seed, log=lambda *_: None)
    return 100 * result.best_val_ndcg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/fix_ablation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="synth_medium")
    p.add_argument("--window", type=int, default=0, help="window whose val NDCG@10 is compared (0 = warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "xsmoe_fix_ablation")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    synthetic = load_config(args.config).data.format == "synthetic"
    cfg = load_config(args.config, [f"run.out={args.root / 'run'}", *args.overrides]
                      + ([f"data.path={args.root / 'data'}"] if synthetic else []))
    prepared, cache = data_stages(cfg, args.root / "run")
    loaded = load_prepared(prepared)
    stream, n_items = loaded.stream, loaded.n_items
    features = load_grouped(cache, cfg.model.layers_per_group, list(open_cache(cache).arrays), torch.device("cpu"))
    data = window_data(stream, args.window, n_items, cfg.train.rows)
    legacy = dataclasses.replace(data, train_rows=training_rows(stream, stream.train_targets(args.window), "legacy"))
    rows_pop = log_popularity(split_rows(data.train_rows)[0], n_items)
    results = {}

    def record(name, value):
        results[name] = value
        print(f"{name:<22} val NDCG@10 {value:.2f} %", flush=True)

    record("all fixes", run(cfg, stream, n_items, features, data, args.seed))
    with patched("log_multiplicity", lambda index, n: torch.zeros(n, device=index.device)):
        record("no log n_j", run(cfg, stream, n_items, features, data, args.seed))
    with patched("_targets", _targets_with_padding_inputs):
        # With the new rows an input is never padding, so this fix shows on the old rows only.
        record("padding inputs, old rows", run(cfg, stream, n_items, features,
                                               legacy, args.seed))
    record("log p over rows", run(cfg, stream, n_items, features, dataclasses.replace(data, log_pop=rows_pop), args.seed))
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="half"))
    record("bf16", run(half, stream, n_items, features, data, args.seed))
    record("old rows", run(cfg, stream, n_items, features, legacy, args.seed))
    other = "layer" if cfg.model.feature_norm == "none" else "none"
    flipped = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, feature_norm=other))
    record(f"feature_norm {other}", run(flipped, stream, n_items, features, data, args.seed))
    print(" ".join(f"{k.replace(', ', '_').replace(' ', '_')}={v:.2f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
