"""Frozen backbones: loading through the Hugging Face Auto classes, the built-in demo ones, and the
per-layer [CLS] states the cache stores (DESIGN.md §5, first bullet).

A backbone is named by a Hugging Face id (``bert-base-uncased``), a local directory written with
``save_pretrained``, ``demo`` (the built-in tiny one for that modality) or ``none`` (modality skipped).
The demo backbones are ordinary checkpoints: a BERT-style and a ViT-style model with seeded random
weights, a WordPiece tokenizer over a fixed word list and a ViT image processor, written once with
``save_pretrained`` and then loaded through the very same Auto code path as a real model, so the demo
and the tests need no network.

What the cache stores for an item is ``hidden_states[l][:, 0]`` for ``l = 0..M``: the first-token
([CLS]) state of the embedding output (``l_0``) and of every encoder layer, as returned with
``output_hidden_states=True``. For ViT this is before the final LayerNorm, as in IISAN's cache.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEMO = "demo"
NONE = "none"
MODALITIES = ("text", "image")

# Bump when the demo architecture or its initialisation changes: caches record it and refuse reuse.
DEMO_VERSION = 1
DEMO_NAMES = {"text": f"bert-demo-v{DEMO_VERSION}", "image": f"vit-demo-v{DEMO_VERSION}"}

# Placeholders used when an item's content is unusable; the manifest lists every such item.
PLACEHOLDER_GREY = 128  # a mid-grey square: normalises to ~0 under ImageNet/ViT statistics
TEXT_PLACEHOLDER = "special tokens only ([CLS] [SEP]): the tokenizer's encoding of ''"
IMAGE_PLACEHOLDER = f"uniform mid-grey image (RGB {PLACEHOLDER_GREY}) at the cache image size"

# Product-description words, so that demo tokenisation splits real text into real tokens;
# single letters and digits (plus their ## continuations) make every ASCII word encodable.
DEMO_WORDS = """
a an and the of with for in on to by from at as or is it this that new one two three set pack
red blue green black white grey gray beige brown pink purple yellow orange navy cream khaki dark
light pale bright pastel colour color multi striped checked floral printed plain solid pattern
cotton linen wool silk denim jersey leather suede knit knitted fleece satin velvet lace mesh nylon
dress shirt skirt top trousers jeans shorts jacket coat blazer sweater hoodie cardigan vest
t shoe shoes boots sneakers sandals bag hat cap scarf socks belt bra brief swimsuit bikini
pyjamas sleeve sleeves long short collar neck hood pocket pockets button buttons zip waist
waistband hem fit slim regular relaxed loose oversized fitted high low rise soft warm cool
summer winter spring autumn classic modern casual formal sport sports basic everyday party
size small medium large kids women men baby girl boy adjustable elastic lined lining ribbed
wash washed vintage stretch smooth lightweight heavy thick thin pair style design detail details
front back side inside outside round v crew wide straight narrow cropped ankle knee length
lamp chair table sofa pillow blanket kitchen home garden tool tools phone case cable charger
camera speaker screen laptop battery wireless bluetooth usb power steel glass wood wooden
plastic metal ceramic bowl cup mug plate pan pot knife storage box mat towel bed sheet
""".split()
_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##ly", "##y"]


class BackboneError(ValueError):
    """A backbone that cannot be resolved, loaded or fed (names the modality and the backbone)."""


# ---------------------------------------------------------------------------------------------
# Demo backbones: written once with save_pretrained, loaded like any other checkpoint.


def demo_root() -> Path:
    """Where demo backbones live: ``$XSMOE_BACKBONE_DIR`` or ``~/.cache/xsmoe_ray/backbones``."""
    return Path(os.environ.get("XSMOE_BACKBONE_DIR") or Path.home() / ".cache" / "xsmoe_ray" / "backbones")


def demo_vocab() -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words = list(dict.fromkeys(DEMO_WORDS))
    pieces = [w for w in chars if w not in words] + ["##" + c for c in chars] + _SUFFIXES
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + pieces


def demo_text_config(**overrides: Any):
    """A 4-layer, 32-wide BERT over the demo vocabulary; ``overrides`` change any BertConfig field."""
    from transformers import BertConfig

    sizes = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)
    return BertConfig(**{"vocab_size": len(demo_vocab()), **sizes, **overrides})


def demo_image_config(**overrides: Any):
    """A 4-layer, 32-wide ViT on 32×32 images with 8×8 patches; ``overrides`` change ViTConfig fields."""
    from transformers import ViTConfig

    sizes = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                 intermediate_size=64)
    return ViTConfig(**{**sizes, **overrides})


def write_text_backbone(path: str | Path, config=None, seed: int = 0) -> Path:
    """Write a seeded random BERT-style model and the demo WordPiece tokenizer to ``path`` (once)."""
    config = config or demo_text_config()

    def write(tmp: Path) -> None:
        from transformers import BertModel

        torch.manual_seed(seed)
        BertModel(config).save_pretrained(tmp)
        _demo_tokenizer().save_pretrained(tmp)

    return _write_once(Path(path), write)


def write_image_backbone(path: str | Path, config=None, seed: int = 0) -> Path:
    """Write a seeded random ViT-style model and its image processor to ``path`` (once)."""
    config = config or demo_image_config()

    def write(tmp: Path) -> None:
        from transformers import ViTModel

        torch.manual_seed(seed)
        ViTModel(config).save_pretrained(tmp)
        _vit_processor(config.image_size).save_pretrained(tmp)

    return _write_once(Path(path), write)


def _demo_tokenizer():
    from transformers import BertTokenizer

    vocab = demo_vocab()
    # transformers 5 builds the tokenizer from a vocab dict; 4.x wants a vocab.txt file.
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:
        return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(vocab) + "\n")
    try:
        return BertTokenizer(vocab_file=f.name)
    finally:
        os.unlink(f.name)


def _vit_processor(image_size: int):
    import transformers

    # transformers 5 without torchvision only has the PIL-backed processor; both save the same JSON.
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(size={"height": image_size, "width": image_size})


def _write_once(path: Path, write) -> Path:
    """Write into a sibling temp dir and rename it into place: the directory exists only complete.

    Two processes racing both write; the loser's rename fails and its copy is discarded.
    """
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_demo(modality: str, root: str | Path | None = None) -> Path:
    """The demo backbone directory for ``modality``, written on first use."""
    path = Path(root or demo_root()) / DEMO_NAMES[modality]
    if modality == "text":
        return write_text_backbone(path)
    return write_image_backbone(path)


# ---------------------------------------------------------------------------------------------
# Naming, identity and loading.


def resolve_source(name: str, modality: str, root: str | Path | None = None) -> str | None:
    """What ``from_pretrained`` gets for a backbone name: a local path or a hub id; None for 'none'."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if name == NONE:
        return None
    if name == DEMO:
        return str(ensure_demo(modality, root))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


