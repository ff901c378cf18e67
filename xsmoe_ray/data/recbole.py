"""RecBole atomic-file reader (text only).

Format (RecBole's "atomic files", https://recbole.io/atomic_files.html)
--------------------------------------------------------------------
``<name>.inter`` (interactions) and ``<name>.item`` (item features) in the dataset directory;
``<name>`` is ``data.category`` when set, else the directory's name. Other atomic files
(``.user``, ``.kg``, ...) are not read. Both files are UTF-8, tab-separated, without quoting (a
``"`` is an ordinary character); the first line names every column ``field:type`` with type one of
``token``, ``token_seq``, ``float``, ``float_seq``.

* ``.inter``: the user field (``data.recbole_user_field``, default ``user_id``), the item field
  (``data.recbole_item_field``, default ``item_id``) and the time field
  (``data.recbole_time_field``, default ``timestamp``: seconds since the epoch, an integer or a
  float, floored to whole seconds). Other columns (``rating``, ...) are ignored.
* ``.item``: the item field and the fields the item text is made of. ``data.recbole_text`` is a
  template such as ``{movie_title} ({release_year}) {genre}``: ``{field}`` is replaced by that
  field's value as written in the file (``release_year`` ``1995`` stays ``1995``), brackets left
  empty by empty values are removed and whitespace is collapsed. Left empty (the default), the
  text is ``{movie_title} ({release_year}) {genre}`` when the file has those three fields (RecBole's
  MovieLens files), otherwise every ``token`` and ``token_seq`` field except the item id, in file
  order, non-empty values joined with ``". "``. The report's notes say which. No images.

Ids are strings, compared exactly. Items are coded in ``.item`` order; users by first appearance.

What is fatal and what is counted (as in :mod:`xsmoe_ray.data.generic`)
-----------------------------------------------------------------------
Fatal (``DataError`` naming file, 1-based line and field): a missing or zero-byte file; a header
cell without ``:type``, with an unknown type, or a field named twice; a missing user, item or
time field, or a template field the ``.item`` header lacks; an id that is not valid UTF-8; a time
value that is not empty but is not a number, or is NaN or infinite, or is outside the int64 range
of seconds; an ``.item`` file without data rows; no interactions left. A bad template
(``data.recbole_text``) is an error naming that key.

Counted (``LoadReport.dropped``; ``rows_read == interactions + sum(dropped)``): ``malformed_row``
(a line with the wrong number of tab-separated fields), ``empty_user_id``, ``empty_item_id``,
``empty_timestamp``, ``outside_date_range``, ``item_not_in_items`` and ``duplicate_row`` (exact
repeats of user, item and second, ``dedup=True``), each row once, first reason in that order.
``.item`` problems go to ``LoadReport.notes`` with counts: malformed lines, rows without an id and
repeated ids (the first kept), text that was not valid UTF-8 (repaired with U+FFFD). An item whose
text comes out empty counts in ``items_without_text``.

Line numbers are file lines (the header is line 1; blank lines, which are skipped, still count).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from xsmoe_ray.data.generic import (
    BLOCK_SIZE,
    _FLOAT_RE,
    _INT_RE,
    assemble,
    date_window,
    decode_text,
    describe_bad,
    dictionary_codes,
    first_failing,
    item_codes,
    items_table,
    normalise_space,
    note_malformed,
    read_skipping_malformed,
    require_file,
    unique_item_rows,
)
from xsmoe_ray.data.schema import DataError, Dataset, LoadReport

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_TYPES = ("token", "token_seq")
ML_TEMPLATE = "{movie_title} ({release_year}) {genre}"  # RecBole's MovieLens .item fields
JOIN = ". "
INT64_LIMIT = 2.0**63  # float seconds must lie in [-2**63, 2**63)


def load_recbole(root, name: str = "", *, user_field: str = "user_id", item_field: str = "item_id",
                 time_field: str = "timestamp", text: str = "", date_from: str = "", date_to: str = "",
                 dedup: bool = True) -> Dataset:
    """Read ``<name>.inter`` and ``<name>.item`` under ``root`` (module docstring) into the standard schema."""
    root = Path(root).expanduser()
    name = name or root.resolve().name
    window = date_window(date_from, date_to)
    report = LoadReport(source=f"recbole ({root}, dataset '{name}')")
    inter_path = atomic_file(root, name, "inter")
    item_path = atomic_file(root, name, "item")
    report.files += [str(inter_path), str(item_path)]
    catalogue = _read_items(item_path, item_field, text, report)

    fields = read_header(inter_path)
    require_fields(inter_path, fields, {user_field: "data.recbole_user_field", item_field: "data.recbole_item_field",
                                        time_field: "data.recbole_time_field"})
    table, malformed = read_tsv(inter_path, fields, [user_field, item_field, time_field])
    note_malformed(inter_path, malformed, report, drop=True)
    report.rows_read = table.num_rows + len(malformed)
    line_of = line_mapper(inter_path, len(fields))
    users = utf8_ids(table.column(user_field), inter_path, user_field, line_of)
    row_items = utf8_ids(table.column(item_field), inter_path, item_field, line_of)
    ts, ts_empty = time_seconds(table.column(time_field), inter_path, time_field, line_of)
    return assemble("recbole", inter_path, report, dictionary_codes(users),
                    item_codes(row_items, catalogue.column("item_id").combine_chunks()),
                    pc.equal(row_items, "").to_numpy(zero_copy_only=False), ts, ts_empty, catalogue, window, dedup,
                    row_items=row_items, line_of=line_of)


# ---------------------------------------------------------------------------- files and header


def atomic_file(root: Path, name: str, suffix: str) -> Path:
    """``root/<name>.<suffix>``, or a DataError that lists the files of that kind that are there."""
    path = root / f"{name}.{suffix}"
    if not path.is_file():
        others = sorted(p.name for p in root.glob(f"*.{suffix}")) if root.is_dir() else []
        hint = f"; .{suffix} files in {root}: {others} (set data.category to the dataset name)" if others else ""
        raise DataError(str(path), f"file not found{hint}")
    return require_file(path)


def read_header(path: Path) -> list[tuple[str, str]]:
    """(field, type) of every column from the ``field:type`` header line."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"header is not valid UTF-8 ({e.reason} at byte {e.start})", row=1) from None
    fields: list[tuple[str, str]] = []
    for column, cell in enumerate(line.split("\t"), 1):
        field, sep, kind = cell.strip().rpartition(":")
        if not sep or not field:
            raise DataError(str(path), f"header cell {cell!r} (column {column}) is not 'field:type' (RecBole atomic "
                                       f"files name every column field:type, type one of {FIELD_TYPES})",
                            row=1, field=cell.strip() or f"column {column}")
        if kind not in FIELD_TYPES:
            raise DataError(str(path), f"unknown type {kind!r} in header cell {cell!r}; expected one of {FIELD_TYPES}",
                            row=1, field=field)
        if any(field == f for f, _ in fields):
            raise DataError(str(path), f"field named twice in the header (column {column})", row=1, field=field)
        fields.append((field, kind))
    return fields


