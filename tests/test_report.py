"""Run outputs: one row per test window (re-runs replace), Table-1/Table-3 shapes, real PNGs."""

import csv
import io

from xsmoe_ray.report import (dedupe_windows, expert_lines, experts_figure, experts_plot, metrics_plot, results_csv,
                               results_markdown)


def rows():
    base = {"val_ndcg10": 0.1, "epochs": 3, "seconds": 2.0, "mp_mb": 1.5, "trp_mb": 0.5, "peak_mem_mb": None}
    out = [{**base, "window": 0, "test_chunk": None, "hr10": 0.0, "ndcg10": 0.0, "experts": {"text": [1, 1]}}]
    for w in range(1, 4):
        out.append({**base, "window": w, "test_chunk": w + 1, "hr10": 0.1 * w, "ndcg10": 0.05 * w,
                    "experts": {"text": [w + 1, w], "image": [w + 1, w + 1]}})
    out.append({**out[2], "hr10": 0.9})  # window 2 re-run after a restart: replaces, never duplicates
    return out


def test_rerun_window_replaces_its_result():
    d = dedupe_windows(rows())
    assert [r["window"] for r in d] == [0, 1, 2, 3] and d[2]["hr10"] == 0.9


def test_csv_has_one_row_per_test_window():
    table = list(csv.DictReader(io.StringIO(results_csv(rows()))))
    assert [int(r["test_chunk"]) for r in table] == [2, 3, 4]
    assert float(table[1]["hr10"]) == 0.9 and table[0]["experts"] == "image:2/2 text:2/1"


def test_csv_has_unix_line_endings():
    text = results_csv(rows())
    assert "\r" not in text and text.count("\n") == 4  # header + D_2, D_3, D_4


def test_markdown_is_table1_shaped_with_average():
    md = results_markdown(rows(), "demo", "xsmoe")
    assert "| Method | Metric | D_2 | D_3 | D_4 | AVG |" in md
    avg = (10 + 90 + 30) / 3
    assert f"| xsmoe | HR@10 | 10.00 | 90.00 | 30.00 | {avg:.2f} |" in md
    assert "| xsmoe | 1.50 | 0.50 | n/a | 8.0 | 0.67 |" in md


def test_plots_are_png():
    for png in (metrics_plot(rows()), experts_plot(rows())):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_markdown_reports_warm_targets_and_cold_share_when_marked():
    marked = [{**r, "cold_share": 0.25, "warm_hr10": 0.2, "warm_ndcg10": 0.1, "pop_warm_ndcg10": 0.05}
              for r in rows()]
    md = results_markdown(marked, "demo", "xsmoe")
    assert "| xsmoe | NDCG@10 (warm) | 10.00 | 10.00 | 10.00 | 10.00 |" in md
    assert "| cold targets | % of cases | 25.00 | 25.00 | 25.00 | 25.00 |" in md
    assert "(warm)" not in results_markdown(rows(), "demo", "xsmoe")  # runs from before the marking
    table = list(csv.DictReader(io.StringIO(results_csv(marked))))
    assert float(table[0]["cold_share"]) == 0.25


def test_experts_plot_counts_whole_experts_and_shows_every_layer():
    """Experts are counted in whole numbers (no 1.5 tick), and layers with the same counts in every
    window share one labelled line instead of hiding behind each other."""
    fig = experts_figure(rows())
    fig.canvas.draw()
    ticks = fig.axes[0].get_yticks()
    assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == \
        ["image layers 1–2", "text layer 1", "text layer 2"]
    # Each line at the windows it was reported for: image appears from window 1 on.
    assert expert_lines(rows()) == [("image layers 1–2", [1, 2, 3], [2, 3, 4]),
                                    ("text layer 1", [0, 1, 2, 3], [1, 2, 3, 4]),
                                    ("text layer 2", [0, 1, 2, 3], [1, 1, 2, 3])]
    same = [{"window": w, "experts": {"text": [w + 1] * 3, "image": [w + 1, w + 1, 1]}} for w in range(3)]
    assert [name for name, _, _ in expert_lines(same)] == ["image layers 1–2, text layers 1–3", "image layer 3"]
