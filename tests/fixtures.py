"""Small datasets in each real source layout, written into a directory (DESIGN.md §3).

    from tests.fixtures import write_hm, write_amazon, write_generic

    root = write_hm(tmp_path)                      # H&M Kaggle layout, 8 transactions
    root = write_amazon(tmp_path, gz=False)        # Amazon 2018, strict JSON lines
    root = write_generic(tmp_path, fmt="parquet")  # generic layout

Every writer takes its rows as plain Python data (defaults below, which load without any drop) so a
test can add the odd row it needs; ``*_text`` helpers give the exact file contents for tests that
corrupt them byte by byte. Images are real (tiny) JPEGs.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from xsmoe_ray.data.hm import ARTICLE_COLUMNS as HM_ARTICLE_COLUMNS
from xsmoe_ray.data.hm import TRANSACTION_COLUMNS as HM_TRANSACTION_COLUMNS

# ---------------------------------------------------------------------------- H&M

HM_ARTICLES = [
    {"article_id": 108775015, "prod_name": "Strap top", "product_type_name": "Vest top",
     "colour_group_name": "Black", "detail_desc": "Jersey top with narrow shoulder straps."},
    {"article_id": 108775044, "prod_name": "Strap top", "product_type_name": "Vest top",
     "colour_group_name": "White", "detail_desc": "Jersey top with narrow shoulder straps."},
    {"article_id": 110065001, "prod_name": "OP T-shirt (Idro)", "product_type_name": "Bra",
     "colour_group_name": "Black", "detail_desc": "Microfibre T-shirt bra with underwired, moulded cups."},
    {"article_id": 111565001, "prod_name": "20 den 1p Stockings", "product_type_name": "Underwear Tights",
     "colour_group_name": "Black", "detail_desc": "Semi shiny nylon stockings, 20 denier."},
    {"article_id": 176209023, "prod_name": "Rebecca blouse", "product_type_name": "Unknown",
     "colour_group_name": "Light Pink", "detail_desc": ""},
]
# The Kaggle file is sorted by day; rows of one day are in no particular order.
HM_TRANSACTIONS = [
    ("2018-09-20", 0, 108775015),
    ("2018-09-20", 1, 110065001),
    ("2018-09-20", 0, 111565001),
    ("2018-09-21", 2, 108775044),
    ("2018-09-21", 1, 108775015),
    ("2018-09-22", 0, 176209023),
    ("2018-09-22", 2, 110065001),
    ("2018-09-23", 1, 111565001),
]
HM_WITHOUT_IMAGE = (176209023,)  # H&M has no picture for some articles


def customer(n: int) -> str:
    """A 64-hex customer id like H&M's, stable per ``n``."""
    return hashlib.sha256(f"customer-{n}".encode()).hexdigest()


def hm_item_id(article_id: int) -> str:
    return f"{article_id:010d}"


def _cell(value, pad: bool = False) -> str:
    if isinstance(value, int) and pad:
        return hm_item_id(value)
    return "" if value is None else str(value)


def hm_transactions_text(rows: Iterable[Sequence] = HM_TRANSACTIONS) -> str:
    """``transactions_train.csv`` as Kaggle writes it (no quoting, ids with a leading 0).

    A row is ``(t_dat, customer, article_id[, price, sales_channel_id])``; an int customer is
    replaced by :func:`customer`, an int article id is zero-padded, strings are written as given.
    """
    lines = [",".join(HM_TRANSACTION_COLUMNS)]
    for row in rows:
        day, cust, article = row[:3]
        price, channel = (row[3], row[4]) if len(row) >= 5 else (0.0508305084745762, 2)
        cust = customer(cust) if isinstance(cust, int) else cust
        lines.append(",".join([_cell(day), _cell(cust), _cell(article, pad=True), _cell(price), _cell(channel)]))
    return "\n".join(lines) + "\n"


