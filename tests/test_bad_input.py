"""Bad input: every case is a DataError naming file, line and field, or a counted drop (never silent)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures import (
    AMAZON_REVIEWS,
    GENERIC_INTERACTIONS,
    GENERIC_ITEMS,
    HM_TRANSACTIONS,
    amazon_lines,
    hm_transactions_text,
    write_amazon,
    write_bytes,
    write_generic,
    write_hm,
)
from xsmoe_ray.data import DataError, load_amazon, load_dataset, load_generic, load_hm
from xsmoe_ray.data.amazon import read_amazon

WRITERS = {
    "hm": write_hm,
    "amazon": write_amazon,
    "generic": write_generic,
    "generic-parquet": lambda root: write_generic(root, fmt="parquet"),
}


def load(fmt: str, root: Path, **kw):
    return load_dataset(fmt.split("-")[0], root, category="All_Beauty" if fmt == "amazon" else "", **kw)


def replace_line(path: Path, number: int, line: bytes) -> None:
    """Put ``line`` at 1-based line ``number`` (gzip-aware)."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    lines = data.split(b"\n")
    lines[number - 1] = line
    write_bytes(path, b"\n".join(lines))


def insert_line(path: Path, number: int, line: bytes) -> None:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    lines = data.split(b"\n")
    lines.insert(number - 1, line)
    write_bytes(path, b"\n".join(lines))


def without_column(path: Path, column: str) -> None:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([column]), path)
        return
    lines = path.read_text().splitlines()
    k = lines[0].split(",").index(column)
    path.write_text("\n".join(",".join(c for j, c in enumerate(line.split(",")) if j != k) for line in lines) + "\n")


# ---------------------------------------------------------------------------- missing things


