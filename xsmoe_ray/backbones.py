"""Frozen backbones: loading through the Hugging Face Auto classes, the built-in demo ones, and the
pooled per-layer states the cache stores (DESIGN.md §5, first bullet).

A backbone is named by a Hugging Face id (``bert-base-uncased``), a local directory written with
``save_pretrained``, ``demo`` (the built-in tiny one for that modality) or ``none`` (modality skipped).
The demo backbones are ordinary checkpoints: a BERT-style and a ViT-style model with seeded random
weights, a WordPiece tokenizer over a fixed word list and a ViT image processor, written once with
``save_pretrained`` and then loaded through the very same Auto code path as a real model, so the demo
and the tests need no network.

What the cache stores for an item is one pooled vector of ``hidden_states[l]`` for ``l = 0..M``:
the embedding output (``l_0``) and every encoder layer, as returned with ``output_hidden_states=True``
(for ViT the residual stream, before the final LayerNorm, as in IISAN's cache). The pooling is the
cache setting ``cache.pooling`` (:data:`POOLINGS`), one rule for both modalities:

* ``cls``: the first token, ``hidden_states[l][:, 0]`` ([CLS] for BERT and ViT).
* ``mean``: text — the mean over the non-padding tokens (attention mask; [CLS] and [SEP] included,
  as in sentence-transformers' mean pooling); images — the mean over the patch tokens, the [CLS]
  token (and any other prefix token) excluded, as timm's ``global_pool='avg'`` and MAE do.

Why ``mean`` exists, and why images follow the same rule. ``l_0`` under ``cls`` is the same vector
for every item by construction: BERT's is the [CLS] embedding at position 0, ViT's is
``cls_token + position_embeddings[0]``; no input reaches it. In the next layers the [CLS] state is
dominated by that constant: for pretrained BERT-family encoders it varies across items by well under
1% of its norm until the last layer (MiniLM-L6 measured in docs/BENCHMARKS.md, "Cache pooling"), and
a pretrained ViT's [CLS] is a learned query trained only through the last layer's output, so its
early-layer states are likewise near-constant across images. Mean pooling over the content tokens
(words, patches) varies at every layer including ``l_0`` (the word / patch embeddings the paper
calls ``l_0``). The [CLS] token is left out of the image mean because at ``l_0`` it is an exact
constant and in every layer it is one token out of (S/p)^2 summarising the others; the text mean
keeps [CLS]/[SEP] because that is how sentence encoders are pooled and trained (MiniLM among them),
and the attention mask is what separates content from padding there. Measured on the demo ViT, with
and without [CLS], in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
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

# Pooling of each layer's token states into the one vector the cache stores (module docstring).
POOLINGS = ("cls", "mean")

# Bump when the demo *code* changes (how weights are drawn or written). Changes to the sizes below
# need no bump: the demo name carries a fingerprint of them (demo_name), so a changed demo config
# gets a new directory and a new backbone id, and caches built from the old weights are refused.
DEMO_VERSION = 2
DEMO_SEED = 0
# Initialisation std (HF default 0.02). With the default, seeded random weights leave the BERT's
# [CLS] state of layers 1-4 constant across items to 0.02-0.03% of its norm (about one float16
# step), and the ViT residual stream at norm 0.2. Text 0.5: [CLS] std across items 6-11% of the
# norm (post-LayerNorm, so the norm stays sqrt(32)); image 0.1: norms 1-5, like the text's, and
# 12-16% spread (0.5 would grow the ViT residual stream to norm 100). Measured over the demo's
# synthetic items in docs/BENCHMARKS.md ("Demo backbones"). Still 4 layers x 32 wide (M = 4).
DEMO_TEXT_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=128, initializer_range=0.5)
DEMO_IMAGE_SIZES = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, initializer_range=0.1)

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
    """A 4-layer, 32-wide BERT over the demo vocabulary (:data:`DEMO_TEXT_SIZES`); ``overrides``
    change any BertConfig field."""
    from transformers import BertConfig

    return BertConfig(**{"vocab_size": len(demo_vocab()), **DEMO_TEXT_SIZES, **overrides})


def demo_image_config(**overrides: Any):
    """A 4-layer, 32-wide ViT on 32×32 images with 8×8 patches (:data:`DEMO_IMAGE_SIZES`);
    ``overrides`` change ViTConfig fields."""
    from transformers import ViTConfig

    return ViTConfig(**{**DEMO_IMAGE_SIZES, **overrides})


def demo_fingerprint(modality: str) -> str:
    """Hash of everything that decides a demo backbone's weights and inputs: code version, seed,
    sizes and (text) the vocabulary. Pure Python: no transformers import."""
    recipe = {"version": DEMO_VERSION, "seed": DEMO_SEED,
              "sizes": DEMO_TEXT_SIZES if modality == "text" else DEMO_IMAGE_SIZES}
    if modality == "text":
        recipe["vocab"] = demo_vocab()
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def demo_name(modality: str) -> str:
    """Directory name of a demo backbone, e.g. ``bert-demo-v2-1a2b3c4d``; changes with its recipe."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return f"{'bert' if modality == 'text' else 'vit'}-demo-v{DEMO_VERSION}-{demo_fingerprint(modality)}"


