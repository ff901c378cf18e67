"""Layer-output cache: Ray Data build, incremental rebuilds, placeholders, refusals, kill safety, loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xsmoe_ray import backbones
from xsmoe_ray.cache import CacheError, CacheMismatchError, check_cache, load_grouped, open_cache
from xsmoe_ray.cache_build import KILL_ENV, build_cache
from xsmoe_ray.config import load_config

WORDS = "red blue cotton dress shirt soft warm jersey summer long sleeve denim wool knit".split()
BATCH = 4


def write_prepared(root: Path, n: int, images: bool = True, seed: int = 0) -> Path:
    """A prepared dataset directory: items.parquet (item, item_id, text, image) + summary.json.

    Item 3 has an empty text; with images, item 4's file is missing, item 5's is corrupt and
    item 6 has none."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(n)]
    texts[2] = ""
    paths: list[str | None] = [None] * n
    if images:
        (root / "images").mkdir(exist_ok=True)
        for k in range(n):
            paths[k] = str(root / "images" / f"{k}.jpg")
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[k])
        paths[3] = str(root / "images" / "gone.jpg")
        Path(paths[4]).write_bytes(b"\xff\xd8 not a jpeg")
        paths[5] = None
    save_items(root, [f"art{k:03d}" for k in range(n)], texts, paths)
    (root / "summary.json").write_text(json.dumps({"has_text": True, "has_image": images}))
    return root


def save_items(root: Path, ids: list[str], texts: list[str], paths: list[str | None]) -> None:
    table = pa.table({"item": pa.array(range(1, len(ids) + 1), pa.int32()), "item_id": ids, "text": texts,
                      "image": pa.array(paths, pa.string()), "price": pa.array([1.0] * len(ids))})
    pq.write_table(table, root / "items.parquet")


def read_items(root: Path) -> pa.Table:
    return pq.read_table(root / "items.parquet")


def cfg(*overrides: str):
    return load_config("demo", [f"cache.batch_size={BATCH}", *overrides])


def build(data: Path, cache_dir: Path, config=None):
    """One torch thread: the tiny models gain nothing from more, and a busy 2-core box loses a lot."""
    return build_cache(data, cache_dir, config or cfg(), threads=1)


@pytest.fixture(scope="module")
def built(ray_session, tmp_path_factory):
    """A text+image cache of 10 items built through Ray Data."""
    root = tmp_path_factory.mktemp("cache_e2e")
    data = write_prepared(root / "data", 10)
    report = build(data, root / "cache")
    return data, root / "cache", report


def test_build_writes_arrays_and_manifest(built):
    data, cache_dir, report = built
    assert report.encoded == {"text": 10, "image": 10} and report.reused == {"text": 0, "image": 0}
    cache = open_cache(cache_dir)
    m = cache.manifest
    assert m["n_items"] == 10 and m["rows"]["art000"] == 1 and m["rows"]["art009"] == 10
    for modality in ("text", "image"):
        arr = np.load(cache_dir / m["modalities"][modality]["file"], mmap_mode="r")
        assert arr.dtype == np.float16 and arr.shape == (11, 5, 32)
        assert not arr[0].any() and np.abs(arr[1:]).sum(axis=(1, 2)).min() > 0  # row 0 = padding only
    text = m["modalities"]["text"]
    assert text["id"] == "demo:bert-demo-v1" and text["max_words"] == 40 and text["max_tokens"] == 82
    assert m["modalities"]["image"]["image_size"] == 32 and len(text["hashes"]) == 10


def test_bad_content_is_encoded_from_placeholders_and_listed(built):
    _, cache_dir, _ = built
    cache = open_cache(cache_dir)
    failures = {m: s["failures"] for m, s in cache.manifest["modalities"].items()}
    assert failures["text"] == {"art002": "empty text"}
    assert failures["image"]["art003"] == "missing file" and failures["image"]["art005"] == "no image"
    assert failures["image"]["art004"].startswith("corrupt image")
    image = cache.arrays["image"]
    assert np.array_equal(image[4], image[5]) and np.array_equal(image[4], image[6])  # all the grey placeholder