def require_fields(path: Path, fields: Sequence[tuple[str, str]], required: dict[str, str]) -> None:
    """A DataError naming the first required field (and the config key that names it) that is absent."""
    present = [f for f, _ in fields]
    for field, key in required.items():
        if field not in present:
            header = [f"{f}:{k}" for f, k in fields]
            raise DataError(str(path), f"missing field (set {key} to the right name); the header has {header}",
                            row=1, field=field)


def read_tsv(path: Path, fields: Sequence[tuple[str, str]], include: Sequence[str]) -> tuple[pa.Table, list[str]]:
    """Columns ``include`` as bytes (multithreaded); also the text of every line with the wrong
    number of fields (skipped: the caller counts or notes them)."""
    names = [f for f, _ in fields]
    try:
        return read_skipping_malformed(
            path,
            pacsv.ReadOptions(use_threads=True, block_size=BLOCK_SIZE, skip_rows=1, column_names=names),
            pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                               newlines_in_values=False),
            pacsv.ConvertOptions(include_columns=list(include), column_types={c: pa.binary() for c in include}),
        )
    except pa.ArrowInvalid as e:
        raise DataError(str(path), f"cannot read the tab-separated file: {e}") from None


def line_mapper(path: Path, n_fields: int) -> Callable[[int], int]:
    """1-based file line of data row ``index`` of :func:`read_tsv`'s table (error path only: one
    Python pass over the file, skipping the header, blank lines and malformed lines as pyarrow does)."""
    def line_of(index: int) -> int:
        seen = -1
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                line = raw.rstrip(b"\r\n")
                if number == 1 or not line or line.count(b"\t") + 1 != n_fields:
                    continue
                seen += 1
                if seen == index:
                    return number
        return index + 2  # not reached for a valid index
    return line_of


# ---------------------------------------------------------------------------- values


def utf8_ids(values: pa.ChunkedArray, path: Path, field: str, line_of: Callable[[int], int]) -> pa.Array:
    """An id column (bytes) as strings; invalid UTF-8 is fatal at its line."""
    values = values.combine_chunks()
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    index = first_failing(values, lambda a: a.cast(pa.string()))
    raise DataError(str(path), describe_bad(values[index].as_py(), pa.string()), row=line_of(index), field=field)


