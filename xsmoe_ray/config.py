"""Typed experiment configuration: frozen dataclasses per concern, YAML presets, dotted overrides.

A run is configured by a preset (``demo`` by default, shipped in ``xsmoe_ray/configs``) or a YAML
file, then ``key=value`` overrides such as ``data.path=/x model.tau=0.1 run.seed=3``.
Unknown keys and values of the wrong type are errors that list what is valid, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

FORMATS = ("synthetic", "hm", "amazon", "generic", "recbole")
SIDE_VARIANTS = ("xsmoe", "static", "noft", "visual", "textual", "iisan_rh", "iisan_kd")  # model/xsmoe.py
VARIANTS = SIDE_VARIANTS + ("sasrec_id", "sasrec_id_rh", "sasrec_id_kd", "mmmlp", "mmmlp_rh", "mmmlp_kd", "gag",
                            "ssrm", "lgmrec", "lgmrec_rh", "lgmrec_kd")  # the rest: model/baselines/
ROW_LAYOUTS = ("sliding", "once", "legacy")  # train/data.py


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


@dataclass(frozen=True)
class SynthConfig:
    """Size and drift of the synthetic H&M-layout dataset (``data.format=synthetic``)."""

    users: int = field(default=600, metadata={"help": "customers"})
    items: int = field(default=300, metadata={"help": "articles"})
    interactions: int = field(default=30_000, metadata={"help": "transactions"})
    seed: int = field(default=0, metadata={"help": "generator seed"})
    styles: int = field(default=6, metadata={"help": "visual style clusters"})
    tones: int = field(default=6, metadata={"help": "text tone clusters"})
    image_size: int = field(default=32, metadata={"help": "JPEG side in pixels"})

    def __post_init__(self) -> None:
        _require(self.users > 0 and self.items > 0 and self.interactions > 0,
                 "synth.users, synth.items and synth.interactions must be positive")
        _require(self.styles > 1 and self.tones > 1, "synth.styles and synth.tones must be >= 2")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is cut into streaming windows (DESIGN.md §3-§4)."""

    format: str = field(default="synthetic", metadata={"help": f"one of {FORMATS}"})
    path: str = field(default="", metadata={"help": "dataset root (synthetic: where it is written)"})
    category: str = field(default="", metadata={
        "help": "Amazon category file stem, e.g. Home_and_Kitchen; recbole: the atomic files' stem (default: the directory name)"})
    date_from: str = field(default="", metadata={"help": "keep interactions on/after YYYY-MM-DD"})
    date_to: str = field(default="", metadata={"help": "keep interactions before YYYY-MM-DD"})
    chunks: int = field(default=10, metadata={"help": "T+1 chunks of equal row count"})
    k_core: int = field(default=3, metadata={"help": "per-chunk iterative k-core (users and items)"})
    train_frac: float = field(default=0.85, metadata={"help": "first share of each chunk used for training"})
    max_len: int = field(default=10, metadata={"help": "L, context length"})
    max_words: int = field(default=40, metadata={"help": "words of item text kept"})
    dedup: bool = field(default=True, metadata={"help": "drop exact duplicate (user,item,time) rows (counted)"})
    mask_history: bool = field(default=False, metadata={"help": "mask a user's seen items when ranking"})
    sample_users: int = field(default=0, metadata={
        "help": "keep a uniform random sample of this many users after loading, before the stream (0 = all)"})
    sample_seed: int = field(default=0, metadata={
        "help": "seed of data.sample_users (a data setting, independent of run.seed)"})
    recbole_user_field: str = field(default="user_id", metadata={"help": "recbole: user field of the .inter file"})
    recbole_item_field: str = field(default="item_id", metadata={"help": "recbole: item field of .inter and .item"})
    recbole_time_field: str = field(default="timestamp", metadata={
        "help": "recbole: time field of the .inter file (seconds since the epoch)"})
    recbole_text: str = field(default="", metadata={
        "help": "recbole: item text template over .item fields, e.g. '{movie_title} ({release_year}) {genre}' "
                "(empty: that one when the fields exist, else every token/token_seq field joined)"})

    def __post_init__(self) -> None:
        _require(self.format in FORMATS, f"data.format must be one of {FORMATS}, got {self.format!r}")
        _require(self.chunks >= 3, "data.chunks must be >= 3 (warm-up, one train window, one test window)")
        _require(self.k_core >= 1, "data.k_core must be >= 1")
        _require(0.0 < self.train_frac < 1.0, "data.train_frac must be in (0, 1)")
        _require(self.max_len >= 1, "data.max_len must be >= 1")
        _require(self.max_words >= 1, "data.max_words must be >= 1")
        _require(self.sample_users >= 0, "data.sample_users must be >= 0 (0 = all users)")
        # YYYY-MM-DD strings order as their days; the readers check the format itself
        _require(not (self.date_from and self.date_to) or self.date_from < self.date_to,
                 f"data.date_from ({self.date_from}) must be before data.date_to ({self.date_to}): "
                 "the kept days are [date_from, date_to)")


