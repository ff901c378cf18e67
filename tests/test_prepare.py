"""``python -m xsmoe_ray.prepare`` on small datasets in each real layout (H&M, Amazon 2018, generic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.fixtures import write_amazon, write_generic, write_hm
from xsmoe_ray.prepare import main as prepare_main

USERS, ITEMS, PERIODS, PER_PERIOD = 24, 12, 3, 4  # every user buys 4 distinct items in each of 3 periods
ARGS = ["data.chunks=3", "data.k_core=2", "data.max_len=4"]


def purchases(seed: int = 0) -> list[tuple[int, int, int]]:
    """(period, user, item) rows; period p's rows are exactly chunk p after the time sort."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(PERIODS):
        for u in range(USERS):
            rows += [(p, u, int(i)) for i in rng.choice(ITEMS, PER_PERIOD, replace=False)]
    return rows


def hm_dataset(root: Path) -> Path:
    articles = [{"article_id": 500_000_001 + i, "prod_name": f"Article {i}", "product_type_name": "Dress",
                 "colour_group_name": "Black", "detail_desc": f"Dress number {i}, soft jersey."} for i in range(ITEMS)]
    transactions = [(f"2020-0{p + 1}-{10 + u % 15:02d}", u, 500_000_001 + i) for p, u, i in purchases()]
    return write_hm(root, transactions, articles, without_image=(500_000_001,))


def amazon_dataset(root: Path) -> Path:
    reviews = [{"overall": 5.0, "reviewerID": f"A{u:05d}", "asin": f"B{i:09d}",
                "unixReviewTime": 1_500_000_000 + p * 10_000_000 + u * 100} for p, u, i in purchases()]
    meta = [{"asin": f"B{i:09d}", "title": f"Lamp {i}", "description": [f"A lamp, model {i}."]} for i in range(ITEMS)]
    return write_amazon(root, "Home_and_Kitchen", reviews, meta, gz=True, with_image=[f"B{i:09d}" for i in range(4)])


def generic_dataset(root: Path, with_images: bool = True) -> Path:
    interactions = [{"user_id": f"user-{u}", "item_id": f"sku-{i}", "timestamp": 1_600_000_000 + p * 1_000_000 + u}
                    for p, u, i in purchases()]
    items = [{"item_id": f"sku-{i}", "text": f"Shoe model {i}"} | ({"image": f"img/sku-{i}.jpg"} if with_images else {})
             for i in range(ITEMS)]
    return write_generic(root, interactions, items, fmt="parquet")


DATASETS = {"hm": hm_dataset, "amazon": amazon_dataset, "generic": generic_dataset}


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_prepare_writes_the_windows_of_each_format(fmt, tmp_path, capsys):
    root = DATASETS[fmt](tmp_path / "raw")
    out = tmp_path / "prepared"
    extra = ["data.category=Home_and_Kitchen"] if fmt == "amazon" else []
    assert prepare_main(["--format", fmt, "--data-dir", str(root), "--out", str(out), *ARGS, *extra]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == fmt and summary["chunks"] == PERIODS
    assert [c["interactions"] for c in summary["per_chunk"]] == [USERS * PER_PERIOD] * PERIODS
    assert [c["users"] for c in summary["per_chunk"]] == [USERS] * PERIODS
    assert summary["totals"]["interactions"] == USERS * PER_PERIOD * PERIODS
    report = json.loads((out / "load_report.json").read_text())
    assert report["rows_read"] == USERS * PER_PERIOD * PERIODS
    assert summary["has_text"] and summary["has_image"]

    windows = sorted((out / "windows").glob("chunk_*.parquet"))
    assert len(windows) == PERIODS
    chunk = pq.read_table(windows[1])
    assert chunk.num_rows == USERS * PER_PERIOD
    assert set(chunk.column_names) >= {"user", "item", "ts", "split", "context"}
    assert pq.read_table(out / "items.parquet").num_rows == ITEMS
    printed = capsys.readouterr().out
    assert "after processing" in printed and "rows read" in printed.lower()


def test_a_second_run_reuses_and_force_prepares_again(tmp_path, capsys):
    root, out = generic_dataset(tmp_path / "raw"), tmp_path / "prepared"
    args = ["--format", "generic", "--data-dir", str(root), "--out", str(out), *ARGS]
    assert prepare_main(args) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    assert prepare_main(args) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "summary.json").read_text() == first
    assert prepare_main([*args, "--force"]) == 0
    assert "reusing" not in capsys.readouterr().out
    # A changed data setting is a different preparation, never a stale reuse.
    assert prepare_main([*args[:-1], "data.max_len=5"]) == 0
    assert json.loads((out / "summary.json").read_text())["max_len"] == 5


