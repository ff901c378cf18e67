"""Building the layer-output cache with Ray Data (DESIGN.md §6, "Cache build").

Only items whose content hash is new or changed (per modality) go through one Ray Data job:

    from_arrow(items) ─▶ map_batches(prepare_batch)              CPU stage: tokenise / read+decode+resize
                      ─▶ map_batches(LayerEncoder, ActorPoolStrategy(size=cache.workers))
                                                                 frozen backbones in each actor, 1 GPU
                                                                 per actor when the cluster has GPUs
                      ─▶ iter_batches on the driver ─▶ rows of build-<id>/<modality>.npy

Unchanged items are copied from the previous cache. Departure from DESIGN.md §6: encoder outputs
stream straight into the memmapped ``.npy`` instead of passing through parquet shards first; the
driver must consolidate into one file anyway, and skipping the shards saves a full write and read.
Atomicity is unchanged (see :mod:`xsmoe_ray.cache.layout` for the layout and the commit protocol).
Each layer's token states are pooled as ``cache.pooling`` says (``cls`` | ``mean``, see
:mod:`xsmoe_ray.backbones`); the pooling is part of every modality's spec in the manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from xsmoe_ray import backbones
from xsmoe_ray.cache.layout import (MANIFEST, MANIFEST_TMP_PREFIX, CacheError, CacheMismatchError, content_hashes,
                                    fsync, full_spec, is_up_to_date, make_manifest, read_prepared,
                                    requested_modalities, reuse_rows, spec_differences, truncated_texts,
                                    write_manifest)
from xsmoe_ray.cache.load import open_cache
from xsmoe_ray.runlock import wait_lock

log = logging.getLogger(__name__)

# Test-only hook: SIGKILL this process at a named point of a build ("encoding": after the first
# encoded batch is written; "commit": arrays complete, manifest not yet replaced).
KILL_ENV = "XSMOE_CACHE_KILL_AT"
COPY_ROWS = 4096  # rows copied per slice from an old cache, to bound driver memory


# ---------------------------------------------------------------------------------------------
# CPU stage — pure functions over numpy batches. A row carries ``need_<modality>``: an item whose
# image changed but whose text did not is only read, decoded and encoded for the image.


def prepare_batch(batch: dict[str, np.ndarray], text: dict[str, Any] | None = None,
                  image: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Tokenise (``text`` = prepare_text kwargs) and/or decode images (``image`` = prepare_image kwargs)."""
    out = {"item": batch["item"]}
    if text is not None:
        out.update(prepare_text(batch, **text))
    if image is not None:
        out.update(prepare_image(batch, **image))
    return out


def prepare_text(batch: dict[str, np.ndarray], backbone: str, root: str, max_tokens: int) -> dict[str, np.ndarray]:
    """Token ids of already-truncated texts; an empty text is encoded as the special tokens alone."""
    texts = [str(t or "") for t in batch["text"]]
    need = batch["need_text"].astype(bool)
    tokenizer = backbones.load_tokenizer(backbones.resolve_source(backbone, "text", root))
    errors = np.array(["empty text" if n and not t else "" for t, n in zip(texts, need)], dtype=object)
    return {"need_text": need, **backbones.tokenize(tokenizer, texts, max_tokens), "text_error": errors}


