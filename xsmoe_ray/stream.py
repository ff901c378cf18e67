"""``python -m xsmoe_ray.stream``: the main job.

    python -m xsmoe_ray.stream                                  # embedded demo
    python -m xsmoe_ray.stream --config hm data.path=/data/hm run.out=/runs/hm
    ray job submit --working-dir . -- python -m xsmoe_ray.stream --config hm ...

Stages, each reused when its output is already up to date:
1. prepare: load the dataset, write its streaming windows to ``<run.out>/prepared``;
2. cache: encode every item once with the frozen backbones into ``<run.out>/cache``
   (or ``cache.dir``) with Ray Data;
3. train: the window loop (``xsmoe_ray.train.worker``) on a Ray Train ``TorchTrainer``; a
   relaunch with the same ``run.out`` resumes after the last registered window.

The run directory gets ``config.yaml``, ``results.csv``, ``results.md``, ``metrics.png``,
``experts.png``, ``history.json`` and, under ``ray/``, the window checkpoints. ``run.out`` may be a
URI (``s3://…``): see :mod:`xsmoe_ray.rundir`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from xsmoe_ray.cli import run_guarded
from xsmoe_ray.config import (ConfigError, ExperimentConfig, ModelConfig, dump_yaml, load_config, result_differences,
                              to_dict, valid_keys, VARIANTS)
from xsmoe_ray.prepare import prepare_data
from xsmoe_ray.rundir import has_registered_windows, run_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.stream",
        description="XSMoE streaming recommendation: prepare the data, build the backbone layer cache, "
                    "train and test window by window on Ray Train. With no arguments: the embedded demo.",
        epilog="Overrides: key=value with keys " + ", ".join(valid_keys()) + ". model.variant is one of "
               + ", ".join(VARIANTS) + " (README, Models).",
    )
    p.add_argument("--config", default="demo", help="preset name (demo, hm, amazon_home, amazon_elec, ml1m, ...) or YAML file")
    p.add_argument("--follow", type=float, default=None, metavar="SECONDS",
                   help="after the run, check data.path every SECONDS and continue the run (new chunks, new "
                        "windows) whenever its files grow; Ctrl-C stops")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def cache_dir_of(cfg: ExperimentConfig, out: Path) -> Path:
    return Path(cfg.cache.dir).expanduser().resolve() if cfg.cache.dir else out / "cache"


def data_stages(cfg: ExperimentConfig, out: Path, continuing: bool = False,
                grouping: int | None = None) -> tuple[Path, Path]:
    """Prepare and cache (each reused when current); returns their directories. ``continuing``: the
    run has trained windows, so grown data only adds chunks (xsmoe_ray/live.py). ``grouping``: a
    layer grouping to check against the backbones before encoding (a sweep checks its own)."""
    from xsmoe_ray.cache import build_cache

    prepared = out / "prepared"
    prepare_data(cfg, prepared, extend=continuing)
    if grouping is not None:
        check_grouping_before_encoding(cfg, prepared, grouping)
    cache = cache_dir_of(cfg, out)
    report = build_cache(prepared, cache, cfg)
    print(f"[stream] {report.format()}", flush=True)
    return prepared, cache


def check_grouping_before_encoding(cfg: ExperimentConfig, prepared: Path, layers_per_group: int) -> None:
    """Refuse a layer grouping the backbones' depth cannot take before the cache build, which can take
    hours for a large catalogue. Reads the configs of the backbones the prepared data will use; one
    that cannot be described here is left to the cache build, which reports it (the built cache's
    manifest is checked again before training: :func:`check_model_fits`)."""
    from xsmoe_ray.backbones import backbone_depths
    from xsmoe_ray.cache import group_index
    from xsmoe_ray.cache.layout import requested_modalities
    from xsmoe_ray.prepared import read_summary

    summary = read_summary(prepared)
    used = requested_modalities(cfg.backbone, bool(summary["has_text"]), bool(summary["has_image"]))
    for layers in backbone_depths(cfg.backbone, used).values():
        group_index(layers, layers_per_group)


def check_model_fits(cache: Path, model: ModelConfig) -> None:
    """Refuse a layer grouping or a one-modality variant the cache cannot take here, not in every
    worker after Ray Train starts (where each restart would repeat the failure)."""
    from xsmoe_ray.cache import group_index, open_cache
    from xsmoe_ray.model.xsmoe import missing_modality

    opened = open_cache(cache)
    needs = missing_modality(model.variant, opened.arrays)
    if needs:
        raise ConfigError(f"model.variant={model.variant} needs the {needs} modality, which the cache {cache} does "
                          f"not hold (it has {sorted(opened.arrays)})")
    for modality in opened.arrays:
        group_index(opened.layers(modality), model.layers_per_group)


def fit(cfg: ExperimentConfig, storage: str, prepared: Path, cache: Path, extra: dict | None = None):
    """Run the window loop on Ray Train; returns the trainer's Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from xsmoe_ray.train.worker import train_loop_per_worker

    loop_config = {"cfg": to_dict(cfg), "prepared": str(prepared), "cache": str(cache), **(extra or {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    with sigint_kept():
        try:
            return trainer.fit()
        except SystemExit as e:
            # Ray Train's Ctrl-C path: its handler aborts the run, then fit leaves by SystemExit(1) with
            # no message; as an interrupt, main says what was kept and how to go on
            raise KeyboardInterrupt("Ray Train aborted the training run") from e


@contextmanager
def sigint_kept():
    """Put the SIGINT handler back after the block: Ray Train's ``fit`` installs its own (Ctrl-C aborts
    the training run) and leaves it in place, so ``--follow``, waiting for new data between runs, took
    three Ctrl-C to stop and never printed its own stop line."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a Tune trial runs this elsewhere)
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if before is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, before)


OUTPUTS = ["config.yaml", "results.csv", "results.md", "metrics.png", "experts.png", "history.json"]


def write_outputs(out: Path, history: list[dict], variant: str, title: str) -> None:
    from xsmoe_ray.report import experts_plot, metrics_plot, results_csv, results_markdown

    (out / "results.csv").write_text(results_csv(history))
    (out / "results.md").write_text(results_markdown(history, title, variant))
    (out / "metrics.png").write_bytes(metrics_plot(history))
    (out / "experts.png").write_bytes(experts_plot(history))
    (out / "history.json").write_text(json.dumps(history, indent=1))


def history_of(result) -> list[dict]:
    from xsmoe_ray.train.checkpoint import load_state

    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        return load_state(d).history


def check_resume(cfg: ExperimentConfig, out: Path, storage: str) -> None:
    """Refuse a relaunch whose settings would change the results of the windows it resumes from.

    The previous launch's ``config.yaml`` is compared when window checkpoints exist (always for a URI
    ``run.out``, whose checkpoints are not listed here); result-neutral keys may change.
    """
    import yaml

    saved = out / "config.yaml"
    local = Path(storage) / cfg.run.name if "://" not in storage else None
    if not saved.is_file() or (local is not None and not any(local.glob("window_*"))):
        return
    differences = result_differences(yaml.safe_load(saved.read_text()) or {}, cfg)
    if differences:
        raise ConfigError(f"{out} holds window checkpoints of a run with other settings; resuming would mix "
                          f"them: {'; '.join(differences)}. Use another run.out, or the old settings.")


def check_local_resources(cfg: ExperimentConfig, started_local: bool) -> None:
    """On a local Ray this process started, more Train workers than the machine holds would make Ray
    Train wait for resources forever; a cluster may still grow (autoscaling), so it is not checked."""
    import ray

    total = ray.cluster_resources()
    need = {"CPU": float(cfg.train.num_workers), "GPU": float(cfg.train.num_workers if cfg.train.use_gpu else 0)}
    short = {k: v for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short and started_local:
        raise ConfigError(f"train.num_workers={cfg.train.num_workers}"
                          f"{' with train.use_gpu=true' if cfg.train.use_gpu else ''} needs {need} but this "
                          f"machine's Ray has { {k: total.get(k, 0.0) for k in need} }; use fewer workers "
                          "or run on a cluster (RAY_ADDRESS)")
    if cfg.cache.use_gpu and started_local and total.get("GPU", 0.0) < 1:
        raise ConfigError("cache.use_gpu=true but this machine's Ray has no GPU; set cache.use_gpu=false "
                          "or run on a cluster (RAY_ADDRESS)")


def run(cfg: ExperimentConfig, extra: dict | None = None) -> list[dict]:
    from xsmoe_ray.runlock import run_lock

    where = run_dir(cfg.run)
    with run_lock(where.local):  # one job per run directory, for the whole job
        return _run(cfg, where, extra)


def _run(cfg: ExperimentConfig, where, extra: dict | None) -> list[dict]:
    from xsmoe_ray.raysetup import ensure_ray

    t0 = time.perf_counter()
    out = where.local
    out.mkdir(parents=True, exist_ok=True)
    check_resume(cfg, out, where.storage)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    check_local_resources(cfg, ensure_ray(cfg.run.num_cpus))
    prepared, cache = data_stages(cfg, out, has_registered_windows(where.storage, cfg.run.name),
                                  grouping=cfg.model.layers_per_group)
    check_model_fits(cache, cfg.model)
    result = fit(cfg, where.storage, prepared, cache, extra)
    history = history_of(result)
    write_outputs(out, history, cfg.model.variant, f"{cfg.data.format} — {cfg.model.variant}")
    where.publish(OUTPUTS)
    print((out / "results.md").read_text())
    print(f"[stream] done in {time.perf_counter() - t0:.0f} s; outputs in {where.uri or out}", flush=True)
    return history


def follow(cfg: ExperimentConfig, interval: float, rounds: int | None = None) -> None:
    """Run, then wait for the data to change and run again (the run continues: xsmoe_ray/live.py);
    ``rounds`` runs at most (None: until interrupted)."""
    from xsmoe_ray.live import wait_for_new_data
    from xsmoe_ray.prepare import source_dir
    from xsmoe_ray.prepared import source_stamp

    source = source_dir(cfg, run_dir(cfg.run).local)
    done = 0
    while True:
        stamp = source_stamp(source)  # before the run: data landing during it starts the next one
        run(cfg)
        done += 1
        if rounds is not None and done >= rounds:
            return
        print(f"[stream] following {source}: waiting for new data (checked every {interval:g} s; Ctrl-C stops)",
              flush=True)
        wait_for_new_data(source, stamp or source_stamp(source), interval)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.follow is None:
        try:
            return run_guarded(lambda: run(load_config(args.config, args.overrides)))
        except KeyboardInterrupt:
            print(f"[stream] interrupted; {RESUME_HINT}", flush=True)
            return 130  # the shell's code for a run ended by Ctrl-C
    if args.follow <= 0:
        print("error: --follow needs a positive number of seconds", file=sys.stderr)
        return 2
    try:
        return run_guarded(lambda: follow(load_config(args.config, args.overrides), args.follow))
    except KeyboardInterrupt:
        print(f"[stream] stopped following; {RESUME_HINT}", flush=True)
        return 0


RESUME_HINT = "the windows finished so far are kept: run the same command again to go on from there"


if __name__ == "__main__":
    sys.exit(main())