def direct_text_states(text: str) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    source = backbones.resolve_source("demo", "text")
    model = AutoModel.from_pretrained(source, output_hidden_states=True).eval()
    with torch.no_grad():
        hidden = model(**AutoTokenizer.from_pretrained(source)(text, return_tensors="pt")).hidden_states
    return torch.stack([h[0, 0] for h in hidden]).numpy()


def direct_image_states(path: str) -> np.ndarray:
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    source = backbones.resolve_source("demo", "image")
    model = AutoModel.from_pretrained(source, output_hidden_states=True).eval()
    image = Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR)
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(source)(images=image, return_tensors="pt")["pixel_values"]
        hidden = model(pixel_values=pixels).hidden_states
    return torch.stack([h[0, 0] for h in hidden]).numpy()


@pytest.mark.parametrize("row", [1, 3, 8])
def test_cached_layers_equal_running_the_backbone(built, row):
    data, cache_dir, _ = built
    items = read_items(data)
    cache = open_cache(cache_dir)
    text = backbones.truncate_words(items.column("text")[row - 1].as_py(), 40)
    np.testing.assert_allclose(cache.arrays["text"][row].astype(np.float32), direct_text_states(text),
                               rtol=1e-3, atol=1e-3)
    if row != 3:  # row 3 has no image file
        np.testing.assert_allclose(cache.arrays["image"][row].astype(np.float32),
                                   direct_image_states(items.column("image")[row - 1].as_py()), rtol=1e-3, atol=1e-3)


def test_second_run_encodes_nothing_and_writes_nothing(built):
    data, cache_dir, _ = built
    before = open_cache(cache_dir).manifest["build_id"]
    report = build(data, cache_dir)
    assert report.encoded == {"text": 0, "image": 0}
    assert open_cache(cache_dir).manifest["build_id"] == before


def test_load_grouped_keeps_l0_and_each_groups_last_layer(built):
    _, cache_dir, _ = built
    grouped = load_grouped(cache_dir, 2)
    full = open_cache(cache_dir).arrays
    for m in ("text", "image"):
        assert grouped[m].shape == (11, 3, 32) and grouped[m].dtype == torch.float16
        assert np.array_equal(grouped[m].numpy(), full[m][:, [0, 2, 4]])
    assert list(load_grouped(cache_dir, 4, modalities=["text"], device="cpu")) == ["text"]
    with pytest.raises(CacheError, match="groups of 3"):
        load_grouped(cache_dir, 3)


def test_check_cache_accepts_the_items_it_was_built_for(built):
    data, cache_dir, _ = built
    assert check_cache(cache_dir, read_items(data), cfg().backbone)["n_items"] == 10


@pytest.mark.parametrize("overrides, expected", [
    (["backbone.image_size=48"], "image.image_size: cached 32, requested 48"),
    (["backbone.image=none"], "image: cached with backbone 'demo', requested 'none'"),
    (["data.max_words=5"], "text.max_words: cached 40, requested 5"),
])
def test_mismatched_backbones_are_refused(built, overrides, expected):
    data, cache_dir, _ = built
    with pytest.raises(CacheMismatchError, match="rebuild") as err:
        build(data, cache_dir, cfg(*overrides))
    assert expected in err.value.differences
    with pytest.raises(CacheMismatchError):
        check_cache(cache_dir, read_items(data), cfg(*overrides).backbone, max_words=cfg(*overrides).data.max_words)


def test_check_cache_refuses_changed_or_new_items(built):
    data, cache_dir, _ = built
    items = read_items(data)
    changed = items.set_column(2, "text", pa.array(["something else"] + items.column("text").to_pylist()[1:]))
    with pytest.raises(CacheMismatchError, match="1 item\\(s\\) with changed content"):
        check_cache(cache_dir, changed, cfg().backbone)
    with pytest.raises(CacheMismatchError, match="not in the cache"):
        check_cache(cache_dir, items.set_column(1, "item_id", pa.array([f"new{k}" for k in range(10)])),
                    cfg().backbone)


