"""H&M reader: Kaggle "h-and-m-personalized-fashion-recommendations" (DESIGN.md §3).

Layout under ``root``
---------------------
* ``transactions_train.csv``: ``t_dat`` (YYYY-MM-DD), ``customer_id`` (64-hex string),
  ``article_id`` (int, written with a leading 0), ``price``, ``sales_channel_id``. Only the first
  three are read. 31,788,324 rows at full size.
* ``articles.csv``: 25 columns; ``article_id`` and the text columns ``prod_name``,
  ``product_type_name``, ``colour_group_name``, ``detail_desc`` are read.
* ``images/<first 3 digits>/<article_id zero-padded to 10>.jpg``; some articles have none.

Mapping to the standard schema
------------------------------
item_id is the article id zero-padded to 10 characters; items are coded 1..n in ``articles.csv``
order. Text is ``prod_name. product_type_name. colour_group_name. detail_desc.`` with empty parts,
H&M's ``Unknown`` placeholder and a part repeating an earlier one skipped, whitespace collapsed.
ts is the day at midnight UTC in epoch seconds; rows of one day keep file order (``finish`` sorts
stably). ``date_from`` (inclusive) / ``date_to`` (exclusive) filter by day.

Speed: the transactions are parsed by ``pyarrow.csv`` (multithreaded, three columns, the date
parsed to ``date32``); the 64-hex ``customer_id`` strings are dictionary-encoded in one pass with a
shared hash table and then freed; articles are mapped with ``pc.index_in``. No per-row Python.

What is fatal and what is counted
---------------------------------
Fatal ``DataError`` (file, 1-based line, field): either file missing or zero bytes, a missing
column, ``articles.csv`` without data rows, no transactions left ("no interactions"), a ``t_dat``
that is not empty and not YYYY-MM-DD (a format mismatch, e.g. ``2020-13-45``), an ``article_id``
that is not an integer, a ``customer_id`` that is not valid UTF-8, a malformed date window.

Counted drops (``rows_read == interactions + sum(dropped)``): ``malformed_row`` (wrong number of
fields), ``empty_user_id``, ``empty_item_id``, ``empty_timestamp``, ``outside_date_range``,
``item_not_in_items``, ``duplicate_row``; each row under the first reason in that order.
Noted in ``report.notes``: article rows without an id or repeating one (first kept), article text
that was not valid UTF-8 (repaired with U+FFFD), a missing ``images/`` folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xsmoe_ray.data.generic import (
    assemble,
    date_window,
    decode_text,
    dictionary_codes,
    existing_files,
    item_codes,
    items_table,
    normalise_space,
    note_malformed,
    read_csv,
    unique_item_rows,
)
from xsmoe_ray.data.schema import DataError, Dataset, LoadReport

TRANSACTIONS = "transactions_train.csv"
ARTICLES = "articles.csv"
# The Kaggle files' full column lists (the reader needs only some; writers of the layout use all).
TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id", "price", "sales_channel_id")
ARTICLE_COLUMNS = (
    "article_id", "product_code", "prod_name", "product_type_no", "product_type_name",
    "product_group_name", "graphical_appearance_no", "graphical_appearance_name", "colour_group_code",
    "colour_group_name", "perceived_colour_value_id", "perceived_colour_value_name",
    "perceived_colour_master_id", "perceived_colour_master_name", "department_no", "department_name",
    "index_code", "index_name", "index_group_no", "index_group_name", "section_no", "section_name",
    "garment_group_no", "garment_group_name", "detail_desc",
)
TEXT_COLUMNS = ("prod_name", "product_type_name", "colour_group_name", "detail_desc")
TRANSACTION_TYPES = {
    "t_dat": pa.date32(),
    # Plain strings, dictionary-encoded after the read: reading as a dictionary type gives every
    # chunk its own dictionary, and merging them costs more than one shared hash table.
    "customer_id": pa.string(),
    "article_id": pa.int64(),
}
ARTICLE_TYPES = {"article_id": pa.int64(), **{c: pa.binary() for c in TEXT_COLUMNS}}  # text repaired, not fatal
PLACEHOLDER = "unknown"  # H&M fills product_type_name / colour_group_name with "Unknown"
DAY_S = 86400


def load_hm(root, *, date_from: str = "", date_to: str = "", dedup: bool = True) -> Dataset:
    """Read an H&M-layout directory (module docstring) into the standard schema."""
    root = Path(root)
    window = date_window(date_from, date_to)
    report = LoadReport(source=f"hm ({root})")
    catalogue, article_ids = _read_articles(root, report)
    path = root / TRANSACTIONS
    report.files.append(str(path))
    table, malformed = read_csv(path, TRANSACTION_TYPES)
    note_malformed(path, malformed, report, drop=True)
    report.rows_read = table.num_rows + len(malformed)
    days, articles = table.column("t_dat"), table.column("article_id")
    ts = days.cast(pa.int32()).fill_null(0).to_numpy().astype(np.int64) * DAY_S
    ts_empty, item_empty = days.is_null().to_numpy(), articles.is_null().to_numpy()
    items = item_codes(articles, article_ids)
    users = dictionary_codes(table.column("customer_id"))
    del table, days, articles  # ~2 GB of id strings at full size: free them before sorting,
    pa.default_memory_pool().release_unused()  # and hand them back to the OS (mimalloc keeps them)
    return assemble("hm", path, report, users, items, item_empty, ts, ts_empty, catalogue, window, dedup)


def _read_articles(root: Path, report: LoadReport) -> tuple[pa.Table, pa.Array]:
    """(items table, article id as int64 per item row) in ``articles.csv`` order."""
    path = root / ARTICLES
    report.files.append(str(path))
    table, malformed = read_csv(path, ARTICLE_TYPES, multiline=True)
    note_malformed(path, malformed, report, drop=False)
    if table.num_rows == 0:
        raise DataError(str(path), "no articles (the file has no data rows)")
    table = table.filter(pa.array(unique_item_rows(table.column("article_id"), path, report)))
    ids = table.column("article_id").combine_chunks()
    item_id = pc.utf8_lpad(ids.cast(pa.string()), 10, padding="0")
    return items_table(item_id, _article_text(table, path, report), _article_images(root, item_id, report)), ids


def _article_text(table: pa.Table, path: Path, report: LoadReport) -> pa.Array:
    """``prod_name. type. colour. description.``, skipping empty, placeholder and repeated parts."""
    null = pa.scalar(None, pa.string())
    parts: list[pa.Array] = []
    for column in TEXT_COLUMNS:
        part = normalise_space(decode_text(table.column(column), path, column, report))
        part = pc.replace_substring_regex(part, r"[\s.]+$", "")  # the joiner supplies the full stops
        lower = pc.utf8_lower(part)
        skip = pc.or_(pc.equal(part, ""), pc.equal(lower, PLACEHOLDER))
        for earlier in parts:  # e.g. prod_name "Vest top" with product_type_name "Vest top"
            skip = pc.or_(skip, pc.fill_null(pc.equal(lower, pc.utf8_lower(earlier)), False))
        parts.append(pc.if_else(skip, null, part))
    joined = pc.binary_join_element_wise(*parts, ". ", null_handling="skip")
    closed = pc.or_(pc.equal(joined, ""), pc.match_substring_regex(joined, r"[.!?]$"))
    return pc.if_else(closed, joined, pc.binary_join_element_wise(joined, ".", ""))


def _article_images(root: Path, item_id: pa.Array, report: LoadReport) -> pa.Array:
    """Absolute ``images/<3 digits>/<id>.jpg`` where the file exists, else null."""
    folder = (root / "images").resolve()
    if not folder.is_dir():
        report.notes.append(f"{folder}: no images folder; no article has an image")
        return pa.nulls(len(item_id), pa.string())
    paths = [f"{folder}/{i[:3]}/{i}.jpg" for i in item_id.to_pylist()]
    found = existing_files(paths)
    return pa.array([p if ok else None for p, ok in zip(paths, found)], pa.string())
