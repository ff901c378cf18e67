"""Run outputs: results.csv, results.md (paper Table 1 / Table 3 shapes) and PNG plots.

Input is the list of per-window metric dicts the window loop reports; a window that ran twice
(after a restart) appears once, the later result replacing the earlier (``dedupe_windows``).
Test windows are named by the chunk they test on: the model trained on D_s is tested on D_{s+1},
so the reported columns are D_2..D_T plus their average, as in the paper.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CSV_FIELDS = ["window", "test_chunk", "hr10", "ndcg10", "pop_hr10", "pop_ndcg10", "cold_share", "warm_hr10",
              "warm_ndcg10", "val_ndcg10", "epochs", "seconds", "experts", "mp_mb", "trp_mb", "peak_mem_mb"]
POPULARITY = "popularity of D_(s-1)"  # the reference row: the test chunk's cases ranked by the previous chunk's counts


def dedupe_windows(rows: Iterable[dict]) -> list[dict]:
    """One row per window, the last reported winning, in window order."""
    by_window: dict[int, dict] = {}
    for row in rows:
        by_window[int(row["window"])] = row
    return [by_window[w] for w in sorted(by_window)]


def test_rows(rows: list[dict]) -> list[dict]:
    return [r for r in dedupe_windows(rows) if r.get("test_chunk") is not None]


def results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    # lineterminator: the csv default, CRLF, shows as ^M in Unix tools
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in test_rows(rows):
        w.writerow({**r, "experts": _experts_text(r.get("experts", {}))})
    return buf.getvalue()


def _experts_text(experts: dict) -> str:
    return " ".join(f"{m}:{'/'.join(str(n) for n in per_layer)}" for m, per_layer in sorted(experts.items()))


def results_markdown(rows: list[dict], title: str, variant: str) -> str:
    """Table 1 (HR@10 / NDCG@10 in % per test chunk and AVG) and a Table 3 efficiency row."""
    tests = test_rows(rows)
    if not tests:
        return f"# {title}\n\nNo test window has finished yet.\n"
    heads = [f"D_{r['test_chunk']}" for r in tests] + ["AVG"]
    hr = [100 * r["hr10"] for r in tests]
    nd = [100 * r["ndcg10"] for r in tests]
    lines = [f"# {title}", "", "Recommendation performance in % (full ranking over all items seen so far).", "",
             "| Method | Metric | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    lines.append(_row(variant, "HR@10", hr))
    lines.append(_row(variant, "NDCG@10", nd))
    if all(r.get("pop_ndcg10") is not None for r in tests):
        lines.append(_row(f"*{POPULARITY}*", "HR@10", [100 * r["pop_hr10"] for r in tests]))
        lines.append(_row(f"*{POPULARITY}*", "NDCG@10", [100 * r["pop_ndcg10"] for r in tests]))
        lines.append("")
        lines.append(f"*{POPULARITY}*: a non-learned reference on the same cases and candidates, ranking items by "
                     "their interactions in the chunk before the test chunk (ties count against the target).")
    lines += _warm_rows(tests, variant)
    windows = dedupe_windows(rows)
    total_s = sum(r["seconds"] for r in windows)
    epochs = sum(r["epochs"] for r in windows)
    last = windows[-1]
    mem = last.get("peak_mem_mb")
    lines += ["", "Efficiency (Table 3 shape; MP/TrP after the last window).", "",
              "| Variant | MP (MB) | TrP (MB) | Memory (MB) | TT (s) | ET (s) |", "|---|---:|---:|---:|---:|---:|",
              f"| {variant} | {last['mp_mb']:.2f} | {last['trp_mb']:.2f} | "
              f"{'n/a' if mem is None else f'{mem:.0f}'} | {total_s:.1f} | {total_s / max(epochs, 1):.2f} |", ""]
    return "\n".join(lines)


def _warm_rows(tests: list[dict], variant: str) -> list[str]:
    """The same metrics over warm targets only, and each test chunk's share of cold targets (items first
    seen in that chunk: never trained by any model, scored from content or from an untrained id row)."""
    if not all(r.get("warm_ndcg10") is not None for r in tests):
        return []  # runs from before cold targets were marked
    heads = [f"D_{r['test_chunk']}" for r in tests] + ["AVG"]
    lines = ["", "Warm targets only (cases whose target was seen before the test chunk), and the share of cold "
             "targets:", "", "| Method | Metric | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads),
             _row(variant, "HR@10 (warm)", [100 * r["warm_hr10"] for r in tests]),
             _row(variant, "NDCG@10 (warm)", [100 * r["warm_ndcg10"] for r in tests])]
    if all(r.get("pop_warm_ndcg10") is not None for r in tests):
        lines.append(_row(f"*{POPULARITY}*", "NDCG@10 (warm)", [100 * r["pop_warm_ndcg10"] for r in tests]))
    lines.append(_row("cold targets", "% of cases", [100 * r["cold_share"] for r in tests]))
    return lines


def _row(name: str, metric: str, values: list[float]) -> str:
    return f"| {name} | {metric} | " + " | ".join(f"{v:.2f}" for v in values + [sum(values) / len(values)]) + " |"


def metrics_plot(rows: list[dict]) -> bytes:
    tests = test_rows(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["test_chunk"] for r in tests]
    ax.plot(x, [100 * r["hr10"] for r in tests], marker="o", label="HR@10")
    ax.plot(x, [100 * r["ndcg10"] for r in tests], marker="s", label="NDCG@10")
    if all(r.get("pop_ndcg10") is not None for r in tests):
        ax.plot(x, [100 * r["pop_ndcg10"] for r in tests], "k--", lw=1, label=f"NDCG@10, {POPULARITY}")
    ax.set_xlabel("test chunk D_s")
    ax.set_ylabel("%")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Next-window full-ranking metrics")
    return _png(fig)


def expert_lines(rows: list[dict]) -> list[tuple[str, list[int], list[int]]]:
    """(legend label, windows, experts after each) for each distinct line of the experts plot.

    Side layers often hold the same number of experts in every window; drawn one by one, their lines
    coincide and only the last colour shows, so such layers share one line labelled with all of them."""
    series: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for r in dedupe_windows(rows):
        for modality, per_layer in r.get("experts", {}).items():
            for layer, n in enumerate(per_layer):
                series.setdefault((modality, layer + 1), []).append((int(r["window"]), int(n)))
    shared: dict[tuple[tuple[int, int], ...], list[tuple[str, int]]] = {}
    for key, points in sorted(series.items()):
        shared.setdefault(tuple(points), []).append(key)
    return [(_layers_label(keys), [w for w, _ in points], [n for _, n in points]) for points, keys in shared.items()]


def _layers_label(keys: list[tuple[str, int]]) -> str:
    """[("image", 1), ("image", 2), ("text", 1)] -> "image layers 1–2, text layer 1"."""
    by_modality: dict[str, list[int]] = {}
    for modality, layer in keys:
        by_modality.setdefault(modality, []).append(layer)
    return ", ".join(f"{m} layer{'s' if len(layers) > 1 else ''} {_ranges(layers)}"
                     for m, layers in by_modality.items())


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1–3, 5"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def experts_plot(rows: list[dict]) -> bytes:
    return _png(experts_figure(rows))


def experts_figure(rows: list[dict]):
    x = [r["window"] for r in dedupe_windows(rows)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = expert_lines(rows)
    for name, windows, counts in lines:
        ax.plot(windows, counts, marker="o", label=name)
    ax.set_xlabel("window (training chunk)")
    ax.set_ylabel("experts")
    ax.set_xticks(x)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of experts: no 1.5 ticks
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    ax.set_title("Experts per side layer after each window")
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
