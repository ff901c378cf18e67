"""Cache-build throughput: the Ray Data pipeline against a plain single-process loop.

Both sides run the same code on the same items: ``prepare_batch`` (tokenise / decode + resize)
then ``LayerEncoder`` (the frozen backbones), same batch size, same torch thread count. The Ray
side is ``encode_with_ray`` (the pipeline ``python -m xsmoe_ray.cache`` runs) with one encoder actor;
the plain side calls the same two functions in a loop in this process.

Steady state is what is compared, measured the same way on both sides: each side runs once on
one batch and once on all items, each from a cold start, and the rate is (items - one batch) /
(difference of the two wall times). The fixed start-up cost (Ray: Data planning + actor process +
imports + model load + one warm-up pass; plain: model load + warm-up) cancels out and is reported
on its own. Pairs are repeated with the sides alternating (A B B A), as other jobs share the machine.
Cases: the demo backbones (text + image) and a
BERT-base-sized random model (``BertConfig()`` defaults, demo WordPiece vocabulary; text only).

    python bench/cache_throughput.py [--write]      # --write updates docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from xsmoe_ray import backbones
from xsmoe_ray.cache.build import (LayerEncoder, cpu_stage_kwargs, encode_with_ray, encoder_kwargs, encoding_table,
                                   prepare_batch)
from xsmoe_ray.cache.layout import full_spec
from xsmoe_ray.config import load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- cache_throughput:begin -->", "<!-- cache_throughput:end -->"


@dataclass
class Timing:
    """Totals over ``runs`` pairs of cold runs of one side: one batch, then all items."""

    items: int
    small_items: int
    small_s: float
    full_s: float
    runs: int = 1

    def __add__(self, other: "Timing") -> "Timing":
        return Timing(self.items + other.items, self.small_items + other.small_items, self.small_s + other.small_s,
                      self.full_s + other.full_s, self.runs + other.runs)

    @property
    def steady_items_per_s(self) -> float:
        """Marginal rate: the fixed start-up cost cancels between the two runs of a pair."""
        return (self.items - self.small_items) / (self.full_s - self.small_s)

    @property
    def startup_s(self) -> float:
        return (self.small_s - self.small_items / self.steady_items_per_s) / self.runs

    @property
    def end_to_end_items_per_s(self) -> float:
        return self.items / self.full_s


def elapsed(batches: Iterable[dict[str, np.ndarray]]) -> tuple[int, float]:
    """Items produced by a lazily started pipeline, and the seconds it took from start to last batch."""
    start = time.perf_counter()
    items = sum(len(batch["item"]) for batch in batches)
    return items, time.perf_counter() - start


def measure(run: Callable[[pa.Table], Iterable[dict[str, np.ndarray]]], table: pa.Table, batch_size: int) -> Timing:
    small_items, small_s = elapsed(run(table.slice(0, batch_size)))
    items, full_s = elapsed(run(table))
    return Timing(items, small_items, small_s, full_s)


def measure_both(runs: dict[str, Callable], table: pa.Table, batch_size: int, repeats: int) -> dict[str, Timing]:
    """Alternate the sides (A B B A …) so that load from other jobs on a shared machine hits both alike."""
    totals: dict[str, Timing] = {}
    for r in range(repeats):
        for side in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            timing = measure(runs[side], table, batch_size)
            totals[side] = totals[side] + timing if side in totals else timing
    return totals


def plain_batches(table: pa.Table, specs: dict, batch_size: int, threads: int) -> Iterator[dict[str, np.ndarray]]:
    """The same two stages in one process, one batch at a time (the model is loaded lazily, inside
    the timed region, like the Ray actor's)."""
    import torch

    torch.set_num_threads(threads)
    root = str(backbones.demo_root())
    encoder = LayerEncoder(**encoder_kwargs(specs, root, threads, torch.cuda.is_available()))
    cpu_kwargs = cpu_stage_kwargs(specs, root)
    for lo in range(0, table.num_rows, batch_size):
        part = table.slice(lo, batch_size)
        batch = {name: col.to_numpy(zero_copy_only=False) for name, col in zip(part.column_names, part.columns)}
        yield encoder(prepare_batch(batch, **cpu_kwargs))


def synthetic_items(root: Path, n: int, images: bool, seed: int = 0) -> pa.Table:
    """``n`` items with 40-word texts (the paper's cut) and, optionally, 64×64 JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(backbones.DEMO_WORDS, 40)) for _ in range(n)]
    paths = []
    for k in range(n if images else 0):
        paths.append(str(root / f"{k}.jpg"))
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    return pa.table({"item": pa.array(np.arange(1, n + 1), pa.int32()), "item_id": [f"i{k}" for k in range(n)],
                     "text": texts, "image": pa.array(paths or [None] * n, pa.string())})


def bert_base_dir() -> Path:
    """A BERT-base-sized random model (BertConfig() defaults, demo vocabulary), written once."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=len(backbones.demo_vocab()))
    return backbones.write_text_backbone(backbones.demo_root() / "bert-base-random-v1", config)


def run_case(name: str, overrides: list[str], n: int, batch_size: int, threads: int, images: bool,
             repeats: int) -> dict:
    cfg = load_config("demo", overrides)
    modalities = ["text", "image"] if images else ["text"]
    specs = {m: full_spec(m, cfg) for m in modalities}
    with tempfile.TemporaryDirectory() as tmp:
        items = synthetic_items(Path(tmp), n, images)
        table = encoding_table(items, {m: np.ones(n, bool) for m in modalities}, cfg.data.max_words)
        timings = measure_both({"ray": lambda t: encode_with_ray(t, specs, batch_size, workers=1, threads=threads,
                                                                  use_gpu=torch.cuda.is_available()),
                                "plain": lambda t: plain_batches(t, specs, batch_size, threads)},
                               table, batch_size, repeats)
    ray_t, plain_t = timings["ray"], timings["plain"]
    ratio = ray_t.steady_items_per_s / plain_t.steady_items_per_s
    print(f"{name}: ray {ray_t.steady_items_per_s:.1f} items/s, plain {plain_t.steady_items_per_s:.1f} items/s, "
          f"ratio {ratio:.2f} (end to end: ray {ray_t.end_to_end_items_per_s:.1f}, "
          f"plain {plain_t.end_to_end_items_per_s:.1f})", flush=True)
    return {"case": name, "items": n, "batch": batch_size, "repeats": repeats, "ray": ray_t, "plain": plain_t,
            "ratio": ratio}


def markdown(results: list[dict], command: str, threads: int, final: str) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " over 1 / 5 / 15 min at the end"
    rows = "\n".join(
        f"| {r['case']} | {r['items']} | {r['batch']} | {r['ray'].steady_items_per_s:.1f} | "
        f"{r['plain'].steady_items_per_s:.1f} | **{r['ratio']:.2f}** | {r['ray'].startup_s:.1f} | "
        f"{r['plain'].startup_s:.1f} | {r['ray'].end_to_end_items_per_s:.1f} | "
        f"{r['plain'].end_to_end_items_per_s:.1f} |" for r in results)
    return f"""{BEGIN}
## Cache build throughput (`bench/cache_throughput.py`)

Command: `{command}`
Machine: {os.cpu_count()} CPU cores, no GPU, shared with other jobs (load average {load}); {threads} torch
threads on both sides; one encoder actor.

| case | items | batch | Ray items/s (steady) | plain items/s (steady) | Ray / plain | Ray start-up s | plain start-up s | Ray items/s (end to end) | plain items/s (end to end) |
|---|---|---|---|---|---|---|---|---|---|
{rows}

What is timed: both sides run `prepare_batch` then `LayerEncoder` on the same items, batch size and
thread count. *Steady* = marginal rate from pairs of cold runs per side, one batch and all items:
(items - one batch) / (time of the full run - time of the one-batch run), so start-up cancels
(for Ray: Data planning + actor process + imports + model load + a warm-up pass; for the plain loop:
model load + warm-up); totals over {results[0]['repeats']} pairs per side, sides alternating (A B B A) so
that load from other jobs hits both alike. *Start-up* = the one-batch run's time minus one batch at
the steady rate. *End to end* = items / full-run time, start-up included.
On CPU, Ray Data fuses the CPU stage into the encoder actor (same resources), so the
actor does exactly the plain loop's work; the driver only receives the arrays.

Scaling: the encoder is one actor per GPU (`cache.workers`, capped at the cluster's GPUs), each fed
by separate CPU tasks (tokenise / decode + resize), so throughput should grow linearly with GPUs
while the CPU stage keeps up (roughly: CPU cores × decode rate ≥ GPUs × encoder rate). **Not
measured here** (no GPU on this machine).

`{final}`
{END}"""


def write_section(text: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-items", type=int, default=16384)
    parser.add_argument("--demo-batch", type=int, default=256)
    parser.add_argument("--base-items", type=int, default=320)
    parser.add_argument("--base-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs per side, alternating sides")
    parser.add_argument("--write", action="store_true", help=f"update the cache_throughput section of {DOC}")
    args = parser.parse_args(argv)

    import ray
    from ray.data import DataContext

    from xsmoe_ray.raysetup import ensure_ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ensure_ray(num_cpus=os.cpu_count() or 1)
    DataContext.get_current().enable_progress_bars = False
    results = [
        run_case("demo backbones (text + image)", [], args.demo_items, args.demo_batch, args.threads, images=True,
                 repeats=args.repeats),
        run_case("BERT-base-sized random (text)", [f"backbone.text={bert_base_dir()}", "backbone.image=none"],
                 args.base_items, args.base_batch, args.threads, images=False, repeats=args.repeats),
    ]
    ray.shutdown()
    base = results[-1]
    final = (f"ray_over_plain={base['ratio']:.2f} ray_items_per_s={base['ray'].steady_items_per_s:.1f} "
             f"plain_items_per_s={base['plain'].steady_items_per_s:.1f}")
    if args.write:
        command = "python " + " ".join(shlex.quote(a) for a in ["bench/cache_throughput.py", *(argv or sys.argv[1:])])
        write_section(markdown(results, command, args.threads, final))
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