def test_loader_refuses_a_directory_without_manifest_or_with_bad_arrays(built, tmp_path):
    with pytest.raises(CacheError, match="no manifest.json"):
        open_cache(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(built[1], copy)
    array = copy / open_cache(copy).manifest["modalities"]["text"]["file"]
    np.save(array, np.zeros((11, 5, 16), np.float16))
    with pytest.raises(CacheError, match="does not match the manifest"):
        load_grouped(copy, 1)


def run_build_subprocess(ray_session, data: Path, cache_dir: Path, kill_at: str) -> int:
    """The CLI in a child process attached to the test cluster, SIGKILLed at ``kill_at``."""
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, **{KILL_ENV: kill_at})
    cmd = [sys.executable, "-m", "xsmoe_ray.cache", "--data", str(data), "--out", str(cache_dir),
           "--threads", "1", f"cache.batch_size={BATCH}"]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode


def copy_built(built, tmp_path: Path) -> tuple[Path, Path]:
    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    shutil.copytree(built[0], data)
    shutil.copytree(built[1], cache_dir)
    return data, cache_dir


def test_update_killed_mid_encoding_keeps_cache_then_encodes_only_new_items(ray_session, built, tmp_path):
    data, cache_dir = copy_built(built, tmp_path)
    before = open_cache(cache_dir)
    items = read_items(data)
    texts, paths = items.column("text").to_pylist(), items.column("image").to_pylist()
    texts[0] = "a brand new description"  # text changed, image unchanged
    save_items(data, [f"art{k:03d}" for k in range(12)], texts + ["red dress", "blue shirt"], paths + paths[:2])

    assert run_build_subprocess(ray_session, data, cache_dir, "encoding") == -9
    intact = open_cache(cache_dir)
    assert intact.manifest == before.manifest
    assert all(np.array_equal(intact.arrays[m], before.arrays[m]) for m in ("text", "image"))
    assert len(list(cache_dir.glob("build-*"))) == 2  # the dead build's partial arrays, named by no manifest

    update = build(data, cache_dir)
    assert update.encoded == {"text": 3, "image": 2} and update.reused == {"text": 9, "image": 10}
    after = open_cache(cache_dir)
    assert np.array_equal(after.arrays["text"][2:11], before.arrays["text"][2:11])
    assert not np.array_equal(after.arrays["text"][1], before.arrays["text"][1])
    assert np.array_equal(after.arrays["image"][:11], before.arrays["image"])
    assert np.array_equal(after.arrays["image"][11], before.arrays["image"][1])  # same file, same encoding
    assert after.manifest["modalities"]["image"]["failures"] == before.manifest["modalities"]["image"]["failures"]
    assert [p.name for p in cache_dir.glob("build-*")] == [update.manifest["build_id"]]  # leftovers removed


def test_text_only_dataset_builds_a_text_only_cache(ray_session, tmp_path):
    data = write_prepared(tmp_path / "data", 5, images=False)
    report = build(data, tmp_path / "cache")
    assert report.encoded == {"text": 5}
    assert sorted(p.name for p in (tmp_path / "cache" / report.manifest["build_id"]).iterdir()) == ["text.npy"]
    assert list(load_grouped(tmp_path / "cache", 4)) == ["text"]


def test_build_killed_before_commit_leaves_previous_cache(ray_session, built, tmp_path):
    """Killed with complete new arrays but before the manifest: the old cache still loads as it was."""
    data, cache_dir = copy_built(built, tmp_path)
    items = read_items(data)  # drop the last item: the update only copies rows, no encoding needed
    save_items(data, items.column("item_id").to_pylist()[:9], items.column("text").to_pylist()[:9],
               items.column("image").to_pylist()[:9])
    assert run_build_subprocess(ray_session, data, cache_dir, "commit") == -9
    assert len(list(cache_dir.glob("build-*"))) == 2  # the dead build's arrays, never named by a manifest
    cache = open_cache(cache_dir)
    assert cache.manifest == open_cache(built[1]).manifest
    assert np.array_equal(cache.arrays["image"], open_cache(built[1]).arrays["image"])
