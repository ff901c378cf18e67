"""Scale benchmark of the data stages: H&M loader → chunks → k-core → training/eval cases.

    python bench/prepare_scale.py [--dir /tmp/xsmoe_bench_prepare] [--scales tenth,third,full]

Writes once (untimed, reused on later runs) H&M-layout ``transactions_train.csv`` +
``articles.csv`` at full size (31,788,324 transactions, 1,371,980 customers with 64-hex ids,
105,542 articles, day dates over two years, Zipf-like popularity with item life cycles and
skewed customer activity) and at 1/10 and 1/3 of it. Then, per scale in a fresh process, times
the real reader (``load_hm``) and the protocol (``build_stream`` with the H&M preset: 10 chunks,
per-chunk 10-core, 85/15, L=10) plus extraction of every chunk's train/val/test cases, and
records the peak RSS of that process. Writing the prepared parquet is timed separately.

Figures go to docs/BENCHMARKS.md; the last line printed is
``full_s=<s> full_peak_rss_gb=<GB> growth_full_over_tenth=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

FULL = {"transactions": 31_788_324, "customers": 1_371_980, "articles": 105_542}
SCALES = {"tenth": 10, "third": 3, "full": 1}
DAYS = 730
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data generation (untimed)

def hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct-with-overwhelming-probability 64-hex customer ids as an 'S64' array."""
    nibbles = rng.integers(0, 16, size=(n, 64), dtype=np.uint8)
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles].view("S64").reshape(n)


def article_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.sort(rng.choice(np.arange(100_000_000, 999_999_999, 7, dtype=np.int64), n, replace=False))