def time_seconds(values: pa.ChunkedArray, path: Path, field: str,
                 line_of: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """(floored int64 seconds, True where empty) of a time column read as bytes."""
    text = pc.utf8_trim_whitespace(utf8_ids(values, path, field, line_of))
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    seconds = np.zeros(len(text), dtype=np.int64)
    if empty.all():
        return seconds, empty
    is_int = pc.match_substring_regex(text, _INT_RE).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(is_int)
    if len(rows):
        part = text.take(pa.array(rows))
        try:
            seconds[rows] = part.cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            bad = int(rows[first_failing(part, lambda a: a.cast(pa.int64()))])
            raise DataError(str(path), f"{text[bad].as_py()!r} is outside the int64 range of seconds",
                            row=line_of(bad), field=field) from None
    rows = np.flatnonzero(~is_int & ~empty)
    if len(rows):
        part = text.take(pa.array(rows))
        numeric = pc.match_substring_regex(part, _FLOAT_RE).to_numpy(zero_copy_only=False)
        if not numeric.all():  # digits, '.', an exponent: not "nan", "inf", "0x10", "1,5"
            bad = int(rows[np.flatnonzero(~numeric)[0]])
            value = text[bad].as_py()
            try:
                special = not np.isfinite(float(value))
            except ValueError:
                special = False
            why = "is not a finite number of seconds" if special else "cannot be parsed as seconds (a number)"
            raise DataError(str(path), f"{value!r} {why}", row=line_of(bad), field=field)
        floats = part.cast(pa.float64()).to_numpy(zero_copy_only=False)
        outside = ~((floats >= -INT64_LIMIT) & (floats < INT64_LIMIT))  # also catches 1e400 → inf
        if outside.any():
            bad = int(rows[np.flatnonzero(outside)[0]])
            raise DataError(str(path), f"{text[bad].as_py()!r} is outside the int64 range of seconds",
                            row=line_of(bad), field=field)
        seconds[rows] = np.floor(floats).astype(np.int64)
    return seconds, empty


# ---------------------------------------------------------------------------- items


def _read_items(path: Path, item_field: str, template: str, report: LoadReport) -> pa.Table:
    fields = read_header(path)
    require_fields(path, fields, {item_field: "data.recbole_item_field"})
    parts, used = text_recipe(path, fields, item_field, template, report)
    table, malformed = read_tsv(path, fields, [item_field, *[f for f in used if f != item_field]])
    note_malformed(path, malformed, report, drop=False)
    if table.num_rows == 0:
        raise DataError(str(path), "no items (the file has no data rows)")
    ids = utf8_ids(table.column(item_field), path, item_field, line_mapper(path, len(fields)))
    keep = pa.array(unique_item_rows(ids, path, report))
    ids = ids.filter(keep)
    values = {f: decode_text(table.column(f).filter(keep), path, f, report).to_pylist() for f in used}
    text = render(parts, values, len(ids))
    return items_table(ids, normalise_space(pa.array(text, pa.string())), pa.nulls(len(ids), pa.string()))


def text_recipe(path: Path, fields: Sequence[tuple[str, str]], item_field: str, template: str,
                report: LoadReport) -> tuple[list[tuple[str, str | None]] | None, list[str]]:
    """(template as (literal, field) parts — None for "join the fields" —, the fields it reads)."""
    names = [f for f, _ in fields]
    if not template and all(f in names for f in ("movie_title", "release_year", "genre")):
        template = ML_TEMPLATE
    if not template:
        used = [f for f, kind in fields if kind in TEXT_TYPES and f != item_field]
        if used:
            report.notes.append(f"{path}: item text = the fields {used} joined with {JOIN!r} (data.recbole_text)")
        else:
            report.notes.append(f"{path}: no token/token_seq field besides '{item_field}', so items have no text "
                                f"(set data.recbole_text to a template over the fields {names})")
        return None, used
    parts = parse_template(template)
    for _, field in parts:
        if field is not None and field not in names:
            raise DataError(str(path), f"data.recbole_text {template!r} names a field the header lacks; "
                                       f"fields: {names}", row=1, field=field)
    report.notes.append(f"{path}: item text = {template!r} (data.recbole_text)")
    used = list(dict.fromkeys(f for _, f in parts if f is not None))
    return parts, used


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """``"{a} ({b})"`` → ``[("", "a"), (" (", "b"), (")", None)]``; only plain field names allowed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError("data.recbole_text", f"bad template {template!r}: {e}") from None
    parts = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (not re.fullmatch(r"[^.\[\]{}!:]+", field) or field.isdigit() or spec or conversion):
            raise DataError("data.recbole_text", f"bad template {template!r}: '{{{field}}}' must be a plain "
                                                 f"field name in braces, e.g. '{{movie_title}}'")
        parts.append((literal, field))
    if not any(f is not None for _, f in parts):
        raise DataError("data.recbole_text", f"bad template {template!r}: it names no field")
    return parts


_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")


def render(parts: list[tuple[str, str | None]] | None, values: dict[str, list[str]], n: int) -> list[str]:
    """The text of each item: the template filled in, or the non-empty values joined."""
    if parts is None:
        columns = list(values.values())
        return [JOIN.join(v for v in (c[i].strip() for c in columns) if v) for i in range(n)]
    out = []
    for i in range(n):
        text = "".join(literal + (values[field][i] if field is not None else "") for literal, field in parts)
        out.append(_EMPTY_BRACKETS.sub("", text))
    return out
