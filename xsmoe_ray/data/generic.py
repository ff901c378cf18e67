"""Generic-format reader, plus the columnar building blocks the H&M and Amazon readers share.

Format (DESIGN.md §3, "Generic"; anything else a user has is converted to it)
------------------------------------------------------------------------------
* ``interactions.parquet`` or ``interactions.csv``: ``user_id``, ``item_id``, ``timestamp``.
  ``timestamp`` is int seconds since the epoch (a float is floored), or an ISO 8601 date/datetime
  string (``2020-01-02``, ``2020-01-02 03:04:05[.ffffff]``, ``T`` separator, optional ``Z`` or
  ``+01:00`` offset; a datetime without an offset is read as UTC); in parquet also a timestamp or
  date column. A string of digits only is read as seconds, never as ``YYYYMMDD``.
* ``items.parquet`` or ``items.csv``: ``item_id`` and the optional ``text`` and ``image`` (a path
  relative to the dataset root, or absolute but inside it, or empty). A missing ``text`` or ``image`` column means
  that modality is absent (noted in the report), not an error.

When both a ``.parquet`` and a ``.csv`` exist, the parquet is read and the report says so. Ids are
compared as strings (``"007"`` and ``"7"`` differ in CSV; parquet integer ids are cast to strings).

What is fatal and what is counted
---------------------------------
Fatal (``DataError`` naming file, 1-based line and field): a missing file or required column, a
zero-byte file, an items file without data rows, an interactions file that ends up with no rows
("no interactions"), a timestamp that is not empty but cannot be parsed, an id that is not valid
UTF-8, an unreadable parquet file. These mean the reader misunderstands the file, and guessing
would corrupt every later window.

Counted (``LoadReport.dropped``; ``rows_read == interactions + sum(dropped)`` always holds):
``malformed_row`` (a CSV line with the wrong number of fields), ``empty_user_id``,
``empty_item_id``, ``empty_timestamp``, ``outside_date_range`` (only through
:func:`xsmoe_ray.data.load_dataset` with a date window), ``item_not_in_items`` and
``duplicate_row`` (exact repeats, ``dedup=True``). Each row is counted once, under the first
reason in that order. Item-file problems are about items, not interaction rows, so they go to
``LoadReport.notes`` with counts: rows without an id and repeated ids (the first is kept), text
that was not valid UTF-8 (repaired with U+FFFD), listed image files that do not exist (image set to
null, so the item counts as without image).

Also noted, never dropped or changed, because the data may be meant that way and the figures depend
on it: ids with leading or trailing whitespace (users and items-file ids; kept as different ids), negative
timestamps and timestamps over ``UNIT_RATIO`` times the median (milliseconds among seconds). The
``item_not_in_items`` count comes with example ids, in the notes and in the "no interactions" error,
and the report gives the UTC days of the first and last kept interaction.

Line numbers are data row index + 2 (the header is line 1), adjusted for skipped malformed lines;
a quoted value spanning several lines makes later physical line numbers larger than reported.
"""

from __future__ import annotations

import copy
import csv
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xsmoe_ray.data.schema import ITEMS_SCHEMA, DataError, Dataset, LoadReport, finish, utc_day

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "text", "image")
BLOCK_SIZE = 64 << 20  # big blocks: less per-block overhead (and kernel time) on multi-GB files
MAX_EXAMPLES = 3  # offending values quoted in a note
EXAMPLE_CHARS = 80  # ... each cut to this length
PARALLEL_ROWS = 2_000_000  # id columns at least this long are encoded on several threads
# A timestamp this many times the median is another unit: milliseconds are ~1000x seconds, but one
# from a year before the bulk's median is less (1995 ms / 2020 s: ~500x), and 100x seconds is year 5000.
UNIT_RATIO = 100

_TYPE_WORDS = {pa.date32(): "YYYY-MM-DD", pa.int64(): "an integer", pa.float64(): "a number"}
_INT_RE = r"^[+-]?\d+$"
_FLOAT_RE = r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$"
_OFFSET_RE = r"[T ]\d\d:\d\d(:\d\d(\.\d+)?)?\s*([Zz]|[+-]\d\d(:?\d\d)?)$"


# ---------------------------------------------------------------------------- files and CSV


def examples(values: Sequence) -> list:
    """The first few offending values for a note, long ones shortened."""
    out = []
    for v in values[:MAX_EXAMPLES]:
        if isinstance(v, (str, bytes)) and len(v) > EXAMPLE_CHARS:
            v = v[:EXAMPLE_CHARS] + ("..." if isinstance(v, str) else b"...")
        out.append(v)
    return out


