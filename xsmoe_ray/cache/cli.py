"""``python -m xsmoe_ray.cache``: build or update a layer-output cache from a prepared dataset."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from xsmoe_ray.cli import run_guarded


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.cache",
        description="Encode every item with the frozen backbones (Ray Data) into a layer-output cache.",
        epilog="overrides: backbone.text=… backbone.image=… backbone.image_size=… data.max_words=… "
               "cache.pooling=cls|mean cache.batch_size=… cache.workers=… run.num_cpus=…",
    )
    parser.add_argument("--data", required=True, help="prepared dataset directory (items.parquet, summary.json)")
    parser.add_argument("--out", default="", help="cache directory (default: cache.dir from the config)")
    parser.add_argument("--config", default="demo", help="preset name or YAML file (default: demo)")
    parser.add_argument("--rebuild", action="store_true",
                        help="re-encode everything, replacing a cache built with other backbones or settings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per CPU encoder actor (0 = auto)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; 2 with a one-line ``error: …`` on a user error, as every ``python -m xsmoe_ray.…``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_guarded(lambda: build(args))


def build(args: argparse.Namespace) -> None:
    """The command's work; its user errors are raised, for :func:`run_guarded` to print as one line."""
    from ray.data import DataContext

    from xsmoe_ray.cache.build import build_cache
    from xsmoe_ray.config import ConfigError, load_config

    cfg = load_config(args.config, args.overrides)
    out = args.out or cfg.cache.dir
    if not out:
        raise ConfigError("give --out or cache.dir=…")
    DataContext.get_current().enable_progress_bars = True
    report = build_cache(args.data, out, cfg, rebuild=args.rebuild, threads=args.threads)
    print(report.format())
