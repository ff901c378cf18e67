"""docs/RESULTS.md from the study roots of bench/results_study.py: Table-1 shape, significance, selection.

    python bench/study_report.py --section "ml1m, new defaults=runs/study/ml1m_new" \\
        --section "ml1m, old setting=runs/study/ml1m_old" --section "synth_medium=runs/study/synth_new" \\
        --selection runs/study/ml1m_sel_cls_none runs/study/ml1m_sel_cls_layer ... [--out docs/RESULTS.md]

Each ``--section NAME=ROOT`` is one study root (every variant x seed run there). Per section: the
performance table (mean ± std over seeds per test window and AVG, the popularity-of-D_(s-1)
reference row the runs report themselves), paired t-tests of ``xsmoe`` against every other model
(per-seed AVG NDCG@10, paired by seed, and per (seed, window)), the in-window fit (val NDCG@10,
epochs), utilization and router weights at the end, and the efficiency table. ``--selection`` lists
the roots of the default-choosing runs, compared on **validation** NDCG@10 only.
The hand-written analysis between the markers of an existing RESULTS.md is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from results_study import (VARIANTS, _cell, efficiency_table, figure, kept_analysis, load_runs,  # noqa: E402
                           mean_std, per_window, ANALYSIS_BEGIN, ANALYSIS_END)


def reference_from_runs(runs: dict[str, list[dict]]) -> dict[int, dict] | None:
    """The popularity-of-D_(s-1) row every run reports (identical across runs of one root)."""
    for rs in runs.values():
        for r in rs:
            rows = [w for w in r["history"] if w.get("test_chunk") is not None]
            if rows and all(w.get("pop_ndcg10") is not None for w in rows):
                return {w["test_chunk"]: {"hr10": w["pop_hr10"], "ndcg10": w["pop_ndcg10"]} for w in rows}
    return None


def performance(runs, reference) -> str:
    from results_study import performance_table

    return performance_table(runs, reference)


def significance_table(runs: dict[str, list[dict]], base: str = "xsmoe") -> str:
    """xsmoe against each other model: AVG NDCG@10 difference, relative gain, paired t-test p-values."""
    from scipy import stats

    if base not in runs:
        return f"No `{base}` run in this section.\n"
    header = ["| xsmoe vs. | AVG NDCG@10: xsmoe / other (%) | relative gain | p, paired by seed (n) | "
              "p, paired by (seed, window) (n) |", "|---|---:|---:|---:|---:|"]
    lines = []
    b_seeds = {r["seed"]: r for r in runs[base]}
    for v, rs in runs.items():
        if v == base:
            continue
        common = sorted(set(b_seeds) & {r["seed"] for r in rs})
        if not common:
            continue
        o_seeds = {r["seed"]: r for r in rs}
        ch_b, arr_b = per_window([b_seeds[s] for s in common], "ndcg10")
        ch_o, arr_o = per_window([o_seeds[s] for s in common], "ndcg10")
        chunks = [c for c in ch_b if c in ch_o]
        a = arr_b[:, [ch_b.index(c) for c in chunks]]
        o = arr_o[:, [ch_o.index(c) for c in chunks]]
        avg_a, avg_o = a.mean(1), o.mean(1)
        p_seed = stats.ttest_rel(avg_a, avg_o).pvalue if len(common) > 1 else float("nan")
        p_win = stats.ttest_rel(a.ravel(), o.ravel()).pvalue
        gain = 100 * (avg_a.mean() / avg_o.mean() - 1)
        lines.append(f"| {v} | {avg_a.mean():.2f} / {avg_o.mean():.2f} | {gain:+.1f} % | "
                     f"{p_seed:.3g} ({len(common)}) | {p_win:.3g} ({a.size}) |")
    if not lines:  # a one-model section: its comparisons live in the analysis
        return f"No other model shares a seed with `{base}` in this section.\n"
    return "\n".join(header + lines) + "\n"


def warm_table(runs: dict[str, list[dict]]) -> str:
    """AVG over test windows of NDCG@10 on every target and on warm targets only (items trained
    before the test chunk), with the share of cold targets and the popularity row's warm figure."""
    lines = ["| Method | AVG NDCG@10 (%) | warm targets: NDCG@10 (%) | popularity, warm targets (%) | "
             "cold targets (%) |", "|---|---:|---:|---:|---:|"]
    for v, rs in runs.items():
        if not all(w.get("warm_ndcg10") is not None for r in rs for w in r["history"] if w.get("test_chunk")):
            lines.append(f"| {v} | | runs older than the warm columns | | |")
            continue
        cells = [_cell(*mean_std(per_window(rs, key)[1].mean(1)), len(rs))
                 for key in ("ndcg10", "warm_ndcg10", "pop_warm_ndcg10", "cold_share")]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _router_text(window: dict) -> str:
    """Per layer: the router's mean weight on the backbone term, on the newest expert, and the
    smallest expert utilization (Eq. 5), as measured on the kept weights of that window."""
    router, util = window.get("router") or {}, window.get("utilization") or {}
    parts = []
    for m in sorted(router):
        for i, alphas in enumerate(router[m]):
            low = min(util[m][i]) if util.get(m) else float("nan")
            parts.append(f"{m[0]}L{i + 1}: {alphas[0]:.2f} / {alphas[-1]:.2f} / {low:.3f}")
    return "; ".join(parts) or "-"


