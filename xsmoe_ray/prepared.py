"""The prepared-dataset directory: what ``python -m xsmoe_ray.prepare`` writes and training reads.

Layout (all parquet written with pyarrow; the directory appears whole or not at all)::

    items.parquet        item, item_id, text, image, first_chunk    (row k-1 = item code k)
    users.parquet        user, user_id
    windows/chunk_NN.parquet
                         user, item, ts, split (0 train / 1 val), has_history, context[L]
    row_hashes.npy       a hash of every processed interaction, so a continued run can check
                         that its past is unchanged (xsmoe_ray/live.py)
    summary.json         dataset, per-chunk counts, totals, modalities, the data config, load report
    load_report.json     rows read, dropped and why (the reader's LoadReport)

``summary.json`` carries a fingerprint of the data settings; a later run with the same settings
reuses the directory instead of preparing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xsmoe_ray.config import ConfigError, DataConfig
from xsmoe_ray.data.schema import Dataset
from xsmoe_ray.live import ROW_HASHES, row_hashes, write_row_hashes
from xsmoe_ray.streaming import Stream

SUMMARY = "summary.json"
# every entry a prepared directory holds (_write_tables, write_prepared, live.extend_prepared)
PREPARED_ENTRIES = (SUMMARY, "load_report.json", "items.parquet", "users.parquet", "windows", ROW_HASHES)


@dataclass
class Prepared:
    """A prepared dataset read back: the item table, the stream and the summary."""

    path: Path
    items: pa.Table
    stream: Stream
    summary: dict

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @property
    def has_text(self) -> bool:
        return bool(self.summary["has_text"])

    @property
    def has_image(self) -> bool:
        return bool(self.summary["has_image"])


def fingerprint(cfg: DataConfig, source: str) -> str:
    """Hash of everything that changes the prepared output (not ``mask_history``: eval-time only),
    including the size and modification time of the source's files, so data rewritten in place
    (a regenerated synthetic set, a fresh download) is prepared again."""
    fields = dataclasses.asdict(cfg)
    fields.pop("mask_history")
    fields["path"] = source
    fields["files"] = source_stamp(Path(source))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def source_stamp(root: Path) -> list[tuple[str, int, int]]:
    """(name, bytes, mtime ns) of the files directly in ``root`` (the tables; not images/)."""
    if not root.is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())


def summary_of(ds: Dataset, stream: Stream, cfg: DataConfig, source: str) -> dict:
    kept_users = np.unique(stream.user)
    return {
        "dataset": ds.name,
        "format": cfg.format,
        "source": source,
        "fingerprint": fingerprint(cfg, source),
        "data_config": dataclasses.asdict(cfg),
        "has_text": ds.has_text,
        "has_image": ds.has_image,
        "chunks": stream.n_chunks,
        "max_len": stream.max_len,
        "totals": {
            "interactions": int(len(stream.user)),
            "users": int(len(kept_users)),
            "items": int((stream.item_first_chunk >= 0).sum()),
            "items_in_catalogue": ds.n_items,
        },
        "per_chunk": stream.stats,
        "chunk_size": round(sum(c["interactions_before_kcore"] for c in stream.stats) / stream.n_chunks),
        "waiting_rows": 0,
        "load_report": ds.report.to_dict(),
    }


def check_replaceable(out: str | Path) -> None:
    """Refuse an ``out`` that holds anything but a prepared directory (or nothing).

    Writing swaps a new directory in and deletes the old one whole, so a folder of the user's own
    (their project, the dataset itself) must never be taken for an old preparation.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"prepared output {out} is a file, not a directory: choose another --out")
    # hidden leftovers of an interrupted write are named after the entry they were replacing
    foreign = sorted(e.name for e in out.iterdir()
                     if e.name not in PREPARED_ENTRIES and not e.name.lstrip(".").startswith(PREPARED_ENTRIES))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"prepared output {out} already holds entries that no preparation writes ({shown}); "
                          "preparing would replace the whole directory and delete them: choose a new or empty "
                          "directory for the prepared windows")


def write_prepared(out: str | Path, ds: Dataset, stream: Stream, cfg: DataConfig, source: str) -> dict:
    """Write the directory atomically: build beside it, then rename into place."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        summary = summary_of(ds, stream, cfg, source)
        _write_tables(tmp, ds, stream)
        (tmp / "load_report.json").write_text(ds.report.to_json())
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2))  # last: marks the directory complete
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_tables(root: Path, ds: Dataset, stream: Stream) -> None:
    items = ds.items.append_column("first_chunk", pa.array(stream.item_first_chunk[1:], pa.int16()))
    pq.write_table(items, root / "items.parquet")
    users = pa.table({"user": pa.array(np.arange(ds.n_users, dtype=np.int32)), "user_id": ds.user_ids})
    pq.write_table(users, root / "users.parquet")
    (root / "windows").mkdir()
    for c in range(stream.n_chunks):
        _write_chunk(root / "windows", stream, c)
    write_row_hashes(root, row_hashes(ds))


def _write_chunk(windows: Path, stream: Stream, c: int) -> None:
    r = stream.rows(c)
    ctx = stream.context[r]
    table = pa.table({
        "user": stream.user[r],
        "item": stream.item[r],
        "ts": stream.ts[r],
        "split": stream.split[r],
        "has_history": stream.has_history[r],
        "context": pa.FixedSizeListArray.from_arrays(pa.array(ctx.reshape(-1)), ctx.shape[1]),
    })
    pq.write_table(table, windows / f"chunk_{c:02d}.parquet")


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_summary(path: str | Path) -> dict | None:
    """The summary of a complete prepared directory, or None when there is none."""
    f = Path(path) / SUMMARY
    return json.loads(f.read_text()) if f.is_file() else None


def is_current(path: str | Path, cfg: DataConfig, source: str) -> bool:
    """Whether ``path`` holds a complete directory prepared with these settings."""
    summary = read_summary(path)
    return summary is not None and summary.get("fingerprint") == fingerprint(cfg, source)


def load_prepared(path: str | Path) -> Prepared:
    """Read a prepared directory back into a :class:`Stream` plus the item table."""
    path = Path(path)
    summary = read_summary(path)
    if summary is None:
        raise FileNotFoundError(f"{path}: not a prepared dataset (no {SUMMARY}); run python -m xsmoe_ray.prepare")
    items = pq.read_table(path / "items.parquet")
    n_chunks = int(summary["chunks"])
    parts = [pq.read_table(path / "windows" / f"chunk_{c:02d}.parquet") for c in range(n_chunks)]
    chunk = np.concatenate([np.full(t.num_rows, c, dtype=np.int16) for c, t in enumerate(parts)])
    table = pa.concat_tables(parts)
    ctx = table.column("context").combine_chunks()
    first = np.concatenate([[-1], items.column("first_chunk").to_numpy()]).astype(np.int16)
    stream = Stream(
        user=table.column("user").to_numpy(),
        item=table.column("item").to_numpy(),
        ts=table.column("ts").to_numpy(),
        chunk=chunk,
        split=table.column("split").to_numpy(),
        has_history=table.column("has_history").to_numpy(zero_copy_only=False),
        context=ctx.flatten().to_numpy().reshape(-1, int(summary["max_len"])),
        item_first_chunk=first,
        n_chunks=n_chunks,
        stats=summary["per_chunk"],
    )
    return Prepared(path=path, items=items, stream=stream, summary=summary)
