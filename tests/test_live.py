"""Continuing a run with grown data: new chunks only, the past untouched, past-changing data refused."""

import csv
import datetime as dt
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from xsmoe_ray.data.schema import Dataset, LoadReport
from xsmoe_ray.live import chunk_plan, first_change, row_hashes
from xsmoe_ray.stream import follow
from xsmoe_ray.stream import main as stream_main
from xsmoe_ray.stream import run

from .test_stream import tiny


def _ds(rows):
    """A Dataset of (user code, item code, ts) rows over ids u0.., i1.."""
    users = max(r[0] for r in rows) + 1
    items = max(r[1] for r in rows)
    table = pa.table({"user": pa.array([r[0] for r in rows], pa.int32()), "item": pa.array([r[1] for r in rows], pa.int32()),
                      "ts": pa.array([r[2] for r in rows], pa.int64())})
    item_table = pa.table({"item_id": [f"i{k}" for k in range(1, items + 1)]})
    return Dataset("t", table, item_table, pa.array([f"u{u}" for u in range(users)]), LoadReport(source="t"))


def test_row_hashes_find_the_first_changed_inserted_or_removed_row():
    old = [(0, 1, 10), (1, 2, 11), (0, 2, 12), (1, 1, 13)]
    base = row_hashes(_ds(old))
    assert len(set(base.tolist())) == 4
    assert first_change(_ds(old + [(2, 3, 14)]), base) is None  # appended: the past is unchanged
    assert first_change(_ds([old[0], (1, 3, 11), *old[2:]]), base) == 1  # an edited item
    assert first_change(_ds([old[0], old[1], (1, 1, 12), *old[2:]]), base) == 2  # inserted before the last ts
    assert first_change(_ds(old[:3]), base) == 3  # the last processed row removed
    assert first_change(_ds([(1, 1, 10), *old[1:]]), base) == 0  # an edited user


def test_chunk_plan_keeps_old_boundaries_and_cuts_complete_chunks_only():
    chunk, n_chunks, waiting = chunk_plan(1000 + 250, [334, 333, 333], 333)
    assert n_chunks == 3 + 0 and waiting == 250 and len(chunk) == 1000
    chunk, n_chunks, waiting = chunk_plan(1000 + 700, [334, 333, 333], 333)
    assert n_chunks == 5 and waiting == 700 - 666
    assert np.bincount(chunk).tolist() == [334, 333, 333, 333, 333]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _grow(transactions: Path, n: int, days: int = 30) -> None:
    """Append ``n`` rows: the last ``n`` rows again, moved to start ``days`` after the last date (known
    users and items, so the new chunk survives the k-core)."""
    with transactions.open() as f:
        rows = list(csv.reader(f))
    body = rows[1:]  # below the header
    block = body[-n:]
    shift = dt.date.fromisoformat(body[-1][0]) - dt.date.fromisoformat(block[0][0]) + dt.timedelta(days=days)
    new = [[(dt.date.fromisoformat(r[0]) + shift).isoformat(), *r[1:]] for r in block]
    with transactions.open("a", newline="") as f:
        csv.writer(f).writerows(new)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("live")
    own = [f"data.path={tmp / 'synthetic'}", f"cache.dir={tmp / 'cache'}"]  # this module grows its data
    cfg = tiny(tmp, "run", *own)
    return cfg, run(cfg), tmp, own


