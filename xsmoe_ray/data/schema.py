"""The one in-memory representation every reader produces, its load report, and its errors.

Readers (``hm.py``, ``amazon.py``, ``generic.py``) parse a source format into a :class:`Dataset`;
they never filter by k-core or split: ``xsmoe_ray.streaming`` does. Conventions:

* items are coded ``1..n_items`` in the order of the items file (0 is padding, as in SASRec);
  ``items`` row ``k - 1`` describes item code ``k``;
* users are coded ``0..n_users-1`` in order of first appearance in the interactions file;
* ``interactions`` is sorted by ``ts`` (int64 seconds since the epoch), ties kept in file order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INTERACTIONS_SCHEMA = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("ts", pa.int64())])
ITEMS_SCHEMA = pa.schema(
    [
        ("item", pa.int32()),  # code 1..n_items
        ("item_id", pa.string()),  # the id in the source
        ("text", pa.string()),  # "" when the item has no text
        ("image", pa.string()),  # absolute path, null when the item has no image
    ]
)


class DataError(ValueError):
    """Bad input that cannot be counted away: names the file, the row (1-based line) and the field."""

    def __init__(self, file: str, message: str, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field = str(file), row, field
        where = self.file + (f", line {row}" if row is not None else "")
        where += f", field '{field}'" if field else ""
        super().__init__(f"{where}: {message}")


@dataclass
class LoadReport:
    """What a reader read and dropped; printed and written as JSON next to the prepared data."""

    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    interactions: int = 0
    users: int = 0
    items: int = 0
    items_without_text: int = 0
    items_without_image: int = 0
    has_text: bool = True
    has_image: bool = True
    notes: list[str] = field(default_factory=list)
    # UTC days of the first and last kept interaction ("" when none): a unit mix-up (milliseconds
    # read as seconds) or a sign error shows here as a year far from the data's, not as bad figures.
    first_day: str = ""
    last_day: str = ""

    def drop(self, reason: str, count: int) -> None:
        """Count rows dropped for ``reason`` (a short snake_case phrase)."""
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files": self.files,
            "rows_read": self.rows_read,
            "rows_dropped": sum(self.dropped.values()),
            "dropped": dict(sorted(self.dropped.items())),
            "interactions": self.interactions,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "users": self.users,
            "items": self.items,
            "items_without_text": self.items_without_text,
            "items_without_image": self.items_without_image,
            "has_text": self.has_text,
            "has_image": self.has_image,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        lines = [f"load report ({self.source})", f"  rows read          {self.rows_read:,}"]
        for reason, count in sorted(self.dropped.items()):
            lines.append(f"  dropped {reason:<26} {count:,}")
        lines.append(f"  interactions kept  {self.interactions:,}")
        if self.first_day:
            lines.append(f"  time range (UTC)   {self.first_day} .. {self.last_day}")
        lines += [
            f"  users              {self.users:,}",
            f"  items              {self.items:,}",
            f"  items without text {self.items_without_text:,}" + ("" if self.has_text else " (no text modality)"),
            f"  items without image {self.items_without_image:,}" + ("" if self.has_image else " (no visual modality)"),
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class Dataset:
    """Interactions and items in the standard schema, plus what the load saw."""

    name: str
    interactions: pa.Table  # INTERACTIONS_SCHEMA, sorted by ts (stable)
    items: pa.Table  # ITEMS_SCHEMA, row k-1 = item code k
    user_ids: pa.Array  # source id of user code u at position u
    report: LoadReport

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def has_text(self) -> bool:
        return self.report.has_text

    @property
    def has_image(self) -> bool:
        return self.report.has_image

    def column(self, name: str) -> np.ndarray:
        """An interactions column as a numpy array (zero-copy where Arrow allows)."""
        return self.interactions.column(name).to_numpy()


def finish(
    name: str,
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    items: pa.Table,
    user_ids: pa.Array,
    report: LoadReport,
    dedup: bool = True,
) -> Dataset:
    """Shared tail of every reader: stable time sort, optional exact-duplicate drop, report totals.

    ``user``/``item``/``ts`` are in file order; ``item`` holds codes 1..n_items (rows whose item
    is unknown must already be removed and counted by the reader).
    """
    order = np.argsort(ts, kind="stable")
    user, item, ts = user[order], item[order], ts[order]
    if dedup and len(ts):
        keep = ~duplicate_mask(user, item, ts)
        report.drop("duplicate_row", int((~keep).sum()))
        user, item, ts = user[keep], item[keep], ts[keep]
    # Users who lost all their rows to drops would be gaps in the coding; recode densely.
    user, user_ids = _recode_users(user, user_ids)
    table = pa.table(
        {"user": pa.array(user, pa.int32()), "item": pa.array(item, pa.int32()), "ts": pa.array(ts, pa.int64())},
        schema=INTERACTIONS_SCHEMA,
    )
    report.interactions = table.num_rows
    if len(ts):
        report.first_day, report.last_day = utc_day(int(ts[0])), utc_day(int(ts[-1]))
    report.users = len(user_ids)
    report.items = items.num_rows
    text = items.column("text")
    report.items_without_text = int(pc.sum(pc.equal(pc.fill_null(text, ""), "")).as_py() or 0)
    report.items_without_image = int(items.column("image").null_count)
    report.has_text = report.items_without_text < items.num_rows
    report.has_image = report.items_without_image < items.num_rows
    return Dataset(name=name, interactions=table, items=items, user_ids=user_ids, report=report)


DAY_RANGE_S = 10**17  # beyond this numpy's day arithmetic wraps (an int64 row that held nanoseconds, say)


def utc_day(seconds: int) -> str:
    """``YYYY-MM-DD`` of epoch ``seconds`` (years past 9999 too, so a misread unit is visible)."""
    if abs(seconds) >= DAY_RANGE_S:
        return f"{seconds:,} s since 1970 (no calendar date)"
    return str(np.datetime64(int(seconds), "s").astype("datetime64[D]"))


def duplicate_mask(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True for every row that repeats an earlier (user, item, ts) row; input sorted by ts."""
    n = len(ts)
    # Group rows by (ts, user, item) with one sort of a packed key where it fits in 63 bits,
    # otherwise a lexsort; the first row of each group (in file order) is kept.
    ts_rank = np.concatenate([[0], np.cumsum(ts[1:] != ts[:-1])]) if n else ts
    n_u, n_i = int(user.max()) + 1, int(item.max()) + 1
    if float(ts_rank[-1] + 1) * n_u * n_i < 2**62:
        key = (ts_rank.astype(np.int64) * n_u + user) * n_i + item
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        same = np.concatenate([[False], sorted_key[1:] == sorted_key[:-1]])
    else:
        order = np.lexsort((item, user, ts_rank))
        u, i, t = user[order], item[order], ts_rank[order]
        same = np.concatenate([[False], (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])])
    mask = np.zeros(n, dtype=bool)
    mask[order[same]] = True
    return mask


def _recode_users(user: np.ndarray, user_ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    present = np.zeros(len(user_ids), dtype=bool)
    present[user] = True
    if present.all():
        return user, user_ids
    new_code = np.cumsum(present) - 1
    kept = np.flatnonzero(present)
    return new_code[user].astype(np.int32), user_ids.take(pa.array(kept))