def test_a_text_only_dataset_prepares_with_the_visual_modality_absent(tmp_path):
    root, out = generic_dataset(tmp_path / "raw", with_images=False), tmp_path / "prepared"
    assert prepare_main(["--format", "generic", "--data-dir", str(root), "--out", str(out), *ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["has_text"] and not summary["has_image"]


def test_a_k_core_that_empties_a_chunk_is_an_error_suggesting_a_smaller_k(tmp_path, capsys):
    root, out = generic_dataset(tmp_path / "raw"), tmp_path / "prepared"
    code = prepare_main(["--format", "generic", "--data-dir", str(root), "--out", str(out), "data.chunks=3",
                         "data.k_core=5"])
    assert code == 2
    assert "smaller data.k_core" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_exits_nonzero_naming_the_file_of_bad_input(tmp_path):
    """As a user runs it: a separate process, an interaction whose item is not in the items file."""
    root = tmp_path / "raw"
    write_generic(root, [{"user_id": "u1", "item_id": "sku-404", "timestamp": "not-a-time"}],
                  [{"item_id": "sku-1", "text": "shoe"}])
    proc = subprocess.run([sys.executable, "-m", "xsmoe_ray.prepare", "--format", "generic", "--data-dir", str(root),
                           "--out", str(tmp_path / "prepared")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "interactions.csv" in proc.stderr and "timestamp" in proc.stderr
    assert not (tmp_path / "prepared").exists()


def test_an_unknown_key_lists_the_valid_ones(tmp_path, capsys):
    root = generic_dataset(tmp_path / "raw")
    code = prepare_main(["--format", "generic", "--data-dir", str(root), "--out", str(tmp_path / "p"), "data.kcore=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.kcore" in err and "data.k_core" in err


def test_data_rewritten_in_place_is_prepared_again(tmp_path, capsys):
    root, out = generic_dataset(tmp_path / "raw"), tmp_path / "prepared"
    args = ["--format", "generic", "--data-dir", str(root), "--out", str(out), *ARGS]
    assert prepare_main(args) == 0
    rows = pq.read_table(root / "interactions.parquet").to_pylist()
    write_generic(root, rows[: len(rows) - USERS * PER_PERIOD // 2],  # a new export, half a chunk shorter
                  pq.read_table(root / "items.parquet").to_pylist(), fmt="parquet")
    capsys.readouterr()
    assert prepare_main(args) == 0
    assert "reusing" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["load_report"]["rows_read"] == len(rows) - USERS * PER_PERIOD // 2


def test_synthetic_data_follows_its_settings_and_never_overwrites_foreign_files(tmp_path, capsys):
    data, out = tmp_path / "synthetic", tmp_path / "prepared"
    small = ["--format", "synthetic", "--data-dir", str(data), "--out", str(out), "synth.users=60",
             "synth.items=30", "synth.interactions=3000", "data.chunks=3", "data.k_core=2"]
    assert prepare_main(small) == 0
    first = json.loads((out / "summary.json").read_text())["load_report"]["rows_read"]
    assert prepare_main([*small, "synth.interactions=4000"]) == 0  # same data.path, other settings
    printed = capsys.readouterr().out
    assert "stale settings" in printed and "reusing" not in printed
    assert json.loads((out / "summary.json").read_text())["load_report"]["rows_read"] > first

    foreign = write_generic(tmp_path / "mine", fmt="csv")
    (foreign / "transactions_train.csv").write_text("t_dat,customer_id,article_id\n")
    code = prepare_main(["--format", "synthetic", "--data-dir", str(foreign), "--out", str(tmp_path / "p2")])
    assert code == 2
    assert "not written by the synthetic generator" in capsys.readouterr().err
    assert (foreign / "transactions_train.csv").read_text() == "t_dat,customer_id,article_id\n"


def test_a_generic_dataset_given_without_its_format_is_left_untouched(tmp_path, capsys):
    mine = generic_dataset(tmp_path / "mydata")
    before = sorted(p.name for p in mine.iterdir())
    assert prepare_main(["--data-dir", str(mine), "--out", str(tmp_path / "prep")]) == 2
    err = capsys.readouterr().err
    assert "was not written by the synthetic generator" in err and "in its own format (prepare --format" in err
    assert "interactions.parquet" in err
    assert sorted(p.name for p in mine.iterdir()) == before  # nothing generated into it
    assert not (tmp_path / "prep").exists()


@pytest.mark.parametrize("where", ["project", "data_dir", "file"])
def test_an_out_that_holds_anything_but_a_preparation_is_refused_and_kept(where, tmp_path, capsys):
    data = generic_dataset(tmp_path / "data")
    out = {"project": tmp_path / "project", "data_dir": data, "file": data / "items.parquet"}[where]
    if where == "project":
        (out / "src").mkdir(parents=True)
        (out / "src" / "main.py").write_text("my code\n")
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    code = prepare_main(["--format", "generic", "--data-dir", str(data), "--out", str(out), *ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and ("is a file" in err if where == "file" else "delete them" in err)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_a_prepared_out_is_replaced_and_an_empty_one_filled(tmp_path):
    data = generic_dataset(tmp_path / "data")
    out = tmp_path / "prep"
    out.mkdir()  # empty: fine
    args = ["--format", "generic", "--data-dir", str(data), "--out", str(out), *ARGS]
    assert prepare_main(args) == 0
    (out / ".items.parquet.tmp").write_text("left by an interrupted continuation")
    assert prepare_main([*args, "--force"]) == 0  # its own entries and leftovers do not block a new preparation
    assert (out / "summary.json").is_file() and not (out / ".items.parquet.tmp").exists()


def test_items_without_text_or_images_stop_at_prepare_not_at_the_cache(tmp_path, capsys):
    interactions = [{"user_id": f"user-{u}", "item_id": f"sku-{i}", "timestamp": 1_600_000_000 + p * 1_000_000 + u}
                    for p, u, i in purchases()]
    root = write_generic(tmp_path / "raw", interactions, [{"item_id": f"sku-{i}"} for i in range(ITEMS)],
                         fmt="parquet")
    out = tmp_path / "prepared"
    assert prepare_main(["--format", "generic", "--data-dir", str(root), "--out", str(out), *ARGS]) == 2
    assert f"error: {root}: no item has a text or an image ({ITEMS} items" in capsys.readouterr().err
    assert not out.exists()
