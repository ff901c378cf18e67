"""The GPU paths in one short run: cache encoder, demo stream, train step, 105k-item evaluation.

    bash bench/gpu_check.sh                 # on a machine with a CUDA GPU, ≤ 8 minutes
    python bench/gpu_check.py --device cpu --quick   # the same code on CPU, small sizes (a dry run)

Checks, each timed on the chosen device (run in the order 1, 3, 4, 2; gpu_check.json is written
after each):

1. **encoder**: ``LayerEncoder`` (the cache build's actor class, ``use_gpu``) with a BERT-base-sized
   random text model (``BertConfig()`` sizes, demo vocabulary, written with ``save_pretrained``) over
   40-word texts, batch 64: items/s after one warm-up batch.
2. **stream**: the demo job ``python -m xsmoe_ray.stream`` with ``train.use_gpu=true``
   ``cache.use_gpu=true``, stopped after ``--stream-timeout`` seconds (one Train worker, NCCL;
   ``train.precision=auto`` = fp16 + GradScaler on CUDA): exit status, wall time, AVG NDCG@10
   against the popularity row, peak GPU memory per window.
3. **train_step**: forward + backward + Adam of the XSMoE model at paper sizes (d = 768 text + image,
   d' = 64, M = 2, 10 experts per layer, L = 10, batch 256, 105,542 items) under the same autocast
   and GradScaler as training: ms per step and peak GPU memory.
4. **eval**: ``evaluate_cases`` (the training loop's evaluation) of 65,536 random cases against
   105,542 candidates with the model of 3., beside ``torch.mm`` at the same shapes: cases/s, the
   item table (built once per evaluation) timed apart.

Writes ``<out>/gpu_check.json``; the last line printed is ``encoder_items_per_s= stream_s=
stream_ndcg10= step_ms= step_peak_gb= eval_cases_per_s= eval_over_mm=``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

D, DP, G, L, B, EMBED, N_ITEMS, EXPERTS = 768, 64, 2, 10, 256, 64, 105_542, 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def check_encoder(device: torch.device, n: int) -> dict:
    from cache_throughput import bert_base_dir  # the BERT-base-sized model of the CPU benchmark
    from xsmoe_ray import backbones
    from xsmoe_ray.cache.build import LayerEncoder, prepare_text

    path = bert_base_dir()
    rng = np.random.default_rng(0)
    texts = np.array([" ".join(rng.choice(backbones.DEMO_WORDS, 40)) for _ in range(n)], dtype=object)
    encoder = LayerEncoder({"text": str(path)}, str(backbones.demo_root()), poolings={"text": "mean"},
                           use_gpu=device.type == "cuda")
    batch_size = 64

    # tokenised up front: the CPU stage runs in other Ray tasks during a build; this times the actor's part
    batches = [prepare_text({"text": texts[lo: lo + batch_size], "need_text": np.ones(len(texts[lo: lo + batch_size]), bool)}, str(path), str(backbones.demo_root()), 64)
               for lo in range(0, n, batch_size)]
    encoder.encode("text", batches[0])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    done = 0
    for b in batches[1:]:
        done += len(encoder.encode("text", b))
    sync(device)
    return {"encoder_items": done, "encoder_items_per_s": done / (time.perf_counter() - t0), "batch": batch_size}


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def check_stream(device: torch.device, out: Path, timeout_s: float) -> dict:
    run_out = out / "demo_run"
    cmd = [sys.executable, "-m", "xsmoe_ray.stream", f"run.out={run_out}",
           f"train.use_gpu={str(device.type == 'cuda').lower()}", f"cache.use_gpu={str(device.type == 'cuda').lower()}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:  # a hung job must not cost the figures measured before it
        stopped = f"\n[gpu_check] stopped at {timeout_s} s\n"
        (out / "demo_stream.log").write_text(_text(e.stdout) + _text(e.stderr) + stopped)
        return {"stream_rc": "timeout", "stream_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    (out / "demo_stream.log").write_text(proc.stdout + proc.stderr)
    result = {"stream_rc": proc.returncode, "stream_s": wall}
    history = run_out / "history.json"
    if proc.returncode == 0 and history.is_file():
        rows = [r for r in json.loads(history.read_text()) if r.get("ndcg10") is not None]
        result.update(stream_ndcg10=100 * float(np.mean([r["ndcg10"] for r in rows])),
                      stream_pop_ndcg10=100 * float(np.mean([r["pop_ndcg10"] for r in rows])),
                      stream_peak_mem_mb=max((r.get("peak_mem_mb") or 0) for r in rows))
    return result


def paper_model(device: torch.device, n_items: int):
    from xsmoe_ray.model import build_model

    torch.manual_seed(0)
    model = build_model("xsmoe", text_dim=D, image_dim=D, n_groups=G, d_prime=DP, embed_dim=EMBED, max_len=L,
                        seq_blocks=2, seq_heads=2, dropout=0.1)
    for _ in range(EXPERTS - 1):
        model.expand()
    features = {m: torch.randn(n_items + 1, G + 1, D).half() for m in ("text", "image")}
    model.set_item_features(features)
    return model.to(device)


def check_train_step(device: torch.device, model, n_items: int, steps: int) -> dict:
    from xsmoe_ray.train.window import _step, uses_grad_scaler

    g = torch.Generator().manual_seed(0)
    popularity = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64) ** 0.8
    seqs = [torch.multinomial(popularity, B * (L + 1), replacement=True, generator=g).view(B, L + 1) + 1
            for _ in range(4)]
    log_pop = torch.log(popularity / popularity.sum()).float()
    log_pop = torch.cat([torch.zeros(1), log_pop]).to(device)
    model.train()
    opt = torch.optim.Adam(list(model.trainable_parameters()), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if uses_grad_scaler(device, "auto") else None
    rows = [torch.cat([s, torch.zeros(B, 1, dtype=torch.long)], 1).to(device) for s in seqs]  # first loss position 0
    for r in rows[:2]:
        _step(model, opt, scaler, r, log_pop, device, "auto")
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for k in range(steps):
        loss = _step(model, opt, scaler, rows[k % len(rows)], log_pop, device, "auto")
    float(loss)
    sync(device)
    return {"step_ms": 1000 * (time.perf_counter() - t0) / steps, "step_peak_gb": peak_gb(device), "steps": steps}


def check_eval(device: torch.device, model, n_items: int, n_cases: int) -> dict:
    from xsmoe_ray.train.data import Cases
    from xsmoe_ray.train.window import evaluate_cases

    rng = np.random.default_rng(0)
    cases = Cases(rng.integers(1, n_items + 1, (n_cases, L)), rng.integers(1, n_items + 1, n_cases),
                  np.arange(1, n_items + 1))
    evaluate_cases(model, Cases(cases.contexts[:1024], cases.targets[:1024], cases.candidates), device)  # warm-up
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.item_embeddings(torch.from_numpy(cases.candidates).to(device), chunk_size=8192)
    sync(device)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate_cases(model, cases, device)
    sync(device)
    rate = n_cases / (time.perf_counter() - t0 - table_s)  # the item table is built once per evaluation
    users, table = torch.randn(1024, EMBED, device=device), torch.randn(n_items, EMBED, device=device)
    out = torch.empty(1024, n_items, device=device)
    torch.mm(users, table.T, out=out)
    sync(device)
    reps = max(4, n_cases // 1024)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(users, table.T, out=out)
    sync(device)
    mm_rate = reps * 1024 / (time.perf_counter() - t0)
    return {"eval_cases": n_cases, "eval_table_s": table_s, "eval_cases_per_s": rate, "mm_cases_per_s": mm_rate, "eval_over_mm": rate / mm_rate}


def save(out: Path, result: dict) -> None:
    """After every check: a later check that hangs until the lease ends keeps the earlier figures."""
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_"),
                   help="where gpu_check.json, the demo run and its log go (default $OUT or a temp dir)")
    p.add_argument("--quick", action="store_true", help="small sizes (a CPU dry run of the same code)")
    p.add_argument("--checks", default="encoder,train_step,eval,stream",
                   help="comma list of the checks to run (run in this order: the demo stream, the likeliest to "
                        "hang on a new machine, last)")
    p.add_argument("--stream-timeout", type=float, default=300, help="seconds before the demo stream is stopped")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing was measured", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checks = args.checks.split(",")
    n_items = 4_096 if args.quick else N_ITEMS
    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "n_items": n_items}
    if "encoder" in checks:
        result.update(check_encoder(device, 3 * 64 if args.quick else 64 * 64))
        print(f"[gpu_check] encoder: {result['encoder_items_per_s']:.0f} items/s", flush=True)
        save(out, result)
    if "train_step" in checks or "eval" in checks:
        model = paper_model(device, n_items)
        if "train_step" in checks:
            result.update(check_train_step(device, model, n_items, 3 if args.quick else 50))
            print(f"[gpu_check] train step: {result['step_ms']:.1f} ms, peak {result['step_peak_gb']} GiB", flush=True)
            save(out, result)
        if "eval" in checks:
            result.update(check_eval(device, model, n_items, 2_048 if args.quick else 65_536))
            print(f"[gpu_check] eval: {result['eval_cases_per_s']:.0f} cases/s "
                  f"({result['eval_over_mm']:.0%} of torch.mm)", flush=True)
            save(out, result)
    if "stream" in checks:
        result.update(check_stream(device, out, args.stream_timeout))
        print(f"[gpu_check] stream: exit {result['stream_rc']} in {result['stream_s']:.0f} s, "
              f"NDCG@10 {result.get('stream_ndcg10', float('nan')):.2f} (popularity "
              f"{result.get('stream_pop_ndcg10', float('nan')):.2f})", flush=True)
    save(out, result)
    keys = ["encoder_items_per_s", "stream_s", "stream_ndcg10", "step_ms", "step_peak_gb", "eval_cases_per_s",
            "eval_over_mm"]
    print(" ".join(f"{k}={result[k]:.3g}" if isinstance(result.get(k), float) else f"{k}={result.get(k)}" for k in keys))
    return 0 if result.get("stream_rc", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
