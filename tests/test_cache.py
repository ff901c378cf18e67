"""Layer-output cache: Ray Data build, incremental rebuilds, placeholders, refusals, kill safety, loader,
pooling (cls / mean) and how much the demo backbones' cached states vary between items."""

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
from xsmoe_ray.cache.build import KILL_ENV, build_cache
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
    """The demo config; pooling pinned to ``cls`` so these tests do not depend on the default."""
    return load_config("demo", [f"cache.batch_size={BATCH}", "cache.pooling=cls", *overrides])


def build(data: Path, cache_dir: Path, config=None, rebuild: bool = False):
    """One torch thread: the tiny models gain nothing from more, and a busy 2-core box loses a lot."""
    return build_cache(data, cache_dir, config or cfg(), rebuild=rebuild, threads=1)


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
    assert text["id"] == backbones.backbone_id("demo", "text") and text["id"].startswith("demo:bert-demo-v")
    assert text["max_words"] == 40 and text["max_tokens"] == 82
    assert text["pooling"] == m["modalities"]["image"]["pooling"] == cfg().cache.pooling
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
    # the report every command prints names them too, not only the manifest
    printed = built[2].format()
    assert "text: 1 item(s) encoded as placeholders, e.g. art002: empty text" in printed
    assert "image: 3 item(s) encoded as placeholders" in printed and "art003: missing file" in printed


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
    assert check_cache(cache_dir, read_items(data), cfg().backbone, pooling="cls")["n_items"] == 10


@pytest.mark.parametrize("overrides, expected", [
    (["backbone.image_size=48"], "image.image_size: cached 32, requested 48"),
    (["backbone.image=none"], "image: cached with backbone 'demo', requested 'none'"),
    (["data.max_words=5"], "text.max_words: cached 40, requested 5"),
])
def test_mismatched_backbones_are_refused(built, overrides, expected):
    data, cache_dir, _ = built
    with pytest.raises(CacheMismatchError) as err:
        build(data, cache_dir, cfg(*overrides))
    assert expected in err.value.differences
    assert_names_both_ways_out(str(err.value), data, cache_dir)
    with pytest.raises(CacheMismatchError):
        check_cache(cache_dir, read_items(data), cfg(*overrides).backbone, max_words=cfg(*overrides).data.max_words,
                    pooling="cls")


def assert_names_both_ways_out(message: str, data: Path, cache_dir: Path) -> None:
    """The hint of a refused build: also raised by ``python -m xsmoe_ray.stream``, which has no
    --rebuild, so it gives the cache command in full and the config key for another folder."""
    assert f"python -m xsmoe_ray.cache --data {data} --out {cache_dir} --rebuild" in message
    assert "cache.dir=<folder>" in message and "(rebuild=True)" not in message


def test_check_cache_refuses_changed_or_new_items(built):
    data, cache_dir, _ = built
    items = read_items(data)
    changed = items.set_column(2, "text", pa.array(["something else"] + items.column("text").to_pylist()[1:]))
    with pytest.raises(CacheMismatchError, match="1 item\\(s\\) with changed content"):
        check_cache(cache_dir, changed, cfg().backbone, pooling="cls")
    with pytest.raises(CacheMismatchError, match="not in the cache"):
        check_cache(cache_dir, items.set_column(1, "item_id", pa.array([f"new{k}" for k in range(10)])),
                    cfg().backbone, pooling="cls")


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
           "--threads", "1", f"cache.batch_size={BATCH}", "cache.pooling=cls"]
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


# ---------------------------------------------------------------------------------------------
# Pooling (cache.pooling = cls | mean) and the spread of the demo backbones' states.


@pytest.fixture(scope="module")
def built_mean(built, tmp_path_factory):
    """The cls cache of ``built``, replaced by a mean-pooled one with --rebuild (rebuild=True)."""
    data, cls_dir, _ = built
    mean_dir = tmp_path_factory.mktemp("cache_mean") / "cache"
    shutil.copytree(cls_dir, mean_dir)
    report = build(data, mean_dir, cfg("cache.pooling=mean"), rebuild=True)
    return data, mean_dir, report


def test_rebuild_replaces_a_cache_built_with_another_pooling(built, built_mean):
    _, mean_dir, report = built_mean
    assert report.encoded == {"text": 10, "image": 10} and report.reused == {"text": 0, "image": 0}
    cache = open_cache(mean_dir)
    assert {m: cache.pooling(m) for m in cache.arrays} == {"text": "mean", "image": "mean"}
    assert [p.name for p in mean_dir.glob("build-*")] == [cache.manifest["build_id"]]
    assert not np.array_equal(cache.arrays["text"], open_cache(built[1]).arrays["text"])


