"""Full-H&M scale rehearsal: the real code path at 31.8M interactions and 105k items, stage by stage.

    python bench/hm_scale.py [--dir /tmp/xsmoe_hm_scale] [--steps 30] [--eval-cases 0] [--stages ...]
    python bench/hm_scale.py --device cuda --no-docs   # train and eval stages on one GPU

Each stage runs in a fresh process; this driver samples the resident memory (``/proc``) of that
process and every process below it (the local Ray's raylet, GCS and Train workers included) every
0.25 s and records the peak of their sum and the peak of each Ray Train worker.

* ``data`` (untimed in the summary): the full-size synthetic H&M-layout CSVs of
  ``bench/prepare_scale.py`` (31,788,324 transactions, 1,371,980 customers, 105,542 articles),
  written once and reused.
* ``prepare``: ``prepare_data`` with the ``hm`` preset's protocol and no date filter (as the
  README's full-H&M job): read, 10 chunks, per-chunk 10-core, 85/15, contexts, parquet.
* ``cache``: a layer cache at BERT-base / ViT-base shape (12 layers + embeddings = 13 states ×
  768, float16, text and image: ≈ 4.2 GB) written through the project's cache layout and manifest
  (``open_memmap`` build directory, ``make_manifest``, atomic commit). The values are random:
  encoder speed is measured by ``bench/cache_throughput.py``; the random draws are timed apart.
* ``load``: ``load_grouped`` of that cache with the preset's 6+6 grouping, as each worker does.
* ``train``: window 0 (the warm-up on D_0) through the real Ray Train loop (``stream.fit``) with
  ``train.num_workers=2``, one epoch capped at ``--steps`` optimizer steps (``train.max_steps``,
  ``train.max_epochs=1``, ``train.last_window=0``), then that epoch's validation over D_0's val
  cases and the utilization pass over D_0's rows, as a real window does, at the preset's model
  dims. ``step_ms`` is the step loop's time per step; ``epoch_s_est`` = step_ms × D_0's global
  batches per epoch, and the stream's mean epoch is estimated the same way from every window's rows.
* ``flops``: matmul and attention FLOPs (``FlopCounterMode``, as ``bench/train_step.py``) of one
  optimizer step on D_0's first 256 rows at the preset's dims with 1 and with 10 experts per side
  layer, of the item table over 105,542 items (10 experts), and of one evaluation case (user encoder + its
  scores against 105,542 candidates): the counts the README's cluster estimates are built from.
* ``eval``: in one process, the item table and the full-ranking evaluation of the last test chunk
  (D_9) against every catalogue item (105,542; the protocol's candidates, the items seen so far,
  are fewer after 10-core here) with ``evaluate_cases``, all its cases unless
  ``--eval-cases`` samples them (the extrapolation is then stated), beside ``torch.mm`` at the same
  shapes (batch × embed against embed × candidates, written into a reused buffer) timed in the
  same process.

Results go to ``<dir>/hm_scale.json`` and docs/BENCHMARKS.md (between markers); the last line
printed is ``prepare_s= cache_write_s= load_grouped_s= step_ms= epoch_s_est= eval_cases_per_s=
eval_s_est= peak_rss_gb=`` (peak_rss_gb: the largest summed RSS of any stage's process tree).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

STAGES = ("data", "prepare", "cache", "load", "train", "eval", "flops")
LAYERS, DIM = 12, 768  # BERT-base / ViT-base: 12 layers + the embedding output, width 768
BLOCK = 4096  # items per cache write


def hm_config(d: Path, *extra: str):
    from xsmoe_ray.config import load_config

    return load_config("hm", [f"data.path={d / 'hm_1_over_1'}", "data.date_from=", f"cache.dir={d / 'cache'}",
                              f"run.out={d / 'run'}", "run.num_cpus=2", *extra])


# ------------------------------------------------------------------------------------------ stages

def stage_data(d: Path, args) -> dict:
    from prepare_scale import ensure_dataset

    t0 = time.perf_counter()
    ensure_dataset(d, 1)
    return {"data_s": time.perf_counter() - t0}


def stage_prepare(d: Path, args) -> dict:
    from xsmoe_ray.prepare import prepare_data

    t0 = time.perf_counter()
    summary = prepare_data(hm_config(d), d / "prepared", force=True, log=lambda *_: None)
    return {"prepare_s": time.perf_counter() - t0, **summary["totals"],
            "rows_read": summary["load_report"].get("rows_read")}


def stage_cache(d: Path, args) -> dict:
    """Random states written like a build: a new build directory of memmaps, fsync, manifest, commit."""
    import numpy as np
    import pyarrow.parquet as pq

    from xsmoe_ray.cache.build import _commit
    from xsmoe_ray.cache.layout import fsync, make_manifest

    items = [str(i) for i in pq.read_table(d / "prepared" / "items.parquet", columns=["item_id"])
             .column("item_id").to_pylist()]
    cache = d / "cache"
    cache.mkdir(exist_ok=True)
    build = f"build-bench-{time.strftime('%Y%m%dT%H%M%S')}"
    (cache / build).mkdir()
    specs = {m: {"backbone": f"bench-random-{m}-base", "id": f"bench-random-{m}", "pooling": "mean",
                 "layers": LAYERS, "dim": DIM} for m in ("text", "image")}
    rng = np.random.default_rng(0)
    t0, draw_s = time.perf_counter(), 0.0
    for m, spec in specs.items():
        path = cache / build / f"{m}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(items) + 1, LAYERS + 1, DIM))
        for lo in range(1, len(items) + 1, BLOCK):
            n = min(BLOCK, len(items) + 1 - lo)
            t_draw = time.perf_counter()
            block = rng.standard_normal((n, LAYERS + 1, DIM), dtype=np.float32).astype(np.float16)
            draw_s += time.perf_counter() - t_draw
            out[lo: lo + n] = block
        out.flush()
        fsync(path)
        del out
    hashes = {m: ["bench"] * len(items) for m in specs}
    need = {m: np.ones(len(items), dtype=bool) for m in specs}
    _commit(cache, make_manifest(build, items, specs, hashes, need, {m: {} for m in specs}))
    total = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (cache / build).iterdir())
    return {"cache_write_s": total - draw_s, "cache_draw_s": draw_s, "cache_bytes": size, "cache_items": len(items)}


def stage_load(d: Path, args) -> dict:
    from xsmoe_ray.cache import load_grouped

    cfg = hm_config(d)
    t0 = time.perf_counter()
    grouped = load_grouped(d / "cache", cfg.model.layers_per_group)
    return {"load_grouped_s": time.perf_counter() - t0,
            "grouped_bytes": sum(t.numel() * t.element_size() for t in grouped.values()),
            "grouped_shape": {m: list(t.shape) for m, t in grouped.items()}}


def stage_train(d: Path, args) -> dict:
    import shutil

    import numpy as np
    import ray

    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.raysetup import ensure_ray
    from xsmoe_ray.rundir import run_dir
    from xsmoe_ray.stream import fit, history_of
    from xsmoe_ray.train.data import window_data

    # on CUDA one worker per GPU, as a GPU cluster node runs it (the device machine has one GPU)
    workers = ["train.num_workers=1", "train.use_gpu=true"] if args.device == "cuda" else ["train.num_workers=2"]
    cfg = hm_config(d, *workers, f"train.max_steps={args.steps}", "train.max_epochs=1", "train.last_window=0")
    shutil.rmtree(d / "run", ignore_errors=True)  # a fresh window 0, never a resume
    where = run_dir(cfg.run)
    ensure_ray(cfg.run.num_cpus)
    t0 = time.perf_counter()
    try:
        history = history_of(fit(cfg, where.storage, d / "prepared", d / "cache"))
    finally:
        ray.shutdown()
    fit_s = time.perf_counter() - t0
    row = history[0]
    prepared = load_prepared(d / "prepared")
    stream, n_items = prepared.stream, prepared.n_items
    rows = [len(window_data(stream, w, n_items).train_rows) for w in range(stream.n_chunks - 1)]
    step_ms = 1000 * row["train_s"] / row["steps"]
    batches = [math.ceil(r / cfg.train.batch_size) for r in rows]
    return {"fit_s": fit_s, "window_s": row["seconds"], "steps": row["steps"], "train_s": row["train_s"],
            "val_s": row.get("val_s"), "util_s": row.get("util_s"),
            "step_ms": step_ms, "d0_rows": rows[0], "epoch_s_est": step_ms * batches[0] / 1000,
            "mean_epoch_s_est": step_ms * float(np.mean(batches)) / 1000, "rows_per_window": rows,
            "batch_size": cfg.train.batch_size, "workers": cfg.train.num_workers,
            "peak_gpu_mb": row.get("peak_mem_mb")}


def stage_eval(d: Path, args) -> dict:
    import numpy as np
    import torch

    from xsmoe_ray.cache import load_grouped
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.data import Cases, window_data
    from xsmoe_ray.train.window import evaluate_cases
    from xsmoe_ray.train.worker import new_model, warm_up_items

    from gpu_check import sync  # the same device wait as the GPU check's timings

    cfg = hm_config(d)
    prepared = load_prepared(d / "prepared")
    stream, n_items = prepared.stream, prepared.n_items
    features = load_grouped(d / "cache", cfg.model.layers_per_group)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = new_model(cfg, features)
    model.set_item_features(features)
    model.fit_feature_norm(warm_up_items(stream))
    model.to(device).eval()
    # Every catalogue item as a candidate (105,542), not only those seen by D_9 (fewer after 10-core
    # here): the worst case a real catalogue of this size can reach.
    test = window_data(stream, stream.n_chunks - 2, n_items).test
    cases = Cases(test.contexts, test.targets, np.arange(1, n_items + 1, dtype=test.candidates.dtype))
    seen_candidates = len(test.candidates)
    n_all = len(cases)
    if args.eval_cases and args.eval_cases < n_all:
        pick = np.sort(np.random.default_rng(0).choice(n_all, args.eval_cases, replace=False))
        cases = Cases(cases.contexts[pick], cases.targets[pick], cases.candidates)
    batch = 1024
    candidates = torch.from_numpy(cases.candidates).to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        table = model.item_embeddings(candidates, chunk_size=8192).float()
    sync(device)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums = evaluate_cases(model, cases, device, batch_size=batch)
    sync(device)
    eval_s = time.perf_counter() - t0 - table_s  # evaluate_cases builds the same table again
    rate = len(cases) / eval_s
    # torch.mm at the same shapes, into a reused buffer (the fastest form of the scoring matmul)
    users = torch.randn(batch, table.shape[1], device=device)
    out = torch.empty(batch, len(candidates), device=device)
    torch.mm(users, table.T, out=out)
    reps = max(3, min(50, len(cases) // batch))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(users, table.T, out=out)
    sync(device)
    mm_rate = reps * batch / (time.perf_counter() - t0)
    return {"eval_cases": len(cases), "chunk_cases": n_all, "candidates": len(candidates),
            "seen_candidates": seen_candidates,
            "embed_dim": int(table.shape[1]), "table_s": table_s, "eval_s": eval_s, "eval_cases_per_s": rate,
            "mm_cases_per_s": mm_rate, "eval_over_mm": rate / mm_rate, "eval_s_est": table_s + n_all / rate,
            "ndcg10": sums.ndcg_mean, "score_buffer_gb": batch * len(candidates) * 4 / 2**30,
            "threads": torch.get_num_threads(), "device": str(device),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def stage_flops(d: Path, args) -> dict:
    import torch

    from xsmoe_ray.cache import load_grouped
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.data import split_rows, window_data
    from xsmoe_ray.train.window import _step
    from xsmoe_ray.train.worker import new_model, warm_up_items

    from train_step import count_flops as flops  # the same counter as the step benchmark

    cfg = hm_config(d)
    prepared = load_prepared(d / "prepared")
    data = window_data(prepared.stream, 0, prepared.n_items)
    batch = torch.from_numpy(data.train_rows[: cfg.train.batch_size])
    log_pop = torch.from_numpy(data.log_pop)
    features = load_grouped(d / "cache", cfg.model.layers_per_group)
    out, cpu = {}, torch.device("cpu")
    for experts in (1, 10):
        torch.manual_seed(0)
        model = new_model(cfg, features)
        model.set_item_features(features)
        model.fit_feature_norm(warm_up_items(prepared.stream))
        for _ in range(experts - 1):
            model.expand()
        opt = torch.optim.Adam(list(model.trainable_parameters()), lr=1e-3)
        out[f"step_gflop_n{experts}"] = flops(lambda: _step(model, opt, None, batch, log_pop, cpu, "full")) / 1e9
    model.eval()
    candidates = torch.arange(1, prepared.n_items + 1)
    with torch.inference_mode():  # the model has 10 experts per side layer here (the stream's end)
        out["table_gflop_n10"] = flops(lambda: model.item_embeddings(candidates, chunk_size=8192)) / 1e9
        table = model.item_embeddings(candidates, chunk_size=8192)
        by_id = torch.cat([torch.zeros(1, table.shape[1]), table])  # candidates are every item id here
        known = (by_id, torch.ones(len(by_id), dtype=torch.bool))
        ctx = torch.from_numpy(data.val.contexts[:1024])
        out["case_mflop"] = flops(lambda: model.user_embedding(ctx, known).float() @ table.T) / 1e6 / len(ctx)
    out["unique_items_first_batch"] = int(torch.unique(split_rows(batch)[0]).numel())
    return out


# ------------------------------------------------------------------------------------------ driver

def _tree_rss(root_pid: int) -> tuple[int, int, dict[int, tuple[int, int, str]]]:
    """Summed RSS and summed private (anonymous) RSS, in bytes, of ``root_pid`` and its descendants,
    and each one's (rss, anon, command). RSS counts mapped file pages (the memmapped cache, shared
    libraries) in every process that maps them; anon = resident - shared is the memory of its own."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    page = os.sysconf("SC_PAGE_SIZE")
    procs, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                fields = f.read().split()
            rss, anon = int(fields[1]) * page, (int(fields[1]) - int(fields[2])) * page
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        procs[pid] = (rss, anon, cmd)
    return sum(p[0] for p in procs.values()), sum(p[1] for p in procs.values()), procs


