"""A run's stream continued with newer data: new chunks appended, the past kept exactly as processed.

When a run that already has window checkpoints is relaunched and its data has grown (a newer dump,
or the same file with rows appended), ``prepare_data(..., extend=True)`` comes here instead of
preparing from scratch, which would cut every chunk anew under the trained windows:

* **The past must be unchanged.** Every interaction the run processed (the loaded rows, in time
  order, that fell into its chunks) has a 64-bit hash in ``<prepared>/row_hashes.npy``. The grown
  data's first rows must hash the same, one by one; the first that differs (an edited row, or one
  inserted or removed before the last processed time) is refused with a :class:`LiveDataError`
  naming it. The item table may only grow at its end (item codes are positions in it).
* **New chunks follow the same size rule**: ``chunk_size`` rows each (the rows per chunk of the
  first preparation: equal row counts, ``data.chunks`` of them), cut from the rows after the last
  processed one. Only complete chunks become windows; the rest waits for more data and is reported.
* **Old chunk files are not rewritten.** The whole stream is rebuilt with the old chunk boundaries
  (per-chunk k-core, splits and contexts of old chunks depend only on old rows, so they come out
  identical; this is checked against the stream already read back: a file whose old rows were
  reordered codes users differently and is refused), then only the new ``windows/chunk_NN.parquet``
  files, the item and user tables and, last, ``summary.json`` are written.

The training loop then runs the new windows from the last checkpoint (``stream.n_chunks`` grew),
and the cache build encodes only the new items (it reuses every row it has). ``python -m
xsmoe_ray.stream --follow SECONDS`` relaunches by itself whenever the data files change
(:func:`wait_for_new_data`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xsmoe_ray.data.schema import DataError, Dataset

ROW_HASHES = "row_hashes.npy"


class LiveDataError(DataError):
    """Grown data that changes what a run already processed."""


def _id_hashes(ids: pa.Array) -> np.ndarray:
    """One 64-bit hash per id string (per distinct user or item, not per row)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
                     for s in ids.to_pylist()], dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_hashes(ds: Dataset) -> np.ndarray:
    """[n] uint64: a hash of each loaded interaction's (user id, item id, ts), in time order."""
    users = _id_hashes(ds.user_ids)[ds.column("user")]
    items = _id_hashes(ds.items.column("item_id"))[ds.column("item") - 1]
    ts = ds.column("ts").astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        return _mix(_mix(_mix(users) ^ items) ^ ts)


def write_row_hashes(directory: Path, hashes: np.ndarray) -> None:
    np.save(directory / ROW_HASHES, hashes.astype(np.uint64))


def first_change(ds: Dataset, old_hashes: np.ndarray) -> int | None:
    """Position of the first processed row the grown data no longer has as it was (None: unchanged)."""
    new = row_hashes(ds)
    n = min(len(new), len(old_hashes))
    differ = np.flatnonzero(new[:n] != old_hashes[:n])
    if len(differ):
        return int(differ[0])
    return None if len(new) >= len(old_hashes) else len(new)


def describe_row(ds: Dataset, k: int) -> str:
    if k >= ds.interactions.num_rows:
        return f"the data now ends after {ds.interactions.num_rows:,} interactions (rows were removed)"
    u, i, t = (int(ds.column(c)[k]) for c in ("user", "item", "ts"))
    return (f"interaction {k:,} in time order: user {ds.user_ids[u].as_py()}, item "
            f"{ds.items.column('item_id')[i - 1].as_py()}, time {_when(t)}")


def _when(ts: int) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC (ts {ts})"


def check_items_grow_at_end(ds: Dataset, old_items: pa.Table, source: str) -> None:
    old = old_items.column("item_id").to_pylist()
    new = ds.items.column("item_id").slice(0, len(old)).to_pylist()
    if new != old:
        k = next((j for j, (a, b) in enumerate(zip(old, new)) if a != b), len(new))
        now = new[k] if k < len(new) else "nothing (the item table is shorter)"
        raise LiveDataError(source, f"the item table changed under the run: item row {k + 1} was {old[k]!r}, "
                                    f"is now {now!r}; new items may only be added after the old ones")


def chunk_plan(n_rows: int, old_sizes: list[int], chunk_size: int) -> tuple[np.ndarray, int, int]:
    """Chunk of each row of the grown data for its complete chunks: old boundaries, then ``chunk_size``
    rows per new chunk. Returns (chunk ids of the first rows covered, chunks, rows left waiting)."""
    n_old = sum(old_sizes)
    n_new_chunks = (n_rows - n_old) // chunk_size
    sizes = list(old_sizes) + [chunk_size] * n_new_chunks
    chunk = np.repeat(np.arange(len(sizes), dtype=np.int16), sizes)
    return chunk, len(sizes), n_rows - len(chunk)