def write_text_backbone(path: str | Path, config=None, seed: int = DEMO_SEED) -> Path:
    """Write a seeded random BERT-style model and the demo WordPiece tokenizer to ``path`` (once)."""
    config = config or demo_text_config()

    def write(tmp: Path) -> None:
        from transformers import BertModel

        torch.manual_seed(seed)
        BertModel(config).save_pretrained(tmp)
        _demo_tokenizer().save_pretrained(tmp)

    return _write_once(Path(path), write)


def write_image_backbone(path: str | Path, config=None, seed: int = DEMO_SEED) -> Path:
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
    path = Path(root or demo_root()) / demo_name(modality)
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
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if is_path_name(name):
        raise missing_directory(name, modality, path)
    return name


# A name starting with one of these is a filesystem path even where the hub's rules would allow it.
PATH_PREFIXES = ("/", "~", "./", "../")


def is_path_name(name: str) -> bool:
    """True when ``name`` can only mean a local directory: an absolute, home or ``./``/``../`` path, or
    a string the hub client refuses as a repo id (``models/bert/base``). Such a name that does not
    exist would otherwise reach the hub and come back as a repo-id syntax error that hides the path."""
    if name.startswith(PATH_PREFIXES) or name in (".", ".."):
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def missing_directory(name: str, modality: str, path: Path) -> BackboneError:
    """The error for a path-like backbone name that is no directory; the absolute path shows which
    working directory a relative name was looked up from."""
    problem = "backbone path is not a directory" if path.exists() else "backbone directory not found"
    return BackboneError(f"backbone.{modality}={name}: {problem}: {path.resolve()}")


def backbone_id(name: str, modality: str) -> str:
    """A machine-independent identity for a backbone name, compared between a cache and a request.

    Demo backbones are identified by their versioned, fingerprinted name (their directory differs
    between machines); local directories by absolute path; hub ids as given.
    """
    if name == DEMO:
        return f"demo:{demo_name(modality)}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def backbone_depths(backbone_cfg, modalities) -> dict[str, int]:
    """Layers of each of ``modalities``' backbones, read from their configs (no weights), to refuse a
    layer grouping before hours of encoding. A backbone that is ``none`` or cannot be described here
    (a hub id while offline) is left out: the cache build reports it, and the built cache's manifest
    is checked again before training."""
    depths = {}
    for modality in modalities:
        name = getattr(backbone_cfg, modality)
        if name == NONE:
            continue
        try:
            depths[modality] = int(describe(name, modality)["layers"])
        except (BackboneError, OSError):
            continue
    return depths


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
    if modality == "text":  # refuse an unusable tokenizer here, before a Ray job loads it in every task
        load_tokenizer(source)
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


# A tokenizer that knows fewer than this share of the model's vocabulary (config.json ``vocab_size``)
# is not the model's own. Real tokenizers cover their embedding table: len(tokenizer) == vocab_size
# for BERT and MiniLM (30522), a few percent short where the table is padded to a multiple of 64 or
# 128 (GPT-NeoX: 50277 of 50432); the demo's is 311 of 313. transformers 5, given a directory without
# tokenizer files, builds one of the special tokens alone (5 of 30522) that turns every word into
# [UNK], so every item would encode the same. One half lies far from both.
MIN_VOCAB_SHARE = 0.5


