"""Multi-seed results study: every variant x seed of a preset, then a per-root summary.

    python bench/results_study.py                       # 7 variants x 3 seeds, then aggregate
    python bench/results_study.py --aggregate-only      # only rebuild <root>/RESULTS.md and the figure
    python bench/results_study.py --config ml1m --root runs/study/ml1m_new --variants xsmoe static noft --no-docs

docs/RESULTS.md itself is written by ``bench/study_report.py`` from one or more study roots (Table-1
shape, paired t-tests, default-choosing runs, the hand-written analysis kept).
    python bench/results_study.py --root runs/study_long --variants xsmoe static noft \\
        --set train.max_epochs=20 --set train.patience=5 --no-docs   # a non-default setting

Each (variant, seed) is one ``python -m xsmoe_ray.stream`` run in its own process, one after the
other, with ``run.seed`` = the seed (model initialisation and batch order) while the data seed
(``synth.seed``) stays that of the preset, so seeds are comparable. All runs of one ``--root`` share
one synthetic dataset (``data.path=<root>/data``) and one layer cache (``cache.dir=<root>/cache``),
so data and cache are built by the first run only. A run whose ``history.json`` exists is skipped,
so the study resumes after an interruption (a half-finished run resumes from its last window
checkpoint, since ``run.out`` is the same).

Aggregation reads every run's ``history.json`` and writes ``<root>/RESULTS.md`` (per-window HR@10 and
NDCG@10 in % as mean ± std over seeds, D_2..D_9 and AVG as the paper's Table 1; MP/TrP in MB and
seconds per run as Table 3), the figure ``<root>/results_ndcg.png``, plus a non-learned reference
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

from xsmoe_ray.config import VARIANTS as ALL_VARIANTS  # noqa: E402
from xsmoe_ray.report import _png, dedupe_windows, test_rows  # noqa: E402
from xsmoe_ray.runlock import wait_lock  # noqa: E402

VARIANTS = ALL_VARIANTS  # every model.variant; a study runs DEFAULT_VARIANTS unless told otherwise
DEFAULT_VARIANTS = ("xsmoe", "static", "noft", "visual", "textual", "iisan_rh", "iisan_kd")
SEEDS = (0, 1, 2)
LABELS = {"xsmoe": "XSMoE", "static": "static (Table 2)", "noft": "noft (Table 2)", "visual": "visual only",
          "textual": "textual only", "iisan_rh": "IISAN + replay", "iisan_kd": "IISAN + KD",
          "sasrec_id": "SASRec-ID (extra)", "sasrec_id_rh": "SASRec-ID + replay (extra)",
          "sasrec_id_kd": "SASRec-ID + KD (extra)", "mmmlp": "MMMLP", "mmmlp_rh": "MMMLP_RH", "mmmlp_kd": "MMMLP_KD",
          "gag": "GAG", "ssrm": "SSRM", "lgmrec": "LGMRec", "lgmrec_rh": "LGMRec_RH", "lgmrec_kd": "LGMRec_KD"}


# --------------------------------------------------------------------------------------------- runs

def run_dir(root: Path, variant: str, seed: int) -> Path:
    return root / "runs" / f"{variant}_s{seed}"


def stream_command(config: str, root: Path, variant: str, seed: int, overrides: list[str]) -> list[str]:
    """One run; synthetic data is written once under ``<root>/data``, a real dataset stays where
    the preset or a ``--set data.path=...`` puts it. A root default the user overrides is left out,
    so the logged command names each setting once."""
    from xsmoe_ray.config import load_config

    given = {o.split("=", 1)[0] for o in overrides}
    defaults = {"cache.dir": root / "cache"}
    if load_config(config, overrides).data.format == "synthetic":
        defaults = {"data.path": root / "data", **defaults}
    kept = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    return [sys.executable, "-m", "xsmoe_ray.stream", "--config", config, f"model.variant={variant}",
            f"run.seed={seed}", *kept, f"run.out={run_dir(root, variant, seed)}", *overrides]


def pregenerate(args, root: Path) -> None:
    """With ``--knob``: write the synthetic data with non-default generator knobs before the first run.

    ``prepare`` generates synthetic data only where none is yet, so the runs then use this data.
    """
    if not args.knob or (root / "data" / "transactions_train.csv").exists():
        return
    import dataclasses

    from xsmoe_ray.config import load_config
    from xsmoe_ray.data.synthetic import DEFAULT_KNOBS, make_synthetic

    cfg = load_config(args.config, args.set)
    fields = {f.name: f for f in dataclasses.fields(DEFAULT_KNOBS)}
    knobs = {}
    for item in args.knob:
        key, value = item.split("=", 1)
        if key not in fields:
            raise SystemExit(f"unknown generator knob {key!r}; knobs: {sorted(fields)}")
        default = getattr(DEFAULT_KNOBS, key)
        knobs[key] = tuple(float(x) for x in value.split(",")) if isinstance(default, tuple) else type(default)(value)
    print(f"[study] generating synthetic data with knobs {knobs} in {root / 'data'}", flush=True)
    make_synthetic(root / "data", cfg.synth, windows=cfg.data.chunks, knobs=dataclasses.replace(DEFAULT_KNOBS, **knobs))


SETTING_KEYS = ("config", "overrides", "knobs")


def record_study(root: Path, study: dict) -> dict:
    """Writes ``root/study.json``; a root is one setting, so later runs on it add variants and seeds.

    A second ``results_study`` on the same root (another lane, another variant) keeps the variants and
    seeds recorded before; one with another preset, overrides or knobs would mix two settings under one
    name in every table, so it stops with both settings named.
    """
    path = root / "study.json"
    # lanes started together on one root: one read-merge-write at a time, and a reader never sees a
    # half-written file (a second lane once read an empty study.json and stopped)
    with wait_lock(root / ".study.lock"):
        return _merge_study(path, study)


def _merge_study(path: Path, study: dict) -> dict:
    if path.exists():
        before = json.loads(path.read_text())
        differ = [k for k in SETTING_KEYS if (before.get(k) or None) != (study.get(k) or None)]
        if differ:
            both = "; ".join(f"{k}: {before.get(k)!r} there, {study.get(k)!r} now" for k in differ)
            raise SystemExit(f"{path} records another setting ({both}); use another --root for it")
        study = {**study, "variants": list(dict.fromkeys([*before.get("variants", []), *study.get("variants", [])])),
                 "seeds": sorted({*before.get("seeds", []), *study.get("seeds", [])})}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(study, indent=1))
    os.replace(tmp, path)
    return study


def run_all(args) -> None:
    root = args.root.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    pregenerate(args, root)
    record_study(root, {"config": args.config, "overrides": args.set, "knobs": args.knob, "variants": args.variants,
                        "seeds": args.seeds, "argv": sys.argv, "cpus": os.cpu_count(), "machine": platform.platform(),
                        "processor": _cpu_model()})
    todo = [(v, s) for v in args.variants for s in args.seeds]
    for k, (variant, seed) in enumerate(todo, 1):
        out = run_dir(root, variant, seed)
        if (out / "history.json").exists():
            print(f"[study] {k}/{len(todo)} {variant} seed {seed}: done before, skipped", flush=True)
            continue
        cmd = stream_command(args.config, root, variant, seed, args.set)
        print(f"[study] {k}/{len(todo)} {variant} seed {seed}: {shlex.join(cmd)}", flush=True)
        load0, t0 = os.getloadavg(), time.perf_counter()
        with open(root / "logs" / f"{variant}_s{seed}.log", "a") as log:  # a resumed run keeps its first log
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


# ---------------------------------------------------------------------------------------- aggregation

def load_runs(root: Path, variants, seeds) -> dict[str, list[dict]]:
    """``{variant: [run, ...]}`` for the finished runs; a run = history rows + wall time + config."""
    import yaml

    runs: dict[str, list[dict]] = {}
    for v in variants:
        for s in seeds:
            d = run_dir(root, v, s)
            if not (d / "history.json").exists():
                continue
            wall = json.loads((d / "wall.json").read_text()) if (d / "wall.json").exists() else {}
            cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").exists() else {}
            runs.setdefault(v, []).append({"seed": s, "history": dedupe_windows(json.loads((d / "history.json").read_text())),
                                           "wall": wall, "config": cfg, "dir": d})
    return runs


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single value)."""
    a = np.asarray(list(values), dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def per_window(runs: list[dict], key: str) -> tuple[list[int], np.ndarray]:
    """Test chunks and a [seeds, windows] array of ``key`` in % (only chunks every seed has)."""
    tables = [{r["test_chunk"]: 100 * r[key] for r in test_rows(run["history"])} for run in runs]
    chunks = sorted(set.intersection(*(set(t) for t in tables)))
    return chunks, np.array([[t[c] for c in chunks] for t in tables])


def _cell(m: float, s: float, n: int, bold: bool = False) -> str:
    text = f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
    return f"**{text}**" if bold else text


def performance_table(runs: dict[str, list[dict]], reference: dict | None = None) -> str:
    """Table 1 shape: rows variant x metric, columns D_2..D_T and AVG; mean ± std over seeds, best bold."""
    stats, chunks = {}, None
    for v, rs in runs.items():
        for key in ("hr10", "ndcg10"):
            ch, arr = per_window(rs, key)
            chunks = ch if chunks is None else [c for c in chunks if c in ch]
            stats[v, key] = (ch, arr)
    if not stats:
        return "No finished run yet.\n"
    heads = [f"D_{c}" for c in chunks] + ["AVG"]
    cols: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for (v, key), (ch, arr) in stats.items():
        arr = arr[:, [ch.index(c) for c in chunks]]
        cells = [mean_std(arr[:, j]) + (len(arr),) for j in range(arr.shape[1])]
        cells.append(mean_std(arr.mean(1)) + (len(arr),))  # AVG: per-seed mean over windows, then over seeds
        cols[v, key] = cells
    lines = ["| Method | Metric | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for key, name in (("hr10", "HR@10"), ("ndcg10", "NDCG@10")):
        best = [max(cols[v, key][j][0] for v in runs) for j in range(len(heads))]
        for v in runs:
            cells = cols[v, key]
            lines.append(f"| {v} (n={cells[0][2]}) | {name} | "
                         + " | ".join(_cell(m, s, n, m == best[j]) for j, (m, s, n) in enumerate(cells)) + " |")
        if reference:
            vals = [100 * reference[c][key] for c in chunks]
            lines.append(f"| *popularity of D_(s-1)* | {name} | " + " | ".join(f"*{x:.2f}*" for x in vals)
                         + f" | *{np.mean(vals):.2f}* |")
    return "\n".join(lines) + "\n"


def efficiency_table(runs: dict[str, list[dict]]) -> str:
    """Table 3 shape: MP/TrP (MB) after the last window, experts, epochs, training and wall seconds."""
    lines = ["| Method | MP (MB) | TrP (MB) | experts per side layer (end) | epochs (all windows) | "
             "train s (TT) | s per run (wall) | 1-min load (start/end) |", "|---|---:|---:|---|---:|---:|---:|---|"]
    for v, rs in runs.items():
        last = [r["history"][-1] for r in rs]
        mp, trp = mean_std(r["mp_mb"] for r in last), mean_std(r["trp_mb"] for r in last)
        experts = sorted({" ".join(f"{m}:{'/'.join(map(str, n))}" for m, n in sorted(r.get("experts", {}).items()))
                          for r in last}) or ["-"]
        epochs = mean_std(sum(w["epochs"] for w in r["history"]) for r in rs)
        tt = mean_std(sum(w["seconds"] for w in r["history"]) for r in rs)
        walls = [r["wall"]["wall_s"] for r in rs if r["wall"].get("wall_s")]
        wall = _cell(*mean_std(walls), len(walls)) if walls else "n/a"
        loads = [f"{r['wall']['load_before'][0]:.1f}/{r['wall']['load_after'][0]:.1f}" for r in rs if r["wall"].get("load_before")]
        lines.append(f"| {v} | {mp[0]:.3f} | {trp[0]:.3f} | {'; '.join(experts) or '-'} | "
                     f"{_cell(*epochs, len(rs))} | {_cell(*tt, len(rs))} | {wall} | {', '.join(loads) or 'n/a'} |")
    return "\n".join(lines) + "\n"


def popularity_reference(prepared: Path) -> dict[int, dict]:
    """Non-learned reference per test chunk c >= 2: rank by interaction count in D_(c-1).

    Same cases, candidates and pessimistic tie rule as the models (``xsmoe_ray.evaluate``).
    """
    import torch

    from xsmoe_ray.evaluate import evaluate
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.data import eval_cases

    p = load_prepared(prepared)
    s = p.stream
    out = {}
    for c in range(2, s.n_chunks):
        cases = eval_cases(s, s.test_cases(c), s.candidates(c))
        counts = np.bincount(s.item[s.rows(c - 1)], minlength=p.n_items + 1).astype(np.float32)
        row = torch.from_numpy(counts[cases.candidates])
        sums = evaluate(lambda ctx, out: out.copy_(row.expand(len(ctx), -1)), torch.from_numpy(cases.contexts),
                        torch.from_numpy(cases.targets), torch.from_numpy(cases.candidates))
        out[c] = {"hr10": sums.hr, "ndcg10": sums.ndcg_mean}
    return out


def generator_references(run: dict, knobs: list[str]) -> dict[str, dict[int, dict]] | None:
    """Scores from the generator's latent truth (synthetic data only), on the models' test cases.

    A case (user u, last context item j, target) is scored for every candidate i as the generator
    draws it: P(style_i | u, j) P(tone_i | u, j) x the article's share of its (style, tone) cell,
    with P(style | u, j) = stick [style = style_j] + (1 - stick) taste_u(style), likewise tone.

    * ``oracle D_s``: the test window's own taste and article weights (a ceiling no model reaches);
    * ``oracle D_(s-1)``: the training window's taste and weights (what a perfect model of the
      training chunk knows; new articles get their cell's mean weight);
    * ``oracle D_(s-1), cell only``: as above with every article of a cell alike (no per-article
      popularity, which a content-only item tower cannot see).
    """
    import dataclasses

    import pyarrow.parquet as pq
    import torch

    from xsmoe_ray.config import from_dict
    from xsmoe_ray.data.synthetic import DEFAULT_KNOBS, generate
    from xsmoe_ray.evaluate import evaluate
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.data import eval_cases

    cfg = from_dict(run["config"])
    if cfg.data.format != "synthetic":
        return None
    fields = {f.name for f in dataclasses.fields(DEFAULT_KNOBS)}
    kw = {}
    for item in knobs:
        key, value = item.split("=", 1)
        if key in fields:
            default = getattr(DEFAULT_KNOBS, key)
            kw[key] = tuple(float(x) for x in value.split(",")) if isinstance(default, tuple) else type(default)(value)
    world = generate(cfg.synth, cfg.data.chunks, dataclasses.replace(DEFAULT_KNOBS, **kw))
    prepared = run["dir"] / "prepared"
    p = load_prepared(prepared)
    s = p.stream
    pos = {int(a): i for i, a in enumerate(world.article_id)}
    code2w = np.zeros(p.n_items + 1, dtype=np.int64)
    code2w[1:] = [pos[int(x)] for x in pq.read_table(prepared / "items.parquet").column("item_id").to_pylist()]
    upos = {c: i for i, c in enumerate(world.customer_id)}
    ucode2w = np.array([upos[x] for x in pq.read_table(prepared / "users.parquet").column("user_id").to_pylist()])
    n_cells, n_tones = cfg.synth.styles * cfg.synth.tones, cfg.synth.tones
    ks, kt = world.knobs.style_stick, world.knobs.tone_stick
    names = {"now": "oracle D_s", "prev": "oracle D_(s-1)", "cell": "oracle D_(s-1), cell only"}
    out: dict[str, dict[int, dict]] = {n: {} for n in names.values()}
    for c in range(2, s.n_chunks):
        rows = s.test_cases(c)
        cases = eval_cases(s, rows, s.candidates(c))
        cw = code2w[cases.candidates]
        style, tone = world.item_style[cw], world.item_tone[cw]
        cell = style * n_tones + tone
        prev, users = code2w[cases.contexts[:, -1]], ucode2w[s.user[rows]]
        for key, name in names.items():
            w_taste = c if key == "now" else c - 1
            sp, tp = (t[users] for t in world.user_taste(w_taste))
            fs = ks * (style[None] == world.item_style[prev][:, None]) + (1 - ks) * sp[:, style]
            ft = kt * (tone[None] == world.item_tone[prev][:, None]) + (1 - kt) * tp[:, tone]
            if key == "cell":  # ties inside a cell broken at random (fixed seed), not pessimistically
                weight = 1.0 + 1e-3 * np.random.default_rng(c).random(len(cw))
            else:
                weight = world.item_weight(w_taste)[cw]
                mean = np.bincount(cell, weight, n_cells) / np.maximum(np.bincount(cell, weight > 0, n_cells), 1)
                weight = np.where(weight > 0, weight, mean[cell])
            share = weight / np.bincount(cell, weight, n_cells)[cell]
            scores = torch.from_numpy((fs * ft * share[None]).astype(np.float32))
            sums = evaluate(lambda ctx, out, sc=scores: sc[: len(ctx)], torch.from_numpy(cases.contexts),
                            torch.from_numpy(cases.targets), torch.from_numpy(cases.candidates), batch_size=len(rows))
            out[name][c] = {"hr10": sums.hr, "ndcg10": sums.ndcg_mean}
    return out


def references_table(refs: dict[str, dict[int, dict]]) -> str:
    chunks = sorted(next(iter(refs.values())))
    lines = ["| Reference | Metric | " + " | ".join(f"D_{c}" for c in chunks) + " | AVG |",
             "|---|---|" + "---:|" * (len(chunks) + 1)]
    for key, name in (("hr10", "HR@10"), ("ndcg10", "NDCG@10")):
        for ref, per in refs.items():
            vals = [100 * per[c][key] for c in chunks]
            lines.append(f"| {ref} | {name} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {np.mean(vals):.2f} |")
    return "\n".join(lines) + "\n"


def val_popularity_reference(prepared: Path) -> dict[int, float]:
    """NDCG@10 on chunk c's val split of ranking by interaction count in chunk c's train split (c >= 1)."""
    import torch

    from xsmoe_ray.evaluate import evaluate
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.data import eval_cases

    p = load_prepared(prepared)
    s = p.stream
    out = {}
    for c in range(1, s.n_chunks - 1):
        cases = eval_cases(s, s.val_cases(c), s.candidates(c))
        counts = np.bincount(s.item[s.train_targets(c)], minlength=p.n_items + 1).astype(np.float32)
        row = torch.from_numpy(counts[cases.candidates])
        out[c] = evaluate(lambda ctx, buf: buf.copy_(row.expand(len(ctx), -1)), torch.from_numpy(cases.contexts),
                          torch.from_numpy(cases.targets), torch.from_numpy(cases.candidates)).ndcg_mean
    return out


def diagnostics_table(runs: dict[str, list[dict]], val_pop: dict[int, float]) -> str:
    """In-window fit: val NDCG@10 (windows 1..T-1) vs the within-chunk popularity; epochs and epoch-cap hits."""
    lines = ["| Method | val NDCG@10, AVG windows 1-8 (%) | test NDCG@10 AVG (%) | epochs per window | "
             "windows stopped by the epoch cap (of 9) |", "|---|---:|---:|---:|---:|"]
    for v, rs in runs.items():
        val = mean_std(np.mean([100 * w["val_ndcg10"] for w in r["history"] if w["window"] >= 1]) for r in rs)
        test = mean_std(per_window(rs, "ndcg10")[1].mean(1))
        ep = mean_std(np.mean([w["epochs"] for w in r["history"]]) for r in rs)
        caps = [sum(w["epochs"] >= r["config"]["train"]["max_epochs"] for w in r["history"]) for r in rs]
        lines.append(f"| {v} | {_cell(*val, len(rs))} | {_cell(*test, len(rs))} | {_cell(*ep, len(rs))} | "
                     f"{', '.join(map(str, caps))} |")
    lines.append(f"| *popularity of D_s's train split* | *{100 * np.mean(list(val_pop.values())):.2f}* | | | |")
    return "\n".join(lines) + "\n"


def figure(runs: dict[str, list[dict]], reference: dict | None) -> bytes:
    """HR@10 and NDCG@10 per test chunk, one line per variant (mean over seeds) with a ±1 std band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (key, name) in zip(axes, (("hr10", "HR@10"), ("ndcg10", "NDCG@10"))):
        for v, rs in runs.items():
            chunks, arr = per_window(rs, key)
            m, sd = arr.mean(0), arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
            (line,) = ax.plot(chunks, m, marker="o", ms=3, label=f"{v} (n={len(arr)})",
                              lw=2.2 if v in ("xsmoe", "static", "noft") else 1.2)
            ax.fill_between(chunks, m - sd, m + sd, alpha=0.12, color=line.get_color())
        if reference:
            ch = sorted(reference)
            ax.plot(ch, [100 * reference[c][key] for c in ch], "k--", lw=1, label="popularity of D_(s-1)")
        ax.set_xlabel("test chunk D_s (model trained on D_(s-1))")
        ax.set_ylabel(f"{name} (%)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{name} per test window, mean ± std over seeds")
    axes[1].legend(fontsize=8, ncol=2)
    return _png(fig)


ANALYSIS_BEGIN, ANALYSIS_END = "<!-- analysis:begin -->", "<!-- analysis:end -->"


def kept_analysis(path: Path) -> str:
    """The hand-written analysis between the markers of an existing RESULTS.md (kept on rewrite)."""
    if not path.exists():
        return "_(analysis to be written)_\n"
    text = path.read_text()
    if ANALYSIS_BEGIN in text and ANALYSIS_END in text:
        return text.split(ANALYSIS_BEGIN, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n") + "\n"
    return "_(analysis to be written)_\n"


def machine_note(root: Path, runs: dict[str, list[dict]]) -> str:
    study = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else {}
    loads = [x for rs in runs.values() for r in rs for k in ("load_before", "load_after")
             for x in [r["wall"].get(k, [None])[0]] if x is not None]
    load = f"1-min load average {min(loads):.2f}-{max(loads):.2f} at run starts/ends" if loads else "load not recorded"
    return (f"{study.get('cpus', os.cpu_count())} CPU cores ({study.get('processor', _cpu_model())}), no GPU, "
            f"shared with other engineers' jobs ({load}); torch CPU, float32 (train.precision=auto); "
            f"runs strictly one after the other, one local Ray per run.")


def settings_table(extra: list[tuple[Path, dict]]) -> str:
    """AVG HR@10 / NDCG@10 (mean ± std over seeds) of other study roots (non-default settings)."""
    lines = ["| Setting (overrides on top of the preset) | Method | seeds | AVG HR@10 | AVG NDCG@10 | val NDCG@10 (windows 1-8) | "
             "epochs (all windows) | s per run | this data: AVG NDCG@10 of popularity / oracle D_(s-1) / cell only |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for root, runs in extra:
        study = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else {}
        setting = " ".join([*(study.get("overrides") or []), *(f"knob:{k}" for k in study.get("knobs") or [])]) or "(preset)"
        first = next(iter(runs.values()))[0]
        refs = {"pop": popularity_reference(first["dir"] / "prepared"),
                **(generator_references(first, study.get("knobs") or []) or {})}
        ref_text = " / ".join(f"{100 * np.mean([x['ndcg10'] for x in refs[k].values()]):.2f}"
                              for k in ("pop", "oracle D_(s-1)", "oracle D_(s-1), cell only") if k in refs)
        for k, (v, rs) in enumerate(runs.items()):
            hr = mean_std(per_window(rs, "hr10")[1].mean(1))
            nd = mean_std(per_window(rs, "ndcg10")[1].mean(1))
            ep = mean_std(sum(w["epochs"] for w in r["history"]) for r in rs)
            val = mean_std(np.mean([100 * w["val_ndcg10"] for w in r["history"] if w["window"] >= 1]) for r in rs)
            walls = [r["wall"]["wall_s"] for r in rs if r["wall"].get("wall_s")]
            lines.append(f"| `{setting}` | {v} | {','.join(str(r['seed']) for r in rs)} | {_cell(*hr, len(rs))} | "
                         f"{_cell(*nd, len(rs))} | {_cell(*val, len(rs))} | "
                         f"{_cell(*ep, len(rs))} | {f'{np.mean(walls):.0f}' if walls else 'n/a'} | "
                         f"{ref_text if k == 0 else ''} |")
    return "\n".join(lines) + "\n"


def aggregate(args) -> None:
    root = args.root.resolve()
    runs = load_runs(root, args.variants, args.seeds)
    if not runs:
        raise SystemExit(f"no finished run under {root / 'runs'}")
    any_run = next(iter(runs.values()))[0]
    reference = popularity_reference(any_run["dir"] / "prepared")
    study = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else {}
    oracles = generator_references(any_run, study.get("knobs") or [])
    docs = args.root.resolve()  # a per-root summary; docs/RESULTS.md comes from bench/study_report.py
    fig_path = docs / "results_ndcg.png"
    fig_path.write_bytes(figure(runs, reference))
    extra = [(r.resolve(), load_runs(r.resolve(), VARIANTS, range(100))) for r in args.extra_root]
    extra = [(r, rs) for r, rs in extra if rs]
    summary = json.loads((any_run["dir"] / "prepared" / "summary.json").read_text())
    totals = summary.get("totals", {})
    preset = (REPO / "xsmoe_ray" / "configs" / f"{args.config}.yaml")
    preset_text = preset.read_text() if preset.exists() else Path(args.config).read_text()
    n_runs = sum(len(rs) for rs in runs.values())
    walls = [r["wall"]["wall_s"] for rs in runs.values() for r in rs if r["wall"].get("wall_s")]
    md = [
        "# Results: XSMoE and baselines on synthetic drift data",
        "",
        f"Generated by `bench/results_study.py` from {n_runs} runs under `{_rel(root)}` "
        f"({len(runs)} variants x seeds {sorted({r['seed'] for rs in runs.values() for r in rs})}); "
        "the analysis section is hand-written and kept when the file is regenerated.",
        "",
        "## Setup",
        "",
        f"* Data: the synthetic H&M-layout drift generator (`xsmoe_ray/data/synthetic.py`, default knobs), "
        f"preset `{args.config}`: after per-chunk {summary.get('data_config', {}).get('k_core')}-core, "
        f"{totals.get('interactions', '?'):,} interactions, {totals.get('users', '?'):,} users, "
        f"{totals.get('items', '?'):,} items in 10 chunks. One data seed (`synth.seed=0`) for all runs; "
        "`run.seed` (0, 1, 2) changes the model initialisation and batch order only.",
        "* Protocol (DESIGN.md §4): warm-up on D_0; for s = 1..8 train on D_s (early stop on its val split), "
        "test on D_(s+1) by full ranking over every item seen so far. Columns D_2..D_9 are test chunks; AVG "
        "is each seed's mean over the 8 test chunks, then mean ± sample std (ddof=1) over seeds. Best mean "
        "per column in bold.",
        "* Backbones: the built-in tiny demo BERT/ViT (4 layers, width 32, random weights), "
        "`layers_per_group=1` so M = 4 side layers per modality.",
        f"* Machine: {machine_note(root, runs)}",
        *([f"* Time: the {len(walls)} runs took {sum(walls) / 60:.1f} min of wall time in all, "
           f"{min(walls):.0f}-{max(walls):.0f} s per run (per variant in the efficiency table)."] if walls else []),
        "",
        "Command (builds data and cache on the first run, skips finished runs, then writes this file):",
        "",
        "```",
        "python bench/results_study.py" + (f" --config {args.config}" if args.config != "synth_medium" else "")
        + (f" --root {_rel(root)}" if _rel(root) != "runs/results_study" else "")
        + "".join(f" --set {x}" for x in args.set)
        + "".join(f" --extra-root {_rel(r)}" for r in args.extra_root),
        "```",
        "",
        "which runs, per variant V and seed S:",
        "",
        "```",
        shlex.join(["python", "-m", "xsmoe_ray.stream", *stream_command(args.config, Path(_rel(root)), "V", 0, args.set)[3:]]).replace("run.seed=0", "run.seed=S").replace("V_s0", "V_sS"),
        "```",
        "",
        f"Preset `xsmoe_ray/configs/{args.config}.yaml`:",
        "",
        "```yaml",
        preset_text.strip(),
        "```",
        "",
        "## Recommendation performance (Table 1 shape)",
        "",
        "HR@10 and NDCG@10 in %, mean ± std over seeds. The italic row is a non-learned reference, not a "
        "method of the paper: every candidate scored by its interaction count in the previous chunk D_(s-1) "
        "(the chunk the models train on), same cases, candidates and pessimistic tie rule.",
        "",
        performance_table(runs, reference),
        f"![HR@10 and NDCG@10 per test window]({fig_path.name})",
        "",
        *(["## Non-learned references", "",
            "How much of the test signal is learnable at all, on the same test cases (full ranking, pessimistic "
            "ties). `popularity of D_(s-1)` counts interactions in the training chunk. The oracles score with the "
            "generator's latent truth (`generator_references` in `bench/results_study.py`): `oracle D_s` uses the "
            "test window's own tastes (not reachable by any model, shows the noise ceiling); `oracle D_(s-1)` uses "
            "the training window's tastes and article weights (a perfect model of the training chunk); "
            "`cell only` drops per-article popularity, which a content-only item tower cannot see (articles of one cell in random order).",
            "", references_table({"popularity of D_(s-1)": reference, **oracles})] if oracles else []),
        "## In-window fit",
        "",
        "Validation NDCG@10 is measured on the last 15% of the training chunk itself (same trend phase, no "
        "drift), so it shows how well each model fits the window it trains on; the italic row ranks the val "
        "cases by popularity in the same chunk's train split. Epoch cap = `train.max_epochs` of the run.",
        "",
        diagnostics_table(runs, val_popularity_reference(any_run["dir"] / "prepared")),
        "## Efficiency (Table 3 shape)",
        "",
        "MP = all side-network + fusion + sequence-encoder parameters after the last window, TrP = those "
        "trained in the last window, in MB (float32), as `xsmoe_ray/model/params.py` counts them. "
        "`train s (TT)` sums the per-window training time the loop reports (epochs + validation); "
        "`s per run (wall)` is the whole `python -m xsmoe_ray.stream` process (Ray start, data/cache "
        "reuse checks, training, testing, outputs). Times are on a shared 2-core machine: compare "
        "them within this table only.",
        "",
        efficiency_table(runs),
    ]
    if extra:
        md += ["## Non-default settings tried", "",
               "Each row is a separate study root (same data, same seeds unless stated) run with "
               "`bench/results_study.py --root <root> --set KEY=VALUE ...`; AVG over D_2..D_9, mean ± std over seeds.",
               "", settings_table(extra)]
    md += ["## Analysis", "", ANALYSIS_BEGIN, kept_analysis(docs / "RESULTS.md").rstrip("\n"), ANALYSIS_END, ""]
    (docs / "RESULTS.md").write_text("\n".join(md))
    print(f"[study] wrote {docs / 'RESULTS.md'} and {fig_path}", flush=True)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


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
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra stream override for every run of this root (repeatable)")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                   help="non-default synthetic generator knob (xsmoe_ray.data.synthetic.SynthKnobs), e.g. "
                        "trend_strength=1.0; the data is written once into <root>/data (repeatable)")
    p.add_argument("--aggregate-only", action="store_true", help="do not run anything, only aggregate")
    p.add_argument("--no-docs", action="store_true", help="run only, do not write <root>/RESULTS.md")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run")
    p.add_argument("--extra-root", type=Path, action="append", default=[],
                   help="another study root (non-default settings) to summarise in RESULTS.md (repeatable)")
    args = p.parse_args(argv)
    if not args.aggregate_only:
        run_all(args)
    if not args.no_docs:
        aggregate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