@pytest.mark.parametrize("fmt, name", [
    ("hm", "transactions_train.csv"), ("hm", "articles.csv"), ("amazon", "All_Beauty.json.gz"),
    ("amazon", "meta_All_Beauty.json.gz"), ("generic", "interactions.csv"), ("generic", "items.csv"),
    ("generic-parquet", "items.parquet"),
])
def test_missing_file(tmp_path, fmt, name):
    WRITERS[fmt](tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(DataError) as e:
        load(fmt, tmp_path)
    assert str(tmp_path) in str(e.value) and name in str(e.value)  # generic names both suffixes
    assert "not found" in str(e.value) or "no reviews file" in str(e.value)


@pytest.mark.parametrize("fmt, name, column", [
    ("hm", "transactions_train.csv", "t_dat"), ("hm", "transactions_train.csv", "customer_id"),
    ("hm", "articles.csv", "detail_desc"), ("generic", "interactions.csv", "timestamp"),
    ("generic", "items.csv", "item_id"), ("generic-parquet", "interactions.parquet", "user_id"),
])
def test_missing_column(tmp_path, fmt, name, column):
    WRITERS[fmt](tmp_path)
    without_column(tmp_path / name, column)
    where = f", line 1, field '{column}'" if name.endswith(".csv") else f", field '{column}'"
    with pytest.raises(DataError, match=f"{name}{where}: missing column; the file has"):
        load(fmt, tmp_path)


def test_missing_root_and_amazon_ambiguity(tmp_path):
    with pytest.raises(DataError, match="dataset root directory not found"):
        load_dataset("generic", tmp_path / "absent")
    write_amazon(tmp_path)
    write_amazon(tmp_path, "Books", gz=False)
    with pytest.raises(DataError, match=r"exactly one reviews file.*\['All_Beauty.json.gz', 'Books.json'\]"):
        load_amazon(tmp_path)
    with pytest.raises(DataError, match=r"no reviews file for category 'Toys'.*reviews files here"):
        load_amazon(tmp_path, "Toys")


# ---------------------------------------------------------------------------- unparseable values


def test_hm_bad_date_names_file_line_field(tmp_path):
    write_hm(tmp_path)
    path = tmp_path / "transactions_train.csv"
    lines = path.read_text().splitlines()
    replace_line(path, 7, lines[6].replace("2018-09-22", "2020-13-45").encode())
    with pytest.raises(DataError) as e:
        load_hm(tmp_path)
    assert str(e.value) == f"{path}, line 7, field 't_dat': cannot parse '2020-13-45' as YYYY-MM-DD"
    assert (e.value.file, e.value.row, e.value.field) == (str(path), 7, "t_dat")


def test_hm_line_number_counts_skipped_malformed_lines(tmp_path):
    text = hm_transactions_text([*HM_TRANSACTIONS[:2], ("20/09/2018", 1, 108775015)])
    path = write_hm(tmp_path) / "transactions_train.csv"
    path.write_text(text)
    insert_line(path, 3, b"2018-09-20,only-two-fields")  # skipped and counted, still a line
    with pytest.raises(DataError, match=r"line 5, field 't_dat': cannot parse '20/09/2018' as YYYY-MM-DD"):
        load_hm(tmp_path)


def test_hm_bad_article_id(tmp_path):
    path = write_hm(tmp_path) / "transactions_train.csv"
    replace_line(path, 3, path.read_text().splitlines()[2].rsplit(",", 3)[0].encode() + b",0A10065001,0.05,2")
    with pytest.raises(DataError, match=r"line 3, field 'article_id': cannot parse '0A10065001' as an integer"):
        load_hm(tmp_path)


@pytest.mark.parametrize("fmt", ["generic", "generic-parquet"])
def test_generic_bad_timestamp(tmp_path, fmt):
    interactions = [*GENERIC_INTERACTIONS[:2], {"user_id": "u1", "item_id": "sku-1", "timestamp": "yesterday"}]
    interactions = [{**r, "timestamp": str(r["timestamp"])} for r in interactions]  # one string column
    write_generic(tmp_path, interactions, fmt=fmt.replace("generic-", "") if "-" in fmt else "csv")
    line = 4 if fmt == "generic" else 3  # CSV: header + 3rd row; parquet: 1-based row
    with pytest.raises(DataError, match=rf"line {line}, field 'timestamp': cannot parse 'yesterday' as int seconds"):
        load(fmt, tmp_path)


@pytest.mark.parametrize("fmt, value", [("generic", "1e30"), ("generic", "-1e30"), ("generic-parquet-float", "1e30"),
                                        ("generic-parquet-float", "inf")])
def test_generic_timestamp_outside_int64_is_an_error_not_a_wrap(tmp_path, fmt, value):
    """A float beyond int64 seconds once became -2^63 and sorted first, silently."""
    rows = [*GENERIC_INTERACTIONS[:2], {"user_id": "u1", "item_id": "sku-1", "timestamp": value}]
    if fmt == "generic":
        write_generic(tmp_path, [{**r, "timestamp": str(r["timestamp"])} for r in rows], fmt="csv")
        line = 4
    else:
        write_generic(tmp_path, fmt="parquet")
        pq.write_table(pa.table({"user_id": [r["user_id"] for r in rows], "item_id": [r["item_id"] for r in rows],
                                 "timestamp": pa.array([float(r["timestamp"]) for r in rows], pa.float64())}),
                       tmp_path / "interactions.parquet")
        line = 3
    with pytest.raises(DataError, match=rf"line {line}, field 'timestamp': timestamp .* outside the int64 seconds range"):
        load("generic" if fmt == "generic" else "generic-parquet", tmp_path)


def test_generic_unsupported_timestamp_type(tmp_path):
    write_generic(tmp_path, fmt="parquet")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["sku-1"], "timestamp": [True]}),
                   tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match="field 'timestamp': unsupported timestamp type bool"):
        load_generic(tmp_path)


def test_amazon_bad_review_time(tmp_path):
    reviews = [*AMAZON_REVIEWS[:2], {**AMAZON_REVIEWS[2], "unixReviewTime": "soon"}]
    path = write_amazon(tmp_path, reviews=reviews) / "All_Beauty.json.gz"
    with pytest.raises(DataError, match=r"line 3, field 'unixReviewTime': cannot parse 'soon' as int seconds"):
        load_amazon(tmp_path)
    assert str(path) in str(pytest.raises(DataError, load_amazon, tmp_path).value)


def as_2023_release(review: dict) -> dict:
    """The field names of the Amazon reviews 2023 release (timestamp in milliseconds)."""
    return {"rating": 5.0, "title": "ok", "text": review.get("reviewText", ""), "images": [],
            "asin": review["asin"], "parent_asin": review["asin"], "user_id": review["reviewerID"],
            "timestamp": review["unixReviewTime"] * 1000, "helpful_vote": 0, "verified_purchase": True}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "per-line"])