@pytest.mark.parametrize("have, want", [("cls", "mean"), ("mean", "cls")])
def test_a_cache_built_with_another_pooling_is_refused(built, built_mean, have, want):
    data, cache_dir, _ = built if have == "cls" else built_mean
    with pytest.raises(CacheMismatchError) as err:
        build(data, cache_dir, cfg(f"cache.pooling={want}"))
    assert_names_both_ways_out(str(err.value), data, cache_dir)
    for m in ("text", "image"):
        assert f"{m}.pooling: cached {have!r}, requested {want!r}" in err.value.differences
    with pytest.raises(CacheMismatchError, match="pooling"):
        check_cache(cache_dir, read_items(data), cfg().backbone, pooling=want)
    assert check_cache(cache_dir, read_items(data), cfg().backbone, pooling=have)["n_items"] == 10


def test_check_cache_defaults_to_the_configured_pooling(built, built_mean):
    from xsmoe_ray.config import CacheConfig

    default = CacheConfig().pooling
    assert default in backbones.POOLINGS
    data, cache_dir, _ = built if default == "cls" else built_mean
    check_cache(cache_dir, read_items(data), cfg().backbone)
    other = built_mean if default == "cls" else built
    with pytest.raises(CacheMismatchError, match="pooling"):
        check_cache(other[1], read_items(data), cfg().backbone)


def test_a_manifest_from_before_the_pooling_setting_counts_as_cls(built, tmp_path):
    data, cache_dir = copy_built(built, tmp_path)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    for spec in manifest["modalities"].values():
        del spec["pooling"]
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    assert open_cache(cache_dir).pooling("text") == "cls"
    check_cache(cache_dir, read_items(data), cfg().backbone, pooling="cls")
    with pytest.raises(CacheMismatchError, match="text.pooling: cached 'cls', requested 'mean'"):
        check_cache(cache_dir, read_items(data), cfg().backbone, pooling="mean")


def test_unknown_pooling_is_a_config_error():
    from xsmoe_ray.config import ConfigError

    with pytest.raises(ConfigError, match="cache.pooling"):
        cfg("cache.pooling=max")
    with pytest.raises(backbones.BackboneError, match="pooling"):
        backbones.pool(torch.zeros(1, 3, 4), "max")


def test_text_mean_pooling_equals_a_hand_mean_over_the_attention_mask(built_mean):
    """Run the HF model directly on the padded batch of all ten texts (lengths differ, item 3 is
    empty) and average each layer over the tokens whose attention mask is 1."""
    from transformers import AutoModel, AutoTokenizer

    data, cache_dir, _ = built_mean
    texts = [backbones.truncate_words(t, 40) for t in read_items(data).column("text").to_pylist()]
    source = backbones.resolve_source("demo", "text")
    model = AutoModel.from_pretrained(source).eval()
    enc = AutoTokenizer.from_pretrained(source)(texts, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).min() < enc["attention_mask"].shape[1]  # padding present
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden], dim=1).numpy()
    np.testing.assert_allclose(open_cache(cache_dir).arrays["text"][1:].astype(np.float32), expected,
                               rtol=2e-3, atol=2e-3)


