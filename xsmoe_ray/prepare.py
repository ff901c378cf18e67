"""``python -m xsmoe_ray.prepare``: load a dataset and write its streaming windows.

    python -m xsmoe_ray.prepare --format hm --data-dir data/hm --out prepared/hm data.k_core=10
    python -m xsmoe_ray.prepare --config amazon_home --data-dir data/amazon --out prepared/home
    python -m xsmoe_ray.prepare --format recbole --data-dir data/ml1m/ml-1m --out prepared/ml1m data.sample_users=2000

Prints the load report and a per-chunk table (users, items, interactions: the paper's dataset
paragraph) and writes the prepared directory described in :mod:`xsmoe_ray.prepared`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from xsmoe_ray.cli import run_guarded
from xsmoe_ray.config import FORMATS, ConfigError, ExperimentConfig, load_config, valid_keys
from xsmoe_ray.data import load_dataset
from xsmoe_ray.data.schema import DataError
from xsmoe_ray.prepared import check_replaceable, is_current, read_summary, write_prepared
from xsmoe_ray.streaming import build_stream


def source_dir(cfg: ExperimentConfig, default_root: Path) -> Path:
    """Where the raw dataset lives; synthetic data is generated there on first use."""
    if cfg.data.path:
        return Path(cfg.data.path).expanduser().resolve()
    if cfg.data.format == "synthetic":
        return (default_root / "synthetic").resolve()
    raise ConfigError(f"data.path is required for data.format={cfg.data.format}")


def ensure_synthetic(cfg: ExperimentConfig, root: Path) -> None:
    """Generate the synthetic dataset unless a complete one with these ``synth.*`` settings is there.

    The generator's ``synth_meta.json`` says which settings wrote the folder and whether it was
    finished; a stale or half-written folder is generated again (the generator refuses to overwrite
    files it did not write).
    """
    from xsmoe_ray.data.synthetic import META_FILE, make_synthetic

    meta_path = root / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("complete") and meta.get("config") == dataclasses.asdict(cfg.synth) \
            and meta.get("windows") == cfg.data.chunks:
        return
    why = "stale settings" if meta.get("complete") else "incomplete" if meta else "none yet"
    print(f"[prepare] generating synthetic drift data in {root} ({why}) ...", flush=True)
    try:
        make_synthetic(root, cfg.synth, windows=cfg.data.chunks)
    except FileExistsError as e:
        raise ConfigError(f"data.path: {e}") from e


def prepare_data(cfg: ExperimentConfig, out: str | Path, *, force: bool = False, extend: bool = False,
                 log=print) -> dict:
    """Load → stream protocol → write, unless ``out`` already holds this exact preparation.

    ``extend``: ``out`` belongs to a run with trained windows; if the data grew, append its new
    chunks and refuse data that changes the processed past (xsmoe_ray/live.py), instead of
    preparing every chunk anew."""
    out = Path(out).expanduser().resolve()
    check_replaceable(out)  # before any data is generated or read: a wrong --out is cheap to fix
    root = source_dir(cfg, out.parent)
    if cfg.data.format == "synthetic":
        ensure_synthetic(cfg, root)
    if not force and is_current(out, cfg.data, str(root)):
        log(f"[prepare] reusing {out} (same data settings)")
        return read_summary(out)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data.format, root, category=cfg.data.category, date_from=cfg.data.date_from,
                      date_to=cfg.data.date_to, dedup=cfg.data.dedup, sample_users=cfg.data.sample_users,
                      sample_seed=cfg.data.sample_seed, recbole=recbole_options(cfg))
    log(ds.report.format())
    require_content(ds, root)
    old = read_summary(out) if extend and not force else None
    if old is not None:
        from xsmoe_ray.live import extend_prepared

        summary = extend_prepared(out, ds, old, cfg, str(root), log)
        log(format_chunks(summary))
        return summary
    stream = build_stream(ds, cfg.data.chunks, cfg.data.k_core, cfg.data.train_frac, cfg.data.max_len)
    summary = write_prepared(out, ds, stream, cfg.data, str(root))
    log(format_chunks(summary))
    log(f"[prepare] wrote {out} in {time.perf_counter() - t0:.1f} s")
    return summary


def require_content(ds, root: Path) -> None:
    """Refuse a dataset whose items have neither text nor an image: every model reads the frozen
    encoders' states of one of them, so the cache step would fail after the windows were written."""
    if not (ds.has_text or ds.has_image):
        raise DataError(str(root), f"no item has a text or an image ({ds.n_items:,} items; the load report above "
                                   "says why), and every model reads the cached states of at least one of them")


def recbole_options(cfg: ExperimentConfig) -> dict:
    """The ``data.recbole_*`` settings as :func:`xsmoe_ray.data.load_recbole` keywords."""
    d = cfg.data
    return {"user_field": d.recbole_user_field, "item_field": d.recbole_item_field,
            "time_field": d.recbole_time_field, "text": d.recbole_text}


def format_chunks(summary: dict) -> str:
    head = f"{'chunk':>5} {'interactions':>12} {'users':>9} {'items':>8} {'new':>7} {'train':>9} {'val':>8} {'tests':>8}"
    rows = [head]
    for s in summary["per_chunk"]:
        rows.append(f"{s['chunk']:>5} {s['interactions']:>12,} {s['users']:>9,} {s['items']:>8,} "
                    f"{s['new_items']:>7,} {s['train_targets']:>9,} {s['val_cases']:>8,} {s['test_cases']:>8,}")
    t = summary["totals"]
    rows.append(f"after processing: {t['interactions']:,} interactions between {t['users']:,} users "
                f"and {t['items']:,} items")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.prepare",
        description="Load a dataset (H&M, Amazon reviews 2018, generic, RecBole atomic files, synthetic) and write its "
                    "streaming windows (chunks, per-chunk k-core, 85/15 split, contexts).",
        epilog="Overrides: key=value with keys " + ", ".join(k for k in valid_keys() if k.startswith(("data.", "synth."))),
    )
    p.add_argument("--format", choices=FORMATS, help="dataset format (overrides data.format)")
    p.add_argument("--data-dir", help="dataset root (overrides data.path)")
    p.add_argument("--out", required=True, help="prepared output directory")
    p.add_argument("--config", default=None, help="preset name or YAML file (default: the format's preset)")
    p.add_argument("--force", action="store_true", help="prepare again even if --out is up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


PRESET_OF_FORMAT = {"synthetic": "demo", "hm": "hm", "amazon": "amazon_home", "generic": "demo", "recbole": "ml1m"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.format:
        overrides.append(f"data.format={args.format}")
    if args.data_dir:
        overrides.append(f"data.path={args.data_dir}")
    preset = args.config or PRESET_OF_FORMAT.get(args.format or "synthetic", "demo")
    return run_guarded(lambda: prepare_data(load_config(preset, overrides), args.out, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