def test_amazon_2023_release_fields_are_named_not_dropped(tmp_path, fast):
    """Audit: these ended in "no interactions (all rows were dropped: {'empty_user_id': ...})"."""
    path = write_amazon(tmp_path, reviews=[as_2023_release(r) for r in AMAZON_REVIEWS]) / "All_Beauty.json.gz"
    with pytest.raises(DataError) as e:
        read_amazon(tmp_path, fast=fast)
    assert str(e.value).startswith(
        f"{path}, field 'reviewerID': missing field: no line has it (the lines have ['rating', 'title', 'text', "
        "'images', 'asin', 'parent_asin', 'user_id', 'timestamp', 'helpful_vote', 'verified_purchase']); "
        "['unixReviewTime'] are missing too; these look like the Amazon reviews 2023 release's fields")
    assert "this reader reads the 2018 release (reviewerID, asin, unixReviewTime" in str(e.value)
    assert (e.value.row, e.value.field) == (None, "reviewerID")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "per-line"])
@pytest.mark.parametrize("literal", [False, True], ids=["json", "python-literal"])
def test_amazon_field_absent_from_every_line_is_fatal(tmp_path, fast, literal):
    reviews = [{k: v for k, v in r.items() if k != "unixReviewTime"} for r in AMAZON_REVIEWS]
    path = write_amazon(tmp_path, reviews=reviews, literal=literal) / "All_Beauty.json.gz"
    with pytest.raises(DataError, match=r"field 'unixReviewTime': missing field: no line has it \(the lines have "
                       r"\['overall', 'verified', 'reviewTime', 'reviewerID', 'asin', 'reviewerName', "
                       r"'reviewText', 'summary', 'style', 'vote'\]\)$") as e:  # every line's fields, first seen first
        read_amazon(tmp_path, fast=fast)
    assert e.value.file == str(path)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "per-line"])
def test_amazon_field_absent_from_some_lines_or_null_in_all_stays_a_counted_drop(tmp_path, fast):
    reviews = [*AMAZON_REVIEWS, {k: v for k, v in AMAZON_REVIEWS[0].items() if k != "unixReviewTime"}]
    ds = read_amazon(write_amazon(tmp_path / "some", reviews=reviews), fast=fast)
    assert ds.report.dropped == {"empty_timestamp": 1} and ds.report.interactions == 5
    write_amazon(tmp_path / "null", reviews=[{**r, "reviewerID": None} for r in AMAZON_REVIEWS])
    with pytest.raises(DataError, match=r"no interactions \(all 5 rows were dropped: \{'empty_user_id': 5\}\)"):
        read_amazon(tmp_path / "null", fast=fast)  # the field is there, its values are empty


@pytest.mark.parametrize("key, value", [("date_from", "2018-02-30"), ("date_to", "20180901")])
def test_bad_date_window(tmp_path, key, value):
    write_hm(tmp_path)
    with pytest.raises(DataError, match=rf"data\.{key}: cannot parse '{value}' as YYYY-MM-DD"):
        load_hm(tmp_path, **{key: value})


# ---------------------------------------------------------------------------- counted drops

UNKNOWN_ITEM = {
    "hm": lambda root: write_hm(root, [*HM_TRANSACTIONS, ("2018-09-23", 5, 123456789)]),
    "amazon": lambda root: write_amazon(root, reviews=[*AMAZON_REVIEWS, {**AMAZON_REVIEWS[0], "asin": "B0NOTINMETA"}]),
    "generic": lambda root: write_generic(root, [*GENERIC_INTERACTIONS,
                                                 {**GENERIC_INTERACTIONS[0], "item_id": "sku-9"}]),
}
DUPLICATE_ROW = {
    "hm": lambda root: write_hm(root, [*HM_TRANSACTIONS, HM_TRANSACTIONS[1]]),
    "amazon": lambda root: write_amazon(root, reviews=[*AMAZON_REVIEWS, {**AMAZON_REVIEWS[1], "summary": "again"}]),
    "generic": lambda root: write_generic(root, [*GENERIC_INTERACTIONS, GENERIC_INTERACTIONS[4]]),
}
BASE_ROWS = {"hm": 8, "amazon": 5, "generic": 6}


@pytest.mark.parametrize("fmt", ["hm", "amazon", "generic"])
def test_item_absent_from_items_file_is_counted(tmp_path, fmt):
    ds = load(fmt, UNKNOWN_ITEM[fmt](tmp_path))
    assert ds.report.dropped == {"item_not_in_items": 1}
    assert (ds.report.rows_read, ds.report.interactions) == (BASE_ROWS[fmt] + 1, BASE_ROWS[fmt])