def test_image_mean_pooling_averages_the_patches_without_cls(built_mean):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    data, cache_dir, _ = built_mean
    path = read_items(data).column("image")[0].as_py()
    source = backbones.resolve_source("demo", "image")
    model = AutoModel.from_pretrained(source).eval()
    image = Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR)
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(source)(images=image, return_tensors="pt")["pixel_values"]
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert hidden[0].shape[1] == 1 + (32 // 8) ** 2
    expected = torch.stack([h[0, 1:].mean(0) for h in hidden]).numpy()
    np.testing.assert_allclose(open_cache(cache_dir).arrays["image"][1].astype(np.float32), expected,
                               rtol=2e-3, atol=2e-3)


def relative_spread(cache_dir: Path, modality: str) -> np.ndarray:
    """Per layer: std across items (mean over dims) / mean norm, placeholder items left out."""
    cache = open_cache(cache_dir)
    failed = {cache.manifest["rows"][i] for i in cache.manifest["modalities"][modality]["failures"]}
    x = cache.arrays[modality][[k for k in range(1, cache.n_items + 1) if k not in failed]].astype(np.float32)
    return x.std(axis=0).mean(axis=-1) / np.linalg.norm(x, axis=-1).mean(axis=0)


# Threshold on std-across-items / norm. Per coordinate, rel * sqrt(d) is the spread in units of a
# coordinate's typical magnitude; a float16 step is 2^-10 of it. The old demo's BERT [CLS] had
# rel 0.0002-0.0003 (rel*sqrt(32) ~ 0.001-0.002: one or two float16 steps, no content). 0.01 means
# ~58 steps per coordinate; over the demo's synthetic items the new demo backbones reach 0.02 (text
# mean, l_0) to 0.17 (docs/BENCHMARKS.md, "Demo backbones"), so 0.01 leaves a 2x margin.
MIN_SPREAD = 0.01


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_demo_states_vary_between_items(built, built_mean, pooling):
    cache_dir = (built if pooling == "cls" else built_mean)[1]
    for m in ("text", "image"):
        rel = relative_spread(cache_dir, m)
        if pooling == "cls":  # l_0 [CLS] is the same for every item by construction: why `mean` exists
            assert rel[0] == 0.0
            rel = rel[1:]
        assert rel.min() > MIN_SPREAD, f"{m} {pooling}: {np.round(rel, 4)}"


def test_a_changed_demo_recipe_gets_a_new_backbone_id_and_old_caches_are_refused(built, monkeypatch):
    """The demo directory is written once: a changed demo config must not reuse it or its caches."""
    data, cache_dir, _ = built
    before = {m: (backbones.demo_name(m), backbones.backbone_id("demo", m)) for m in backbones.MODALITIES}
    monkeypatch.setattr(backbones, "DEMO_TEXT_SIZES", {**backbones.DEMO_TEXT_SIZES, "initializer_range": 0.02})
    assert backbones.demo_name("text") != before["text"][0]
    assert backbones.backbone_id("demo", "text") != before["text"][1]
    assert backbones.demo_name("image") == before["image"][0]  # only the changed one moves
    with pytest.raises(CacheMismatchError) as err:
        check_cache(cache_dir, read_items(data), cfg().backbone, pooling="cls")
    assert any(d.startswith("text.id: cached 'demo:bert-demo-v") for d in err.value.differences)


def test_word_truncation_reads_only_the_words_it_keeps():
    """Issue 11: an 80 MB text field once cost ~1.4 GB per truncation (a list of every word)."""
    import tracemalloc

    assert backbones.truncate_words("  a\tb\n c  d ", 3) == "a b c"
    assert backbones.truncate_words(None, 3) == "" and backbones.truncate_words("x y", 0) == ""
    assert backbones.truncate_words("über  naïve\u00a0café", 5) == " ".join("über  naïve\u00a0café".split())
    huge = "word " * 8_000_000  # 40 MB
    tracemalloc.start()
    out = backbones.truncate_words(huge, 40)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out == " ".join(["word"] * 40) and peak < 1_000_000


def test_gpu_encoders_are_requested_not_sized_from_a_snapshot(ray_session):
    """Issue 11: on an autoscaling cluster with no GPU node yet, a snapshot saw 0 GPUs and built on one
    CPU actor. With cache.use_gpu the pool asks Ray for workers x 1 GPU, whatever is there now."""
    from xsmoe_ray.cache.build import encoder_pool

    assert encoder_pool(4, use_gpu=True) == (4, 1)  # this test Ray has no GPU at all
    assert encoder_pool(4, use_gpu=False) == (1, 0)  # 2 CPUs: one left for the CPU stage


def test_cpu_encoders_never_touch_a_visible_gpu(monkeypatch):
    from xsmoe_ray.cache.build import LayerEncoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node, in a 0-GPU actor
    enc = LayerEncoder({"text": "demo"}, str(backbones.demo_root()), use_gpu=False)
    assert enc.device.type == "cpu" and next(enc.models["text"].parameters()).device.type == "cpu"


def test_read_layers_equals_indexing_the_memmap(tmp_path):
    import numpy as np

    from xsmoe_ray.cache.load import read_layers

    arr = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(1001, 7, 5))
    arr[:] = np.random.default_rng(0).standard_normal((1001, 7, 5))
    arr.flush()
    del arr
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for block in (1, 64, 1001, 5000):  # blocks that do and do not divide the rows, and one larger
        assert np.array_equal(read_layers(mm, [0, 3, 6], block_items=block), mm[:, [0, 3, 6]])


# ---------------------------------------------------------------------------------------------
# Backbone names and tokenizers, and the command's exit codes: all refused before Ray starts.


def model_only_copy(full: Path, dest: Path) -> Path:
    """``dest`` with what ``model.save_pretrained`` writes and no tokenizer files."""
    dest.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(full / name, dest / name)
    return dest