def require_file(path: Path) -> Path:
    """``path`` if it is a non-empty file; otherwise a DataError that says which."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise DataError(str(path), "empty file (0 bytes, not even a header line)")
    return path


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV file from its first line (a UTF-8 BOM is allowed, as pyarrow does)."""
    with open(require_file(path), "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"header is not valid UTF-8 ({e.reason} at byte {e.start})", row=1) from None
    return next(csv.reader([line.rstrip("\r\n")]), [])


def check_columns(path: Path, present: Sequence[str], required: Sequence[str], row: int | None = 1) -> None:
    """A DataError naming the first required column that is absent (``row`` 1: a CSV header)."""
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(str(path), f"missing column; the file has {list(present)}", row=row, field=missing[0])


def read_csv(path: Path, types: dict[str, pa.DataType], *, optional: Sequence[str] = (),
             multiline: bool = False) -> tuple[pa.Table, list[str]]:
    """Read only the columns in ``types`` (those in ``optional`` may be absent), multithreaded.

    Returns the table and the text of every line that had the wrong number of fields (skipped, the
    caller counts them). A value that does not convert raises a DataError at its line and field.
    """
    names = csv_header(path)
    check_columns(path, names, [c for c in types if c not in optional])
    include = [c for c in types if c in names]
    try:
        return read_skipping_malformed(path, pacsv.ReadOptions(use_threads=True, block_size=BLOCK_SIZE),
                                       pacsv.ParseOptions(newlines_in_values=multiline),
                                       _convert_options(include, types))
    except pa.ArrowInvalid as e:
        raise locate_bad_value(path, include, types, multiline, e) from None


def read_skipping_malformed(path: Path, read_options: pacsv.ReadOptions, parse_options: pacsv.ParseOptions,
                            convert_options: pacsv.ConvertOptions) -> tuple[pa.Table, list[str]]:
    """``pacsv.read_csv``, and the text of every line with the wrong number of fields (skipped).

    The multithreaded read runs without a Python ``invalid_row_handler``: pyarrow releases the
    handler on one of its pool threads after ``read_csv`` has returned, and when that falls into
    interpreter exit (a CLI that stops on a bad value right after reading) the thread cannot take
    the GIL and the process aborts with SIGABRT instead of its exit code (apache/arrow#34314;
    seen as exit -6 in ~1 of 10 failing ``prepare`` runs on a loaded machine). Only a file with a
    parse error (malformed lines) is read again, on the calling thread, with the handler; a value
    that does not convert raises at once, and so does any ArrowInvalid of the second read.
    """
    try:
        return pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                              convert_options=convert_options), []
    except pa.ArrowInvalid as e:
        if not str(e).startswith("CSV parse error"):
            raise
    malformed: list[str] = []

    def skip(row) -> str:
        malformed.append(row.text)
        return "skip"

    serial, forgiving = copy.copy(read_options), copy.copy(parse_options)
    serial.use_threads, forgiving.invalid_row_handler = False, skip
    table = pacsv.read_csv(path, read_options=serial, parse_options=forgiving, convert_options=convert_options)
    return table, malformed


def _convert_options(include: list[str], types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
    # Only "" means missing: "NA" or "null" in an id column is a value, not a silent null.
    return pacsv.ConvertOptions(include_columns=include, column_types={c: types[c] for c in include},
                                null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False)


def locate_bad_value(path: Path, include: list[str], types: dict[str, pa.DataType], multiline: bool,
                     error: Exception) -> DataError:
    """The error path of :func:`read_csv`: re-read as raw bytes and find the first bad value."""
    try:
        raw, skipped = read_raw(path, include, multiline)
    except pa.ArrowInvalid:  # the CSV itself does not parse, whatever the column types
        return DataError(str(path), f"cannot read CSV: {error}")
    found = []  # (row index, column) of the first bad value per column
    for name in include:
        target = types[name]
        if target == pa.binary():
            continue  # text kept as bytes never fails here; it is repaired later
        values = raw.column(name).combine_chunks()
        index = first_failing(values, _converter(target))
        if index is not None:
            found.append((index, name))
    if not found:
        return DataError(str(path), f"cannot read CSV: {error}")
    index, name = min(found)
    value = raw.column(name)[index].as_py()
    return DataError(str(path), describe_bad(value, types[name]), row=csv_line(index, skipped), field=name)


def _converter(target: pa.DataType) -> Callable[[pa.Array], object]:
    if pa.types.is_dictionary(target) or pa.types.is_string(target):
        return lambda a: a.cast(pa.string())
    return lambda a: _empty_to_null(a).cast(pa.string()).cast(target)


def _empty_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.binary_length(values), 0), pa.scalar(None, values.type), values)


