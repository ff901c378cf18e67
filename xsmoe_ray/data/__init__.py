"""Dataset readers: every source format becomes one :class:`~xsmoe_ray.data.schema.Dataset`.

``hm`` (Kaggle H&M), ``amazon`` (Amazon reviews 2018), ``generic`` (parquet/CSV) and ``recbole``
(RecBole atomic files) each have a module; ``synthetic`` data is written in H&M layout, so it is
read by :func:`load_hm`. See each module's docstring for its layout and for what is fatal
(``DataError``) and what is counted. ``data.sample_users`` is applied here, after the reader
(:mod:`xsmoe_ray.data.sampling`).
"""

from __future__ import annotations

from pathlib import Path

from xsmoe_ray.data.amazon import load_amazon, read_amazon
from xsmoe_ray.data.generic import load_generic, read_generic
from xsmoe_ray.data.hm import load_hm
from xsmoe_ray.data.recbole import load_recbole
from xsmoe_ray.data.sampling import sample_users as _sample_users
from xsmoe_ray.data.schema import DataError, Dataset, LoadReport

FORMATS = ("synthetic", "hm", "amazon", "generic", "recbole")

__all__ = ["FORMATS", "DataError", "Dataset", "LoadReport", "load_amazon", "load_dataset", "load_generic", "load_hm",
           "load_recbole"]


def load_dataset(fmt: str, root, *, category: str = "", date_from: str = "", date_to: str = "",
                 dedup: bool = True, sample_users: int = 0, sample_seed: int = 0,
                 recbole: dict | None = None) -> Dataset:
    """Read the dataset at ``root`` in format ``fmt``; ``[date_from, date_to)`` keeps whole days (UTC).

    The date window applies to every format (counted as ``outside_date_range``); ``category`` only
    to ``amazon`` and ``recbole`` (the atomic files' stem); ``recbole`` holds the keyword arguments
    ``user_field``, ``item_field``, ``time_field``, ``text`` of :func:`load_recbole`. Then
    ``sample_users`` > 0 keeps that many users, drawn with ``sample_seed``
    (:func:`xsmoe_ray.data.sampling.sample_users`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(str(root), f"dataset root directory not found (data.format={fmt})")
    if fmt in ("hm", "synthetic"):
        ds = load_hm(root, date_from=date_from, date_to=date_to, dedup=dedup)
    elif fmt == "amazon":
        ds = read_amazon(root, category, date_from=date_from, date_to=date_to, dedup=dedup)
    elif fmt == "recbole":
        ds = load_recbole(root, category, date_from=date_from, date_to=date_to, dedup=dedup, **(recbole or {}))
    else:
        ds = read_generic(root, date_from=date_from, date_to=date_to, dedup=dedup)
    return _sample_users(ds, sample_users, sample_seed)