@pytest.mark.parametrize("fmt", ["hm", "amazon", "generic"])
def test_duplicate_rows_are_counted(tmp_path, fmt):
    root = DUPLICATE_ROW[fmt](tmp_path)
    ds = load(fmt, root)
    assert ds.report.dropped == {"duplicate_row": 1} and ds.report.interactions == BASE_ROWS[fmt]
    kept = load(fmt, root, dedup=False)
    assert kept.report.dropped == {} and kept.report.interactions == BASE_ROWS[fmt] + 1


def test_empty_ids_and_times_are_counted(tmp_path):
    interactions = [*GENERIC_INTERACTIONS, {"user_id": "", "item_id": "sku-1", "timestamp": 1},
                    {"user_id": "u1", "item_id": "", "timestamp": 1},
                    {"user_id": "u1", "item_id": "sku-1", "timestamp": ""}]
    ds = load_generic(write_generic(tmp_path, interactions))
    assert ds.report.dropped == {"empty_user_id": 1, "empty_item_id": 1, "empty_timestamp": 1}
    assert ds.report.interactions == 6


def test_everything_dropped_is_an_error(tmp_path):
    write_hm(tmp_path)
    with pytest.raises(DataError, match=r"no interactions \(all 8 rows were dropped: \{'outside_date_range': 8\}\)"):
        load_hm(tmp_path, date_from="2019-01-01")


def test_unknown_item_drop_quotes_the_ids_and_the_items_files_spelling(tmp_path):
    """Audit: item_not_in_items showed no ids, so " sku-1" against "sku-1" went unexplained."""
    padded = [{**r, "item_id": " " + r["item_id"]} for r in GENERIC_INTERACTIONS[:2]]
    ds = load_generic(write_generic(tmp_path, [*GENERIC_INTERACTIONS, *padded]))
    assert ds.report.dropped == {"item_not_in_items": 2} and ds.report.interactions == 6
    note = next(n for n in ds.report.notes if "item_not_in_items" in n)
    assert "2 row(s) with 2 item id(s)" in note and "e.g. [' sku-2', ' sku-1']" in note
    assert "the items file has ['sku-2', 'sku-1'] (the same but for whitespace" in note


def test_unknown_item_drop_without_a_near_id_shows_the_items_files_ids(tmp_path):
    ds = load_generic(write_generic(tmp_path, [*GENERIC_INTERACTIONS, {**GENERIC_INTERACTIONS[0], "item_id": "X9"}]))
    assert any("e.g. ['X9']" in n and "ids such as ['sku-1', 'sku-2', 'sku-3']" in n for n in ds.report.notes)


def test_all_rows_dropped_as_unknown_items_names_the_ids(tmp_path):
    """Audit: parquet int ids 0..3 against items "000".."003" failed with counts only."""
    interactions = [{**r, "item_id": int(r["item_id"][-1]) - 1} for r in GENERIC_INTERACTIONS]
    items = [{"item_id": f"{k:03d}", "text": f"item {k}"} for k in range(4)]
    write_generic(tmp_path, interactions, items, fmt="parquet")
    message = (r"no interactions \(all 6 rows were dropped: \{'item_not_in_items': 6\}\); "
               r"item_not_in_items: .* e\.g\. \['1', '0', '2'\];.* has \['001', '000', '002'\]")
    with pytest.raises(DataError, match=message):
        load_generic(tmp_path)


# ---------------------------------------------------------------------------- kept, but noted

MS = 1600000000500  # milliseconds read as seconds: year 52,671


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_timestamps_in_another_unit_are_noted_not_dropped(tmp_path, fmt):
    write_generic(tmp_path, [*GENERIC_INTERACTIONS, {**GENERIC_INTERACTIONS[0], "timestamp": MS}], fmt=fmt)
    if fmt == "csv":  # the line number must count the skipped malformed line
        insert_line(tmp_path / "interactions.csv", 3, b"u1,sku-1")
    ds = load_generic(tmp_path)
    assert ds.report.interactions == 7 and ds.column("ts").max() == MS  # kept as read
    where = "line 9" if fmt == "csv" else "row 7"
    assert any("1 timestamp(s) are over 100x the median 1600000300 (2020-09-13)" in n
               and f"{where}: {MS} (52671-12-25)" in n for n in ds.report.notes)
    assert (ds.report.first_day, ds.report.last_day) == ("2020-09-13", "52671-12-25")