def describe_bad(value: bytes, target: pa.DataType) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"invalid UTF-8 byte 0x{value[e.start]:02x} in {value!r} (re-encode the file as UTF-8)"
    return f"cannot parse {text!r} as {_TYPE_WORDS.get(target, str(target))}"


def read_raw(path: Path, include: Sequence[str], multiline: bool = False) -> tuple[pa.Table, list[int]]:
    """``include`` as bytes, and the line numbers of skipped malformed lines (error path only:
    single-threaded, because only then does pyarrow give those line numbers)."""
    numbers: list[int] = []

    def skip(row) -> str:
        numbers.append(row.number or 0)
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_SIZE),
        parse_options=pacsv.ParseOptions(newlines_in_values=multiline, invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(include_columns=list(include),
                                             column_types={c: pa.binary() for c in include}),
    )
    return table, numbers


def csv_line(index: int, skipped: Sequence[int]) -> int:
    """1-based file line of data row ``index``: header line + rows before, + skipped lines before."""
    line = index + 2
    for s in sorted(skipped):
        if s <= line:
            line += 1
    return line


def first_failing(values: pa.Array, convert: Callable[[pa.Array], object]) -> int | None:
    """Index of the first element ``convert`` rejects, by bisection (O(n log n) conversions)."""
    if _converts(convert, values):
        return None
    lo, hi = 0, len(values)  # values[:lo] convert; values[lo:hi] holds a failure
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _converts(convert, values.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


def _converts(convert: Callable[[pa.Array], object], values: pa.Array) -> bool:
    try:
        convert(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def decode_text(values: pa.ChunkedArray | pa.Array, path: Path, field: str, report: LoadReport) -> pa.Array:
    """Bytes → UTF-8 strings; invalid sequences become U+FFFD and are counted in a note."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    try:
        return pc.fill_null(values.cast(pa.string()), "")
    except pa.ArrowInvalid:
        pass
    raw = values.to_pylist()  # error path: a Python pass over one column of the items file
    text: list[str] = []
    bad: list[int] = []
    for i, v in enumerate(raw):
        try:
            text.append("" if v is None else v.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(i)
            text.append(v.decode("utf-8", errors="replace"))
    report.notes.append(f"{path}: {len(bad)} value(s) of '{field}' were not valid UTF-8 and were repaired "
                        f"with U+FFFD, e.g. {examples([raw[i] for i in bad])}")
    return pa.array(text, pa.string())


def pick_file(root: Path, stem: str, report: LoadReport) -> Path:
    """``<stem>.parquet`` or else ``<stem>.csv`` under ``root``."""
    parquet, text = root / f"{stem}.parquet", root / f"{stem}.csv"
    if parquet.is_file():
        if text.is_file():
            report.notes.append(f"both {parquet.name} and {text.name} exist; read {parquet.name}")
        return parquet
    if text.is_file():
        return text
    raise DataError(str(parquet), f"file not found (nor {text.name}) in {root}")


def read_parquet(path: Path, columns: Sequence[str], *, optional: Sequence[str] = ()) -> pa.Table:
    require_file(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), f"cannot read parquet: {e}") from None
    check_columns(path, names, [c for c in columns if c not in optional], row=None)
    try:
        return pq.read_table(path, columns=[c for c in columns if c in names])
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), f"cannot read parquet: {e}") from None


# ---------------------------------------------------------------------------- coding


def as_ids(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Any id column (string, dictionary, integer) as strings with null → ""."""
    values = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return pc.fill_null(values, "") if values.null_count else values  # no 2 GB copy for nothing


def dictionary_codes(values: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(index per row into one dictionary, that dictionary) for an id column.

    Big columns are encoded in contiguous parts on parallel threads (Arrow releases the GIL);
    ``pc.dictionary_encode`` keeps one hash table across a part's chunks, so they share one
    dictionary. The parts' dictionaries are then merged by encoding their concatenation: never
    ``unify_dictionaries``, which re-hashes every chunk's dictionary (tens of seconds on H&M's
    1.37M ids in 186 chunks).
    """
    values = as_ids(values)
    parts = _split_chunks(values, max(1, min(pa.cpu_count(), 4)) if len(values) >= PARALLEL_ROWS else 1)
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        encoded = [c for part in pool.map(pc.dictionary_encode, parts) for c in part.chunks]
    if not encoded:
        return np.zeros(0, np.int32), pa.array([], pa.string())
    distinct: dict[tuple, int] = {}
    dictionaries: list[pa.Array] = []
    which = []
    for chunk in encoded:  # chunks of one part share buffers: compare by identity, for free
        d = chunk.dictionary
        key = (len(d), d.offset, tuple(b.address if b is not None else 0 for b in d.buffers()))
        if key not in distinct:
            distinct[key] = len(dictionaries)
            dictionaries.append(d)
        which.append(distinct[key])
    indices = [c.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False) for c in encoded]
    if len(dictionaries) == 1:
        return np.concatenate(indices), dictionaries[0]
    merged = pc.dictionary_encode(pa.concat_arrays(dictionaries))
    remap = np.split(merged.indices.to_numpy().astype(np.int32), np.cumsum([len(d) for d in dictionaries])[:-1])
    return np.concatenate([remap[w][i] for w, i in zip(which, indices)]), merged.dictionary


def _split_chunks(values: pa.ChunkedArray, parts: int) -> list[pa.ChunkedArray]:
    """``values`` as up to ``parts`` contiguous runs of whole chunks of about equal length."""
    chunks = values.chunks
    if parts <= 1 or len(chunks) < 2:
        return [values]
    bounds = np.searchsorted(np.cumsum([len(c) for c in chunks]), np.arange(1, parts) * len(values) / parts)
    edges = [0, *sorted(set(int(b) + 1 for b in bounds if b + 1 < len(chunks))), len(chunks)]
    return [pa.chunked_array(chunks[lo:hi], values.type) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def first_appearance(indices: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Recode ``indices`` (0..n_values-1) so codes follow first appearance in row order.

    Returns (code per row, source index of each code). ``minimum.at`` is O(n) and, unlike a
    fancy-index assignment with repeated indices, has a defined result.
    """
    n = len(indices)
    first = np.full(n_values, n, dtype=np.int64)
    np.minimum.at(first, indices, np.arange(n, dtype=np.int64))
    seen = np.flatnonzero(first < n)
    order = seen[np.argsort(first[seen], kind="stable")]
    remap = np.zeros(n_values, dtype=np.int32)
    remap[order] = np.arange(len(order), dtype=np.int32)
    return remap[indices], order


def item_codes(row_items: pa.ChunkedArray | pa.Array, item_ids: pa.Array) -> np.ndarray:
    """Code 1..n of each row's item (position in ``item_ids`` + 1); 0 where it is not there."""
    position = pc.index_in(row_items, value_set=item_ids)
    return (pc.fill_null(position, -1).to_numpy() + 1).astype(np.int32)


def unique_item_rows(item_ids: pa.Array, path: Path, report: LoadReport) -> np.ndarray:
    """Mask of item rows kept: a non-empty id seen for the first time. Others are noted."""
    ids = as_ids(item_ids).combine_chunks()
    n = len(ids)
    empty = pc.equal(ids, "").to_numpy(zero_copy_only=False)
    first = pc.index_in(ids, value_set=ids).to_numpy() == np.arange(n)  # index_in finds the first match
    repeated = ~first & ~empty
    if empty.any():
        report.notes.append(f"{path}: {int(empty.sum())} item row(s) without an id were ignored")
    if repeated.any():
        repeated_ids = ids.filter(pa.array(repeated)).to_pylist()
        report.notes.append(f"{path}: {int(repeated.sum())} item row(s) repeat an earlier id and were ignored "
                            f"(first kept), e.g. {examples(repeated_ids)}")
    return first & ~empty


def items_table(item_ids: pa.Array, text: pa.Array, image: pa.Array) -> pa.Table:
    n = len(item_ids)
    return pa.table({
        "item": pa.array(np.arange(1, n + 1, dtype=np.int32)),
        "item_id": as_ids(item_ids).combine_chunks(),
        "text": pc.fill_null(text, "").cast(pa.string()),
        "image": image.cast(pa.string()),
    }, schema=ITEMS_SCHEMA)


def existing_files(paths: Sequence[str | None]) -> np.ndarray:
    """Which of ``paths`` are files; one directory listing per folder instead of a stat per path."""
    listings: dict[str, set[str]] = {}
    found = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        if not p:
            continue
        folder, name = os.path.split(p)
        if folder not in listings:
            try:
                listings[folder] = {e.name for e in os.scandir(folder) if e.is_file()}
            except OSError:
                listings[folder] = set()
        found[i] = name in listings[folder]
    return found


def resolve_images(root: Path, rel: Sequence[str | None], path: Path, report: LoadReport) -> pa.Array:
    """Absolute image paths (null when empty, missing or outside the dataset root; each case noted).

    A path must stay inside the root once normalised (``../../etc/passwd`` or ``/etc/passwd`` would
    otherwise be read and hashed into the cache); the check is lexical, so a symlinked image folder
    inside the root still works.
    """
    base = str(root.resolve())
    full = [os.path.normpath(os.path.join(base, p)) if p else None for p in rel]
    outside = np.array([p is not None and os.path.commonpath([base, p]) != base for p in full], dtype=bool)
    if outside.any():
        report.notes.append(f"{path}: {int(outside.sum())} listed image path(s) point outside the dataset root "
                            f"{base}; their image is null and the file is not read, e.g. "
                            f"{examples([rel[i] for i in np.flatnonzero(outside)])}")
        full = [None if out else p for p, out in zip(full, outside)]
    found = existing_files(full)
    listed = np.array([bool(p) for p in rel], dtype=bool) & ~outside
    missing = listed & ~found
    if missing.any():
        report.notes.append(f"{path}: {int(missing.sum())} listed image file(s) do not exist; their image is "
                            f"null, e.g. {examples([rel[i] for i in np.flatnonzero(missing)])}")
    return pa.array([p if ok else None for p, ok in zip(full, found)], pa.string())


# ---------------------------------------------------------------------------- time


def date_window(date_from: str = "", date_to: str = "") -> tuple[int | None, int | None]:
    """``[date_from, date_to)`` as epoch seconds at midnight UTC (None = open end)."""
    return _day_seconds(date_from, "data.date_from"), _day_seconds(date_to, "data.date_to")


def _day_seconds(day: str, key: str) -> int | None:
    if not day:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise DataError(key, f"cannot parse {day!r} as YYYY-MM-DD")
    try:
        return int(np.datetime64(day, "D").astype(np.int64)) * 86400
    except ValueError:
        raise DataError(key, f"cannot parse {day!r} as YYYY-MM-DD") from None


INT64_SECONDS = (-(2.0 ** 63), 2.0 ** 63)  # floats outside [lo, hi) would wrap to -2^63 when cast


def floored_seconds(seconds: np.ndarray, rows: np.ndarray, path: Path, line_of: Callable[[int], int]) -> np.ndarray:
    """Float seconds → int64, floored; an infinite or out-of-int64 value is an error naming its line."""
    bad = ~np.isfinite(seconds) | (seconds < INT64_SECONDS[0]) | (seconds >= INT64_SECONDS[1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(str(path), f"timestamp {seconds[k]!r} is outside the int64 seconds range",
                        row=line_of(int(rows[k])), field="timestamp")
    return np.floor(seconds).astype(np.int64)


def timestamp_seconds(values: pa.ChunkedArray, path: Path,
                      line_of: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds per row, True where the value is empty) for any supported timestamp column."""
    values = values.combine_chunks()
    kind = values.type
    if pa.types.is_integer(kind):
        return values.fill_null(0).cast(pa.int64()).to_numpy(), values.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind):
        empty = pc.is_nan(values).fill_null(True).to_numpy(zero_copy_only=False)  # null or NaN
        seconds = values.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False).copy()
        seconds[empty] = 0
        return floored_seconds(seconds, np.arange(len(seconds)), path, line_of), empty
    if pa.types.is_date(kind):
        values = values.cast(pa.timestamp("s"))
        kind = values.type
    if pa.types.is_timestamp(kind):  # stored as UTC ticks, tz-aware or not; floor to whole seconds
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        empty = values.is_null().to_numpy(zero_copy_only=False)
        return values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) // per_second, empty
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return _parse_time_strings(values.cast(pa.string()), path, line_of)
    raise DataError(str(path), f"unsupported timestamp type {kind}", field="timestamp")


def _parse_time_strings(values: pa.Array, path: Path, line_of: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Each string by its own shape: digits → seconds, a number → floored seconds, else ISO 8601."""
    blank = pc.fill_null(pc.equal(values, ""), True)
    try:  # the common case, all int seconds: one cast, no regex passes
        seconds = pc.if_else(blank, pa.scalar(None, pa.string()), values).cast(pa.int64())
        return seconds.fill_null(0).to_numpy(zero_copy_only=False), blank.to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        pass
    text = pc.utf8_trim_whitespace(pc.fill_null(values, ""))
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    is_int = pc.match_substring_regex(text, _INT_RE).to_numpy(zero_copy_only=False)
    is_float = pc.match_substring_regex(text, _FLOAT_RE).to_numpy(zero_copy_only=False) & ~is_int
    has_offset = pc.match_substring_regex(text, _OFFSET_RE).to_numpy(zero_copy_only=False) & ~is_int & ~is_float
    naive = ~(empty | is_int | is_float | has_offset)
    seconds = np.zeros(len(text), dtype=np.int64)
    groups = ((is_int, pa.int64()), (is_float, pa.float64()),
              (has_offset, pa.timestamp("us", "UTC")), (naive, pa.timestamp("us")))
    for mask, target in groups:
        if not mask.any():
            continue
        rows = np.flatnonzero(mask)
        part = text.take(pa.array(rows))
        try:
            converted = part.cast(target)
        except pa.ArrowInvalid:
            bad = rows[first_failing(part, lambda a, t=target: a.cast(t))]
            raise DataError(str(path), f"cannot parse {text[bad].as_py()!r} as int seconds or an ISO 8601 datetime",
                            row=line_of(int(bad)), field="timestamp") from None
        if pa.types.is_timestamp(target):
            seconds[rows] = converted.cast(pa.int64()).to_numpy() // 1_000_000
        else:
            seconds[rows] = floored_seconds(converted.cast(pa.float64()).to_numpy(), rows, path, line_of)
    return seconds, empty


# ---------------------------------------------------------------------------- assembly


def assemble(name: str, path: Path, report: LoadReport, users: tuple[np.ndarray, pa.Array], items: np.ndarray,
             item_empty: np.ndarray, ts: np.ndarray, ts_empty: np.ndarray, catalogue: pa.Table,
             window: tuple[int | None, int | None] = (None, None), dedup: bool = True, *,
             row_items: pa.ChunkedArray | None = None, line_of: Callable[[int], int] | None = None) -> Dataset:
    """Shared reader tail: count drops (each row once, first reason wins), code users, ``finish``.

    ``users`` is :func:`dictionary_codes` of the user id column, ``items`` the item code per row
    (0 = not in the items file), ``ts`` epoch seconds; all in file order. A reader that passes
    ``row_items`` (the item id per row) gets example ids for ``item_not_in_items``, in the notes and
    in the error when every row is dropped; one that passes ``line_of`` (row index → line) gets
    notes on odd timestamps and whitespace in user ids of the kept rows.
    """
    user_index, user_dict = users
    keep = np.ones(len(ts), dtype=bool)

    def drop(bad: np.ndarray, reason: str) -> np.ndarray:
        bad = bad & keep
        report.drop(reason, int(bad.sum()))
        keep[bad] = False
        return bad

    drop(pc.equal(user_dict, "").to_numpy(zero_copy_only=False)[user_index], "empty_user_id")
    drop(item_empty, "empty_item_id")
    drop(ts_empty, "empty_timestamp")
    lo, hi = window
    if lo is not None:
        drop(ts < lo, "outside_date_range")
    if hi is not None:
        drop(ts >= hi, "outside_date_range")
    unknown = drop(items == 0, "item_not_in_items")
    hint = unknown_items_hint(row_items, unknown, catalogue.column("item_id")) if row_items is not None else ""
    if hint:
        report.notes.append(f"{path}: {hint}")
    if not keep.any():
        why = f"all {report.rows_read:,} rows were dropped: {report.dropped}" if report.rows_read else \
            "the file has no data rows"
        raise DataError(str(path), f"no interactions ({why})" + (f"; {hint}" if hint else ""))
    if line_of is not None:
        note_timestamps(path, ts, keep, line_of, report)
        note_padded_user_ids(path, user_index[keep], user_dict, report)
    user, source = first_appearance(user_index[keep], len(user_dict))
    return finish(name, user, items[keep], ts[keep], catalogue, user_dict.take(pa.array(source)), report, dedup)


def unknown_items_hint(row_items: pa.ChunkedArray, dropped: np.ndarray, catalogue_ids: pa.ChunkedArray) -> str:
    """Why rows were dropped as ``item_not_in_items``: their ids (repr, so whitespace shows) beside the
    items file's, which usually makes the mismatch plain (" it001" vs "it001", 7 vs "007")."""
    if not dropped.any():
        return ""
    missing = pc.unique(row_items.filter(pa.array(dropped)))
    shown = examples(missing.slice(0, MAX_EXAMPLES).to_pylist())
    return (f"item_not_in_items: {int(dropped.sum()):,} row(s) with {len(missing):,} item id(s) that the items file "
            f"does not have, e.g. {shown}; ids are compared as exact strings, and the items file has "
            f"{catalogue_examples(shown, catalogue_ids.combine_chunks())}")


def catalogue_examples(shown: list[str], catalogue_ids: pa.Array) -> str:
    """Items-file ids equal to ``shown`` but for whitespace, case or leading zeros, else its first ids."""
    position = pc.index_in(loose_ids(pa.array(shown, pa.string())), value_set=loose_ids(catalogue_ids))
    near = list(dict.fromkeys(catalogue_ids.take(position.drop_null()).to_pylist()))
    if near:
        return f"{examples(near)} (the same but for whitespace, case or leading zeros)"
    return f"ids such as {examples(catalogue_ids.slice(0, MAX_EXAMPLES).to_pylist())}"


def loose_ids(ids: pa.Array) -> pa.Array:
    """Ids as a user would read them: no surrounding whitespace, lower case, no leading zeros."""
    return pc.utf8_ltrim(pc.utf8_lower(pc.utf8_trim_whitespace(ids)), characters="0")


def note_timestamps(path: Path, ts: np.ndarray, keep: np.ndarray, line_of: Callable[[int], int],
                    report: LoadReport) -> None:
    """Note (never drop) kept timestamps that are negative or look like another unit than the bulk:
    read as seconds, a few milliseconds land tens of thousands of years on, in the last chunk."""
    negative = keep & (ts < 0)
    if negative.any():
        report.notes.append(f"{path}: {int(negative.sum()):,} timestamp(s) are negative (before 1970); kept as "
                            f"read, e.g. {quote_stamps(path, np.flatnonzero(negative), ts, line_of)}")
    positive = ts[keep & (ts > 0)]
    if not len(positive):
        return
    median = int(np.partition(positive, len(positive) // 2)[len(positive) // 2])  # O(n), unlike np.median's copy
    if median * UNIT_RATIO >= 2**63:
        return  # nothing in int64 can be that far above
    huge = keep & (ts > median * UNIT_RATIO)
    if huge.any():
        report.notes.append(
            f"{path}: {int(huge.sum()):,} timestamp(s) are over {UNIT_RATIO}x the median {median} "
            f"({utc_day(median)}), likely milliseconds or microseconds among seconds; kept as read (seconds), "
            f"e.g. {quote_stamps(path, np.flatnonzero(huge), ts, line_of)}")


def quote_stamps(path: Path, rows: np.ndarray, ts: np.ndarray, line_of: Callable[[int], int]) -> str:
    """The first few of ``rows`` as ``line N: value (day)``."""
    word = "row" if path.suffix == ".parquet" else "line"
    return ", ".join(f"{word} {line_of(int(i))}: {int(ts[i])} ({utc_day(int(ts[i]))})" for i in examples(rows))


def note_padded_user_ids(path: Path, user_index: np.ndarray, user_dict: pa.Array, report: LoadReport) -> None:
    """Note the user ids (of kept rows) with surrounding whitespace; they stay distinct ids."""
    present = np.bincount(user_index, minlength=len(user_dict)) > 0
    note = padded_ids_note(user_dict.filter(pa.array(present)), "user")
    if note:
        report.notes.append(f"{path}: {note}")


def padded_ids_note(ids: pa.Array, what: str) -> str:
    """A note on the distinct ``ids`` that differ from their stripped form ("" if none).

    They are not stripped: that would change which rows are one user or item, and the project's
    figures depend on the data as read; the note says which pairs (" u1" and "u1") it splits.
    """
    stripped = pc.utf8_trim_whitespace(ids)
    padded = pc.not_equal(stripped, ids)
    odd, odd_stripped = ids.filter(padded), stripped.filter(padded)
    if not len(odd):
        return ""
    note = (f"{len(odd):,} {what} id(s) have leading or trailing whitespace, "
            f"e.g. {examples(odd.slice(0, MAX_EXAMPLES).to_pylist())}; "
            f"they are kept as written (ids are compared as exact strings)")
    twin = pc.is_in(odd_stripped, value_set=ids)
    pairs = int(pc.sum(twin).as_py() or 0)
    if pairs:
        k = int(pc.index(twin, True).as_py())
        note += (f"; {pairs:,} of them also occur without it, so e.g. {odd[k].as_py()!r} and "
                 f"{odd_stripped[k].as_py()!r} are two different {what}s")
    return note


# ---------------------------------------------------------------------------- the generic reader


def load_generic(root, *, dedup: bool = True) -> Dataset:
    """Read a dataset in the generic layout (module docstring) into the standard schema."""
    return read_generic(root, dedup=dedup)


def read_generic(root, *, date_from: str = "", date_to: str = "", dedup: bool = True) -> Dataset:
    """:func:`load_generic` with the optional ``[date_from, date_to)`` window of ``load_dataset``."""
    root = Path(root)
    window = date_window(date_from, date_to)
    report = LoadReport(source=f"generic ({root})")
    catalogue = _read_items(root, report)
    path = pick_file(root, "interactions", report)
    report.files.append(str(path))
    if path.suffix == ".csv":
        table, malformed = read_csv(path, {"user_id": pa.string(), "item_id": pa.string(), "timestamp": pa.string()})
        note_malformed(path, malformed, report, drop=True)
    else:
        table, malformed = read_parquet(path, INTERACTION_COLUMNS), []
    report.rows_read = table.num_rows + len(malformed)
    line_of = line_mapper(path, bool(malformed))
    ts, ts_empty = timestamp_seconds(table.column("timestamp"), path, line_of)
    row_items = as_ids(table.column("item_id"))
    return assemble("generic", path, report, dictionary_codes(table.column("user_id")),
                    item_codes(row_items, catalogue.column("item_id").combine_chunks()),
                    pc.equal(row_items, "").to_numpy(), ts, ts_empty, catalogue, window, dedup,
                    row_items=row_items, line_of=line_of)


def line_mapper(path: Path, malformed: bool) -> Callable[[int], int]:
    """Row index → the line (CSV) or 1-based row (parquet) that an error or note names.

    With malformed lines the skipped line numbers take a second, single-threaded read: done once,
    on the first call, because only errors and notes with examples need it.
    """
    if path.suffix == ".parquet":
        return lambda i: i + 1
    skipped: list[list[int]] = []

    def line_of(i: int) -> int:
        if malformed and not skipped:
            skipped.append(read_raw(path, INTERACTION_COLUMNS)[1])
        return csv_line(i, skipped[0] if skipped else ())

    return line_of


def note_malformed(path: Path, malformed: list[str], report: LoadReport, *, drop: bool) -> None:
    """Lines with the wrong number of fields: noted with examples; ``drop``: also counted as rows."""
    if malformed:
        if drop:
            report.drop("malformed_row", len(malformed))
        report.notes.append(f"{path}: {len(malformed)} line(s) with the wrong number of fields were skipped, "
                            f"e.g. {examples(malformed)}")


def _read_items(root: Path, report: LoadReport) -> pa.Table:
    path = pick_file(root, "items", report)
    report.files.append(str(path))
    if path.suffix == ".csv":
        types = {"item_id": pa.string(), "text": pa.binary(), "image": pa.string()}
        table, malformed = read_csv(path, types, optional=("text", "image"), multiline=True)
        note_malformed(path, malformed, report, drop=False)
    else:
        table = read_parquet(path, ITEM_COLUMNS, optional=("text", "image"))
    if table.num_rows == 0:
        raise DataError(str(path), "no items (the file has no data rows)")
    keep = unique_item_rows(table.column("item_id"), path, report)
    table = table.filter(pa.array(keep))
    padded = padded_ids_note(as_ids(table.column("item_id")).combine_chunks(), "item")
    if padded:
        report.notes.append(f"{path}: {padded}; interactions must spell them the same way")
    n = table.num_rows
    for column in ("text", "image"):
        if column not in table.column_names:
            report.notes.append(f"{path}: no '{column}' column, so items have no {column}")
    if "text" in table.column_names:
        raw = table.column("text")
        text = decode_text(raw, path, "text", report) if pa.types.is_binary(raw.type) else as_ids(raw).combine_chunks()
        text = normalise_space(text)
    else:
        text = pa.array([""] * n, pa.string())
    if "image" in table.column_names:
        rel = pc.utf8_trim_whitespace(as_ids(table.column("image"))).to_pylist()
        image = resolve_images(root, rel, path, report)
    else:
        image = pa.nulls(n, pa.string())
    return items_table(table.column("item_id"), text, image)


def normalise_space(text: pa.Array) -> pa.Array:
    """Collapse runs of whitespace (newlines in quoted CSV text included) to one space."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))
