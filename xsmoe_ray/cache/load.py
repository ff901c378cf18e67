"""Reading a cache: open it (manifest + memmapped arrays), group its layers, check it against a request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from xsmoe_ray.cache.layout import (CacheError, CacheMismatchError, content_hashes, item_differences, read_manifest,
                                    request_spec, requested_modalities, spec_differences, table_has)


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

    def pooling(self, modality: str) -> str:
        """How each layer's token states were pooled (``cls`` for caches written before the setting)."""
        return self.manifest["modalities"][modality].get("pooling", "cls")


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
    gathers. Moved to ``device`` once when given. Read with plain file reads, a block of items at a
    time, not by indexing the memmap: the kept layers are interleaved with the others, so indexing
    would map nearly every page of the whole cache (4.2 GB at full H&M) into each worker's RSS.
    """
    cache = open_cache(cache_dir)
    wanted = list(modalities) if modalities is not None else list(cache.arrays)
    missing = [m for m in wanted if m not in cache.arrays]
    if missing:
        raise CacheMismatchError(cache_dir, [f"{m}: not in this cache (has {sorted(cache.arrays)})" for m in missing])
    out = {}
    for m in wanted:
        index = group_index(cache.layers(m), layers_per_group)
        grouped = torch.from_numpy(read_layers(cache.arrays[m], index))  # [n+1, M/g+1, d]
        out[m] = grouped.to(device) if device is not None else grouped
    return out


def read_layers(array: np.memmap, index: list[int], block_items: int = 2048) -> np.ndarray:
    """``array[:, index]`` of a memmapped ``[n, layers, d]`` .npy, read block by block from its file."""
    n, layers, d = array.shape
    out = np.empty((n, len(index), d), dtype=array.dtype)
    buf = np.empty((min(block_items, n), layers, d), dtype=array.dtype)
    with open(array.filename, "rb", buffering=0) as f:
        f.seek(array.offset)
        for lo in range(0, n, len(buf)):
            view = buf[: min(len(buf), n - lo)]
            _read_exactly(f, memoryview(view).cast("B"), array.filename)
            out[lo: lo + len(view)] = view[:, index]
    return out


def _read_exactly(f, target: memoryview, name: str) -> None:
    done = 0
    while done < len(target):
        got = f.readinto(target[done:])
        if not got:
            raise CacheError(f"{name}: file ends early (truncated cache array)")
        done += got


def check_cache(cache_dir: str | Path, items_table: pa.Table, backbone_cfg, max_words: int = 40,
                pooling: str | None = None) -> dict[str, Any]:
    """The manifest, after checking the cache was built for these backbones, settings and items.

    ``pooling`` None means the configured default (``CacheConfig().pooling``). Raises
    :class:`CacheError` for an unusable cache and :class:`CacheMismatchError` naming every
    difference otherwise. Image items are hashed from their files, so a changed image is caught.
    """
    if pooling is None:
        from xsmoe_ray.config import CacheConfig

        pooling = CacheConfig().pooling
    cache = open_cache(cache_dir)
    modalities = requested_modalities(backbone_cfg, table_has(items_table, "text"), table_has(items_table, "image"))
    requested = {m: request_spec(m, backbone_cfg, max_words, pooling) for m in modalities}
    differences = spec_differences(cache.manifest["modalities"], requested)
    if not differences:
        ids = [str(i) for i in items_table.column("item_id").to_pylist()]
        hashes = {m: content_hashes(items_table, m, max_words) for m in modalities}
        differences = item_differences(cache.manifest, ids, hashes)
    if differences:
        raise CacheMismatchError(cache_dir, differences,
                                 "rebuild it: python -m xsmoe_ray.cache --data <prepared> --out <cache> [--rebuild]")
    return cache.manifest
