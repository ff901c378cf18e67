"""Backbone layer-output cache: layout, manifest, loaders, checks and the ``python -m`` entry point.

The cache holds, per modality, the [CLS] state of every backbone layer ``l_0 … l_M`` for every item
(DESIGN.md §5, first bullet), so layer grouping is chosen at load time. It is built by the Ray Data
job in :mod:`xsmoe_ray.cache_build`. Layout of ``CACHE_DIR``::

    manifest.json              the commit point: written last, replaced atomically
    build-<id>/text.npy        float16 [n_items+1, M+1, d]; row 0 = padding (zeros), row k = item code k
    build-<id>/image.npy       same for images (absent for a text-only dataset)

Each build writes its arrays into a fresh ``build-<id>/`` directory and only then replaces
``manifest.json``, which names the arrays it describes. A build killed at any moment therefore
leaves either the previous manifest with its intact arrays, or no manifest at all: never a manifest
pointing at partial arrays. Unreferenced build directories are removed by the next build.

``manifest.json`` holds, per modality, the backbone (name, machine-independent ``id``, source,
``name_or_path``, hub revision when known, ``layers`` = M, ``dim`` = d), the text length (``max_words``
and ``max_tokens``) or ``image_size``, the array file/shape/dtype, the content hash of every item
(sha1 of the text after truncation / of the image file bytes) and the failures (item id → reason,
encoded from a placeholder); plus ``rows`` (item id → row) and per-modality counts.

Placeholders: an empty text is encoded as the tokenizer's special tokens alone ([CLS] [SEP]); an item
without an image, a missing file or one Pillow cannot decode is encoded as a uniform mid-grey image.
Both are listed under the modality's ``failures`` and never stop a build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xsmoe_ray import backbones
from xsmoe_ray.backbones import MODALITIES, NONE, backbone_id

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Spec fields that must agree between a cache and a request; None on either side means "unknown".
COMPARED_FIELDS = ("id", "revision", "layers", "dim", "max_words", "max_tokens", "image_size")

log = logging.getLogger(__name__)


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


def request_spec(modality: str, backbone_cfg, max_words: int) -> dict[str, Any]:
    """The part of a modality's spec known without loading anything (identity and input size)."""
    name = getattr(backbone_cfg, modality)
    spec: dict[str, Any] = {"backbone": name, "id": backbone_id(name, modality)}
    if modality == "text":
        spec["max_words"] = max_words
    else:
        spec["image_size"] = backbone_cfg.image_size
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
            have, want = cached[m].get(key), requested[m].get(key)
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


def full_spec(modality: str, cfg) -> dict[str, Any]:
    """Everything the manifest records about how ``modality`` is encoded."""
    spec = backbones.describe(getattr(cfg.backbone, modality), modality)
    spec.update(request_spec(modality, cfg.backbone, cfg.data.max_words))
    if modality == "text":
        spec["max_tokens"] = backbones.max_tokens_for(cfg.data.max_words, spec.pop("max_positions"))
        spec["placeholder"] = backbones.TEXT_PLACEHOLDER
        spec.pop("native_image_size")
    else:
        spec.pop("max_positions")
        spec["placeholder"] = backbones.IMAGE_PLACEHOLDER
    return spec


# ---------------------------------------------------------------------------------------------
# Reading a cache.


@dataclass
class Cache:
    """An opened cache: its manifest and one read-only memmap per modality."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    def layers(self, modality: str) -> int:
        return int(self.manifest["modalities"][modality]["layers"])


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


def open_cache(cache_dir: str | Path) -> Cache:
    """Manifest plus memmapped arrays, each checked against the manifest (file, shape, dtype)."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    arrays = {}
    for m, spec in manifest["modalities"].items():
        path = cache_dir / spec["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: array named by the manifest is missing or damaged ({e})") from e
        expected = (manifest["n_items"] + 1, spec["layers"] + 1, spec["dim"])
        if arr.dtype != np.float16 or arr.shape != expected or list(arr.shape) != spec["shape"]:
            raise CacheError(f"{path}: {arr.dtype}{list(arr.shape)} does not match the manifest "
                             f"(float16{list(expected)})")
        arrays[m] = arr
    return Cache(path=cache_dir, manifest=manifest, arrays=arrays)