def test_grown_data_trains_exactly_the_new_window_and_leaves_the_past_alone(finished, capsys):
    cfg, history, tmp, own = finished
    out = Path(cfg.run.out)
    assert [r["window"] for r in history] == [0, 1, 2, 3]
    chunks = sorted((out / "prepared" / "windows").glob("chunk_*.parquet"))
    last = sorted((out / "ray").rglob("state.pt"))[-1]  # window 3's; Ray Train drops window 2's later
    before = {p: _sha(p) for p in chunks + [last]}
    summary = json.loads((out / "prepared" / "summary.json").read_text())
    written = (out / "history.json").stat().st_mtime_ns

    def grow_after_the_first_round():  # while --follow waits for new data
        while (out / "history.json").stat().st_mtime_ns == written:
            time.sleep(0.2)
        _grow(Path(cfg.data.path) / "transactions_train.csv", summary["chunk_size"] + 5)

    grower = threading.Thread(target=grow_after_the_first_round)
    grower.start()
    follow(tiny(tmp, "run", *own), interval=0.5, rounds=2)  # a relaunch with nothing new, then the new window
    grower.join()
    grown = json.loads((out / "history.json").read_text())
    assert [r["window"] for r in grown] == [0, 1, 2, 3, 4]  # exactly one more window
    assert grown[:4] == history  # earlier results unchanged
    assert {p: _sha(p) for p in before} == before  # old chunks and the window 3 checkpoint untouched
    after = json.loads((out / "prepared" / "summary.json").read_text())
    assert after["chunks"] == 6 and after["waiting_rows"] == 5
    assert after["per_chunk"][:5] == summary["per_chunk"]
    assert "1 new chunk(s) D_5" in capsys.readouterr().out

    again = run(tiny(tmp, "run", *own))  # the same data again: nothing to do
    assert [r["window"] for r in again] == [0, 1, 2, 3, 4]


def test_data_that_changes_the_past_is_refused_by_name(finished, capsys):
    cfg, _, tmp, own = finished
    transactions = Path(cfg.data.path) / "transactions_train.csv"
    original = transactions.read_text()
    lines = original.splitlines(keepends=True)
    fields = lines[10].split(",")
    other = next(ln.split(",")[2] for ln in lines[1:] if ln.split(",")[2] != fields[2])
    try:
        transactions.write_text("".join(lines[:10] + [",".join([fields[0], fields[1], other, *fields[3:]])]
                                        + lines[11:]))
        cfg2 = tiny(tmp, "run", *own)
        argv = ["--config", "demo"] + [f"{k}={v}" for k, v in _overrides(cfg2).items()]
        assert stream_main(argv) == 2
        err = capsys.readouterr().err
        assert "changes what this run already processed" in err
        assert f"user {fields[1]}" in err or f"item {other}" in err or f"item {fields[2]}" in err
    finally:
        transactions.write_text(original)


def _overrides(cfg) -> dict:
    from .test_stream import TINY

    pairs = dict(o.split("=", 1) for o in TINY)
    pairs.update({"run.out": cfg.run.out, "data.path": cfg.data.path, "cache.dir": cfg.cache.dir})
    return pairs


def test_waiting_for_new_data_returns_once_the_files_grew_and_held_still(tmp_path):
    import threading
    import time

    from xsmoe_ray.live import wait_for_new_data
    from xsmoe_ray.prepared import source_stamp

    data = tmp_path / "transactions.csv"
    data.write_text("a\n")
    seen = source_stamp(tmp_path)

    def grow():
        time.sleep(0.3)
        with data.open("a") as f:
            f.write("b\n")

    t = threading.Thread(target=grow)
    t.start()
    t0 = time.monotonic()
    stamp = wait_for_new_data(tmp_path, seen, 0.1, log=lambda *_: None)
    t.join()
    assert time.monotonic() - t0 >= 0.3 and stamp == source_stamp(tmp_path) != seen


def test_old_rows_reordered_in_the_file_are_refused_by_name(finished, capsys):
    """The same interactions in another file order code users differently (first appearance), so the
    old chunks would change under the trained windows: refused, saying why."""
    cfg, _, tmp, own = finished
    transactions = Path(cfg.data.path) / "transactions_train.csv"
    original = transactions.read_text()
    header, *body = original.splitlines(keepends=True)
    first_day = [r for r in body if r.split(",")[0] == body[0].split(",")[0]]
    second_day = [r for r in body if r.split(",")[0] == body[len(first_day)].split(",")[0]]
    n = len(first_day) + len(second_day)
    assert body[:n] == first_day + second_day  # the file is in date order
    try:
        transactions.write_text(header + "".join(second_day + first_day + body[n:]))  # two days' blocks swapped
        argv = ["--config", "demo"] + [f"{k}={v}" for k, v in _overrides(tiny(tmp, "run", *own)).items()]
        assert stream_main(argv) == 2
        err = capsys.readouterr().err
        assert "comes out different" in err and "row order changed" in err
    finally:
        transactions.write_text(original)