def hm_articles_text(articles: Iterable[dict] = HM_ARTICLES) -> str:
    """``articles.csv`` with all 25 columns; those not given get plausible filler."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HM_ARTICLE_COLUMNS)
    for a in articles:
        aid = a["article_id"]
        filler = {c: (1 if c.endswith(("_no", "_code", "_id")) else "x") for c in HM_ARTICLE_COLUMNS}
        filler["product_code"] = aid // 1000 if isinstance(aid, int) else ""
        row = {**filler, **a}
        writer.writerow([_cell(row[c], pad=(c == "article_id")) for c in HM_ARTICLE_COLUMNS])
    return out.getvalue()


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG")
    return path


def hm_image_path(root: Path, article_id: int) -> Path:
    item = hm_item_id(article_id)
    return Path(root) / "images" / item[:3] / f"{item}.jpg"


def write_hm(root, transactions: Iterable[Sequence] = HM_TRANSACTIONS, articles: Iterable[dict] = HM_ARTICLES,
             *, without_image: Iterable[int] = HM_WITHOUT_IMAGE) -> Path:
    """``transactions_train.csv``, ``articles.csv`` and ``images/<3>/<id>.jpg`` (all but ``without_image``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    articles = list(articles)
    (root / "transactions_train.csv").write_text(hm_transactions_text(transactions), encoding="utf-8")
    (root / "articles.csv").write_text(hm_articles_text(articles), encoding="utf-8")
    skip = set(without_image)
    for k, a in enumerate(articles):
        if isinstance(a["article_id"], int) and a["article_id"] not in skip:
            write_image(hm_image_path(root, a["article_id"]), (40 * k % 256, 90, 160))
    return root


# ---------------------------------------------------------------------------- Amazon reviews 2018

AMAZON_CATEGORY = "All_Beauty"
AMAZON_META = [
    {"asin": "B0000530HU", "title": "Shea Butter &amp; Argan Oil Lotion",
     "description": ["<b>Rich</b> body lotion.", "Fast absorbing, 8 fl oz."],
     "imageURLHighRes": ["https://images.example.com/B0000530HU_hi.jpg"],
     "imageURL": ["https://images.example.com/B0000530HU_SS40.jpg"], "brand": "Beauty Co", "price": "$9.99"},
    {"asin": "B00006L9LC", "title": "Bath Salt", "description": "Lavender salt for the bath.",
     "imageURLHighRes": [], "imageURL": ["https://images.example.com/B00006L9LC_SS40.jpg"]},
    {"asin": "B00008JOQI", "title": "Nail File <i>Set</i>", "description": [],
     "imageURLHighRes": [], "imageURL": []},
    {"asin": "B0000CCDW6", "title": "Hair Brush", "description": ["Boar bristles &#8211; 9 rows"]},
]
AMAZON_REVIEWS = [
    {"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": "A1V6B6TNIC10QE",
     "asin": "B0000530HU", "reviewerName": "theodore j bigham", "reviewText": "great", "summary": "One Star",
     "unixReviewTime": 1472688000},
    {"overall": 4.0, "verified": True, "reviewTime": "09 2, 2016", "reviewerID": "A3H7T87S984REU",
     "asin": "B00006L9LC", "reviewText": "nice", "summary": "ok", "unixReviewTime": 1472774400},
    {"overall": 1.0, "verified": False, "reviewTime": "09 1, 2016", "reviewerID": "A3H7T87S984REU",
     "asin": "B00008JOQI", "reviewText": "bad", "summary": "no", "unixReviewTime": 1472688000,
     "style": {"Size:": " 8 oz"}, "vote": "2"},
    {"overall": 3.0, "verified": True, "reviewTime": "09 3, 2016", "reviewerID": "A1V6B6TNIC10QE",
     "asin": "B0000CCDW6", "reviewText": "fine", "summary": "fine", "unixReviewTime": 1472860800},
    {"overall": 5.0, "verified": True, "reviewTime": "09 3, 2016", "reviewerID": "A2HOI48JK8838M",
     "asin": "B0000530HU", "reviewText": "love it", "summary": "yes", "unixReviewTime": 1472860800},
]
AMAZON_WITH_IMAGE = ("B0000530HU", "B00006L9LC")  # downloaded ones (images are not shipped)


def amazon_lines(records: Iterable[dict], *, literal: bool = False) -> str:
    """JSON lines, or Python-literal lines (``repr``: single quotes, True/None) as some dumps hold."""
    return "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)


def write_amazon(root, category: str = AMAZON_CATEGORY, reviews: Iterable[dict] = AMAZON_REVIEWS,
                 meta: Iterable[dict] = AMAZON_META, *, gz: bool = True, literal: bool = False,
                 five_core: bool = False, with_image: Iterable[str] = AMAZON_WITH_IMAGE) -> Path:
    """``<Category>[_5].json[.gz]``, ``meta_<Category>.json[.gz]`` and ``images/<asin>.jpg``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".json.gz" if gz else ".json"
    stem = f"{category}_5" if five_core else category
    write_bytes(root / f"{stem}{suffix}", amazon_lines(reviews, literal=literal).encode())
    write_bytes(root / f"meta_{category}{suffix}", amazon_lines(meta, literal=literal).encode())
    for k, asin in enumerate(with_image):
        write_image(root / "images" / f"{asin}.jpg", (30, 60 * k % 256, 90))
    return root


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data``, gzip-compressed when the name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


# ---------------------------------------------------------------------------- generic

GENERIC_ITEMS = [
    {"item_id": "sku-1", "text": "Red running shoe", "image": "img/sku-1.jpg"},
    {"item_id": "sku-2", "text": "Blue rain jacket", "image": "img/sku-2.jpg"},
    {"item_id": "sku-3", "text": "Wool socks, three pairs", "image": ""},
    {"item_id": "sku-4", "text": "", "image": "img/sku-4.jpg"},
]
GENERIC_INTERACTIONS = [
    {"user_id": "u7", "item_id": "sku-2", "timestamp": 1600000300},
    {"user_id": "u3", "item_id": "sku-1", "timestamp": 1600000000},
    {"user_id": "u7", "item_id": "sku-3", "timestamp": 1600000300},
    {"user_id": "u3", "item_id": "sku-4", "timestamp": 1600000600},
    {"user_id": "u9", "item_id": "sku-1", "timestamp": 1600000100},
    {"user_id": "u9", "item_id": "sku-2", "timestamp": 1600000900},
]


def write_generic(root, interactions: Iterable[dict] = GENERIC_INTERACTIONS, items: Iterable[dict] = GENERIC_ITEMS,
                  *, fmt: str = "csv", missing_images: Iterable[str] = ()) -> Path:
    """``interactions.<fmt>``, ``items.<fmt>`` (fmt ``csv`` or ``parquet``) and the listed images.

    Every non-empty ``image`` path is written as a JPEG except those in ``missing_images``.
    Columns are those of the first row of each list (so a test can leave one out).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    interactions, items = list(interactions), list(items)
    write_table(root / f"interactions.{fmt}", interactions)
    write_table(root / f"items.{fmt}", items)
    skip = set(missing_images)
    for k, item in enumerate(items):
        rel = item.get("image") or ""
        if rel and rel not in skip:
            write_image(root / rel, (20, 20, 50 * k % 256))
    return root


def write_table(path: Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV (minimal quoting, header from the first row) or parquet."""
    columns = list(rows[0]) if rows else []
    if path.suffix == ".parquet":
        pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), path)
        return path
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if r.get(c) is None else r.get(c) for c in columns] for r in rows])
    path.write_text(out.getvalue(), encoding="utf-8")
    return path