def run_stage(name: str, d: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--dir", str(d), "--steps", str(args.steps),
           "--eval-cases", str(args.eval_cases), "--device", args.device]
    out = d / f"stage_{name}.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    peak_sum, peak_anon, per_pid = 0, 0, {}
    while proc.poll() is None:
        total, anon, procs = _tree_rss(proc.pid)
        peak_sum, peak_anon = max(peak_sum, total), max(peak_anon, anon)
        for pid, (rss, a, c) in procs.items():
            old = per_pid.get(pid, (0, 0, c))  # a Ray worker is renamed (IDLE → its actor), reads '' on exit
            per_pid[pid] = (max(old[0], rss), max(old[1], a), old[2] if "RayTrainWorker" in old[2] or not c else c)
        time.sleep(0.25)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"[hm_scale] stage {name} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    workers = sorted((p for p in per_pid.values() if "RayTrainWorker" in p[2]), reverse=True)
    result.update(stage_wall_s=time.perf_counter() - t0, peak_rss_gb=peak_sum / 2**30, peak_anon_gb=peak_anon / 2**30,
                  peak_single_gb=max((p[0] for p in per_pid.values()), default=0) / 2**30,
                  worker_peak_rss_gb=[w[0] / 2**30 for w in workers], worker_peak_anon_gb=[w[1] / 2**30 for w in workers],
                  top_processes=[[p[2][:60], round(p[0] / 2**30, 2), round(p[1] / 2**30, 2)]
                                 for p in sorted(per_pid.values(), reverse=True)[:6]])
    print(f"[hm_scale] {name}: {json.dumps({k: v for k, v in result.items() if k != 'rows_per_window'})}", flush=True)
    return result