def backbone_id(name: str, modality: str) -> str:
    """A machine-independent identity for a backbone name, compared between a cache and a request.

    Demo backbones are identified by their version (their directory differs between machines);
    local directories by absolute path; hub ids as given.
    """
    if name == DEMO:
        return f"demo:{DEMO_NAMES[modality]}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def describe(name: str, modality: str, root: str | Path | None = None) -> dict[str, Any]:
    """Identity, revision and shape of a backbone, read from its config only (no weights loaded)."""
    from transformers import AutoConfig

    source = resolve_source(name, modality, root)
    if source is None:
        raise BackboneError(f"backbone for {modality} is 'none'")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as e:  # not a local checkpoint and not downloadable: say which backbone
        raise BackboneError(f"cannot load the {modality} backbone {name!r}: {e}") from e
    layers, dim = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(dim, int):
        raise BackboneError(f"{modality} backbone {name!r}: config has no num_hidden_layers/hidden_size; "
                         "use a BERT/ViT-style encoder")
    return {
        "backbone": name,
        "id": backbone_id(name, modality),
        "source": source,
        "name_or_path": getattr(config, "_name_or_path", None) or source,
        "revision": getattr(config, "_commit_hash", None) or _snapshot_revision(source),
        "model_type": getattr(config, "model_type", None),
        "layers": layers,
        "dim": dim,
        "max_positions": getattr(config, "max_position_embeddings", None),
        "native_image_size": getattr(config, "image_size", None),
    }