def group_index(layers: int, layers_per_group: int) -> list[int]:
    """Layers kept for grouping ``g``: ``l_0`` then the last layer of every group, ``l_g, l_2g, … l_M``."""
    if layers_per_group < 1 or layers % layers_per_group:
        raise CacheError(f"{layers} backbone layers cannot be split into groups of {layers_per_group}")
    return list(range(0, layers + 1, layers_per_group))


def load_grouped(cache_dir: str | Path, layers_per_group: int, modalities: Sequence[str] | None = None,
                 device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Per modality, float16 ``[n_items+1, M/g+1, d]``: index 0 = ``l_0``, index j = ``l_{j*g}``.

    Kept in float16 as stored (half the device memory of float32); the model casts the rows it
    gathers. Moved to ``device`` once when given.
    """
    cache = open_cache(cache_dir)
    wanted = list(modalities) if modalities is not None else list(cache.arrays)
    missing = [m for m in wanted if m not in cache.arrays]
    if missing:
        raise CacheMismatchError(cache_dir, [f"{m}: not in this cache (has {sorted(cache.arrays)})" for m in missing])
    out = {}
    for m in wanted:
        index = group_index(cache.layers(m), layers_per_group)
        grouped = torch.from_numpy(np.ascontiguousarray(cache.arrays[m][:, index]))  # [n+1, M/g+1, d]
        out[m] = grouped.to(device) if device is not None else grouped
    return out


def check_cache(cache_dir: str | Path, items_table: pa.Table, backbone_cfg, max_words: int = 40) -> dict[str, Any]:
    """The manifest, after checking the cache was built for these backbones, settings and items.

    Raises :class:`CacheError` for an unusable cache and :class:`CacheMismatchError` naming every
    difference otherwise. Image items are hashed from their files, so a changed image is caught.
    """
    cache = open_cache(cache_dir)
    modalities = requested_modalities(backbone_cfg, table_has(items_table, "text"), table_has(items_table, "image"))
    requested = {m: request_spec(m, backbone_cfg, max_words) for m in modalities}
    differences = spec_differences(cache.manifest["modalities"], requested)
    if not differences:
        ids = [str(i) for i in items_table.column("item_id").to_pylist()]
        hashes = {m: content_hashes(items_table, m, max_words) for m in modalities}
        differences = item_differences(cache.manifest, ids, hashes)
    if differences:
        raise CacheMismatchError(cache_dir, differences,
                                 "rebuild it: python -m xsmoe_ray.cache --data <prepared> --out <cache> [--rebuild]")
    return cache.manifest


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.cache",
        description="Encode every item with the frozen backbones (Ray Data) into a layer-output cache.",
        epilog="overrides: backbone.text=… backbone.image=… backbone.image_size=… data.max_words=… "
               "cache.batch_size=… cache.workers=… run.num_cpus=…",
    )
    parser.add_argument("--data", required=True, help="prepared dataset directory (items.parquet, summary.json)")
    parser.add_argument("--out", default="", help="cache directory (default: cache.dir from the config)")
    parser.add_argument("--config", default="demo", help="preset name or YAML file (default: demo)")
    parser.add_argument("--rebuild", action="store_true",
                        help="re-encode everything, replacing a cache built with other backbones")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per CPU encoder actor (0 = auto)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from ray.data import DataContext

    from xsmoe_ray.cache_build import build_cache
    from xsmoe_ray.config import ConfigError, load_config

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or cfg.cache.dir
    if not out:
        print("error: give --out or cache.dir=…", file=sys.stderr)
        return 2
    DataContext.get_current().enable_progress_bars = True
    try:
        report = build_cache(args.data, out, cfg, rebuild=args.rebuild, threads=args.threads)
    except (CacheError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format())
    return 0


if __name__ == "__main__":
    # Run the imported module's main: under ``python -m`` this file is also ``__main__``, whose
    # CacheError class would differ from the one cache_build raises.
    from xsmoe_ray.cache import main as _main

    sys.exit(_main())