def summary_line(r: dict) -> str:
    def get(stage, key):
        return r.get(stage, {}).get(key, float("nan"))

    peak = max((s.get("peak_rss_gb", 0.0) for s in r.values()), default=float("nan"))
    return (f"prepare_s={get('prepare', 'prepare_s'):.1f} cache_write_s={get('cache', 'cache_write_s'):.1f} "
            f"load_grouped_s={get('load', 'load_grouped_s'):.1f} step_ms={get('train', 'step_ms'):.1f} "
            f"epoch_s_est={get('train', 'epoch_s_est'):.0f} eval_cases_per_s={get('eval', 'eval_cases_per_s'):.0f} "
            f"eval_s_est={get('eval', 'eval_s_est'):.0f} peak_rss_gb={peak:.2f}")


def record(r: dict, command: str, total_s: float) -> None:
    def g(stage, key, fmt="{:.1f}"):
        v = r.get(stage, {}).get(key)
        return "-" if v is None else fmt.format(v)

    tr = r.get("train", {})
    lines = [
        "<!-- hm_scale:begin -->",
        "## Full-H&M scale rehearsal (`bench/hm_scale.py`, issue 12)",
        "",
        f"Command: `{command}` on this 2-core, 24 GiB machine, no GPU (measured {time.strftime('%Y-%m-%d')}; "
        f"all stages {total_s / 60:.1f} min). Each stage in a fresh process; peak RSS is the largest sum over the "
        "stage's process tree (driver, raylet, GCS, Ray workers), sampled every 0.25 s. Stages can be rerun "
        "one by one (`--stages`); \"all stages\" sums the recorded stages' wall times. The first run also writes "
        f"the 3.1 GB of CSVs once (the `data` stage, {g('data', 'data_s', '{:.0f}')} s here).",
        "",
        "| stage | what | time | peak RSS (tree) GiB |",
        "|---|---|---:|---:|",
        f"| prepare | `hm` protocol, no date filter: {g('prepare', 'interactions', '{:,}')} interactions → 10 chunks, "
        f"10-core, cases, parquet | {g('prepare', 'prepare_s')} s | {g('prepare', 'peak_rss_gb', '{:.2f}')} |",
        f"| cache | {g('cache', 'cache_items', '{:,}')} items × 2 modalities × 13 × 768 float16 "
        f"({g('cache', 'cache_bytes', '{:,}')} B) through the cache layout + manifest; random draws "
        f"({g('cache', 'cache_draw_s')} s) excluded | {g('cache', 'cache_write_s')} s | {g('cache', 'peak_rss_gb', '{:.2f}')} |",
        f"| load | `load_grouped`, 6+6 grouping: {g('load', 'grouped_bytes', '{:,}')} B per worker | "
        f"{g('load', 'load_grouped_s')} s | {g('load', 'peak_rss_gb', '{:.2f}')} |",
        f"| train | window 0 on Ray Train, 2 workers, {g('train', 'steps', '{:d}')} steps of batch "
        f"{g('train', 'batch_size', '{:d}')}, then val ({g('train', 'val_s')} s) + utilization pass "
        f"({g('train', 'util_s')} s); whole `fit` {g('train', 'fit_s')} s, "
        f"window {g('train', 'window_s')} s | {g('train', 'step_ms')} ms/step | {g('train', 'peak_rss_gb', '{:.2f}')} |",
        f"| eval | D_9: {g('eval', 'eval_cases', '{:,}')} of {g('eval', 'chunk_cases', '{:,}')} cases × "
        f"{g('eval', 'candidates', '{:,}')} candidates, item table {g('eval', 'table_s')} s | "
        f"{g('eval', 'eval_cases_per_s', '{:,.0f}')} cases/s | {g('eval', 'peak_rss_gb', '{:.2f}')} |",
        "",
        f"* **Per training worker (host):** peak RSS {', '.join(f'{w:.2f}' for w in tr.get('worker_peak_rss_gb', [])) or '-'} GiB, "
        f"of which private (anonymous) {', '.join(f'{w:.2f}' for w in tr.get('worker_peak_anon_gb', [])) or '-'} GiB "
        "(each Ray Train worker process, measured: the prepared stream, the grouped cache, model, optimizer).",
        f"* **FLOPs** (`FlopCounterMode`, matmuls and attention): one optimizer step of 256 D_0 rows "
        f"{g('flops', 'step_gflop_n1', '{:.2f}')} GFLOP with 1 expert per side layer, "
        f"{g('flops', 'step_gflop_n10', '{:.2f}')} GFLOP with 10; the item table of 105,542 items with 10 experts "
        f"{g('flops', 'table_gflop_n10', '{:.0f}')} GFLOP; one evaluation case {g('flops', 'case_mflop', '{:.1f}')} MFLOP "
        "(user encoder from the table + 105,542 scores).",
        f"* **Epoch estimates** (2 CPU workers here): D_0 has {g('train', 'd0_rows', '{:,}')} training rows → "
        f"{g('train', 'epoch_s_est', '{:.0f}')} s per epoch; the mean window → {g('train', 'mean_epoch_s_est', '{:.0f}')} s.",
        f"* **Evaluation:** {g('eval', 'eval_cases_per_s', '{:,.0f}')} cases/s against `torch.mm` at the same shapes "
        f"{g('eval', 'mm_cases_per_s', '{:,.0f}')} cases/s in the same process = "
        f"{g('eval', 'eval_over_mm', '{:.0%}')}; one score buffer of {g('eval', 'score_buffer_gb', '{:.2f}')} GiB. "
        f"The whole chunk: ≈ {g('eval', 'eval_s_est', '{:.0f}')} s.",
        "",
        f"Last line: `{summary_line(r)}`",
        "<!-- hm_scale:end -->",
    ]
    docs = REPO / "docs" / "BENCHMARKS.md"
    text = docs.read_text()
    section = "\n".join(lines)
    pattern = re.compile(r"<!-- hm_scale:begin -->.*<!-- hm_scale:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    docs.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=os.environ.get("XSMOE_BENCH_DIR", "/tmp/xsmoe_hm_scale"),
                   help="working directory (the generated CSVs are reused between runs)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps of the training stage")
    p.add_argument("--eval-cases", type=int, default=0, help="evaluate a seeded sample of this many cases (0 = all)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/BENCHMARKS.md")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the train stage on one GPU worker (train.use_gpu), the eval stage on the GPU; "
                        "docs/BENCHMARKS.md's section is the CPU run's, so use --no-docs")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device != "cpu" and not args.no_docs and not args.stage:  # a stage process writes no docs
        p.error("--device cuda: the recorded section is the CPU run's; add --no-docs")
    if args.device == "cuda" and not args.stage:
        import torch

        if not torch.cuda.is_available():  # else Ray Train would wait for a GPU that never comes
            p.error("--device cuda: torch sees no CUDA device here")
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    if args.stage:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        result = globals()[f"stage_{args.stage}"](d, args)
        (d / f"stage_{args.stage}.json").write_text(json.dumps(result))
        return
    t0 = time.perf_counter()
    saved = d / "hm_scale.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}  # a partial rerun updates its stages
    for name in args.stages.split(","):
        if name not in STAGES:
            p.error(f"unknown stage {name!r}; stages: {','.join(STAGES)}")
        results[name] = run_stage(name, d, args)
    total_s = sum(r.get("stage_wall_s", 0.0) for r in results.values())
    saved.write_text(json.dumps(results, indent=1))
    if not args.no_docs:
        extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in
                        (("steps", args.steps), ("eval_cases", args.eval_cases)) if v != p.get_default(k))
        record(results, f"python bench/hm_scale.py{extra}", total_s)
    print(f"[hm_scale] stages {args.stages} in {(time.perf_counter() - t0) / 60:.1f} min; all recorded stages "
          f"{total_s / 60:.1f} min")
    print(summary_line(results))


if __name__ == "__main__":
    main()