@functools.lru_cache(maxsize=4)
def load_tokenizer(source: str):
    """Cached per process: Ray reuses worker processes, so CPU-stage tasks load a tokenizer once.
    Refuses a tokenizer that does not cover the model's vocabulary (:data:`MIN_VOCAB_SHARE`)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:  # transformers 4.x: no tokenizer files; or offline
        raise BackboneError(f"cannot load the tokenizer of the text backbone {source}: {e}") from e
    check_vocabulary(len(tokenizer), getattr(AutoConfig.from_pretrained(source), "vocab_size", None), source)
    return tokenizer


def check_vocabulary(tokens: int, vocab_size: int | None, source: str) -> None:
    """Raise unless a tokenizer of ``tokens`` tokens plausibly belongs to a model of ``vocab_size``."""
    if isinstance(vocab_size, int) and tokens < MIN_VOCAB_SHARE * vocab_size:
        raise BackboneError(
            f"text backbone {source}: its tokenizer knows {tokens} tokens but config.json says vocab_size="
            f"{vocab_size}, so most words would encode as [UNK] (a directory with only the model files "
            f"gets such a tokenizer). Save the model's own tokenizer next to it: "
            f"tokenizer.save_pretrained({source!r})")


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


_WORD = re.compile(r"\S+")


def truncate_words(text: str | None, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words, single-spaced (paper §5.2: 40 words).

    Scans only as far as those words: ``str.split`` on a huge field (an 80 MB description) built a
    list of every word first, over a GB of memory per call.
    """
    return " ".join(m.group() for m in itertools.islice(_WORD.finditer(text or ""), max_words))


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


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise BackboneError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return pooling


def pool(hidden: torch.Tensor, pooling: str, mask: torch.Tensor | None = None, prefix: int = 1) -> torch.Tensor:
    """``[B, d]`` from one layer's token states ``[B, T, d]`` (module docstring).

    ``mask`` ``[B, T]`` (text): ``mean`` averages the tokens where it is 1. Without a mask (images)
    ``mean`` averages tokens ``prefix:`` (the patches; ``prefix`` = [CLS] and other leading tokens).
    Computed in float32 whatever the model's dtype.
    """
    if check_pooling(pooling) == "cls":
        return hidden[:, 0]
    hidden = hidden.float()
    if mask is None:
        return hidden[:, prefix:].mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def layer_states(model: torch.nn.Module, pooling: str = "cls", mask: torch.Tensor | None = None, prefix: int = 1,
                 **inputs: torch.Tensor) -> torch.Tensor:
    """``[B, M+1, d]``: the pooled state of the embeddings and of every layer (see :func:`pool`)."""
    with torch.inference_mode():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # M+1 × [B, T, d]
        return torch.stack([pool(h, pooling, mask, prefix) for h in hidden], dim=1)


def encode_tokens(model: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray,
                  device: torch.device, pooling: str = "cls") -> np.ndarray:
    """float16 ``[B, M+1, d]`` for tokenised texts (padding beyond the longest row trimmed first)."""
    width = max(int(attention_mask.sum(axis=1).max()), 1)
    ids = torch.as_tensor(input_ids[:, :width], dtype=torch.long, device=device)
    mask = torch.as_tensor(attention_mask[:, :width], dtype=torch.long, device=device)
    states = layer_states(model, pooling, mask=mask, input_ids=ids, attention_mask=mask)
    return states.to(torch.float16).cpu().numpy()


def prefix_tokens(model: torch.nn.Module, tokens: int, height: int, width: int) -> int:
    """Leading non-patch tokens of an image model's sequence ([CLS], distillation, registers):
    the sequence length minus the patch count; 1 when the config names no patch size."""
    patch = getattr(model.config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    if not isinstance(patch, int) or patch < 1:
        return 1
    return max(tokens - (height // patch) * (width // patch), 0)


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
                  forward_kwargs: dict[str, Any] | None = None, pooling: str = "cls") -> np.ndarray:
    """float16 ``[B, M+1, d]`` for uint8 images ``[B, S, S, 3]`` already resized by the CPU stage;
    the processor only rescales and normalises."""
    values = processor(images=list(pixels), return_tensors="pt", do_resize=False)["pixel_values"].to(device)
    with torch.inference_mode():
        hidden = model(pixel_values=values, output_hidden_states=True, **(forward_kwargs or {})).hidden_states
        prefix = prefix_tokens(model, hidden[0].shape[1], values.shape[-2], values.shape[-1])
        out = torch.stack([pool(h, pooling, prefix=prefix) for h in hidden], dim=1)
    return out.to(torch.float16).cpu().numpy()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
