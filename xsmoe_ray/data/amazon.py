"""Amazon reviews 2018 reader (Ni, Li & McAuley, EMNLP 2019; DESIGN.md §3).

Layout under ``root``
---------------------
* reviews ``<Category>.json[.gz]`` or the 5-core ``<Category>_5.json[.gz]``: one review per line,
  of which ``reviewerID``, ``asin`` and ``unixReviewTime`` (epoch seconds) are read;
* metadata ``meta_<Category>.json[.gz]``: one item per line, of which ``asin``, ``title`` and
  ``description`` (a list of strings, or a string) are read (the downloader in ``images.py`` reads
  ``imageURLHighRes`` / ``imageURL``);
* ``images/<asin>.jpg`` where downloaded (not shipped with the dumps).

Some dumps (the 2014 release, and parts of 2018 mirrors) hold Python-literal lines (single quotes,
``True``/``None``) instead of strict JSON: every line is tried with ``json.loads`` and then with
``ast.literal_eval``. Reviews are first read by ``pyarrow.json`` (multithreaded, three fields); any
file it rejects is read line by line in Python, which gives the same result and the line numbers.

``category`` picks ``<category>.json[.gz]``, else ``<category>_5.json[.gz]`` (pass ``X_5`` to choose
the 5-core file when both exist); the metadata is ``meta_<category without _5>.json[.gz]``. With no
category the directory must hold exactly one reviews file.

Mapping to the standard schema
------------------------------
item_id is the asin; items are coded 1..n in metadata file order; users by first appearance.
Text is the title and then the description, with HTML tags stripped and entities unescaped
(``&amp;`` → ``&``), each part closed by a full stop, whitespace collapsed.

What is fatal and what is counted
---------------------------------
Fatal ``DataError`` (file, 1-based line, field): no reviews file for the category (or, without a
category, zero or several: the message lists them), a missing or zero-byte metadata/reviews file,
an unreadable gzip stream, a metadata file with no readable item, no reviews left ("no
interactions"), an ``unixReviewTime`` that is neither empty nor a number, invalid UTF-8 inside a
``reviewerID`` or ``asin``, a ``reviewerID``, ``asin`` or ``unixReviewTime`` that no line has at all
(the message lists the fields the lines do have, and names the 2023 release when its ``user_id`` /
``parent_asin`` are there; a field absent from only some lines is counted as empty).

Counted drops (``rows_read == interactions + sum(dropped)``, blank lines are not rows):
``malformed_line`` (neither JSON nor a Python literal dict), ``empty_user_id``, ``empty_item_id``,
``empty_timestamp``, ``outside_date_range`` (through ``load_dataset``), ``item_not_in_items``,
``duplicate_row``. Noted in ``report.notes``: malformed metadata lines, metadata rows without an
asin or repeating one (first kept), lines whose text had invalid UTF-8 (repaired with U+FFFD),
a missing ``images/`` folder.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from xsmoe_ray.data.generic import (
    BLOCK_SIZE,
    MAX_EXAMPLES,
    as_ids,
    assemble,
    date_window,
    dictionary_codes,
    existing_files,
    item_codes,
    items_table,
    require_file,
    unique_item_rows,
)
from xsmoe_ray.data.schema import DataError, Dataset, LoadReport

REVIEW_SCHEMA = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64())])
RELEASE_2023_FIELDS = ("user_id", "parent_asin")  # the 2023 release's names for reviewerID and the item
MAX_FIELDS_SHOWN = 30
_REVIEWS_RE = re.compile(r"^(?!meta_)(?!\.)(.+?)\.json(\.gz)?$")
_META_RE = re.compile(r"^meta_(.+?)\.json(\.gz)?$")
_TAG_RE = re.compile(r"<[^>]*>")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_READ_ERRORS = (OSError, EOFError, zlib.error)  # a truncated or corrupt gzip stream


def load_amazon(root, category: str = "", *, dedup: bool = True) -> Dataset:
    """Read an Amazon reviews 2018 category (module docstring) into the standard schema."""
    return read_amazon(root, category, dedup=dedup)


def read_amazon(root, category: str = "", *, date_from: str = "", date_to: str = "", dedup: bool = True,
                fast: bool = True) -> Dataset:
    """:func:`load_amazon` with the ``load_dataset`` date window; ``fast=False`` forces the per-line path."""
    root = Path(root)
    window = date_window(date_from, date_to)
    reviews, meta = find_files(root, category)
    report = LoadReport(source=f"amazon ({reviews})", files=[str(reviews), str(meta)])
    catalogue = read_meta(root, meta, report)
    users, items, ts, ts_empty = read_reviews(reviews, report, fast=fast)
    row_items = as_ids(items)
    return assemble(f"amazon-{file_stem(reviews)}", reviews, report, dictionary_codes(users),
                    item_codes(row_items, catalogue.column("item_id").combine_chunks()),
                    pc.equal(row_items, "").to_numpy(), ts, ts_empty, catalogue, window, dedup, row_items=row_items)


# ---------------------------------------------------------------------------- which files


def file_stem(path: Path) -> str:
    """``Books_5.json.gz`` → ``Books_5``."""
    name = path.name
    return name[: -len(".json.gz")] if name.endswith(".json.gz") else name[: -len(".json")]


def review_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and _REVIEWS_RE.match(p.name))


def meta_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and _META_RE.match(p.name))


def _first_existing(root: Path, names: list[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError(str(root), "dataset directory not found")


def find_files(root: Path, category: str = "") -> tuple[Path, Path]:
    """(reviews file, metadata file) for ``category`` (module docstring)."""
    _require_dir(root)
    if category:
        names = [f"{category}.json.gz", f"{category}.json", f"{category}_5.json.gz", f"{category}_5.json"]
        reviews = _first_existing(root, names)
        if reviews is None:
            raise DataError(str(root / names[0]), f"no reviews file for category {category!r} (tried {names}); "
                            f"reviews files here: {[p.name for p in review_files(root)]}")
    else:
        found = review_files(root)
        if len(found) != 1:
            raise DataError(str(root), f"expected exactly one reviews file <Category>[_5].json[.gz] when no "
                            f"category is given, found {[p.name for p in found]}; pass the category")
        reviews = found[0]
    return reviews, _meta_for(root, file_stem(reviews))


def _meta_for(root: Path, stem: str) -> Path:
    base = stem[:-2] if stem.endswith("_5") else stem
    names = [f"meta_{base}.json.gz", f"meta_{base}.json"]
    meta = _first_existing(root, names)
    if meta is None:
        raise DataError(str(root / names[0]), f"file not found (nor {names[1]}); item metadata is required")
    return meta


def find_meta(root: Path, category: str = "") -> Path:
    """The metadata file of ``category``, or the only ``meta_*.json[.gz]`` when none is given."""
    _require_dir(root)
    if category:
        return _meta_for(root, category)
    found = meta_files(root)
    if len(found) != 1:
        raise DataError(str(root), f"expected exactly one meta_<Category>.json[.gz] when no category is given, "
                        f"found {[p.name for p in found]}; pass the category")
    return found[0]


# ---------------------------------------------------------------------------- lines


def parse_record(raw: bytes) -> tuple[dict | None, bool]:
    """(the line's dict or None, whether it had invalid UTF-8). JSON first, then a Python literal."""
    try:
        text, bad_utf8 = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, bad_utf8 = raw.decode("utf-8", errors="replace"), True  # ids are checked by the caller
    try:
        record = json.loads(text)
    except ValueError:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            record = None
    return (record if isinstance(record, dict) else None), bad_utf8


def iter_records(path: Path) -> Iterator[tuple[int, dict | None, bool]]:
    """(1-based line number, dict or None when malformed, invalid UTF-8 seen) per non-blank line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    yield (number, *parse_record(raw))
    except _READ_ERRORS as e:
        raise DataError(str(path), f"cannot read the file: {e}") from None


def text_id(value) -> str:
    """An id field as a string ("" when absent); numbers are written as in the source."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _check_id(value: str, bad_utf8: bool, path: Path, number: int, field: str) -> None:
    if bad_utf8 and "\ufffd" in value:
        raise DataError(str(path), f"invalid UTF-8 in {value!r} (re-encode the file as UTF-8)", row=number, field=field)


def clean_html(value) -> str:
    """Text with HTML tags stripped and entities unescaped; lists are joined."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(filter(None, (clean_html(v) for v in value)))
    text = value if isinstance(value, str) else str(value)
    if "<" in text:  # the checks skip two regex passes for the many plain strings
        text = _TAG_RE.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
        if "<" in text:  # escaped markup (&lt;br&gt;) is a tag once unescaped
            text = _TAG_RE.sub(" ", text)
    return " ".join(text.split())


def join_sentences(parts: list[str]) -> str:
    """Non-empty parts, each closed by a full stop unless it ends in punctuation, space-joined."""
    return " ".join(p if p[-1] in ".!?" else p + "." for p in parts if p)


def item_text(title, description) -> str:
    return join_sentences([clean_html(title), clean_html(description)])


def image_name(asin: str) -> str | None:
    """``<asin>.jpg``, or None when the asin could not be a plain file name."""
    return f"{asin}.jpg" if _SAFE_NAME_RE.match(asin) and ".." not in asin else None


# ---------------------------------------------------------------------------- metadata


def read_meta(root: Path, path: Path, report: LoadReport) -> pa.Table:
    """Items table in metadata file order (first line per asin kept)."""
    require_file(path)
    ids: list[str] = []
    texts: list[str] = []
    malformed: list[int] = []
    repaired = 0
    for number, record, bad_utf8 in iter_records(path):
        if record is None:
            malformed.append(number)
            continue
        asin = text_id(record.get("asin"))
        _check_id(asin, bad_utf8, path, number, "asin")
        ids.append(asin)
        texts.append(item_text(record.get("title"), record.get("description")))
        repaired += bad_utf8
    if malformed:
        report.notes.append(f"{path}: {len(malformed)} malformed line(s) skipped, at lines {malformed[:MAX_EXAMPLES]}")
    if repaired:
        report.notes.append(f"{path}: {repaired} line(s) had invalid UTF-8 in their text, repaired with U+FFFD")
    if not ids:
        raise DataError(str(path), "no items (no readable metadata line)")
    keep = unique_item_rows(pa.array(ids, pa.string()), path, report)
    asins = [a for a, k in zip(ids, keep) if k]
    text = pa.array([t for t, k in zip(texts, keep) if k], pa.string())
    return items_table(pa.array(asins, pa.string()), text, _images(root, asins, report))


def _images(root: Path, asins: list[str], report: LoadReport) -> pa.Array:
    folder = (root / "images").resolve()
    if not folder.is_dir():
        report.notes.append(f"{folder}: no images folder; fetch images with "
                            f"python -m xsmoe_ray.data.images --data-dir {root}")
        return pa.nulls(len(asins), pa.string())
    names = [image_name(a) for a in asins]
    paths = [f"{folder}/{n}" if n else None for n in names]
    found = existing_files(paths)
    return pa.array([p if ok else None for p, ok in zip(paths, found)], pa.string())


# ---------------------------------------------------------------------------- reviews


def read_reviews(path: Path, report: LoadReport, *, fast: bool = True
                 ) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray, np.ndarray]:
    """(reviewerID, asin, ts seconds, ts empty) per review in file order; sets ``rows_read``."""
    require_file(path)
    table = _read_reviews_arrow(path) if fast else None
    if table is not None:
        report.rows_read = table.num_rows
        ts = table.column("unixReviewTime")
        return (table.column("reviewerID"), table.column("asin"), ts.fill_null(0).to_numpy(),
                ts.is_null().to_numpy())
    return _read_reviews_lines(path, report)


def _read_reviews_arrow(path: Path) -> pa.Table | None:
    """The multithreaded fast path; None when the file needs the forgiving per-line reader."""
    try:
        table = pajson.read_json(
            path,
            read_options=pajson.ReadOptions(use_threads=True, block_size=BLOCK_SIZE),
            parse_options=pajson.ParseOptions(explicit_schema=REVIEW_SCHEMA, unexpected_field_behavior="ignore"),
        )
        table.validate(full=True)  # the JSON parser passes some invalid UTF-8 through into strings
    except (pa.ArrowException, ValueError, *_READ_ERRORS):
        return None
    if table.num_rows and any(table.column(f).null_count == table.num_rows for f in REVIEW_SCHEMA.names):
        return None  # absent or null in every line: only the per-line reader can tell which (and say so)
    return table


def _read_reviews_lines(path: Path, report: LoadReport
                        ) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray, np.ndarray]:
    users: list[str] = []
    items: list[str] = []
    ts: list[int] = []
    ts_empty: list[bool] = []
    malformed: list[int] = []
    fields: dict = {}  # every key seen, in first-seen order (a dict as an ordered set)
    for number, record, bad_utf8 in iter_records(path):
        if record is None:
            malformed.append(number)
            continue
        if not fields.keys() >= record.keys():
            fields.update(dict.fromkeys(record))
        user, item = text_id(record.get("reviewerID")), text_id(record.get("asin"))
        _check_id(user, bad_utf8, path, number, "reviewerID")
        _check_id(item, bad_utf8, path, number, "asin")
        seconds = _seconds(record.get("unixReviewTime"), path, number)
        users.append(user)
        items.append(item)
        ts.append(0 if seconds is None else seconds)
        ts_empty.append(seconds is None)
    _require_fields(path, list(fields))
    report.rows_read = len(users) + len(malformed)
    if malformed:
        report.drop("malformed_line", len(malformed))
        report.notes.append(f"{path}: {len(malformed)} line(s) are neither JSON nor a Python literal, "
                            f"at lines {malformed[:MAX_EXAMPLES]}")
    return (pa.chunked_array([pa.array(users, pa.string())]), pa.chunked_array([pa.array(items, pa.string())]),
            np.array(ts, dtype=np.int64), np.array(ts_empty, dtype=bool))


def _require_fields(path: Path, fields: list) -> None:
    """A required field that no line has means another layout, not empty values: dropping every row
    as ``empty_user_id`` would hide that."""
    missing = [f for f in REVIEW_SCHEMA.names if f not in fields]
    if not fields or not missing:
        return
    shown = fields[:MAX_FIELDS_SHOWN] + (["..."] if len(fields) > MAX_FIELDS_SHOWN else [])
    message = f"missing field: no line has it (the lines have {shown})"
    if len(missing) > 1:
        message += f"; {missing[1:]} are missing too"
    if any(f in fields for f in RELEASE_2023_FIELDS):
        message += ("; these look like the Amazon reviews 2023 release's fields (user_id, parent_asin, timestamp in "
                    "ms): this reader reads the 2018 release (reviewerID, asin, unixReviewTime in seconds)")
    raise DataError(str(path), message, field=missing[0])


def _seconds(value, path: Path, number: int) -> int | None:
    """Epoch seconds of ``unixReviewTime`` (None when empty); anything else non-numeric is fatal."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        value = str(value)  # True is an int in Python, not a time
    elif isinstance(value, int):
        return value
    elif isinstance(value, float) and math.isfinite(value):
        return math.floor(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise DataError(str(path), f"cannot parse {value!r} as int seconds", row=number, field="unixReviewTime")
