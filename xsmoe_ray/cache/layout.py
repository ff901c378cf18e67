"""Cache layout and identity: format version, file names, the manifest, specs and their differences,
content hashes, errors. Pure functions over tables and dicts; imports nothing else of the cache.

Layout of ``CACHE_DIR``::

    manifest.json              the commit point: written last, replaced atomically
    build-<id>/text.npy        float16 [n_items+1, M+1, d]; row 0 = padding (zeros), row k = item code k
    build-<id>/image.npy       same for images (absent for a text-only dataset)

Each build writes its arrays into a fresh ``build-<id>/`` directory and only then replaces
``manifest.json`` (:func:`write_manifest`), which names the arrays it describes. A build killed at
any moment therefore leaves either the previous manifest with its intact arrays, or no manifest at
all: never a manifest pointing at partial arrays. Unreferenced build directories are removed by the
next build.

``manifest.json`` holds, per modality, the backbone (name, machine-independent ``id``, source,
``name_or_path``, hub revision when known, ``layers`` = M, ``dim`` = d), the ``pooling`` of each
layer's token states (``cls`` | ``mean``, :mod:`xsmoe_ray.backbones`), the text length
(``max_words`` and ``max_tokens``) or ``image_size``, the array file/shape/dtype, the content hash of
every item (sha1 of the text after truncation / of the image file bytes) and the failures (item id →
reason, encoded from a placeholder); plus ``rows`` (item id → row) and per-modality counts.

A cache is reused only when every field of :data:`COMPARED_FIELDS` agrees with the request: a cache
built with another backbone, input size or pooling is refused (:class:`CacheMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xsmoe_ray import backbones
from xsmoe_ray.backbones import MODALITIES, NONE, backbone_id

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Spec fields that must agree between a cache and a request; None on either side means "unknown".
COMPARED_FIELDS = ("id", "revision", "layers", "dim", "pooling", "max_words", "max_tokens", "image_size")
# What a manifest written before a field existed was built with (pooling arrived after format 1).
LEGACY_SPEC = {"pooling": "cls"}


class CacheError(RuntimeError):
    """A cache directory that cannot be used: missing, incomplete or inconsistent."""


class CacheMismatchError(CacheError):
    """A valid cache that was built for other backbones, settings or items than those requested."""

    def __init__(self, cache_dir: str | Path, differences: list[str], hint: str = ""):
        self.differences = differences
        lines = "\n  ".join(differences)
        super().__init__(f"cache {cache_dir} does not match the request:\n  {lines}" + (f"\n{hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# Content identity — pure functions.


def text_hash(text: str) -> str:
    """Hash of the text as encoded (after truncation): unchanged text, unchanged row."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def file_hash(path: str | None) -> str:
    """Hash of an image file's bytes; 'none'/'missing' mark absent files so that their later arrival
    counts as a change and gets the item re-encoded."""
    if not path:
        return "none"
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable:{e.errno}"
    return digest.hexdigest()[:20]


def truncated_texts(items: pa.Table, max_words: int) -> list[str]:
    return [backbones.truncate_words(t, max_words) for t in items.column("text").to_pylist()]


def content_hashes(items: pa.Table, modality: str, max_words: int) -> list[str]:
    """One hash per items row (row k-1 = item code k) for ``modality``."""
    if modality == "text":
        return [text_hash(t) for t in truncated_texts(items, max_words)]
    return [file_hash(p) for p in items.column("image").to_pylist()]


def table_has(items: pa.Table, modality: str) -> bool:
    """Whether any item has content of ``modality`` (same rule as ``data.schema.finish``)."""
    if modality == "text":
        return any((t or "").strip() for t in items.column("text").to_pylist())
    return items.column("image").null_count < items.num_rows


# ---------------------------------------------------------------------------------------------
# What is requested, and how it differs from what is cached.


def requested_modalities(backbone_cfg, has_text: bool, has_image: bool) -> list[str]:
    """Modalities with content and a backbone other than 'none', in MODALITIES order."""
    present = {"text": has_text and backbone_cfg.text != NONE, "image": has_image and backbone_cfg.image != NONE}
    return [m for m in MODALITIES if present[m]]


def request_spec(modality: str, backbone_cfg, max_words: int, pooling: str) -> dict[str, Any]:
    """The part of a modality's spec known without loading anything (identity, pooling, input size)."""
    name = getattr(backbone_cfg, modality)
    spec: dict[str, Any] = {"backbone": name, "id": backbone_id(name, modality),
                            "pooling": backbones.check_pooling(pooling)}
    if modality == "text":
        spec["max_words"] = max_words
    else:
        spec["image_size"] = backbone_cfg.image_size
    return spec


def full_spec(modality: str, cfg) -> dict[str, Any]:
    """Everything the manifest records about how ``modality`` is encoded (reads the backbone config)."""
    spec = backbones.describe(getattr(cfg.backbone, modality), modality)
    spec.update(request_spec(modality, cfg.backbone, cfg.data.max_words, cfg.cache.pooling))
    if modality == "text":
        spec["max_tokens"] = backbones.max_tokens_for(cfg.data.max_words, spec.pop("max_positions"))
        spec["placeholder"] = backbones.TEXT_PLACEHOLDER
        spec.pop("native_image_size")
    else:
        spec.pop("max_positions")
        spec["placeholder"] = backbones.IMAGE_PLACEHOLDER
    return spec


