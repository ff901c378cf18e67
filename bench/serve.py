"""Serving latency and throughput (issue 20): the Ray Serve app over HTTP, and its scoring in process.

    python bench/serve.py [--dir /tmp/xsmoe_serve_bench] [--demo-run RUN_OUT] [--hm-dir DIR] [--no-docs]

Two runs are served, one after the other, by ``xsmoe_ray.serve:app`` on a local Ray (2 CPUs):

* **demo**: the embedded demo (``--config demo``, 1 epoch per window: speed, not quality), trained
  here unless ``--demo-run`` names a finished run;
* **hm**: a full-H&M-sized run. Its prepared data and layer cache are ``bench/hm_scale.py``'s
  (31.8M transactions read, 10-core protocol; BERT-base/ViT-base-shaped random states, 6+6
  grouping), built by that script's ``data prepare cache`` stages unless ``--hm-dir`` holds them;
  its checkpoint is an ``hm``-preset model with random weights and 10 experts per side layer (as
  after window 8), written as Ray Train registers one. Candidates are the protocol's (items seen in
  D_0..D_9 after 10-core), fewer than the 105,542 catalogue items.

Per run: the time to load a checkpoint and build its item table (what a hot swap costs, off the
request path); in process, the time of ``Recommender.answer`` for 1 and 32 queries and of the
scoring inside it (user encoding + ``[B, D] x [D, C]`` product, ``ItemTable.scores``) against
``torch.mm`` at the same shape into a reused buffer; over HTTP, p50/p99 latency and requests/s with
1 client (sequential requests) and with 32 concurrent clients (asyncio, aiohttp). The clients run
on the same 2 cores as Serve. The in-process figures are also taken with an item table over all
105,542 catalogue items (``--table-items``).

Results go to ``<dir>/serve.json`` and docs/BENCHMARKS.md (between markers); the last line printed
is ``demo_p50_ms= demo_p99_ms= demo_rps_1= demo_rps_32= hm_p50_ms= hm_p99_ms= hm_rps_1= hm_rps_32=
hm_p99_ms_32= hm_swap_s= score_frac_mm=`` (score_frac_mm: ``torch.mm`` time / scoring time at
batch 32 over the 105,542-item table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

BEGIN, END = "<!-- serve:begin -->", "<!-- serve:end -->"
HM_ITEMS = 105_542
HM_WINDOW = 8  # the checkpoint stands for the model after window 8: 1 + 8 experts, then one more


def log(msg: str) -> None:
    print(f"[serve-bench] {msg}", flush=True)


# ---- runs -------------------------------------------------------------------------------------------
def demo_run(d: Path) -> str:
    from xsmoe_ray.config import load_config
    from xsmoe_ray.stream import run

    out = d / "demo"
    if not (out / "history.json").is_file():
        log("training the demo run (1 epoch per window)")
        run(load_config("demo", [f"run.out={out}", "train.max_epochs=1"]))
    return str(out)


def hm_run(d: Path, hm_dir: Path) -> str:
    """A run directory over hm_scale's prepared data and cache with a random ``hm``-preset checkpoint."""
    import torch
    import yaml

    from xsmoe_ray.config import dump_yaml, load_config, to_dict
    from xsmoe_ray.train.checkpoint import WindowState, save_state
    from xsmoe_ray.train.worker import model_features, new_model

    if not (hm_dir / "cache" / "manifest.json").is_file() or not (hm_dir / "prepared" / "summary.json").is_file():
        log(f"building the H&M-scale data and cache in {hm_dir} (bench/hm_scale.py --stages data,prepare,cache)")
        subprocess.run([sys.executable, str(REPO / "bench" / "hm_scale.py"), "--dir", str(hm_dir), "--stages",
                        "data,prepare,cache", "--no-docs"], check=True)
    out = d / "hm"
    ckpt = out / "ray" / "hm" / f"window_{HM_WINDOW:04d}"
    if (ckpt / "state.pt").is_file():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "prepared").exists():
        (out / "prepared").symlink_to(hm_dir / "prepared")
    cfg = load_config("hm", [f"run.out={out}", f"cache.dir={hm_dir / 'cache'}", "run.name=hm"])
    torch.manual_seed(0)
    features = model_features(cfg, hm_dir / "cache", torch.device("cpu"))
    model = new_model(cfg, features)
    model.set_item_features(features)
    model.fit_feature_norm(torch.arange(1, 20_001))
    for _ in range(HM_WINDOW + 1):
        model.begin_window()
    ckpt.mkdir(parents=True, exist_ok=True)
    save_state(ckpt, WindowState(window=HM_WINDOW, model=model), to_dict(cfg))
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": ckpt.name, "metrics": {"window": HM_WINDOW}}]}
    (ckpt.parent / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    (out / "config.yaml").write_text(dump_yaml(cfg))
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["name"] == "hm"
    return str(out)


# ---- in process ------------------------------------------------------------------------------------
def median_s(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def user_queries(rec, n: int, seed: int = 0):
    import numpy as np

    from xsmoe_ray.recommender import Query

    users = [u for u, c in rec.catalogue.user_code.items()
             if rec.catalogue.history_start[c + 1] > rec.catalogue.history_start[c]]
    pick = np.random.default_rng(seed).choice(len(users), size=min(n, len(users)), replace=False)
    return [Query(user=users[i], k=10) for i in pick]


def in_process(rec, queries, table_items: int) -> dict:
    import torch

    from xsmoe_ray.scoring import ItemTable

    out = {"candidates": len(rec.items)}
    out["answer_1_ms"] = 1e3 * median_s(lambda: rec.answer(queries[:1]), 50)
    out["answer_32_ms"] = 1e3 * median_s(lambda: rec.answer(queries[:32]), 20)
    contexts = torch.stack([torch.from_numpy(rec.context_of(q)[0]) for q in queries[:32]])
    t0 = time.perf_counter()
    table = ItemTable(rec.model, torch.arange(1, table_items + 1)) if table_items > 0 else rec.items
    out["table_items"], out["table_build_s"] = len(table), time.perf_counter() - t0
    for b in (1, 32):
        ctx = contexts[:b]
        buf = torch.empty(b, len(table), dtype=torch.float32)
        users = table.users(ctx)
        t_score = median_s(lambda: table.scores(ctx, out=buf), 30)
        t_topk = median_s(lambda: table.scores(ctx, out=buf).topk(10, dim=1), 30)
        t_mm = median_s(lambda: torch.mm(users, table.table.T, out=buf), 30)
        out[f"score_{b}_ms"], out[f"score_topk_{b}_ms"], out[f"mm_{b}_ms"] = 1e3 * t_score, 1e3 * t_topk, 1e3 * t_mm
        out[f"frac_mm_{b}"] = t_mm / t_score
    return out


# ---- over HTTP ---------------------------------------------------------------------------------------
async def _load(port: int, bodies: list[dict], concurrency: int) -> tuple[list[float], float, int]:
    import aiohttp

    latencies, failures = [], 0
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession() as session:
        async def client():
            nonlocal failures
            while queue:
                body = queue.pop()
                t = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/recommend", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, failures


def over_http(port: int, queries, requests: int) -> dict:
    bodies = [{"user": q.user, "k": 10} for q in queries]
    out = {}
    asyncio.run(_load(port, bodies[:20], 4))  # warm-up: connections, first batches
    for c in (1, 32):
        batch = [bodies[i % len(bodies)] for i in range(requests if c == 1 else requests * 4)]
        lat, wall, failed = asyncio.run(_load(port, batch, c))
        lat.sort()
        out[f"c{c}"] = {"requests": len(lat), "failed": failed, "p50_ms": 1e3 * lat[len(lat) // 2],
                        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "rps": len(lat) / wall}
    return out


def serve_and_measure(run_out: str, port: int, requests: int, table_items: int) -> dict:
    from ray import serve

    from xsmoe_ray.recommender import Recommender
    from xsmoe_ray.serve import app

    t0 = time.perf_counter()
    rec = Recommender(run_out)
    swap_s = time.perf_counter() - t0
    queries = user_queries(rec, 256)
    result = {"swap_s": swap_s, "window": rec.window, "in_process": in_process(rec, queries, table_items)}
    del rec
    log(f"{run_out}: in process {result['in_process']}")
    serve.run(app({"run_out": run_out, "poll_s": 0, "num_cpus": 0}), blocking=False)
    result["http"] = over_http(port, queries, requests)
    serve.delete("default")
    log(f"{run_out}: over HTTP {result['http']}")
    return result


# ---- report --------------------------------------------------------------------------------------------
def markdown(res: dict, command: str) -> str:
    lines = [BEGIN, "## Serving (`bench/serve.py`, issue 20)", "",
             f"Command: `{command}` on this 2-core machine, no GPU ({time.strftime('%Y-%m-%d')}). One Serve "
             "replica (`num_cpus=0`), `@serve.batch` up to 32; the load generator (aiohttp) shares the 2 cores.",
             "", "| run | candidates | swap (load + item table) | clients | requests | p50 ms | p99 ms | req/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("demo", "hm"):
        r = res[name]
        for c in ("c1", "c32"):
            h = r["http"][c]
            lines.append(f"| {name} | {r['in_process']['candidates']:,} | {r['swap_s']:.1f} s | {c[1:]} | "
                         f"{h['requests']:,} ({h['failed']} failed) | {h['p50_ms']:.1f} | {h['p99_ms']:.1f} | "
                         f"{h['rps']:.0f} |")
    lines += ["", "In process (medians): `Recommender.answer` for 1 and 32 queries; scoring = user encoding + "
              "`[B, D] × [D, C]` into a reused buffer (`ItemTable.scores`), against `torch.mm` alone at that shape.",
              "", "| run | table items | answer 1 ms | answer 32 ms | B | scoring ms | + top-10 ms | torch.mm ms | "
              "mm / scoring |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("demo", "hm"):
        p = res[name]["in_process"]
        for b in (1, 32):
            lines.append(f"| {name} | {p['table_items']:,} | {p['answer_1_ms']:.2f} | {p['answer_32_ms']:.2f} | {b} | "
                         f"{p[f'score_{b}_ms']:.2f} | {p[f'score_topk_{b}_ms']:.2f} | {p[f'mm_{b}_ms']:.2f} | "
                         f"{100 * p[f'frac_mm_{b}']:.0f} % |")
    lines += ["", f"Last line: `{res['line']}`", END]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    path = REPO / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=os.environ.get("XSMOE_BENCH_DIR", "/tmp/xsmoe_serve_bench"), help="working directory")
    p.add_argument("--demo-run", help="a finished demo run to serve (default: train one under --dir)")
    p.add_argument("--hm-dir", help="bench/hm_scale.py's directory with prepared/ and cache/ (default: <dir>/hm_scale)")
    p.add_argument("--requests", type=int, default=300, help="requests of the 1-client test (32 clients: 4x)")
    p.add_argument("--table-items", type=int, default=HM_ITEMS, help="items of the in-process table for the hm run")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        demo = args.demo_run or demo_run(d)
        hm = hm_run(d, Path(args.hm_dir) if args.hm_dir else d / "hm_scale")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        res = {"demo": serve_and_measure(demo, port, args.requests, 0),
               "hm": serve_and_measure(hm, port, args.requests, args.table_items)}
        serve.shutdown()
    finally:
        ray.shutdown()
    http = {n: res[n]["http"] for n in ("demo", "hm")}
    res["line"] = (f"demo_p50_ms={http['demo']['c1']['p50_ms']:.1f} demo_p99_ms={http['demo']['c1']['p99_ms']:.1f} "
                   f"demo_rps_1={http['demo']['c1']['rps']:.0f} demo_rps_32={http['demo']['c32']['rps']:.0f} "
                   f"hm_p50_ms={http['hm']['c1']['p50_ms']:.1f} hm_p99_ms={http['hm']['c1']['p99_ms']:.1f} "
                   f"hm_rps_1={http['hm']['c1']['rps']:.0f} hm_rps_32={http['hm']['c32']['rps']:.0f} "
                   f"hm_p99_ms_32={http['hm']['c32']['p99_ms']:.1f} hm_swap_s={res['hm']['swap_s']:.1f} "
                   f"score_frac_mm={res['hm']['in_process']['frac_mm_32']:.2f}")
    (d / "serve.json").write_text(json.dumps(res, indent=1))
    if not args.no_docs:
        write_docs(markdown(res, "python bench/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    print(res["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
