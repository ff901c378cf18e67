"""The three readers on small fixtures in their real layouts: codes, text, images, order, report."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from tests.fixtures import (
    AMAZON_META,
    AMAZON_REVIEWS,
    GENERIC_INTERACTIONS,
    GENERIC_ITEMS,
    HM_ARTICLES,
    HM_TRANSACTIONS,
    customer,
    hm_image_path,
    write_amazon,
    write_bytes,
    write_generic,
    write_hm,
    write_image,
)
from xsmoe_ray.data import DataError, load_amazon, load_dataset, load_generic, load_hm
from xsmoe_ray.data import images as img
from xsmoe_ray.data.amazon import read_amazon
from xsmoe_ray.data.generic import first_appearance
from xsmoe_ray.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA


def day(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp())


def rows(ds) -> list[tuple[int, int, int]]:
    t = ds.interactions
    return list(zip(t.column("user").to_pylist(), t.column("item").to_pylist(), t.column("ts").to_pylist()))


def assert_consistent(ds) -> None:
    """Schema, dense codes and the report's bookkeeping hold for every dataset."""
    r = ds.report
    assert ds.interactions.schema == INTERACTIONS_SCHEMA and ds.items.schema == ITEMS_SCHEMA
    assert r.rows_read == r.interactions + sum(r.dropped.values())
    assert ds.items.column("item").to_pylist() == list(range(1, ds.n_items + 1))
    users = ds.column("user")
    assert sorted(set(users.tolist())) == list(range(ds.n_users))
    ts = ds.column("ts")
    assert (ts[1:] >= ts[:-1]).all()


# ---------------------------------------------------------------------------- H&M


def test_hm_fixture_codes_text_images_and_report(tmp_path):
    ds = load_hm(write_hm(tmp_path))
    assert_consistent(ds)
    assert ds.items.column("item_id").to_pylist() == [f"{a['article_id']:010d}" for a in HM_ARTICLES]
    assert ds.user_ids.to_pylist() == [customer(0), customer(1), customer(2)]  # first appearance
    text = ds.items.column("text").to_pylist()
    assert text[0] == "Strap top. Vest top. Black. Jersey top with narrow shoulder straps."
    assert text[4] == "Rebecca blouse. Light Pink."  # "Unknown" type and empty description skipped
    image = ds.items.column("image").to_pylist()
    assert image[0] == str(hm_image_path(tmp_path, 108775015).resolve()) and Path(image[0]).is_file()
    assert image[4] is None  # article 176209023 has no picture
    # Source row 4 (2018-09-21, customer 2, article 0108775044) → user 2, item 2, that midnight.
    assert (2, 2, day("2018-09-21")) in rows(ds)
    assert rows(ds)[:3] == [(0, 1, day("2018-09-20")), (1, 3, day("2018-09-20")), (0, 4, day("2018-09-20"))]
    r = ds.report
    assert (r.rows_read, r.dropped, r.interactions, r.users, r.items) == (8, {}, 8, 3, 5)
    assert (r.items_without_text, r.items_without_image, r.has_text, r.has_image) == (0, 1, True, True)
    assert r.files == [str(tmp_path / "articles.csv"), str(tmp_path / "transactions_train.csv")]
    assert (r.first_day, r.last_day) == ("2018-09-20", "2018-09-23")


def test_hm_same_day_ties_keep_file_order_and_late_rows_are_sorted(tmp_path):
    late = ("2018-09-20", 2, 108775044)  # an earlier day written last
    ds = load_hm(write_hm(tmp_path, [*HM_TRANSACTIONS, late]))
    assert_consistent(ds)
    assert rows(ds)[:4] == [(0, 1, day("2018-09-20")), (1, 3, day("2018-09-20")), (0, 4, day("2018-09-20")),
                            (2, 2, day("2018-09-20"))]


def test_hm_date_window_counts_and_recodes_users(tmp_path):
    ds = load_hm(write_hm(tmp_path), date_from="2018-09-21", date_to="2018-09-23")
    assert_consistent(ds)
    assert ds.report.dropped == {"outside_date_range": 4}
    assert ds.user_ids.to_pylist() == [customer(2), customer(1), customer(0)]  # first among kept rows
    assert rows(ds) == [(0, 2, day("2018-09-21")), (1, 1, day("2018-09-21")), (2, 5, day("2018-09-22")),
                        (0, 3, day("2018-09-22"))]