def _snapshot_revision(source: str) -> str | None:
    """The hub commit a cached download came from (``.../snapshots/<sha>/``); None for local dirs."""
    if Path(source).is_dir():
        return None
    try:
        from transformers.utils import cached_file

        path = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
    except Exception:  # offline and not cached: the revision is simply unknown
        return None
    match = re.search(r"snapshots/([0-9a-f]{40})", str(path or ""))
    return match.group(1) if match else None


@functools.lru_cache(maxsize=4)
def load_tokenizer(source: str):
    """Cached per process: Ray reuses worker processes, so CPU-stage tasks load a tokenizer once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def load_model(source: str) -> torch.nn.Module:
    """A frozen encoder in eval mode that returns every layer's hidden states."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, output_hidden_states=True)
    model.eval().requires_grad_(False)
    return model


def load_image_processor(source: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(source)


# ---------------------------------------------------------------------------------------------
# Content preparation (CPU stage) — pure functions.


def truncate_words(text: str | None, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words, single-spaced (paper §5.2: 40 words)."""
    return " ".join((text or "").split()[:max_words])


def max_tokens_for(max_words: int, max_positions: int | None) -> int:
    """Token budget for ``max_words`` words: two WordPieces per word plus [CLS]/[SEP], capped by the
    model's position table. Generous on purpose: words are the paper's unit, tokens only a bound."""
    budget = 2 * max_words + 2
    return min(budget, max_positions) if max_positions else budget


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> dict[str, np.ndarray]:
    """Fixed-width ids and masks ``[B, max_tokens]`` so batches concatenate across Ray Data blocks;
    the encoder trims the padding back to the longest row before running the model."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_tokens,
                    return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int8)}


def placeholder_image(size: int) -> np.ndarray:
    return np.full((size, size, 3), PLACEHOLDER_GREY, dtype=np.uint8)


def decode_image(path: str | None, size: int) -> tuple[np.ndarray, str]:
    """RGB uint8 ``[size, size, 3]`` and '' — or the placeholder and why the image was unusable."""
    from PIL import Image

    if not path:
        return placeholder_image(size), "no image"
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8), ""
    except FileNotFoundError:
        return placeholder_image(size), "missing file"
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError… for bad files
        return placeholder_image(size), f"corrupt image: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Encoding.


def layer_states(model: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """``[B, M+1, d]``: the first-token state of the embeddings and of every layer."""
    with torch.inference_mode():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # M+1 × [B, T, d]
    return torch.stack([h[:, 0] for h in hidden], dim=1)


def encode_tokens(model: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray,
                  device: torch.device) -> np.ndarray:
    """float16 ``[B, M+1, d]`` for tokenised texts (padding beyond the longest row trimmed first)."""
    width = max(int(attention_mask.sum(axis=1).max()), 1)
    ids = torch.as_tensor(input_ids[:, :width], dtype=torch.long, device=device)
    mask = torch.as_tensor(attention_mask[:, :width], dtype=torch.long, device=device)
    return layer_states(model, input_ids=ids, attention_mask=mask).to(torch.float16).cpu().numpy()


def image_forward_kwargs(model: torch.nn.Module, image_size: int) -> dict[str, Any]:
    """ViT-style models take another image size by interpolating position embeddings."""
    native = getattr(model.config, "image_size", image_size)
    if native == image_size:
        return {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        return {"interpolate_pos_encoding": True}
    raise BackboneError(f"image backbone expects {native}px images and cannot interpolate; "
                     f"set backbone.image_size={native}")


def encode_pixels(processor, model: torch.nn.Module, pixels: np.ndarray, device: torch.device,
                  forward_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """float16 ``[B, M+1, d]`` for uint8 images ``[B, S, S, 3]`` already resized by the CPU stage;
    the processor only rescales and normalises."""
    values = processor(images=list(pixels), return_tensors="pt", do_resize=False)["pixel_values"]
    out = layer_states(model, pixel_values=values.to(device), **(forward_kwargs or {}))
    return out.to(torch.float16).cpu().numpy()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