def test_negative_timestamps_are_noted_not_dropped(tmp_path):
    before_1970 = {**GENERIC_INTERACTIONS[0], "timestamp": -86400}
    ds = load_generic(write_generic(tmp_path, [*GENERIC_INTERACTIONS, before_1970]))
    assert ds.report.interactions == 7 and ds.column("ts").min() == -86400
    assert any("1 timestamp(s) are negative" in n and "line 8: -86400 (1969-12-31)" in n for n in ds.report.notes)
    assert "time range (UTC)   1969-12-31 .. 2020-09-13" in ds.report.format()


def test_ordinary_timestamps_get_no_timestamp_note(tmp_path):
    """Counter-check: seconds around 2020, or small counters 1..N, are not another unit."""
    counters = [{**r, "timestamp": k + 1} for k, r in enumerate(GENERIC_INTERACTIONS)]
    for k, interactions in enumerate([GENERIC_INTERACTIONS, counters]):
        ds = load_generic(write_generic(tmp_path / str(k), interactions))
        assert not any("timestamp" in n for n in ds.report.notes)


def test_ids_with_surrounding_whitespace_are_noted_and_kept_apart(tmp_path):
    """Audit: " u7" and "u7" silently became two users (ids are compared as exact strings)."""
    interactions = [*GENERIC_INTERACTIONS, {**GENERIC_INTERACTIONS[0], "user_id": " u7"},
                    {**GENERIC_INTERACTIONS[1], "user_id": "u5 "}]
    items = [*GENERIC_ITEMS, {**GENERIC_ITEMS[2], "item_id": "sku-3 "}]
    ds = load_generic(write_generic(tmp_path, interactions, items))
    assert ds.user_ids.to_pylist() == ["u7", "u3", "u9", " u7", "u5 "] and ds.n_items == 5  # not stripped
    users = next(n for n in ds.report.notes if "user id(s)" in n)
    assert "2 user id(s) have leading or trailing whitespace, e.g. [' u7', 'u5 ']" in users
    assert "1 of them also occur without it, so e.g. ' u7' and 'u7' are two different users" in users
    assert any("1 item id(s) have leading or trailing whitespace, e.g. ['sku-3 ']" in n
               and "'sku-3 ' and 'sku-3' are two different items" in n for n in ds.report.notes)
    clean = load_generic(write_generic(tmp_path / "clean"))
    assert not any("whitespace" in n for n in clean.report.notes)


# ---------------------------------------------------------------------------- empty files

ZERO_BYTES = [("hm", "transactions_train.csv"), ("hm", "articles.csv"), ("generic", "interactions.csv"),
              ("generic", "items.csv"), ("generic-parquet", "items.parquet"), ("amazon-plain", "All_Beauty.json"),
              ("amazon-plain", "meta_All_Beauty.json")]


@pytest.mark.parametrize("fmt, name", ZERO_BYTES)
def test_zero_byte_file(tmp_path, fmt, name):
    if fmt == "amazon-plain":
        write_amazon(tmp_path, gz=False)
    else:
        WRITERS[fmt](tmp_path)
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes"):
        load(fmt.replace("-plain", ""), tmp_path)