def test_hm_report_counts_each_row_once(tmp_path):
    extra = [
        ("2018-09-23", 3, 999999999),  # item_not_in_items
        ("2018-09-20", 0, 108775015),  # duplicate of the first row
        ("2018-09-23", "", 108775015),  # empty_user_id
        ("2018-09-23", 4, None),  # empty_item_id
        ("", 4, 108775015),  # empty_timestamp
        ("", "", None),  # all three empty: counted once, under empty_user_id
    ]
    ds = load_hm(write_hm(tmp_path, [*HM_TRANSACTIONS, *extra]))
    assert_consistent(ds)
    assert ds.report.rows_read == 14
    assert ds.report.dropped == {"item_not_in_items": 1, "duplicate_row": 1, "empty_user_id": 2,
                                 "empty_item_id": 1, "empty_timestamp": 1}
    assert ds.report.interactions == 8 and ds.n_users == 3
    kept = load_hm(tmp_path, dedup=False)
    assert kept.report.interactions == 9 and "duplicate_row" not in kept.report.dropped


def test_synthetic_format_reads_hm_layout(tmp_path):
    write_hm(tmp_path)
    assert rows(load_dataset("synthetic", tmp_path)) == rows(load_hm(tmp_path))


# ---------------------------------------------------------------------------- Amazon


AMAZON_EXPECTED = [  # reviews sorted by time, ties in file order; users by first appearance
    (0, 1, 1472688000), (1, 3, 1472688000), (1, 2, 1472774400), (0, 4, 1472860800), (2, 1, 1472860800),
]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("literal", [False, True], ids=["json", "python-literal"])
def test_amazon_fixture(tmp_path, gz, literal):
    ds = load_amazon(write_amazon(tmp_path, gz=gz, literal=literal), "All_Beauty")
    assert_consistent(ds)
    assert ds.name == "amazon-All_Beauty"
    assert ds.items.column("item_id").to_pylist() == [m["asin"] for m in AMAZON_META]
    assert ds.user_ids.to_pylist() == ["A1V6B6TNIC10QE", "A3H7T87S984REU", "A2HOI48JK8838M"]
    assert rows(ds) == AMAZON_EXPECTED
    text = ds.items.column("text").to_pylist()
    assert text == [
        "Shea Butter & Argan Oil Lotion. Rich body lotion. Fast absorbing, 8 fl oz.",  # entity, tags
        "Bath Salt. Lavender salt for the bath.",  # description as a string
        "Nail File Set.",
        "Hair Brush. Boar bristles \u2013 9 rows.",
    ]
    image = ds.items.column("image").to_pylist()
    assert image[0] == str((tmp_path / "images" / "B0000530HU.jpg").resolve())
    assert image[2] is None and image[3] is None
    r = ds.report
    assert (r.rows_read, r.dropped, r.interactions, r.users, r.items, r.items_without_image) == (5, {}, 5, 3, 4, 2)


def test_amazon_fast_and_line_paths_agree(tmp_path):
    write_amazon(tmp_path, reviews=[*AMAZON_REVIEWS, {"reviewerID": "", "asin": "B0000530HU", "unixReviewTime": 1},
                                    {"reviewerID": "AX", "asin": "NOPE", "unixReviewTime": 2},
                                    {"reviewerID": "AY", "asin": "B0000530HU"}])
    fast, slow = read_amazon(tmp_path, fast=True), read_amazon(tmp_path, fast=False)
    assert rows(fast) == rows(slow) == AMAZON_EXPECTED
    assert fast.report.to_dict() == slow.report.to_dict()
    assert fast.report.dropped == {"empty_user_id": 1, "item_not_in_items": 1, "empty_timestamp": 1}
    assert any("item_not_in_items: 1 row(s) with 1 item id(s) that the items file does not have, e.g. ['NOPE']" in n
               for n in fast.report.notes)


def test_amazon_category_resolution(tmp_path):
    write_amazon(tmp_path, five_core=True, gz=False)  # All_Beauty_5.json + meta_All_Beauty.json
    assert rows(load_amazon(tmp_path)) == AMAZON_EXPECTED  # the only reviews file
    assert load_amazon(tmp_path, "All_Beauty").name == "amazon-All_Beauty_5"  # falls back to the 5-core
    ds = load_dataset("amazon", tmp_path, category="All_Beauty_5")
    assert ds.report.files == [str(tmp_path / "All_Beauty_5.json"), str(tmp_path / "meta_All_Beauty.json")]