def spec_differences(cached: dict[str, dict], requested: dict[str, dict]) -> list[str]:
    """Human-readable differences between cached and requested per-modality specs."""
    out = []
    for m in MODALITIES:
        if (m in cached) != (m in requested):
            have = cached[m]["backbone"] if m in cached else "none"
            want = requested[m]["backbone"] if m in requested else "none"
            out.append(f"{m}: cached with backbone {have!r}, requested {want!r}")
            continue
        if m not in cached:
            continue
        for key in COMPARED_FIELDS:
            have, want = cached[m].get(key, LEGACY_SPEC.get(key)), requested[m].get(key)
            if have is not None and want is not None and have != want:
                out.append(f"{m}.{key}: cached {have!r}, requested {want!r}")
    return out


def item_differences(manifest: dict, item_ids: Sequence[str], hashes: dict[str, list[str]]) -> list[str]:
    """Differences between the cached items and ``item_ids`` (row k = item_ids[k-1]) with hashes."""
    rows = manifest["rows"]
    wanted = {item_id: k for k, item_id in enumerate(item_ids, start=1)}
    out = []
    new = [i for i in wanted if i not in rows]
    gone = [i for i in rows if i not in wanted]
    moved = [i for i, k in wanted.items() if i in rows and rows[i] != k]
    for label, ids in (("not in the cache", new), ("cached but not requested", gone), ("at another row", moved)):
        if ids:
            out.append(f"{len(ids)} item(s) {label}, e.g. {ids[:3]}")
    for m, values in hashes.items():
        cached = manifest["modalities"][m]["hashes"]
        changed = [i for i, h in zip(item_ids, values) if i in cached and cached[i] != h]
        if changed:
            out.append(f"{m}: {len(changed)} item(s) with changed content, e.g. {changed[:3]}")
    return out


def reuse_rows(item_ids: list[str], hashes: list[str], old: dict[str, Any] | None, modality: str) -> np.ndarray:
    """Per new row k (index k-1): the old cache row holding identical content, or -1 to encode."""
    if old is None or modality not in old["modalities"]:
        return np.full(len(item_ids), -1, dtype=np.int64)
    rows, cached = old["rows"], old["modalities"][modality]["hashes"]
    return np.array([rows[i] if cached.get(i) == h else -1 for i, h in zip(item_ids, hashes)], dtype=np.int64)


def is_up_to_date(old: dict[str, Any] | None, item_ids: list[str], reuse: dict[str, np.ndarray]) -> bool:
    """Same items at the same rows, every modality fully reusable: nothing to write."""
    if old is None or old["n_items"] != len(item_ids) or set(old["modalities"]) != set(reuse):
        return False
    rows = np.arange(1, len(item_ids) + 1)
    return all(np.array_equal(r, rows) for r in reuse.values()) and all(
        old["rows"].get(i) == k for k, i in enumerate(item_ids, start=1))


# ---------------------------------------------------------------------------------------------
# Inputs of a build.


def read_prepared(data_dir: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """``items.parquet`` (item, item_id, text, image) and ``summary.json`` of a prepared dataset."""
    data_dir = Path(data_dir)
    for name in ("items.parquet", "summary.json"):
        if not (data_dir / name).is_file():
            raise CacheError(f"{data_dir / name}: not found; is {data_dir} a prepared dataset directory?")
    items = pq.read_table(data_dir / "items.parquet", columns=["item", "item_id", "text", "image"])
    codes = items.column("item").to_numpy()
    if not np.array_equal(codes, np.arange(1, items.num_rows + 1)):
        raise CacheError(f"{data_dir / 'items.parquet'}: column 'item' must be 1..n_items in row order")
    ids = items.column("item_id").cast(pa.string())
    items = items.set_column(1, "item_id", ids)
    if len(set(ids.to_pylist())) != items.num_rows:
        raise CacheError(f"{data_dir / 'items.parquet'}: column 'item_id' has duplicates")
    return items, json.loads((data_dir / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# The manifest.


def make_manifest(build: str, item_ids: list[str], specs: dict[str, dict], hashes: dict[str, list[str]],
                  need: dict[str, np.ndarray], failures: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The manifest of build directory ``build``: ``need[m]`` marks the rows encoded (not reused)."""
    n = len(item_ids)
    entries = {}
    for m, spec in specs.items():
        encoded = int(need[m].sum())
        entries[m] = {**spec, "file": f"{build}/{m}.npy", "shape": [n + 1, spec["layers"] + 1, spec["dim"]],
                      "dtype": "float16", "hashes": dict(zip(item_ids, hashes[m])),
                      "failures": dict(sorted(failures[m].items())),
                      "counts": {"encoded": encoded, "reused": n - encoded, "failed": len(failures[m])}}
    return {
        "format_version": FORMAT_VERSION,
        "build_id": build,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n_items": n,
        "rows": {item_id: k for k, item_id in enumerate(item_ids, start=1)},
        "modalities": entries,
    }


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{cache_dir}: no {MANIFEST}; not a cache, or a build that never finished")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path}: not a format-{FORMAT_VERSION} cache manifest")
    return manifest


def write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (temp file, fsync, rename, fsync of the directory)."""
    tmp = cache_dir / f"{MANIFEST_TMP_PREFIX}{uuid.uuid4().hex[:6]}"
    tmp.write_text(json.dumps(manifest, indent=1))
    fsync(tmp)
    os.replace(tmp, cache_dir / MANIFEST)
    fsync(cache_dir)


MANIFEST_TMP_PREFIX = f".{MANIFEST}.tmp-"


def fsync(path: Path) -> None:
    """Flush to disk before the manifest names it: a power cut must not commit unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