def extend_prepared(out: Path, ds: Dataset, old: dict, cfg, source: str, log=print) -> dict:
    """Append the grown data's new complete chunks to the prepared directory ``out``; see the module docstring."""
    from xsmoe_ray.prepared import _write_chunk, fingerprint, load_prepared, summary_of
    from xsmoe_ray.streaming import stream_from_chunks

    if not (out / ROW_HASHES).is_file():
        raise LiveDataError(str(out), f"prepared before runs could be continued (no {ROW_HASHES}); the data at "
                                      f"{source} changed, so start a new run.out")
    old_hashes = np.load(out / ROW_HASHES)
    k = first_change(ds, old_hashes)
    if k is not None:
        raise LiveDataError(source,
            f"the data changes what this run already processed ({len(old_hashes):,} interactions up "
            f"to {_when(int(old['per_chunk'][-1]['ts_max']))}): first difference at {describe_row(ds, k)}. Only rows "
            "after the processed ones may be added; restore the data, or start a new run.out")
    old_prepared = load_prepared(out)
    check_items_grow_at_end(ds, old_prepared.items, source)
    old_sizes = [int(c["interactions_before_kcore"]) for c in old["per_chunk"]]
    size = int(old.get("chunk_size") or round(sum(old_sizes) / len(old_sizes)))
    chunk, n_chunks, waiting = chunk_plan(ds.interactions.num_rows, old_sizes, size)
    new_chunks = list(range(old_prepared.stream.n_chunks, n_chunks))
    covered = Dataset(ds.name, ds.interactions.slice(0, len(chunk)), ds.items, ds.user_ids, ds.report)
    stream = stream_from_chunks(covered, chunk, n_chunks, cfg.data.k_core, cfg.data.train_frac, cfg.data.max_len)
    _check_old_chunks_identical(out, stream, old_prepared.stream)
    summary = summary_of(ds, stream, cfg.data, source)
    summary["chunk_size"] = size
    summary["waiting_rows"] = waiting
    summary["fingerprint"] = fingerprint(cfg.data, source)
    for c in new_chunks:
        _write_chunk(out / "windows", stream, c)
    _replace_table(out / "items.parquet", ds.items.append_column(
        "first_chunk", pa.array(stream.item_first_chunk[1:], pa.int16())))
    _replace_table(out / "users.parquet", pa.table({"user": pa.array(np.arange(ds.n_users, dtype=np.int32)),
                                                    "user_id": ds.user_ids}))
    np.save(out / f".{ROW_HASHES}.tmp.npy", row_hashes(ds)[: len(chunk)])
    os.replace(out / f".{ROW_HASHES}.tmp.npy", out / ROW_HASHES)
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")  # last: the directory now has the new chunks
    log(f"[prepare] continued {out}: {len(new_chunks)} new chunk(s) "
        f"{', '.join(f'D_{c}' for c in new_chunks) or '(none)'} of {size:,} interactions each; "
        f"{waiting:,} newer interactions wait for the next chunk")
    return summary


def _check_old_chunks_identical(out: Path, stream, old) -> None:
    """The rebuilt stream's old chunks against the prepared ones (``old``, already read back)."""
    end = len(old.user)
    if stream.rows(old.n_chunks - 1).stop == end:
        differ = ((stream.user[:end] != old.user) | (stream.item[:end] != old.item)
                  | (stream.context[:end] != old.context).any(axis=1))
        if not differ.any():
            return
        c = int(old.chunk[np.argmax(differ)])
    else:
        c = int(old.chunk[0])
    # same interactions (the hashes matched), other codes: users are coded in file order
    raise LiveDataError(str(out), f"chunk {c} comes out different from the one this run trained on, "
                                  "although the interactions are the same: the source file's row order "
                                  "changed (users are coded in order of first appearance in the file); "
                                  "keep the old rows in their order and append new ones, or start a new "
                                  "run.out")


def _replace_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def wait_for_new_data(source: Path, seen: list, interval: float, log=print) -> list:
    """Block until the files directly in ``source`` differ from ``seen`` (``prepared.source_stamp``:
    name, size, mtime) and then hold still for one more ``interval``, so that a file still being
    copied is not read half-way. Returns the new stamp."""
    import time

    from xsmoe_ray.prepared import source_stamp

    while True:
        time.sleep(interval)
        now = source_stamp(source)
        if now == seen:
            continue
        time.sleep(interval)
        settled = source_stamp(source)
        if settled == now:
            log(f"[stream] {source}: new data")
            return settled
