"""A Tune sweep file (``tune_configs/*.yaml``) parsed into typed, validated dataclasses.

    name: demo_sweep                  # experiment name (default: the file's stem)
    datasets:                         # one Tune experiment per dataset, run in this order
      drift_a:
        config: demo                  # preset name or YAML path (relative to this file)
        overrides: [synth.seed=1]     # this dataset only: a list of key=value or a mapping
    overrides: [data.chunks=6]        # every dataset
    search:                           # dotted config key -> constant or distribution
      model.tau: {grid_search: [0.0, 0.05, 0.10]}
      model.d_prime: {choice: [8, 16]}
    num_samples: 1                    # Tune semantics: the grid is repeated num_samples times
    metric: mean_val_ndcg10           # the default; mean_test_ndcg10 / mean_test_hr10 = test-set selection
                                      # (loads, with a warning); always maximised, ASHA stops on it too
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or omitted / {type: none}
    resources: {cpu: 1, gpu: 0, workers: 1}    # per worker; workers > 1 runs Train inside a trial
    max_concurrent_trials: 0          # 0 = as many as the resources allow

A dataset's config is its preset, then the sweep's ``overrides``, then its own ``overrides``, then
the command line's ``key=value``. ``run.out`` (where the sweep writes, default
``runs/sweeps/<name>``) and ``run.num_cpus`` are sweep-wide: only the sweep's ``overrides`` and the
command line may set them. Each dataset's ``run.out`` becomes ``<run.out>/datasets/<name>``, where
its prepared data and (unless ``cache.dir`` is set) its cache are built once, before any trial.

Only keys that leave the shared prepared data and cache unchanged may be searched (``model.*``,
``train.*`` except the resource keys, ``run.seed``); a data setting is a separate dataset entry.
Every error names the file and the key.

The metric picks the best config and is what ASHA stops on, so by default it is a validation figure
(``mean_val_ndcg10``: the mean of each window's best val NDCG@10 so far, warm-up included). The test
figures are still reported for every trial, but selecting on them tunes to the test set; a sweep
file that does so loads with a :class:`TestMetricSelectionWarning`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xsmoe_ray.config import ConfigError, ExperimentConfig, from_dict, load_config, parse_overrides, to_dict, valid_keys

VAL_METRICS = ("mean_val_ndcg10",)
TEST_METRICS = ("mean_test_ndcg10", "mean_test_hr10")  # reportable; selecting on them is test-set selection
METRICS = VAL_METRICS + TEST_METRICS
DEFAULT_METRIC = "mean_val_ndcg10"
DISCRETE = ("grid_search", "choice")
RANGES = ("uniform", "loguniform", "randint")  # [low, high); randint is integer-valued
TOP_KEYS = ("name", "datasets", "overrides", "search", "num_samples", "metric", "scheduler", "resources",
            "max_concurrent_trials")
SWEEP_WIDE = ("run.out", "run.num_cpus")
# Set from `resources` (one worker per trial, or Train inside the trial), never searched.
RESOURCE_KEYS = ("train.num_workers", "train.use_gpu", "train.max_failures")


class SweepError(ConfigError):
    """A sweep file that cannot be run; the message names the file and the key."""


class TestMetricSelectionWarning(UserWarning):
    """A sweep whose metric is a test figure: its best config (and ASHA) are chosen on the test set."""

    __test__ = False  # a warning class, not a pytest test class


def is_test_metric(metric: str) -> bool:
    return metric in TEST_METRICS or metric.startswith("mean_test_")


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a constant, a discrete set (``grid_search``/``choice``) or a range."""

    key: str  # dotted config key, e.g. "model.tau"
    kind: str  # "constant", one of DISCRETE, or one of RANGES
    values: tuple  # the constant, the discrete values, or (low, high)

    def candidates(self) -> list:
        """Every value a trial can get, or the integer range for ``randint``; None for float ranges."""
        if self.kind == "randint":
            return list(range(int(self.values[0]), int(self.values[1])))
        if self.kind in RANGES:
            return []
        return list(self.values)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    cfg: ExperimentConfig  # fully resolved; run.out = <sweep out>/datasets/<name>