@dataclass(frozen=True)
class BackboneConfig:
    """Frozen encoders: a Hugging Face id or a local directory; ``demo`` means the built-in tiny ones."""

    text: str = field(default="demo", metadata={"help": "text encoder (HF id, local dir, 'demo' or 'none')"})
    image: str = field(default="demo", metadata={"help": "image encoder (HF id, local dir, 'demo' or 'none')"})
    image_size: int = field(default=224, metadata={"help": "image side fed to the encoder"})

    def __post_init__(self) -> None:
        _require(self.image_size >= 1, "backbone.image_size must be >= 1")


@dataclass(frozen=True)
class CacheConfig:
    """Layer-output cache build (Ray Data)."""

    dir: str = field(default="", metadata={"help": "cache directory (default: <run.out>/cache)"})
    batch_size: int = field(default=64, metadata={"help": "items per encoder batch"})
    workers: int = field(default=1, metadata={"help": "encoder actors (one GPU each with cache.use_gpu)"})
    use_gpu: bool = field(default=False, metadata={
        "help": "one GPU per encoder actor, requested from Ray (an autoscaler brings GPU nodes); false: CPU actors"})
    pooling: str = field(default="mean", metadata={"help": "per-layer pooling stored in the cache: cls (first "
                                                          "token) | mean (non-padding tokens / image patches)"})

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1 and self.workers >= 1, "cache.batch_size and cache.workers must be >= 1")
        _require(self.pooling in ("cls", "mean"), f"cache.pooling must be 'cls' or 'mean', got {self.pooling!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Side network, fusion and sequence encoder (paper §4, §5.2)."""

    variant: str = field(default="xsmoe", metadata={"help": f"one of {VARIANTS}"})
    d_prime: int = field(default=64, metadata={"help": "expert bottleneck d'"})
    layers_per_group: int = field(default=6, metadata={"help": "backbone layers per side layer"})
    tau: float = field(default=0.0, metadata={"help": "utilization pruning threshold"})
    embed_dim: int = field(default=64, metadata={"help": "item/user embedding size after fusion"})
    seq_blocks: int = field(default=2, metadata={"help": "sequence-encoder Transformer blocks"})
    seq_heads: int = field(default=2, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "sequence-encoder dropout"})
    replay_size: int = field(default=2048, metadata={"help": "reservoir size (training rows) of the _rh variants, gag and ssrm"})
    kd_weight: float = field(default=1.0, metadata={"help": "iisan_kd distillation weight"})
    # 'none' is the real-data choice (MovieLens-1M validation, docs/RESULTS.md); the synthetic presets set 'layer',
    # which wins on their validation windows.
    feature_norm: str = field(default="none", metadata={
        "help": "'none': the raw cached states; 'layer': standardise each cached layer with D_0 items' mean and "
                "scale (fixed at warm-up)"})
    new_expert_share: float = field(default=0.0, metadata={
        "help": "router share of the experts' mass a new expert starts with (0: the paper's mean row, 1/(N+1))"})
    new_expert_init: str = field(default="mean", metadata={
        "help": "a new expert's weights and router row: 'mean' of the layer's experts (paper) or 'last' (a copy of "
                "the newest expert, output unchanged at expansion)"})
    new_expert_copy_share: float = field(default=0.5, metadata={
        "help": "with model.new_expert_init=last: the share of the newest expert's router mass its copy takes "
                "(the frozen original keeps the rest; 0.5 halves it)"})
    item_ids: bool = field(default=False, metadata={
        "help": f"add a trainable item-ID embedding to the fused content embedding (one of {SIDE_VARIANTS}; "
                "an extension beyond the paper, docs/RESULTS.md)"})
    item_id_dropout: float = field(default=0.0, metadata={
        "help": "with model.item_ids: the chance that a training batch drops an item's ID row, so content alone "
                "must score it, as it scores items never trained (0: never)"})

    def __post_init__(self) -> None:
        _require(self.variant in VARIANTS, f"model.variant must be one of {VARIANTS}, got {self.variant!r}")
        _require(self.d_prime >= 1 and self.layers_per_group >= 1, "model.d_prime and model.layers_per_group must be >= 1")
        _require(0.0 <= self.tau < 1.0, "model.tau must be in [0, 1)")
        _require(0.0 <= self.new_expert_share < 1.0, "model.new_expert_share must be in [0, 1)")
        _require(self.new_expert_init in ("mean", "last"),
                 f"model.new_expert_init must be 'mean' or 'last', got {self.new_expert_init!r}")
        _require(0.0 < self.new_expert_copy_share < 1.0, "model.new_expert_copy_share must be in (0, 1)")
        _require(self.new_expert_copy_share == 0.5 or self.new_expert_init == "last",
                 "model.new_expert_copy_share needs model.new_expert_init=last")
        _require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        # the rest would otherwise fail only inside a Ray Train worker, after data and cache are built
        _require(self.embed_dim >= 1 and self.seq_blocks >= 1 and self.seq_heads >= 1,
                 "model.embed_dim, model.seq_blocks and model.seq_heads must be >= 1")
        _require(self.embed_dim % self.seq_heads == 0,
                 f"model.embed_dim ({self.embed_dim}) must be divisible by model.seq_heads ({self.seq_heads})")
        _require(self.replay_size >= 1, "model.replay_size must be >= 1")
        _require(self.kd_weight >= 0.0, "model.kd_weight must be >= 0")
        _require(self.feature_norm in ("none", "layer"), f"model.feature_norm must be 'none' or 'layer', got {self.feature_norm!r}")
        _require(not self.item_ids or self.variant in SIDE_VARIANTS,
                 f"model.item_ids is for {SIDE_VARIANTS}; {self.variant!r} has its own item tower")
        _require(0.0 <= self.item_id_dropout < 1.0, "model.item_id_dropout must be in [0, 1)")
        _require(self.item_id_dropout == 0.0 or self.item_ids, "model.item_id_dropout needs model.item_ids=true")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation per window (paper §5.2) and Ray Train scaling."""

    batch_size: int = field(default=256, metadata={"help": "global training batch (split across Ray Train workers)"})
    lr: float = field(default=1e-3, metadata={"help": "initial learning rate, reset each window"})
    lr_decay: float = field(default=0.95, metadata={"help": "multiplicative decay per epoch"})
    lr_min: float = field(default=1e-4, metadata={"help": "learning-rate floor"})
    patience: int = field(default=5, metadata={"help": "epochs without val NDCG@10 gain before stopping"})
    max_epochs: int = field(default=50, metadata={"help": "epoch cap per window"})
    rows: str = field(default="sliding", metadata={
        "help": f"training rows, one of {ROW_LAYOUTS}: 'sliding' one row per target, loss at every position whose "
                "target is this window's; 'once' each target once per epoch; 'legacy' the layout before issue 10 "
                "(loss at every position, earlier chunks' targets replayed; comparisons only)"})
    precision: str = field(default="auto", metadata={
        "help": "'auto' (fp16 on CUDA, float32 on CPU), 'half' (fp16 on CUDA, bf16 on CPU) or 'full' (float32)"})
    num_workers: int = field(default=1, metadata={"help": "Ray Train workers"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts allowed"})
    max_steps: int = field(default=0, metadata={
        "help": "cap on optimizer steps per epoch (0 = every batch); for benchmarks and smoke runs"})
    last_window: int = field(default=-1, metadata={
        "help": "stop after this window (-1 = all); a relaunch with a later one continues"})

    def __post_init__(self) -> None:
        _require(self.batch_size >= 2, "train.batch_size must be >= 2")
        _require(self.max_epochs >= 1 and self.patience >= 1, "train.max_epochs and train.patience must be >= 1")
        _require(self.lr > 0.0 and self.lr_min >= 0.0, "train.lr must be > 0 and train.lr_min >= 0")
        _require(0.0 < self.lr_decay <= 1.0, "train.lr_decay must be in (0, 1]")
        _require(self.max_failures >= 0, "train.max_failures must be >= 0")
        _require(self.max_steps >= 0, "train.max_steps must be >= 0 (0 = no cap)")
        _require(self.last_window >= -1, "train.last_window must be >= -1 (-1 = all windows)")
        _require(self.precision in ("auto", "half", "full"), "train.precision must be 'auto', 'half' or 'full'")
        _require(self.rows in ROW_LAYOUTS, f"train.rows must be one of {ROW_LAYOUTS}, got {self.rows!r}")
        # 0 would be Ray Train's local mode: no torch.distributed and no persisted checkpoints (no resume).
        _require(self.num_workers >= 1, "train.num_workers must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it is seeded."""

    out: str = field(default="runs/demo", metadata={"help": "run directory: local path or URI (s3://..., gs://..., file:///...)"})
    seed: int = field(default=0, metadata={"help": "global seed"})
    name: str = field(default="xsmoe", metadata={"help": "run name"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs for a local Ray (0 = all)"})
    local_dir: str = field(default="", metadata={
        "help": "for a URI run.out: local/shared dir for prepared data and cache (default ~/.cache/xsmoe_ray/runs/<hash>)"})

    def __post_init__(self) -> None:
        _require(self.num_cpus >= 0, "run.num_cpus must be >= 0 (0 = all)")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one streaming run needs; ``load_config`` builds it."""

    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("xsmoe_ray.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str) -> dict[str, Any]:
    """A preset name (``demo``) or a path to a YAML file.

    A bare preset name means the preset even where the working directory has a file or folder of
    that name (a run directory ``demo/``, H&M data in ``hm/``); ``./demo`` names the file.
    """
    path = Path(source)
    bare_preset = source in preset_names() and path.suffix == "" and len(path.parts) == 1
    if not bare_preset and (path.suffix in (".yaml", ".yml") or path.exists()):
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}" + (" (a directory)" if path.is_dir() else ""))
        text = path.read_text()
    else:
        if source not in preset_names():
            raise ConfigError(f"unknown preset {source!r}; presets: {preset_names()} (or pass a .yaml path)")
        text = resources.files("xsmoe_ray.configs").joinpath(f"{source}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    return data


def valid_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts, e.g. ``model.tau``."""
    keys = []
    for f in dataclasses.fields(cls):
        ftype = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            keys.extend(valid_keys(ftype, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, ftype: Any) -> Any:
    """Check (YAML values) or convert (command-line strings) a value to the field's type."""
    origin = typing.get_origin(ftype)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if ftype is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif ftype is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {getattr(ftype, '__name__', ftype)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        keys = ", ".join(valid_keys(cls, prefix))
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: {keys}")
    kwargs = {}
    for name, value in values.items():
        ftype = types_[name]
        if dataclasses.is_dataclass(ftype):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping of {ftype.__name__} keys, got {value!r}")
            kwargs[name] = _build(ftype, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, ftype)
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["model.tau=0.1", "run.seed=3"]`` → nested dict of raw strings."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(valid_keys())}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(source: str | None = "demo", overrides: list[str] | None = None) -> ExperimentConfig:
    """Preset or YAML file, then dotted overrides; validated into an :class:`ExperimentConfig`."""
    raw = _read_yaml(source) if source else {}
    raw = _merge(raw, parse_overrides(overrides or []))
    return _build(ExperimentConfig, raw, "")


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)



# Keys a relaunch may change without changing what the windows compute: where things live, how many
# processes share the work, how failures are retried.
RESULT_NEUTRAL = ("run.out", "run.num_cpus", "run.local_dir", "data.path", "cache.dir", "cache.workers",
                  "cache.batch_size", "cache.use_gpu", "train.num_workers", "train.max_failures",
                  "train.last_window")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def result_differences(old: dict[str, Any], new: ExperimentConfig) -> list[str]:
    """``key: old -> new`` for every setting that differs and would change results (see RESULT_NEUTRAL).

    ``old`` is a saved :func:`to_dict`; a key it lacks (a config from an older version) counts as its
    current default.
    """
    defaults, now = _flat(to_dict(ExperimentConfig())), _flat(to_dict(new))
    before = {**defaults, **_flat(old)}
    return [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items()
            if k not in RESULT_NEUTRAL and before.get(k) != v]


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from :func:`to_dict` output (e.g. inside a Ray worker), validated again."""
    return _build(ExperimentConfig, values, "")