def test_amazon_duplicate_meta_asin_keeps_first_and_notes_it(tmp_path):
    meta = [*AMAZON_META, {"asin": "B00006L9LC", "title": "Another title"}]
    ds = load_amazon(write_amazon(tmp_path, meta=meta))
    assert ds.n_items == 4 and ds.items.column("text")[1].as_py() == "Bath Salt. Lavender salt for the bath."
    assert any("1 item row(s) repeat an earlier id" in n for n in ds.report.notes)


# ---------------------------------------------------------------------------- generic


GENERIC_EXPECTED = [(1, 1, 1600000000), (2, 1, 1600000100), (0, 2, 1600000300), (0, 3, 1600000300),
                    (1, 4, 1600000600), (2, 2, 1600000900)]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generic_fixture(tmp_path, fmt):
    ds = load_generic(write_generic(tmp_path, fmt=fmt))
    assert_consistent(ds)
    assert ds.items.column("item_id").to_pylist() == [i["item_id"] for i in GENERIC_ITEMS]
    assert ds.user_ids.to_pylist() == ["u7", "u3", "u9"]
    assert rows(ds) == GENERIC_EXPECTED
    assert ds.items.column("text").to_pylist() == [i["text"] for i in GENERIC_ITEMS]
    image = ds.items.column("image").to_pylist()
    assert image[0] == str((tmp_path / "img" / "sku-1.jpg").resolve()) and image[2] is None
    r = ds.report
    assert (r.rows_read, r.dropped, r.interactions, r.items_without_text, r.items_without_image) == (6, {}, 6, 1, 1)
    assert r.files == [str(tmp_path / f"items.{fmt}"), str(tmp_path / f"interactions.{fmt}")]
    assert (r.first_day, r.last_day) == ("2020-09-13", "2020-09-13") and r.notes == []
    assert "time range (UTC)   2020-09-13 .. 2020-09-13" in r.format()


def test_generic_timestamp_shapes(tmp_path):
    stamps = ["1600000000", "1600000000.9", "2020-09-13T12:26:40Z", "2020-09-13 12:26:40",
              "2020-09-13T14:26:40+02:00", "2020-09-13", " 1600000001 "]
    interactions = [{"user_id": f"u{k}", "item_id": "sku-1", "timestamp": s} for k, s in enumerate(stamps)]
    ds = load_generic(write_generic(tmp_path, interactions))
    by_user = {ds.user_ids[u].as_py(): t for u, _, t in rows(ds)}
    assert by_user == {"u0": 1600000000, "u1": 1600000000, "u2": 1600000000, "u3": 1600000000,
                       "u4": 1600000000, "u5": day("2020-09-13"), "u6": 1600000001}


def test_generic_parquet_typed_columns(tmp_path):
    import pyarrow.parquet as pq

    write_generic(tmp_path, fmt="parquet")
    stamps = pa.array([dt.datetime(2020, 9, 13, 12, 26, 40, 500000), None], pa.timestamp("ms"))
    pq.write_table(pa.table({"user_id": pa.array([7, 8], pa.int64()), "item_id": ["sku-2", "sku-3"],
                             "timestamp": stamps}), tmp_path / "interactions.parquet")
    ds = load_generic(tmp_path)
    assert rows(ds) == [(0, 2, 1600000000)] and ds.user_ids.to_pylist() == ["7"]
    assert ds.report.dropped == {"empty_timestamp": 1}
    nanos = pa.array([1600000000_123456789, 1600000001_000000000], pa.timestamp("ns", "Europe/Paris"))
    dates = pa.array([dt.date(2020, 9, 13), dt.date(2020, 9, 14)], pa.date32())
    for stamps, expected in ((nanos, [1600000000, 1600000001]), (dates, [day("2020-09-13"), day("2020-09-14")])):
        pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["sku-1", "sku-1"], "timestamp": stamps}),
                       tmp_path / "interactions.parquet")
        assert [t for _, _, t in rows(load_generic(tmp_path))] == expected