@dataclass(frozen=True)
class SchedulerSpec:
    kind: str = "none"  # "asha" or "none"
    grace_period: int = 1  # windows; window 0 is the warm-up (no test figure, one val figure), hence >= 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class ResourceSpec:
    cpu: float = 1.0  # per worker
    gpu: float = 0.0  # per worker
    workers: int = 1  # 1: the window loop runs in the trial itself; > 1: a TorchTrainer inside the trial


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: Path
    out: Path
    num_cpus: int
    datasets: tuple[DatasetSpec, ...]
    search: tuple[Dimension, ...]
    num_samples: int = 1
    metric: str = DEFAULT_METRIC
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_concurrent_trials: int = 0

    def fingerprint(self) -> str:
        """Everything that changes what the trials compute; a restored sweep must match it."""
        body = {"name": self.name, "datasets": {d.name: to_dict(d.cfg) for d in self.datasets},
                "search": [dataclasses.asdict(d) for d in self.search], "num_samples": self.num_samples,
                "metric": self.metric, "scheduler": dataclasses.asdict(self.scheduler),
                "resources": dataclasses.asdict(self.resources)}
        return json.dumps(body, sort_keys=True, indent=1, default=str)

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)


# ---------------------------------------------------------------------------------------------
# Loading.


def load_sweep(path: str | Path, cli_overrides: list[str] | None = None) -> SweepSpec:
    """Read, resolve and validate a sweep file; raises :class:`SweepError` naming file and key."""
    path = Path(path)
    raw = _read(path)
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid top-level keys: {list(TOP_KEYS)}")
    name = str(raw.get("name") or path.stem)
    shared = _override_list(raw.get("overrides"), f"{where}: overrides")
    cli = list(cli_overrides or [])
    try:
        wide = parse_overrides(shared + cli).get("run", {})
    except ConfigError as e:
        raise SweepError(f"{where}: overrides: {e}") from e
    if "://" in str(wide.get("out") or ""):
        # Path() would quietly turn s3://b/x into a local folder "s3:/b/x".
        raise SweepError(f"{where}: run.out={wide['out']}: a sweep writes to a directory (local or on storage "
                         "every node mounts), not a URI; the stream job accepts URIs")
    out = Path(wide.get("out") or f"runs/sweeps/{name}").expanduser().resolve()
    resources = _resources(raw.get("resources"), where)
    _reject_resource_keys(shared, f"{where}: overrides")
    _reject_resource_keys(cli, "command line")
    # The resource keys of every trial's config follow `resources`, so a best config replays as run.
    fixed = [f"train.num_workers={resources.workers}", f"train.use_gpu={str(resources.gpu > 0).lower()}"]
    datasets = _datasets(raw.get("datasets"), path, shared, cli + fixed, out)
    max_concurrent = _int(raw.get("max_concurrent_trials", 0), f"{where}: max_concurrent_trials", low=0)
    if resources.workers > 1 and max_concurrent == 0:
        # A Train-inside-trial driver holds a fraction of a CPU; its workers' GPUs are asked for only when
        # its trainer starts, so Tune alone would start every trial at once and oversubscribe the GPUs.
        raise SweepError(f"{where}: resources.workers={resources.workers} runs Ray Train inside each trial; set "
                         f"max_concurrent_trials (e.g. the cluster's GPUs / {resources.workers})")
    return SweepSpec(
        name=name, source=path.resolve(), out=out, num_cpus=datasets[0].cfg.run.num_cpus, datasets=datasets,
        search=_search(raw.get("search"), where, datasets),
        num_samples=_int(raw.get("num_samples", 1), f"{where}: num_samples", low=1),
        metric=_metric(raw.get("metric", DEFAULT_METRIC), where),
        scheduler=_scheduler(raw.get("scheduler"), where),
        resources=resources,
        max_concurrent_trials=max_concurrent,
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: the top level must be a mapping with keys {list(TOP_KEYS)}")
    return raw


def _override_list(value: Any, where: str) -> list[str]:
    """A list of ``key=value`` strings, or a mapping ``{key: value}``, as ``key=value`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_as_text(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SweepError(f"{where}: expected a list of key=value strings or a mapping, got {value!r}")


def _as_text(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _datasets(value: Any, path: Path, shared: list[str], cli: list[str], out: Path) -> tuple[DatasetSpec, ...]:
    where = f"{path}: datasets"
    if not isinstance(value, dict) or not value:
        raise SweepError(f"{where}: expected a non-empty mapping of dataset name -> {{config, overrides}}")
    specs = []
    for name, entry in value.items():
        key = f"{where}.{name}"
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise SweepError(f"{key}: dataset names must be letters, digits, '_' or '-' (used in paths)")
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - {"config", "overrides"}:
            raise SweepError(f"{key}: expected a mapping with keys 'config' and 'overrides', got {entry!r}")
        own = _override_list(entry.get("overrides"), f"{key}.overrides")
        _reject_sweep_wide(own, f"{key}.overrides")
        _reject_resource_keys(own, f"{key}.overrides")
        source = str(entry.get("config", "demo"))
        if source.endswith((".yaml", ".yml")) and not Path(source).is_absolute():
            source = str(path.parent / source)  # relative to the sweep file, like an include
        try:
            cfg = load_config(source, shared + own + cli + [f"run.out={out / 'datasets' / name}"])
        except ConfigError as e:
            raise SweepError(f"{key}: {e}") from e
        specs.append(DatasetSpec(name=name, cfg=cfg))
    return tuple(specs)


def _reject_sweep_wide(overrides: list[str], where: str) -> None:
    for item in overrides:
        if item.split("=", 1)[0].strip() in SWEEP_WIDE:
            raise SweepError(f"{where}: {item.split('=', 1)[0]} is sweep-wide; set it in the sweep's "
                             "top-level overrides or on the command line")


def _reject_resource_keys(overrides: list[str], where: str) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("train.num_workers", "train.use_gpu"):
            raise SweepError(f"{where}: {key} is set by the sweep's 'resources' (workers, gpu); set it there")


# ---------------------------------------------------------------------------------------------
# The search space.


def searchable(key: str) -> bool:
    return (key.startswith(("model.", "train.")) and key not in RESOURCE_KEYS) or key == "run.seed"


def _search(value: Any, where: str, datasets: tuple[DatasetSpec, ...]) -> tuple[Dimension, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SweepError(f"{where}: search: expected a mapping of dotted config key -> value or distribution")
    dims = []
    for key, spec in value.items():
        at = f"{where}: search.{key}"
        if key not in valid_keys():
            raise SweepError(f"{at}: not a config key; valid keys: {', '.join(k for k in valid_keys() if searchable(k))}")
        if not searchable(key):
            raise SweepError(f"{at}: cannot be searched: trials of a dataset share one prepared dataset and "
                             "cache, and resources come from 'resources'. Searchable: model.*, train.* "
                             f"(not {', '.join(RESOURCE_KEYS)}), run.seed; make a data setting its own dataset entry")
        dim = _dimension(key, spec, at)
        for ds in datasets:
            _check_values(dim, ds.cfg, at)
        dims.append(dim)
    return tuple(dims)


def _dimension(key: str, spec: Any, at: str) -> Dimension:
    if not isinstance(spec, dict):
        return Dimension(key, "constant", (spec,))
    if len(spec) != 1:
        raise SweepError(f"{at}: a distribution is a one-key mapping, one of {list(DISCRETE + RANGES)}; got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in DISCRETE:
        if not isinstance(args, list) or not args:
            raise SweepError(f"{at}: {kind} needs a non-empty list of values, got {args!r}")
        return Dimension(key, kind, tuple(args))
    if kind in RANGES:
        ok = isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args) and args[0] < args[1]
        if not ok or (kind == "loguniform" and args[0] <= 0):
            raise SweepError(f"{at}: {kind} needs [low, high] with low < high"
                             + (" and low > 0" if kind == "loguniform" else "") + f", got {args!r}")
        return Dimension(key, kind, tuple(args))
    raise SweepError(f"{at}: unknown distribution {kind!r}; use one of {list(DISCRETE + RANGES)} or a constant")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_values(dim: Dimension, cfg: ExperimentConfig, at: str) -> None:
    """Build the dataset's config with each value a trial can get (for ranges: both ends)."""
    if dim.kind in ("uniform", "loguniform"):
        probes = [float(v) for v in dim.values]  # samples are floats: an int key must fail here
    elif dim.kind == "randint":
        probes = [int(dim.values[0]), int(dim.values[1]) - 1]
    else:
        probes = list(dim.values)
    for value in probes:
        try:
            with_value(cfg, {dim.key: value})
        except ConfigError as e:
            raise SweepError(f"{at}: value {value!r}: {e}") from e


def with_value(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with dotted keys set to (YAML-typed) values, validated like a config file."""
    merged = to_dict(cfg)
    for key, value in values.items():
        section, name = key.split(".", 1)
        merged[section] = {**merged[section], name: value}
    return from_dict(merged)


def grouping_candidates(spec: SweepSpec, ds: DatasetSpec) -> list[int]:
    """Every ``model.layers_per_group`` a trial of ``ds`` can get."""
    dim = next((d for d in spec.search if d.key == "model.layers_per_group"), None)
    if dim is None:
        return [ds.cfg.model.layers_per_group]
    return [int(v) for v in dim.candidates()]


def check_grouping(spec: SweepSpec, ds: DatasetSpec, layers: dict[str, int]) -> None:
    """Each candidate grouping must divide every modality's backbone depth ``layers[modality]``."""
    for g in grouping_candidates(spec, ds):
        bad = {m: n for m, n in layers.items() if n % g}
        if bad:
            key = "search.model.layers_per_group" if any(d.key == "model.layers_per_group" for d in spec.search) \
                else f"datasets.{ds.name} (model.layers_per_group)"
            raise SweepError(f"{spec.source}: {key}: {g} does not divide the backbone depth of dataset "
                             f"{ds.name!r} ({', '.join(f'{m}: {n} layers' for m, n in bad.items())}); "
                             f"use a divisor of {sorted(set(layers.values()))}")


def check_variants(spec: SweepSpec, ds: DatasetSpec, modalities: list[str]) -> None:
    """Each candidate variant must find its modality in the dataset's cache: a one-modality variant
    without it fails in every trial, and again on every resume, after the trial has started."""
    from xsmoe_ray.model.xsmoe import missing_modality

    dim = next((d for d in spec.search if d.key == "model.variant"), None)
    variants = [ds.cfg.model.variant] if dim is None else list(dim.candidates() or [])
    for variant in variants:
        needs = missing_modality(variant, modalities)
        if needs:
            key = "search.model.variant" if dim is not None else f"datasets.{ds.name} (model.variant)"
            raise SweepError(f"{spec.source}: {key}: {variant} needs the {needs} modality, which dataset "
                             f"{ds.name!r} does not have (its cache holds {sorted(modalities)})")


# ---------------------------------------------------------------------------------------------
# Scalars and small sections.


def _int(value: Any, where: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SweepError(f"{where}: expected an integer >= {low}, got {value!r}")
    return value


def _metric(value: Any, where: str) -> str:
    if value not in METRICS:
        raise SweepError(f"{where}: metric: expected one of {list(METRICS)}, got {value!r}")
    if is_test_metric(value):
        # Allowed (e.g. to reproduce an old sweep), but the best config and ASHA then fit the test set.
        warnings.warn(f"{where}: metric: {value} is a test figure: this sweep selects its best config (and ASHA "
                      f"stops trials) on the test set; use {DEFAULT_METRIC} to select on validation",
                      TestMetricSelectionWarning, stacklevel=3)
    return value


def _section(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = value or {}
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping with keys {list(allowed)}, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid: {list(allowed)}")
    return value


def _scheduler(value: Any, where: str) -> SchedulerSpec:
    at = f"{where}: scheduler"
    raw = _section(value, at, ("type", "grace_period", "reduction_factor"))
    kind = str(raw.get("type", "none")).lower()
    if kind not in ("asha", "none"):
        raise SweepError(f"{at}.type: expected 'asha' or 'none', got {raw.get('type')!r}")
    rf = raw.get("reduction_factor", 2.0)
    if not _is_number(rf) or rf <= 1:
        raise SweepError(f"{at}.reduction_factor: expected a number > 1, got {rf!r}")
    grace = _int(raw.get("grace_period", 1), f"{at}.grace_period", low=1)
    return SchedulerSpec(kind=kind, grace_period=grace, reduction_factor=float(rf))


def _resources(value: Any, where: str) -> ResourceSpec:
    at = f"{where}: resources"
    raw = _section(value, at, ("cpu", "gpu", "workers"))
    for key in ("cpu", "gpu"):
        v = raw.get(key, 0)
        if not _is_number(v) or v < 0:
            raise SweepError(f"{at}.{key}: expected a number >= 0, got {v!r}")
    cpu, gpu = float(raw.get("cpu", 1.0)), float(raw.get("gpu", 0.0))
    if cpu == 0 and gpu == 0:
        raise SweepError(f"{at}: a worker needs cpu > 0 or gpu > 0")
    workers = _int(raw.get("workers", 1), f"{at}.workers", low=1)
    return ResourceSpec(cpu=cpu, gpu=gpu, workers=workers)
