"""``python -m xsmoe_ray.synth``: write the synthetic drift dataset (the embedded demo's data).

The files follow the H&M Kaggle layout (``transactions_train.csv``, ``articles.csv``,
``images/<3 digits>/<article_id>.jpg``) so ``data.format=hm`` reads them too; the generative story
is in :mod:`xsmoe_ray.data.synthetic`. Example::

    python -m xsmoe_ray.synth --out data/synth --users 600 --items 300 --interactions 30000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from xsmoe_ray.config import ConfigError, SynthConfig
from xsmoe_ray.data.synthetic import make_synthetic


def build_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.synth",
        description="Write a synthetic H&M-layout dataset whose users' visual-style and text-tone "
                    "tastes drift between time windows (new articles arrive every window).")
    p.add_argument("--out", required=True, help="output directory (created; a previous synthetic one is replaced)")
    p.add_argument("--users", type=int, default=d.users, help=f"customers (default {d.users})")
    p.add_argument("--items", type=int, default=d.items, help=f"articles (default {d.items})")
    p.add_argument("--interactions", type=int, default=d.interactions, help=f"transactions (default {d.interactions})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"generator seed (default {d.seed})")
    p.add_argument("--windows", type=int, default=10, help="drift windows = equal-count time periods (default 10)")
    p.add_argument("--styles", type=int, default=d.styles, help=f"visual style clusters (default {d.styles})")
    p.add_argument("--tones", type=int, default=d.tones, help=f"text tone clusters (default {d.tones})")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"JPEG side in pixels (default {d.image_size})")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = SynthConfig(users=args.users, items=args.items, interactions=args.interactions, seed=args.seed,
                          styles=args.styles, tones=args.tones, image_size=args.image_size)
    except ConfigError as e:
        parser.error(str(e))
    if args.image_size < 1:
        parser.error("--image-size must be >= 1")
    start = time.perf_counter()
    try:
        summary = make_synthetic(args.out, cfg, windows=args.windows)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