def test_generic_text_only(tmp_path):
    items = [{**i, "image": ""} for i in GENERIC_ITEMS]
    ds = load_generic(write_generic(tmp_path, items=items))
    assert ds.report.has_image is False and ds.has_text is True
    assert ds.items.column("image").null_count == ds.n_items
    assert "(no visual modality)" in ds.report.format()
    no_column = [{"item_id": i["item_id"], "text": i["text"]} for i in GENERIC_ITEMS]
    ds = load_generic(write_generic(tmp_path / "b", items=no_column))
    assert ds.has_image is False and any("no 'image' column" in n for n in ds.report.notes)


def test_generic_listed_image_missing_is_null_and_noted(tmp_path):
    ds = load_generic(write_generic(tmp_path, missing_images=["img/sku-2.jpg"]))
    assert ds.items.column("image")[1].as_py() is None
    assert ds.report.items_without_image == 2
    assert any("1 listed image file(s) do not exist" in n and "img/sku-2.jpg" in n for n in ds.report.notes)


@pytest.mark.parametrize("escape", ["../secret.jpg", "img/../../secret.jpg", "ABSOLUTE"])
def test_generic_image_outside_the_root_is_not_read(tmp_path, escape):
    """Issue 11: ../../etc/passwd as an image path was read and hashed into the cache."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    root = tmp_path / "data"
    path = str(secret) if escape == "ABSOLUTE" else escape
    items = [{**GENERIC_ITEMS[0], "image": path}, *GENERIC_ITEMS[1:]]
    ds = load_generic(write_generic(root, items=items))
    assert ds.items.column("image")[0].as_py() is None  # never handed to the encoder
    assert ds.items.column("image")[1].as_py() == str((root / "img" / "sku-2.jpg").resolve())  # inside: kept
    assert any("1 listed image path(s) point outside the dataset root" in n and path in n for n in ds.report.notes)


def test_generic_prefers_parquet_and_says_so(tmp_path):
    write_generic(tmp_path, fmt="csv")
    write_generic(tmp_path, GENERIC_INTERACTIONS[:3], fmt="parquet")
    ds = load_generic(tmp_path)
    assert ds.report.interactions == 3
    assert any("read interactions.parquet" in n for n in ds.report.notes)


# ---------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch_and_window(tmp_path):
    later = {"user_id": "u3", "item_id": "sku-2", "timestamp": "2020-09-15T08:00:00Z"}  # ISO among ints
    write_generic(tmp_path / "g", [*GENERIC_INTERACTIONS, later])
    ds = load_dataset("generic", tmp_path / "g", date_to="2020-09-14")
    assert rows(ds) == GENERIC_EXPECTED and ds.report.dropped == {"outside_date_range": 1}
    ds = load_dataset("generic", tmp_path / "g", date_from="2020-09-15")
    assert rows(ds) == [(0, 2, day("2020-09-15T08:00:00"))] and ds.report.dropped == {"outside_date_range": 6}
    write_amazon(tmp_path / "a")
    ds = load_dataset("amazon", tmp_path / "a", date_from="2016-09-02")
    assert ds.report.dropped == {"outside_date_range": 2} and ds.report.interactions == 3


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="dataset root directory not found"):
        load_dataset("hm", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset("movielens", tmp_path)


def test_first_appearance_codes():
    codes, source = first_appearance(pa.array([5, 2, 5, 0, 2], pa.int32()).to_numpy(), 6)
    assert codes.tolist() == [0, 1, 0, 2, 1] and source.tolist() == [5, 2, 0]


# ---------------------------------------------------------------------------- image downloader


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test folder; ``flaky.jpg`` answers 503 once, then the file."""

    calls: dict[str, int] = {}

    def do_GET(self):
        n = self.calls[self.path] = self.calls.get(self.path, 0) + 1
        if self.path.endswith("flaky.jpg") and n == 1:
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def image_server(tmp_path, monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(img, "BACKOFF_S", 0.01)
    served = tmp_path / "served"
    write_image(served / "hi.jpg")
    write_image(served / "small.jpg", (0, 0, 255))
    write_image(served / "flaky.jpg", (0, 255, 0))
    _Handler.calls = {}
    handler = lambda *a, **k: _Handler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_images_resumable_with_report(tmp_path, image_server):
    meta = [
        {"asin": "B0000530HU", "imageURLHighRes": [f"{image_server}/hi.jpg"], "imageURL": [f"{image_server}/x.jpg"]},
        {"asin": "B00006L9LC", "imageURLHighRes": [], "imageURL": [f"{image_server}/small.jpg"]},
        {"asin": "B00008JOQI", "imageURL": [f"{image_server}/missing.jpg"]},
        {"asin": "B0000CCDW6", "imageURL": [f"{image_server}/flaky.jpg"]},
        {"asin": "B000NOURL1", "imageURLHighRes": [], "imageURL": []},
        {"asin": "B000LOCAL1", "imageURL": ["file:///etc/hostname"]},
    ]
    root = tmp_path / "data"
    write_amazon(root, meta=meta, with_image=())
    report = img.download_amazon_images(root, "All_Beauty", workers=3, retries=2, timeout=5)
    assert (report["ok"], report["skipped"], report["failed"], report["no_url"]) == (3, 0, 2, 1)
    assert report["failures"]["B00008JOQI"]["reason"].startswith("HTTP 404")
    assert report["failures"]["B000LOCAL1"]["reason"] == "not an http(s) URL"
    assert (root / "images" / "B0000530HU.jpg").read_bytes() == (tmp_path / "served" / "hi.jpg").read_bytes()
    assert _Handler.calls["/flaky.jpg"] == 2 and _Handler.calls["/missing.jpg"] == 1  # 404 is not retried
    assert json.loads((root / "images" / "download_report.json").read_text()) == report
    assert not list((root / "images").glob(".*.part"))
    again = img.download_amazon_images(root, workers=2, retries=0, timeout=5)  # the one meta file
    assert (again["ok"], again["skipped"], again["failed"]) == (0, 3, 2)
    ds = load_amazon(root)
    assert ds.items.column("image").to_pylist()[:2] == [str((root / "images" / f"{a}.jpg").resolve())
                                                        for a in ("B0000530HU", "B00006L9LC")]


def test_download_images_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        img.main(["--help"])
    assert exit_.value.code == 0 and "--data-dir" in capsys.readouterr().out
    assert img.main(["--data-dir", str(tmp_path)]) == 2  # no metadata file: a clear error, not a trace
    assert "meta_<Category>" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "xsmoe_ray.data.images", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--category" in done.stdout


HTML = b"<!DOCTYPE html><html><body>Sorry, no image</body></html>"


def _download_root(tmp_path: Path, urls: dict[str, str], existing: dict[str, bytes] | None = None) -> Path:
    """An Amazon root whose metadata gives each asin one image URL, with ``existing`` images/ files."""
    root = tmp_path / "data"
    write_amazon(root, meta=[{"asin": a, "imageURL": [u]} for a, u in urls.items()], with_image=())
    for asin, data in (existing or {}).items():
        write_bytes(root / "images" / f"{asin}.jpg", data)
    return root


def test_download_images_percent_encodes_non_ascii_urls(tmp_path, image_server):
    """Audit: one 'café.jpg' URL raised UnicodeEncodeError in urllib and ended the whole run."""
    write_image(tmp_path / "served" / "café.jpg", (9, 9, 9))
    root = _download_root(tmp_path, {"B0000530HU": f"{image_server}/hi.jpg", "B00006L9LC": f"{image_server}/café.jpg"})
    report = img.download_amazon_images(root, workers=2, retries=0, timeout=5)
    assert (report["ok"], report["failed"]) == (2, 0)
    assert (root / "images" / "B00006L9LC.jpg").read_bytes() == (tmp_path / "served" / "café.jpg").read_bytes()
    assert _Handler.calls == {"/hi.jpg": 1, "/caf%C3%A9.jpg": 1}


def test_download_images_url_that_cannot_be_sent_fails_alone(tmp_path, image_server, monkeypatch, capsys):
    """Whatever urllib still rejects with a ValueError is that URL's failure; the rest and the report go on."""
    monkeypatch.setattr(img, "request_url", lambda url: url)  # as before the fix: the raw non-ASCII URL
    root = _download_root(tmp_path, {"B0000530HU": f"{image_server}/hi.jpg", "B00006L9LC": f"{image_server}/café.jpg"})
    assert img.main(["--data-dir", str(root), "--retries", "2", "--timeout", "5"]) == 0
    report = json.loads((root / "images" / "download_report.json").read_text())
    assert (report["ok"], report["failed"]) == (1, 1)
    assert report["failures"]["B00006L9LC"]["reason"].startswith("UnicodeEncodeError: 'ascii' codec")
    assert _Handler.calls == {"/hi.jpg": 1}  # the bad URL was not retried: it would fail the same way


@pytest.mark.parametrize("url, sent", [
    ("http://h.example/a%20b/c.jpg?x=1&y=%2F;z=[2]#top", "http://h.example/a%20b/c.jpg?x=1&y=%2F;z=[2]#top"),
    ("https://h.example/I/51+kX-(1)_SL~1500_.jpg", "https://h.example/I/51+kX-(1)_SL~1500_.jpg"),
    ("http://h.example/café 1.jpg?q=é", "http://h.example/caf%C3%A9%201.jpg?q=%C3%A9"),
    ("http://bücher.example:8080/x.jpg", "http://xn--bcher-kva.example:8080/x.jpg"),
])
def test_request_url_encodes_only_what_a_valid_url_cannot_hold(url, sent):
    assert img.request_url(url) == sent


def _image_bytes(fmt: str) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_is_image_accepts_images(fmt):
    from io import BytesIO

    data = _image_bytes(fmt)
    assert img.is_image(data[:img.HEAD_BYTES], BytesIO(data))


@pytest.mark.parametrize("data", [HTML, b"RIFF\x10\x00\x00\x00WAVEfmt ", b"\xff\xd8", b"{}", b"\x00" * 64])
def test_is_image_rejects_other_bytes(data):
    from io import BytesIO

    assert not img.is_image(data[:img.HEAD_BYTES], BytesIO(data))


def test_download_images_rejects_non_images_and_fetches_them_again(tmp_path, image_server):
    """Audit: an HTML page (HTTP 200) was saved as <asin>.jpg, counted ok, and skipped on every later run."""
    write_bytes(tmp_path / "served" / "page.jpg", HTML)
    urls = {"B0000530HU": f"{image_server}/page.jpg", "B00006L9LC": f"{image_server}/hi.jpg",
            "B00008JOQI": f"{image_server}/missing.jpg", "B0000CCDW6": f"{image_server}/small.jpg"}
    root = _download_root(tmp_path, urls, existing={"B00006L9LC": HTML, "B00008JOQI": HTML,
                                                    "B0000CCDW6": (tmp_path / "served" / "small.jpg").read_bytes()})
    report = img.download_amazon_images(root, workers=2, retries=1, timeout=5)
    assert (report["ok"], report["skipped"], report["failed"], report["refetched_non_images"]) == (1, 1, 2, 2)
    assert report["failures"]["B0000530HU"] == {
        "url": urls["B0000530HU"], "reason": "not an image (starts with '<!DOCTYPE html><', Content-Type image/jpeg)"}
    assert _Handler.calls["/page.jpg"] == 1  # the server's answer, not a hiccup: no retry
    assert not (root / "images" / "B0000530HU.jpg").exists() and not list((root / "images").glob(".*.part"))
    assert (root / "images" / "B00006L9LC.jpg").read_bytes() == (tmp_path / "served" / "hi.jpg").read_bytes()
    assert report["failures"]["B00008JOQI"]["reason"].startswith("HTTP 404")
    assert "not an image; kept" in report["failures"]["B00008JOQI"]["existing_file"]
    again = img.download_amazon_images(root, workers=2, retries=0, timeout=5)
    assert (again["ok"], again["skipped"], again["failed"], again["refetched_non_images"]) == (0, 2, 2, 1)
    assert _Handler.calls["/missing.jpg"] == 2


def test_download_images_exit_code_says_whether_anything_was_fetched(tmp_path, image_server, capsys):
    """Audit: the downloader exited 0 when every image failed."""
    urls = {"B0000530HU": f"{image_server}/missing.jpg", "B00006L9LC": f"{image_server}/gone.jpg"}
    root = _download_root(tmp_path, urls)
    assert img.main(["--data-dir", str(root), "--retries", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: all 2 image URL(s) failed; the most common reason (2x): HTTP 404")
    assert str(root / "images" / "download_report.json") in err
    assert (root / "images" / "download_report.json").is_file()
    write_image(root / "images" / "B0000530HU.jpg")  # one already there: the run did its job
    assert img.main(["--data-dir", str(root), "--retries", "0"]) == 0
    assert "error" not in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "xsmoe_ray.data.images", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "1 when every image URL failed" in " ".join(help_text.split())


def test_write_bytes_gz_roundtrip(tmp_path):
    import gzip

    path = write_bytes(tmp_path / "x.json.gz", b"{}\n")
    assert gzip.decompress(path.read_bytes()) == b"{}\n"