def test_a_backbone_directory_without_its_tokenizer_is_refused(tmp_path):
    """transformers 5 loads a tokenizer of special tokens alone from such a directory: every text
    became [CLS] [UNK]… [SEP], every item the same vector, and the build still succeeded."""
    full = backbones.write_text_backbone(tmp_path / "full")
    bare = model_only_copy(full, tmp_path / "model_only")
    for refuse in (lambda: backbones.describe(str(bare), "text"), lambda: backbones.load_tokenizer(str(bare))):
        with pytest.raises(backbones.BackboneError) as err:
            refuse()
        message = str(err.value)
        assert str(bare) in message and "vocab_size=313" in message
        assert f"tokenizer.save_pretrained('{bare}')" in message
    assert backbones.describe(str(full), "text")["layers"] == 4  # the same model with its tokenizer


def test_the_tokenizer_must_know_half_the_models_vocabulary():
    backbones.check_vocabulary(15261, 30522, "x")  # exactly half
    backbones.check_vocabulary(50277, 50432, "x")  # an embedding table padded to a multiple of 64
    backbones.check_vocabulary(5, None, "x")  # a config without vocab_size: nothing to compare
    with pytest.raises(backbones.BackboneError, match="x: its tokenizer knows 15260 tokens"):
        backbones.check_vocabulary(15260, 30522, "x")


@pytest.mark.parametrize("name", ["/nonexistent/bert", "./tinybert_rel", "../tinybert_rel", "~/no_such_backbone_xsmoe",
                                  "models/bert/base"])
def test_a_missing_backbone_directory_is_named_not_sent_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = Path(name).expanduser().resolve()
    with pytest.raises(backbones.BackboneError) as err:
        backbones.resolve_source(name, "text")
    assert str(err.value) == f"backbone.text={name}: backbone directory not found: {expected}"


def test_a_backbone_path_to_a_file_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(backbones.BackboneError, match="backbone path is not a directory: .*model.safetensors"):
        backbones.resolve_source(str(tmp_path / "model.safetensors"), "image")


@pytest.mark.parametrize("name", ["bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"])
def test_hub_ids_go_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    assert backbones.resolve_source(name, "text") == name


def run_cache_cli(capsys, *args: str) -> tuple[int, str]:
    from xsmoe_ray.cache.cli import main

    capsys.readouterr()  # drop what came before (save_pretrained's progress bars)
    code = main(list(args))
    return code, capsys.readouterr().err


def test_cache_command_user_errors_exit_2_with_one_line(tmp_path, capsys):
    """As every python -m xsmoe_ray.… command (xsmoe_ray.cli.run_guarded); it once exited 1."""
    out = str(tmp_path / "cache")
    code, err = run_cache_cli(capsys, "--data", str(tmp_path / "nope"), "--out", out)
    assert code == 2 and err == f"error: {tmp_path / 'nope' / 'items.parquet'}: not found; is {tmp_path / 'nope'} " \
                                 "a prepared dataset directory?\n"
    code, err = run_cache_cli(capsys, "--data", str(tmp_path), "--out", out, "cache.pooling=max")
    assert code == 2 and err.startswith("error: ") and "cache.pooling" in err
    code, err = run_cache_cli(capsys, "--data", str(tmp_path))
    assert code == 2 and err == "error: give --out or cache.dir=…\n"


def test_a_corrupt_prepared_dataset_is_a_one_line_error(tmp_path, capsys):
    data = write_prepared(tmp_path / "data", 3, images=False)
    (data / "items.parquet").write_bytes(b"not parquet")
    code, err = run_cache_cli(capsys, "--data", str(data), "--out", str(tmp_path / "cache"))
    assert code == 2 and err.startswith(f"error: {data}: cannot read the prepared dataset: ") and err.count("\n") == 1


@pytest.mark.parametrize("backbone, expected", [
    ("./no_such_bert", "backbone.text=./no_such_bert: backbone directory not found: {tmp}/no_such_bert"),
    ("model_only", "text backbone {tmp}/model_only: its tokenizer knows 5 tokens"),
])
def test_cache_command_refuses_an_unusable_text_backbone(backbone, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_only_copy(backbones.write_text_backbone(tmp_path / "full"), tmp_path / "model_only")
    data = write_prepared(tmp_path / "data", 3, images=False)
    code, err = run_cache_cli(capsys, "--data", str(data), "--out", str(tmp_path / "cache"),
                              f"backbone.text={backbone}", "backbone.image=none")
    assert code == 2 and err.startswith("error: " + expected.format(tmp=tmp_path))
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_python_m_cache_exits_2_on_a_user_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xsmoe_ray.cache", "--data", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "cache")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
