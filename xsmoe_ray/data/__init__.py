"""Dataset readers: every source format becomes one :class:`~xsmoe_ray.data.schema.Dataset`.

``hm`` (Kaggle H&M), ``amazon`` (Amazon reviews 2018) and ``generic`` (parquet/CSV) each have a
module; ``synthetic`` data is written in H&M layout, so it is read by :func:`load_hm`. See each
module's docstring for its layout and for what is fatal (``DataError``) and what is counted.
"""

from __future__ import annotations

from pathlib import Path

from xsmoe_ray.data.amazon import load_amazon, read_amazon
from xsmoe_ray.data.generic import load_generic, read_generic
from xsmoe_ray.data.hm import load_hm
from xsmoe_ray.data.schema import DataError, Dataset, LoadReport

FORMATS = ("synthetic", "hm", "amazon", "generic")

__all__ = ["FORMATS", "DataError", "Dataset", "LoadReport", "load_amazon", "load_dataset", "load_generic", "load_hm"]


def load_dataset(fmt: str, root, *, category: str = "", date_from: str = "", date_to: str = "",
                 dedup: bool = True) -> Dataset:
    """Read the dataset at ``root`` in format ``fmt``; ``[date_from, date_to)`` keeps whole days (UTC).

    The date window applies to every format (counted as ``outside_date_range``); ``category`` only
    to ``amazon``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(str(root), f"dataset root directory not found (data.format={fmt})")
    if fmt in ("hm", "synthetic"):
        return load_hm(root, date_from=date_from, date_to=date_to, dedup=dedup)
    if fmt == "amazon":
        return read_amazon(root, category, date_from=date_from, date_to=date_to, dedup=dedup)
    return read_generic(root, date_from=date_from, date_to=date_to, dedup=dedup)