def prepare_image(batch: dict[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
    """Read, decode and resize the needed images; unusable ones become the grey placeholder plus a reason."""
    need = batch["need_image"].astype(bool)
    skipped = (backbones.placeholder_image(image_size), "")
    decoded = [backbones.decode_image(p, image_size) if n else skipped for p, n in zip(batch["image"], need)]
    return {
        "need_image": need,
        "pixels": np.stack([pixels for pixels, _ in decoded]),  # [B, S, S, 3] uint8
        "image_error": np.array([error for _, error in decoded], dtype=object),
    }


# ---------------------------------------------------------------------------------------------
# Encoder stage — the one stateful piece: a callable class run on an actor pool.


class LayerEncoder:
    """Holds the frozen backbones (one per modality) in an actor and maps a prepared batch to
    ``<modality>``: float16 ``[B, M+1, d]`` per modality (zeros where the row did not need it).

    Both modalities share one actor so that a build pays actor start-up once, not per modality.
    """

    def __init__(self, backbones_by_modality: dict[str, str], root: str, image_size: int = 0, threads: int = 0,
                 poolings: dict[str, str] | None = None, use_gpu: bool = False):
        import torch

        self.poolings = {m: backbones.check_pooling((poolings or {}).get(m, "cls")) for m in backbones_by_modality}
        # Explicit, not "CUDA if visible": in Ray 2.60 an actor that reserved no GPU still sees every GPU
        # of its node, and would share them with the GPU actors uninvited.
        self.device = torch.device("cuda") if use_gpu else torch.device("cpu")
        # Ray sets OMP_NUM_THREADS to the actor's CPU reservation (1); a CPU encoder needs the cores.
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        sources = {m: backbones.resolve_source(name, m, root) for m, name in backbones_by_modality.items()}
        self.models = {m: backbones.load_model(src).to(self.device) for m, src in sources.items()}
        if "image" in sources:
            self.processor = backbones.load_image_processor(sources["image"])
            self.forward_kwargs = backbones.image_forward_kwargs(self.models["image"], image_size)
        self._warm_up(image_size)

    def _warm_up(self, image_size: int) -> None:
        """One tiny forward pass per model so that lazy kernel set-up is not charged to real batches."""
        dummy = {"input_ids": np.full((1, 4), 1, np.int32), "attention_mask": np.ones((1, 4), np.int8),
                 "pixels": backbones.placeholder_image(image_size or 1)[None]}
        for m in self.models:
            self.encode(m, dummy)

    def encode(self, modality: str, batch: dict[str, np.ndarray]) -> np.ndarray:
        if modality == "text":
            return backbones.encode_tokens(self.models["text"], batch["input_ids"], batch["attention_mask"], self.device,
                                           self.poolings["text"])
        return backbones.encode_pixels(self.processor, self.models["image"], batch["pixels"], self.device,
                                       self.forward_kwargs, self.poolings["image"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"item": batch["item"]}
        for m, model in self.models.items():
            need = batch[f"need_{m}"].astype(bool)
            layers = np.zeros((len(need), model.config.num_hidden_layers + 1, model.config.hidden_size), np.float16)
            if need.any():
                layers[need] = self.encode(m, {k: v[need] for k, v in batch.items()})
            out.update({m: layers, f"need_{m}": need, f"{m}_error": batch[f"{m}_error"]})
        return out


def encoder_pool(workers: int, use_gpu: bool) -> tuple[int, int]:
    """(actors, GPUs per actor). ``use_gpu``: ``workers`` actors of one GPU each, asked of Ray as they
    are (an autoscaling cluster starting at zero GPU nodes brings them; a snapshot of its resources
    would have seen none). Otherwise CPU actors that leave at least one CPU free for the CPU stage
    (otherwise the pipeline could not progress)."""
    import ray

    if use_gpu:
        return workers, 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(workers, cpus - 1)), 0


def default_threads(actors: int) -> int:
    """Torch threads per CPU actor: the largest node's CPUs shared among the actors."""
    import ray

    node_cpus = max((n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(1, int(node_cpus) // actors)


def cpu_stage_kwargs(specs: dict[str, dict[str, Any]], root: str) -> dict[str, Any]:
    """``prepare_batch`` keyword arguments for the modalities in ``specs``."""
    kwargs: dict[str, Any] = {}
    if "text" in specs:
        kwargs["text"] = {"backbone": specs["text"]["backbone"], "root": root, "max_tokens": specs["text"]["max_tokens"]}
    if "image" in specs:
        kwargs["image"] = {"image_size": specs["image"]["image_size"]}
    return kwargs


def encoder_kwargs(specs: dict[str, dict[str, Any]], root: str, threads: int, use_gpu: bool = False) -> dict[str, Any]:
    """``LayerEncoder`` constructor arguments for the modalities in ``specs``."""
    return {"backbones_by_modality": {m: s["backbone"] for m, s in specs.items()}, "root": root,
            "image_size": specs["image"]["image_size"] if "image" in specs else 0, "threads": threads,
            "poolings": {m: s["pooling"] for m, s in specs.items()}, "use_gpu": use_gpu}


def encoding_table(items: pa.Table, need: dict[str, np.ndarray], max_words: int) -> pa.Table:
    """The pipeline input: rows needing any modality, texts truncated, one ``need_<m>`` flag per modality."""
    todo = np.flatnonzero(np.logical_or.reduce(list(need.values())))  # items rows k-1
    table = items.select(["item", "text", "image"]).take(pa.array(todo))
    table = table.set_column(1, "text", pa.array(truncated_texts(table, max_words), pa.string()))
    for m, flags in need.items():
        table = table.append_column(f"need_{m}", pa.array(flags[todo]))
    return table


def encode_with_ray(table: pa.Table, specs: dict[str, dict[str, Any]], batch_size: int, workers: int,
                    threads: int = 0, use_gpu: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Stream encoded batches for an :func:`encoding_table`: per batch ``item`` and, per modality in
    ``specs``, ``<m>`` [B, M+1, d] float16, ``need_<m>`` and ``<m>_error``."""
    import ray

    actors, gpus = encoder_pool(workers, use_gpu)
    threads = threads or default_threads(actors)
    root = str(backbones.demo_root())
    # One batch per block, so results stream back batch by batch. from_blocks computes block
    # metadata here; from_arrow would start a remote task just for that.
    ds = ray.data.from_blocks([table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)])
    ds = ds.map_batches(prepare_batch, fn_kwargs=cpu_stage_kwargs(specs, root), batch_size=batch_size,
                        batch_format="numpy")
    # On a CPU-only cluster Ray Data fuses this stage into the encoder actors (same resources);
    # with GPUs it stays a separate CPU task stage feeding the GPU actors.
    ds = ds.map_batches(LayerEncoder, fn_constructor_kwargs=encoder_kwargs(specs, root, threads, bool(gpus)),
                        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus, batch_size=batch_size,
                        batch_format="numpy")
    log.info("encoding %d item(s) (%s) on %d actor(s)%s", table.num_rows, "+".join(specs), actors,
             " with 1 GPU each" if gpus else f", {threads} CPU thread(s) each")
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


# ---------------------------------------------------------------------------------------------
# The build.


@dataclass
class BuildReport:
    cache_dir: Path
    manifest: dict[str, Any]
    encoded: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        lines = [f"cache {self.cache_dir} ({self.manifest['n_items']} items, {self.seconds:.1f} s)"]
        for m, spec in self.manifest["modalities"].items():
            lines.append(f"  {m:<5} {spec['backbone']}: M={spec['layers']} d={spec['dim']} "
                         f"encoded {self.encoded.get(m, 0)}, reused {self.reused.get(m, 0)}, "
                         f"placeholders {self.failed.get(m, 0)}")
        return "\n".join(lines + [f"  {line}" for line in placeholder_lines(self.manifest, self.cache_dir)])


def placeholder_lines(manifest: dict, cache: Path, shown: int = 3) -> list[str]:
    """Per modality with items the encoder could not read (a corrupt image, an empty text), how many
    and a few of them: they train on a placeholder, which a user should hear of without opening the manifest."""
    lines = []
    for modality, spec in manifest["modalities"].items():
        failures = spec.get("failures") or {}
        if failures:
            some = "; ".join(f"{item}: {why}" for item, why in list(failures.items())[:shown])
            lines.append(f"{modality}: {len(failures):,} item(s) encoded as placeholders, e.g. {some} "
                         f"(all in {cache / MANIFEST})")
    return lines


def build_cache(data_dir: str | Path, cache_dir: str | Path, cfg, rebuild: bool = False,
                threads: int = 0) -> BuildReport:
    """Build or update ``cache_dir`` for the prepared dataset in ``data_dir``; see the module doc.

    Raises :class:`CacheMismatchError` when an existing cache used other backbones or settings
    (pooling included), unless ``rebuild``. ``threads`` = torch threads per CPU encoder actor (0 = automatic).
    """
    start = time.perf_counter()
    items, summary = _read_prepared(data_dir)
    modalities = requested_modalities(cfg.backbone, bool(summary.get("has_text")), bool(summary.get("has_image")))
    if not modalities:
        raise CacheError(f"{data_dir}: nothing to encode (has_text={summary.get('has_text')}, "
                         f"has_image={summary.get('has_image')}, backbones {cfg.backbone})")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with wait_lock(cache_dir / ".lock"):  # one build per cache directory; a second waits
        old = None if rebuild else _previous(cache_dir)
        specs = {m: full_spec(m, cfg) for m in modalities}
        if old is not None:
            differences = spec_differences(old.manifest["modalities"], specs)
            if differences:
                raise CacheMismatchError(cache_dir, differences, mismatch_hint(data_dir, cache_dir))
        item_ids = items.column("item_id").to_pylist()
        hashes = {m: content_hashes(items, m, cfg.data.max_words) for m in modalities}
        reuse = {m: reuse_rows(item_ids, hashes[m], old.manifest if old else None, m) for m in modalities}
        if old is not None and is_up_to_date(old.manifest, item_ids, reuse):
            log.info("cache %s is up to date: 0 items to encode", cache_dir)
            return BuildReport(cache_dir, old.manifest, {m: 0 for m in modalities},
                               {m: len(item_ids) for m in modalities},
                               {m: len(old.manifest["modalities"][m]["failures"]) for m in modalities},
                               time.perf_counter() - start)
        report = _write_build(cache_dir, items, specs, hashes, reuse, old, cfg, threads)
        report.seconds = time.perf_counter() - start
        return report


def mismatch_hint(data_dir: str | Path, cache_dir: Path) -> str:
    """What to do about a cache built another way; raised from ``python -m xsmoe_ray.stream`` too,
    which has no ``--rebuild``, so both ways out are spelled as commands and config keys."""
    return (f"re-encode every item with the requested backbones/settings (same --config and key=value overrides):\n"
            f"  python -m xsmoe_ray.cache --data {data_dir} --out {cache_dir} --rebuild\n"
            f"or keep this cache and write the new one to another folder: cache.dir=<folder> "
            f"(or --out <folder> for python -m xsmoe_ray.cache)")


def _read_prepared(data_dir: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """:func:`read_prepared`, with an unreadable file as a :class:`CacheError` naming the directory:
    the commands print that as one line, where pyarrow's or json's bare ValueError is a traceback."""
    try:
        return read_prepared(data_dir)
    except (pa.ArrowException, ValueError) as e:  # corrupt parquet, missing column, bad JSON
        raise CacheError(f"{data_dir}: cannot read the prepared dataset: {e}") from e


def _previous(cache_dir: Path):
    """The existing cache to update, or None; a broken one is replaced, not patched."""
    if not (cache_dir / MANIFEST).exists():
        return None
    try:
        return open_cache(cache_dir)
    except CacheError as e:
        log.warning("ignoring unusable cache (%s); building from scratch", e)
        return None


def _write_build(cache_dir: Path, items: pa.Table, specs: dict[str, dict], hashes: dict[str, list[str]],
                 reuse: dict[str, np.ndarray], old, cfg, threads: int) -> BuildReport:
    """Write a complete new build directory, then commit it by replacing the manifest."""
    build = f"build-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    (cache_dir / build).mkdir()
    item_ids = items.column("item_id").to_pylist()
    paths = {m: cache_dir / build / f"{m}.npy" for m in specs}
    # New files are zero-filled, so row 0 (padding) needs no write.
    outs = {m: np.lib.format.open_memmap(paths[m], mode="w+", dtype=np.float16,
                                         shape=(items.num_rows + 1, spec["layers"] + 1, spec["dim"]))
            for m, spec in specs.items()}
    failures = {m: _copy_reused(outs[m], reuse[m], old, m, item_ids) for m in specs}
    need = {m: reuse[m] < 0 for m in specs}
    if any(n.any() for n in need.values()):
        for m, errors in _encode_needed(outs, items, need, specs, cfg, threads).items():
            failures[m].update(errors)
    for m in specs:
        outs[m].flush()
        fsync(paths[m])
    del outs
    manifest = make_manifest(build, item_ids, specs, hashes, need, failures)
    _maybe_kill("commit")
    _commit(cache_dir, manifest)
    counts = {m: e["counts"] for m, e in manifest["modalities"].items()}
    return BuildReport(cache_dir, manifest, {m: c["encoded"] for m, c in counts.items()},
                       {m: c["reused"] for m, c in counts.items()}, {m: c["failed"] for m, c in counts.items()})


def _copy_reused(out: np.ndarray, reuse: np.ndarray, old, modality: str, item_ids: list[str]) -> dict[str, str]:
    """Copy unchanged items' rows from the old cache; returns their carried-over failures."""
    keep = np.flatnonzero(reuse >= 0)
    if not len(keep):
        return {}
    source = old.arrays[modality]
    for lo in range(0, len(keep), COPY_ROWS):
        part = keep[lo:lo + COPY_ROWS]
        out[part + 1] = source[reuse[part]]
    old_failures = old.manifest["modalities"][modality]["failures"]
    return {item_ids[k]: old_failures[item_ids[k]] for k in keep if item_ids[k] in old_failures}


def _encode_needed(outs: dict[str, np.ndarray], items: pa.Table, need: dict[str, np.ndarray],
                   specs: dict[str, dict], cfg, threads: int) -> dict[str, dict[str, str]]:
    """Run the Ray Data job over the items that need any modality; write each output row.
    Returns the new failures per modality (item id → reason)."""
    from xsmoe_ray.raysetup import ensure_ray

    ensure_ray(cfg.run.num_cpus)
    subset = encoding_table(items, need, cfg.data.max_words)
    item_ids = items.column("item_id").to_pylist()
    written = {m: np.zeros(items.num_rows + 1, dtype=bool) for m in specs}
    failures: dict[str, dict[str, str]] = {m: {} for m in specs}
    for batch in encode_with_ray(subset, specs, cfg.cache.batch_size, cfg.cache.workers, threads, cfg.cache.use_gpu):
        for m in specs:
            rows = batch["item"].astype(np.int64)[batch[f"need_{m}"]]
            layers = batch[m][batch[f"need_{m}"]]
            if layers.shape[1:] != outs[m].shape[1:]:
                raise CacheError(f"{m} encoder produced {list(layers.shape[1:])} per item, "
                                 f"its config says {list(outs[m].shape[1:])}")
            outs[m][rows] = layers
            written[m][rows] = True
            errors = batch[f"{m}_error"][batch[f"need_{m}"]]
            failures[m].update({item_ids[r - 1]: str(e) for r, e in zip(rows, errors) if e})
        _maybe_kill("encoding")
    for m in specs:
        lost = np.setdiff1d(np.flatnonzero(need[m]) + 1, np.flatnonzero(written[m]))
        if len(lost):  # a lost row must never be committed as zeros
            raise CacheError(f"{m}: {len(lost)} item(s) came back without output, e.g. rows {lost[:5].tolist()}")
    return failures


def _commit(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (the commit point), then drop builds it no longer names."""
    write_manifest(cache_dir, manifest)
    for path in cache_dir.iterdir():
        stale_build = path.name.startswith("build-") and path.name != manifest["build_id"]
        if stale_build or path.name.startswith(MANIFEST_TMP_PREFIX):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _maybe_kill(stage: str) -> None:
    if os.environ.get(KILL_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