def fit_table(runs: dict[str, list[dict]]) -> str:
    """In-window fit and what the side network does at the end: val NDCG@10, epochs, cap hits,
    experts, and per side layer the router weight on the backbone / on the newest expert / the
    smallest expert utilization in the last window (first seed)."""
    lines = ["| Method | val NDCG@10, windows 1-8 (%) | epochs per window | windows at the epoch cap (per seed) | "
             "experts at the end | last window, per layer: α backbone / α newest expert / min utilization |",
             "|---|---:|---:|---|---|---|"]
    for v, rs in runs.items():
        val = mean_std(np.mean([100 * w["val_ndcg10"] for w in r["history"] if w["window"] >= 1]) for r in rs)
        ep = mean_std(np.mean([w["epochs"] for w in r["history"]]) for r in rs)
        caps = [sum(w["epochs"] >= r["config"]["train"]["max_epochs"] for w in r["history"]) for r in rs]
        last = rs[0]["history"][-1]
        experts = " ".join(f"{m}:{'/'.join(map(str, n))}" for m, n in sorted(last.get("experts", {}).items())) or "-"
        lines.append(f"| {v} | {_cell(*val, len(rs))} | {_cell(*ep, len(rs))} | {', '.join(map(str, caps))} | "
                     f"{experts} | {_router_text(last)} |")
    return "\n".join(lines) + "\n"


def selection_table(roots: list[Path]) -> str:
    """Default-choosing runs: one row per root, its overrides, val NDCG@10 (windows 0-8) — and test
    AVG shown only for the record, never used for the choice."""
    lines = ["| preset | overrides | variant, seed | val NDCG@10, mean of windows 0-8 (%) | epochs (all windows) | "
             "windows at the cap | (test AVG NDCG@10, not used) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for root in roots:
        study = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else {}
        runs = load_runs(root, VARIANTS, range(10))
        for v, rs in runs.items():
            for r in rs:
                val = np.mean([100 * w["val_ndcg10"] for w in r["history"]])
                test = per_window([r], "ndcg10")[1].mean()
                epochs = sum(w["epochs"] for w in r["history"])
                cap = r["config"].get("train", {}).get("max_epochs")
                at_cap = sum(w["epochs"] >= cap for w in r["history"]) if cap else "?"
                sets = " ".join(o for o in study.get("overrides", [])
                                if not o.startswith(("data.path", "backbone.text", "cache.dir")))  # where, not what
                sets = f"`{sets}`" if sets else "(defaults)"
                lines.append(f"| {study.get('config', '?')} | {sets} | {v}, {r['seed']} | {val:.2f} | {epochs} | "
                             f"{at_cap} of {len(r['history'])} | ({test:.2f}) |")
    return "\n".join(lines) + "\n"


def section(name: str, root: Path, out_dir: Path) -> str:
    runs = load_runs(root, VARIANTS, range(10))
    if not runs:
        return f"## {name}\n\nNo finished run in `{root}`.\n"
    reference = reference_from_runs(runs)
    study = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else {}
    png = out_dir / f"results_{root.name}.png"
    png.write_bytes(figure(runs, reference))
    sets = " ".join(study.get("overrides", [])) or "(none)"
    return "\n".join([
        f"## {name}", "",
        f"Preset `{study.get('config', '?')}`, overrides `{sets}`; root `{root.name}`. "
        "HR@10 / NDCG@10 in %, mean ± std over seeds (n), best per column in bold.", "",
        performance(runs, reference), "",
        f"![NDCG per window]({png.name})", "",
        "**xsmoe against each model** (two-sided paired t-tests):", "",
        significance_table(runs), "",
        "**Warm and cold targets** (a cold target is an item first seen in the test chunk; ID models "
        "score it from an untrained row):", "",
        warm_table(runs), "",
        "**In-window fit and the side network at the end** (seed order as in the table above):", "",
        fit_table(runs), "",
        "**Efficiency** (Table 3 shape):", "",
        efficiency_table(runs), ""])


KEPT_NOTE = ("_Kept as first written: this section's runs were never copied into `docs/studies` and went with "
             "the machine that ran them; its figures stand as measured then, and `bench/results_report.sh` keeps "
             "the text as it is._")


def kept_section(path: Path, name: str) -> str:
    """The section ``## name`` of an existing RESULTS.md, word for word, marked as kept."""
    text = path.read_text() if path.exists() else ""
    head = f"## {name}\n"
    if head not in text:
        raise SystemExit(f"--kept {name!r}: no such section in {path}")
    body = text.split(head, 1)[1]
    for end in ("\n## ", "\n" + ANALYSIS_BEGIN):  # up to the next section, or the analysis
        body = body.split(end, 1)[0]
    body = body.strip("\n")
    if not body.startswith(KEPT_NOTE):
        body = f"{KEPT_NOTE}\n\n{body}"
    return f"{head}\n{body}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/study_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--section", action="append", default=[], metavar="NAME=ROOT", help="a study root and its title")
    p.add_argument("--selection", nargs="*", type=Path, default=[], help="roots of the default-choosing runs")
    p.add_argument("--selection-title", default="Choosing settings (validation only)",
                   help="heading of the selection table")
    p.add_argument("--header", type=Path, help="markdown put before the sections (setup, commands)")
    p.add_argument("--kept", action="append", default=[], metavar="NAME",
                   help="a section of the existing --out kept word for word (its runs are not in the record)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "RESULTS.md")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = [kept_section(args.out, name) for name in args.kept]  # read before the file is rewritten
    parts = [args.header.read_text() if args.header else "# Results\n"]
    parts += kept
    if args.selection:
        parts += [f"## {args.selection_title}", "", selection_table(args.selection)]
    for spec in args.section:
        name, root = spec.rsplit("=", 1)  # a title may hold "=" (an override), a path does not
        parts.append(section(name, Path(root), args.out.parent))
    parts += ["## Analysis", "", ANALYSIS_BEGIN, kept_analysis(args.out).rstrip("\n"), ANALYSIS_END, ""]
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