@pytest.mark.parametrize("fmt, name, message", [
    ("hm", "transactions_train.csv", r"no interactions \(the file has no data rows\)"),
    ("hm", "articles.csv", "no articles"),
    ("generic", "interactions.csv", r"no interactions \(the file has no data rows\)"),
    ("generic", "items.csv", "no items"),
    ("amazon", "All_Beauty.json.gz", r"no interactions \(the file has no data rows\)"),
    ("amazon", "meta_All_Beauty.json.gz", "no items"),
])
def test_header_only_or_no_lines(tmp_path, fmt, name, message):
    WRITERS[fmt](tmp_path)
    path = tmp_path / name
    header = b"\n" if fmt == "amazon" else path.read_bytes().split(b"\n")[0] + b"\n"  # JSON lines: a blank line
    write_bytes(path, header)
    with pytest.raises(DataError, match=message) as e:
        load(fmt, tmp_path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------------------- malformed lines


def test_malformed_json_lines_are_counted_with_line_numbers(tmp_path):
    path = write_amazon(tmp_path) / "All_Beauty.json.gz"
    insert_line(path, 2, b'{"reviewerID": "A9", "asin": ')  # truncated
    insert_line(path, 5, b"[1, 2, 3]")  # JSON, but not an object
    ds = load_amazon(tmp_path)
    assert ds.report.dropped == {"malformed_line": 2}
    assert (ds.report.rows_read, ds.report.interactions) == (7, 5)
    assert any("at lines [2, 5]" in n for n in ds.report.notes)


def test_malformed_meta_line_is_noted(tmp_path):
    path = write_amazon(tmp_path) / "meta_All_Beauty.json.gz"
    insert_line(path, 3, b"{'asin': 'B0BROKEN', 'title': ")
    ds = load_amazon(tmp_path)
    assert ds.n_items == 4 and any("1 malformed line(s) skipped, at lines [3]" in n for n in ds.report.notes)


def test_csv_row_with_wrong_field_count_is_counted(tmp_path):
    path = write_hm(tmp_path) / "transactions_train.csv"
    insert_line(path, 4, b"2018-09-20,abc,0108775015,0.1,2,extra")
    ds = load_hm(tmp_path)
    assert ds.report.dropped == {"malformed_row": 1} and ds.report.rows_read == 9
    assert any("2018-09-20,abc,0108775015,0.1,2,extra" in n for n in ds.report.notes)


def test_truncated_gzip_and_corrupt_parquet(tmp_path):
    path = write_amazon(tmp_path / "a") / "All_Beauty.json.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="cannot read the file"):
        load_amazon(tmp_path / "a")
    write_generic(tmp_path / "g", fmt="parquet")
    (tmp_path / "g" / "interactions.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DataError, match="interactions.parquet: cannot read parquet"):
        load_generic(tmp_path / "g")


# ---------------------------------------------------------------------------- non-UTF-8 bytes


def test_non_utf8_id_in_csv_is_fatal_with_line(tmp_path):
    path = write_hm(tmp_path) / "transactions_train.csv"
    replace_line(path, 4, b"2018-09-20,caf\xe9,0108775015,0.05,2")
    with pytest.raises(DataError, match=r"line 4, field 'customer_id': invalid UTF-8 byte 0xe9 in b'caf\\xe9'"):
        load_hm(tmp_path)


def test_non_utf8_id_in_generic_is_fatal(tmp_path):
    path = write_generic(tmp_path) / "interactions.csv"
    replace_line(path, 3, b"u\xff,sku-1,1600000000")
    with pytest.raises(DataError, match=r"interactions.csv, line 3, field 'user_id': invalid UTF-8 byte 0xff"):
        load_generic(tmp_path)


def test_non_utf8_in_header_is_fatal(tmp_path):
    path = write_generic(tmp_path) / "items.csv"
    replace_line(path, 1, b"item_id,t\xffxt,image")
    with pytest.raises(DataError, match=r"items.csv, line 1: header is not valid UTF-8"):
        load_generic(tmp_path)


@pytest.mark.parametrize("fmt, name, line, raw", [
    ("hm", "articles.csv", 3, None),
    ("generic", "items.csv", 2, b"sku-1,Red running sho\xe9,img/sku-1.jpg"),
])
def test_non_utf8_text_is_repaired_and_noted(tmp_path, fmt, name, line, raw):
    path = WRITERS[fmt](tmp_path) / name
    if raw is None:  # articles.csv: a Latin-1 byte inside detail_desc of the second article
        raw = path.read_bytes().split(b"\n")[line - 1].replace(b"narrow", b"n\xe4rrow")
    replace_line(path, line, raw)
    ds = load(fmt, tmp_path)
    assert ds.report.dropped == {}
    assert "\ufffd" in ds.items.column("text")[line - 2].as_py()
    assert any("1 value(s) of" in n and "repaired with U+FFFD" in n for n in ds.report.notes)


def test_non_utf8_in_amazon(tmp_path):
    path = write_amazon(tmp_path, gz=False) / "All_Beauty.json"
    lines = amazon_lines(AMAZON_REVIEWS).encode().split(b"\n")
    lines[3] = lines[3].replace(b'"fine"', b'"fin\xe9"')  # reviewText: not read, so harmless
    path.write_bytes(b"\n".join(lines))
    ds = load_amazon(tmp_path)
    assert ds.report.dropped == {} and ds.report.interactions == 5
    lines[1] = lines[1].replace(b"A3H7T87S984REU", b"A3H7T87S984R\xc9U")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"All_Beauty.json, line 2, field 'reviewerID': invalid UTF-8"):
        load_amazon(tmp_path)
    meta = tmp_path / "meta_All_Beauty.json"
    meta.write_bytes(meta.read_bytes().replace(b"Bath Salt", b"Bath S\xe4lt"))
    path.write_bytes(amazon_lines(AMAZON_REVIEWS).encode())
    ds = load_amazon(tmp_path)
    assert ds.items.column("text")[1].as_py().startswith("Bath S\ufffdlt")
    assert any("1 line(s) had invalid UTF-8 in their text" in n for n in ds.report.notes)


def test_generic_line_number_counts_skipped_malformed_lines(tmp_path):
    path = write_generic(tmp_path) / "interactions.csv"
    insert_line(path, 2, b"u1,sku-1")  # too few fields: skipped and counted
    replace_line(path, 6, b"u1,sku-1,13/09/2020")
    with pytest.raises(DataError, match=r"interactions.csv, line 6, field 'timestamp': cannot parse '13/09/2020'"):
        load_generic(tmp_path)


def test_unclosed_quote_is_a_counted_malformed_row(tmp_path):
    path = write_hm(tmp_path) / "transactions_train.csv"
    path.write_bytes(path.read_bytes() + b'2018-09-24,"' + b"a" * 500 + b",0108775015,0.1,2\n")
    ds = load_hm(tmp_path)  # a quote cannot span lines here, so it is one line with too few fields
    assert ds.report.dropped == {"malformed_row": 1}
    assert max(len(n) for n in ds.report.notes) < 400  # examples are shortened


def test_article_rows_without_id_or_repeated_are_noted(tmp_path):
    from tests.fixtures import HM_ARTICLES

    articles = [*HM_ARTICLES, {**HM_ARTICLES[0], "article_id": None}, {**HM_ARTICLES[1], "prod_name": "Copy"}]
    ds = load_hm(write_hm(tmp_path, articles=articles))
    assert ds.n_items == 5 and ds.items.column("text")[1].as_py().startswith("Strap top.")
    assert any("1 item row(s) without an id were ignored" in n for n in ds.report.notes)
    assert any("1 item row(s) repeat an earlier id" in n and "108775044" in n for n in ds.report.notes)


def test_threaded_csv_reads_carry_no_python_row_handler(tmp_path, monkeypatch):
    """A Python ``invalid_row_handler`` in a multithreaded pyarrow read is released on a pool thread
    after ``read_csv`` returns; when that fell into interpreter exit, ``prepare`` on a bad value
    aborted (exit -6 instead of 2, about 1 run in 10 on a loaded machine). Threaded reads now carry
    no handler; only a file with malformed lines is read again, serially, and they are still counted."""
    import pyarrow.csv as pacsv

    from xsmoe_ray.data import generic

    calls = []
    real = pacsv.read_csv

    def spy(path, read_options, parse_options, convert_options):
        calls.append((read_options.use_threads, parse_options.invalid_row_handler is not None))
        return real(path, read_options=read_options, parse_options=parse_options, convert_options=convert_options)

    monkeypatch.setattr(generic.pacsv, "read_csv", spy)
    types = {"user_id": pa.string(), "item_id": pa.string()}
    clean, broken = tmp_path / "clean.csv", tmp_path / "broken.csv"
    clean.write_text("user_id,item_id\nu1,a\nu2,b\n")
    broken.write_text("user_id,item_id\nu1,a\nu2,b,extra\nu3,c\n")
    table, malformed = generic.read_csv(clean, types)
    assert (table.num_rows, malformed, calls) == (2, [], [(True, False)])
    calls.clear()
    table, malformed = generic.read_csv(broken, types)
    assert table.column("user_id").to_pylist() == ["u1", "u3"] and malformed == ["u2,b,extra"]
    assert calls == [(True, False), (False, True)]
    calls.clear()  # a value that does not convert: no second full read before it is located
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,n\nu1,1\nu2,x\n")
    with pytest.raises(pa.ArrowInvalid, match="conversion error"):
        generic.read_skipping_malformed(bad, pacsv.ReadOptions(use_threads=True), pacsv.ParseOptions(),
                                        pacsv.ConvertOptions(column_types={"n": pa.int64()}))
    assert calls == [(True, False)]