def write_articles(path: Path, ids: np.ndarray, rng: np.random.Generator) -> None:
    n = len(ids)
    types = np.array(["Trousers", "Dress", "Sweater", "T-shirt", "Skirt", "Jacket", "Blouse", "Shorts"])
    colours = np.array(["Black", "White", "Dark Blue", "Light Pink", "Grey", "Beige", "Red", "Green"])
    words = np.array("soft cotton jersey slim fit high waist relaxed wide leg pockets button zip hood "
                     "lined knitted ribbed stretch denim wool blend short sleeves long sleeves round neck".split())
    t, c = rng.integers(0, len(types), n), rng.integers(0, len(colours), n)
    desc_words = words[rng.integers(0, len(words), (n, 12))]
    desc = [" ".join(row) for row in desc_words]
    desc = [d if k % 250 else "" for k, d in enumerate(desc)]  # H&M has a few articles without text
    cols = {
        "article_id": pa.array([f"{a:010d}" for a in ids]),
        "product_code": pa.array(ids // 1000),
        "prod_name": pa.array(np.char.add(np.char.add(colours[c], " "), types[t])),
        "product_type_no": pa.array(t + 250),
        "product_type_name": pa.array(types[t]),
        "product_group_name": pa.array(np.full(n, "Garment Upper body")),
        "graphical_appearance_no": pa.array(np.full(n, 1010016)),
        "graphical_appearance_name": pa.array(np.full(n, "Solid")),
        "colour_group_code": pa.array(c + 9),
        "colour_group_name": pa.array(colours[c]),
    }
    for name in ["perceived_colour_value_id", "perceived_colour_value_name", "perceived_colour_master_id",
                 "perceived_colour_master_name", "department_no", "department_name", "index_code",
                 "index_name", "index_group_no", "index_group_name", "section_no", "section_name",
                 "garment_group_no", "garment_group_name"]:
        cols[name] = pa.array(np.full(n, 1 if name.endswith(("_id", "_no")) else "x"))
    cols["detail_desc"] = pa.array(desc)
    pacsv.write_csv(pa.table(cols), path, pacsv.WriteOptions(quoting_style="needed"))


def write_transactions(path: Path, customers: np.ndarray, articles: np.ndarray, n: int,
                       rng: np.random.Generator) -> None:
    """Day-sorted rows written like the Kaggle file (header and values unquoted)."""
    schema = pa.schema([("t_dat", pa.date32()), ("customer_id", pa.string()), ("article_id", pa.string()),
                        ("price", pa.float64()), ("sales_channel_id", pa.int8())])
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as f:
        f.write(",".join(schema.names).encode() + b"\n")
        with pacsv.CSVWriter(f, schema, write_options=opts) as w:
            for block in sales(customers, articles, n, rng):
                w.write_table(block.cast(schema))


def sales(customers: np.ndarray, articles: np.ndarray, n: int, rng: np.random.Generator,
          block: int = 2_000_000):
    """Blocks of ``n`` sales over DAYS days; activity and popularity skewed, articles age out.

    Articles are released in id order over the two years (30 % in stock at the start); a sale
    picks an article by a power law over its age rank behind the release frontier.
    """
    n_a = len(articles)
    activity = rng.lognormal(0.0, 1.3, len(customers))
    c_cdf = np.cumsum(activity / activity.sum())
    day_weights = 1.0 + 0.3 * np.sin(np.arange(DAYS) * 2 * np.pi / 7) + rng.uniform(0, 0.2, DAYS)
    per_day = np.floor(day_weights / day_weights.sum() * n).astype(np.int64)
    per_day[: n - per_day.sum()] += 1
    days = np.repeat(np.arange(DAYS, dtype=np.int32), per_day)
    padded = np.char.zfill(articles.astype(str), 10).astype("S10")  # H&M writes ids with a leading 0
    for lo in range(0, n, block):
        d = days[lo: lo + block]
        m = len(d)
        cust = np.searchsorted(c_cdf, rng.random(m) * c_cdf[-1])
        frontier = ((0.3 + 0.7 * d / DAYS) * n_a).astype(np.int64)
        age = np.floor(rng.pareto(1.2, m) * n_a * 0.002).astype(np.int64)
        art = np.clip(frontier - 1 - age, 0, n_a - 1)
        yield pa.table({
            "t_dat": pa.array(np.datetime64("2018-09-20") + d.astype("timedelta64[D]")),
            "customer_id": pa.array(customers[cust]),
            "article_id": pa.array(padded[art]),
            "price": pa.array(np.round(rng.uniform(0.005, 0.1, m), 6)),
            "sales_channel_id": pa.array(rng.integers(1, 3, m).astype(np.int8)),
        })


def ensure_dataset(root: Path, divisor: int) -> Path:
    """The dataset of one scale, generated once into ``root`` (``done`` marks it complete)."""
    out = root / f"hm_1_over_{divisor}"
    if (out / "done").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(divisor)
    sizes = {k: v // divisor for k, v in FULL.items()}
    print(f"[bench] writing {sizes} to {out} (once) ...", flush=True)
    t0 = time.perf_counter()
    articles = article_ids(rng, sizes["articles"])
    write_articles(out / "articles.csv", articles, rng)
    write_transactions(out / "transactions_train.csv", hex_ids(rng, sizes["customers"]), articles,
                       sizes["transactions"], rng)
    (out / "done").write_text(json.dumps(sizes))
    print(f"[bench] wrote in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------- one timed run (own process)

def run_one(data_dir: Path) -> dict:
    """Time reader → protocol → cases in this process; peak RSS from the kernel's count."""
    from xsmoe_ray.config import load_config
    from xsmoe_ray.data.hm import load_hm
    from xsmoe_ray.prepared import write_prepared
    from xsmoe_ray.streaming import build_stream

    cfg = load_config("hm", [f"data.path={data_dir}", "data.date_from="])
    t0 = time.perf_counter()
    ds = load_hm(data_dir, dedup=cfg.data.dedup)
    t_load = time.perf_counter()
    stream = build_stream(ds, cfg.data.chunks, cfg.data.k_core, cfg.data.train_frac, cfg.data.max_len)
    n_cases = sum(len(stream.train_targets(c)) + len(stream.val_cases(c)) + len(stream.test_cases(c))
                  + len(stream.candidates(c)) for c in range(stream.n_chunks))
    t_stream = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    out = data_dir / "prepared"
    write_prepared(out, ds, stream, cfg.data, str(data_dir))
    t_write = time.perf_counter()
    return {
        "rows_read": ds.report.rows_read, "interactions": ds.report.interactions, "users": ds.n_users,
        "items": ds.n_items, "kept": int(len(stream.user)), "cases": int(n_cases),
        "load_s": t_load - t0, "stream_s": t_stream - t_load, "total_s": t_stream - t0,
        "write_s": t_write - t_stream, "peak_rss_gb": peak,
    }


# ---------------------------------------------------------------- driver

def record(results: dict, command: str) -> None:
    rows = ["| scale | rows read | kept after 10-core | load s | protocol + cases s | total s | peak RSS GiB | write parquet s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['rows_read']:,} | {r['kept']:,} | {r['load_s']:.1f} | {r['stream_s']:.1f} | "
                    f"{r['total_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['write_s']:.1f} |")
    section = "\n".join([
        "<!-- prepare_scale:begin -->",
        "## Data stages at H&M scale (`bench/prepare_scale.py`)",
        "",
        f"Command: `{command}` on this 2-core, 24 GiB machine "
        f"(measured {time.strftime('%Y-%m-%d')}). Synthetic H&M-layout CSVs, each scale timed in a fresh process:",
        "reader (CSV parse, id coding, time sort, duplicate drop) → 10 chunks → per-chunk 10-core → 85/15 → "
        "contexts (L=10) → every chunk's train/val/test cases and candidates. Target: full ≤ 90 s, ≤ 8 GB peak RSS, "
        "growth full/tenth ≤ 12×.",
        "",
        *rows,
        "",
        f"Last line: `{summary_line(results)}`",
        "<!-- prepare_scale:end -->",
    ])
    docs = REPO / "docs" / "BENCHMARKS.md"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n\nEvery figure here is measured; each section names its command.\n"
    pattern = re.compile(r"<!-- prepare_scale:begin -->.*<!-- prepare_scale:end -->", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    docs.parent.mkdir(exist_ok=True)
    docs.write_text(text)


def summary_line(results: dict) -> str:
    full, tenth = results.get("full"), results.get("tenth")
    growth = full["total_s"] / tenth["total_s"] if full and tenth else float("nan")
    full_s = full["total_s"] if full else float("nan")
    peak = full["peak_rss_gb"] if full else float("nan")
    return f"full_s={full_s:.1f} full_peak_rss_gb={peak:.2f} growth_full_over_tenth={growth:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=os.environ.get("XSMOE_BENCH_DIR", "/tmp/xsmoe_bench_prepare"),
                   help="where the generated datasets live (reused between runs)")
    p.add_argument("--scales", default="tenth,third,full", help="comma list of tenth,third,full")
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        print(json.dumps(run_one(Path(args.run_one))))
        return
    root = Path(args.dir)
    results = {}
    for name in args.scales.split(","):
        data = ensure_dataset(root, SCALES[name])
        proc = subprocess.run([sys.executable, __file__, "--run-one", str(data)], capture_output=True,
                              text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"[bench] {name} failed:\n{proc.stderr[-4000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"[bench] {name}: load {r['load_s']:.1f} s, protocol+cases {r['stream_s']:.1f} s, "
              f"total {r['total_s']:.1f} s, peak {r['peak_rss_gb']:.2f} GiB, kept {r['kept']:,} of "
              f"{r['interactions']:,}, write {r['write_s']:.1f} s", flush=True)
    record(results, "python bench/prepare_scale.py" + ("" if args.scales == "tenth,third,full" else f" --scales {args.scales}"))
    print(summary_line(results))


if __name__ == "__main__":
    main()
