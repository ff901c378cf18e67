"""The committed record of the studies: each run's small files, copied out of its live study root.

A live root (``bench/results_study.py --root``, ``bench/quality_guard.py --root``) also holds the
prepared windows, the backbone cache and every checkpoint: far too large to commit, and lost with
the machine that ran them. ``docs/RESULTS.md`` is built from this record instead, so it regenerates
on any checkout and a later session adds its runs to the same roots.

    python bench/study_archive.py --from /work/study --into docs/studies sl_mean_none_b256:ml1m_preset guard/ml1m_none

A root is named ``LIVE`` (the same name in the record) or ``LIVE:NAME`` (another name there).

Per run it keeps ``history.json`` (every window's figures), ``wall.json`` (wall time, machine load)
and ``config.yaml`` (the resolved configuration); per root ``study.json``, merged as
``results_study.record_study`` merges it: a root is one setting, so a live root with another preset,
overrides or knobs than its record stops with both named. A run the record already holds is left
as it is when the live one has the same figures in every window (the same run archived twice, or a
re-run of its seed, which reproduces it bit for bit but for its timings); other figures under a
name the record holds stop the archive.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from results_study import record_study  # noqa: E402

KEPT = ("history.json", "wall.json", "config.yaml")
RECORD = REPO / "docs" / "studies"


def _figures(path: Path) -> list[dict]:
    """A history without its timings: what a re-run of the same seed reproduces bit for bit."""
    return [{k: v for k, v in window.items() if k != "seconds" and not k.endswith("_s")}
            for window in json.loads(path.read_text())]


def _same_run(a: Path, b: Path) -> bool:
    return _figures(a) == _figures(b)


def archive_root(live: Path, record: Path) -> list[str]:
    """Copies the finished runs of ``live`` that ``record`` lacks; returns the names of those copied."""
    if not (live / "study.json").exists():
        raise SystemExit(f"{live} has no study.json: not a study root")
    finished = sorted(p.parent for p in (live / "runs").glob("*/history.json"))
    new = []
    for run in finished:  # every conflict is found before anything is written
        kept = record / "runs" / run.name / "history.json"
        if not kept.exists():
            new.append(run)
        elif not _same_run(kept, run / "history.json"):
            raise SystemExit(f"{kept} differs from {run / 'history.json'}: two runs under one name; "
                             "move one of them to another root")
    record.mkdir(parents=True, exist_ok=True)
    record_study(record, json.loads((live / "study.json").read_text()))
    for run in new:
        dst = record / "runs" / run.name
        dst.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).exists():
                shutil.copy2(run / name, dst / name)
    return [run.name for run in new]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/study_archive.py", description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", metavar="LIVE[:NAME]",
                   help="study roots relative to --from, each with its name in the record when that differs")
    p.add_argument("--from", dest="live", type=Path, default=Path("/work/study"), help="where the live roots are")
    p.add_argument("--into", type=Path, default=RECORD, help="the committed record (default docs/studies)")
    args = p.parse_args(argv)
    for spec in args.roots:
        live_name, _, name = spec.partition(":")
        live, record = args.live / live_name, args.into / (name or live_name)
        if not (live / "runs").is_dir():
            print(f"[archive] {spec}: no live root at {live}, the record kept as it is")
            continue
        runs = archive_root(live, record)
        print(f"[archive] {spec}: {len(runs)} new finished run(s) in {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
