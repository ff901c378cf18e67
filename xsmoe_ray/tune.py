"""``python -m xsmoe_ray.tune``: Ray Tune sweeps of τ, d′, layer grouping, … across datasets.

    python -m xsmoe_ray.tune tune_configs/demo_sweep.yaml                  # the demo sweep
    python -m xsmoe_ray.tune tune_configs/hm.yaml data.path=/data/hm run.out=/shared/sweeps/hm
    ray job submit --working-dir . -- python -m xsmoe_ray.tune tune_configs/hm.yaml ...

The sweep file (format: :mod:`xsmoe_ray.sweep_spec`) names datasets, a search space, the metric
(default ``mean_val_ndcg10``, the mean best val NDCG@10 so far: the best config and ASHA select on
validation; a test metric is allowed, with a warning), an optional ASHA scheduler over the window
index and resources per trial. One trial is one whole streaming run (paper Algorithm 1, ``xsmoe_ray.train.worker``):

1. Before any trial starts, every dataset is prepared and its layer cache built once, by the main
   job's own ``stream.data_stages``, into ``<run.out>/datasets/<name>/``; its trials only read them.
   Layer grouping is chosen when a trial loads the cache, so one cache serves every grouping.
2. One Tune experiment per dataset (``<run.out>/ray/<name>``), so ASHA only ever compares trials of
   the same dataset. ``resources.workers == 1``: the trial is a function trainable that runs the
   window loop itself with ``ray.tune.report``/``get_checkpoint``. ``workers > 1`` (several GPUs per
   trial): the trial builds a ``TorchTrainer`` and forwards its reports with ``TuneReportCallback``,
   holding only 0.1 CPU itself (RAY_NOTES.md, "Ray Tune").
3. Every window reports its metrics with ``window`` as ASHA's time attribute, and a checkpoint.
   Re-running the same command resumes the sweep (``Tuner.restore``, errored trials resumed from
   their last checkpoint); finished trials are not run again. A Train-inside-trial restarted by Tune
   first re-reports the windows its Train run had finished (:func:`finished_window_metrics`).
4. Outputs (:mod:`xsmoe_ray.sweep_report`): ``trials.csv``, ``sweep.md``, ``best/<dataset>.yaml``,
   ``tau_sensitivity.png`` (when τ is searched). The best trial's test AVG is shown beside the
   figure it was chosen on, labelled as not used for the choice.
5. Exit code: 1 when a trial failed (its reason is in ``trials.csv`` and ``sweep.md``), 2 on a bad
   sweep file or setting, 130 when the sweep was interrupted (the same command resumes it), else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xsmoe_ray.cli import run_guarded
from xsmoe_ray.config import dump_yaml, from_dict, to_dict, valid_keys
from xsmoe_ray.sweep_spec import (DatasetSpec, Dimension, SweepError, SweepSpec, check_grouping, check_variants,
                                  load_sweep, with_value)

TRAIN_DRIVER_CPU = 0.1  # a Train-inside-Tune driver only waits on its trainer (0 is refused by Ray)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.tune",
        description="Ray Tune sweep over XSMoE settings (τ, d′, layer grouping, …) across datasets: each trial "
                    "is a whole streaming run; datasets are prepared and cached once before the trials; "
                    "re-running the same command resumes an interrupted sweep.",
        epilog="Overrides apply to every dataset's config: key=value with keys " + ", ".join(valid_keys())
               + ". run.out is where the sweep writes (default runs/sweeps/<name>).",
    )
    p.add_argument("sweep", help="sweep file, e.g. tune_configs/demo_sweep.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


# ---------------------------------------------------------------------------------------------
# What a trial runs.


@dataclass(frozen=True)
class TrialJob:
    """What every trial of one dataset shares; given to the trainable with ``tune.with_parameters``."""

    cfg: dict  # the dataset's resolved config (``to_dict``); a trial's searched values go on top
    prepared: str  # read-only prepared dataset
    cache: str  # read-only layer cache
    workers: int
    cpu: float  # per worker
    gpu: float  # per worker
    train_storage: str  # Train-inside-trial runs: one TorchTrainer run per trial id under here
    extra: dict = field(default_factory=dict)  # test switches for the window loop (fail_at_window, ...)


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Tune's nested trial config → dotted keys; numpy scalars (randint samples) → Python values."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value.item() if hasattr(value, "item") else value
    return flat


def loop_config(job: TrialJob, params: dict) -> dict:
    """The window loop's config for one trial: the dataset config with the trial's values set."""
    cfg = with_value(from_dict(job.cfg), flatten(params))
    return {"cfg": to_dict(cfg), "prepared": job.prepared, "cache": job.cache, **job.extra}


def window_trial(params: dict, job: TrialJob) -> None:
    """One worker per trial: the window loop itself, reporting to Tune."""
    import torch
    from ray import tune

    from xsmoe_ray.train.worker import run_windows

    def report(metrics: dict, checkpoint) -> None:
        # The loop builds a ray.train.Checkpoint in a temporary directory; Tune copies it to the
        # trial's storage inside this call, before the directory is removed.
        ck = tune.Checkpoint.from_directory(checkpoint.path) if checkpoint is not None else None
        tune.report(metrics, checkpoint=ck)

    torch.set_num_threads(max(1, int(job.cpu)))  # the CPUs Tune reserved for this trial, no more
    device = torch.device("cuda") if job.gpu > 0 and torch.cuda.is_available() else torch.device("cpu")
    run_windows(loop_config(job, params), report, tune.get_checkpoint, device)


def train_trial(params: dict, job: TrialJob) -> None:
    """Several workers per trial: a TorchTrainer inside the trial, its reports forwarded to Tune.

    The trainer's run is named by the trial id, so a restarted or restored trial relaunches the same
    Train run, which resumes from its own last registered window.
    """
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from xsmoe_ray.train.worker import train_loop_per_worker

    config = loop_config(job, params)
    name = tune.get_context().get_trial_id()
    for metrics in finished_window_metrics(Path(job.train_storage) / name):
        tune.report(metrics)
    per_worker = {"CPU": job.cpu, **({"GPU": job.gpu} if job.gpu > 0 else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.gpu > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=job.train_storage,
            failure_config=FailureConfig(max_failures=config["cfg"]["train"]["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def finished_window_metrics(train_run: Path) -> list[dict]:
    """The windows a trial's Train run has already finished, as it reported them, in order.

    Tune holds no checkpoint of a Train-inside-trial (``TuneReportCallback`` forwards metrics only),
    so after the sweep driver dies Tune starts such a trial afresh while its Train run resumes from
    its own latest registered checkpoint; re-reporting those windows first keeps every window in
    the trial's results and in front of the scheduler. A window Tune already holds (an errored
    trial resumed) is then reported twice, identically, and ``record_rows`` keeps one.
    """
    from ray.train import Result

    from xsmoe_ray.stream import history_of
    from xsmoe_ray.train.worker import window_metrics

    if not train_run.is_dir():
        return []
    try:
        result = Result.from_path(str(train_run))
    except RuntimeError:  # no checkpoint registered yet
        return []
    history = history_of(result)
    return [window_metrics(row, history[: k + 1]) for k, row in enumerate(history)]


def trainable_for(job: TrialJob):
    from ray import tune

    if job.workers == 1:
        resources = {"CPU": job.cpu, **({"GPU": job.gpu} if job.gpu > 0 else {})}
        return tune.with_resources(tune.with_parameters(window_trial, job=job), resources)
    return tune.with_resources(tune.with_parameters(train_trial, job=job), {"CPU": TRAIN_DRIVER_CPU})


# ---------------------------------------------------------------------------------------------
# Data: prepared once per dataset, before any trial.


def preflight_grouping(spec: SweepSpec) -> None:
    """Fail before hours of caching when a grouping cannot divide a backbone's depth.

    Reads the backbone configs only (no weights). A hub backbone that is not available offline is
    skipped here; the check runs again on the built cache's manifest, which is authoritative.
    """
    from xsmoe_ray.backbones import MODALITIES, backbone_depths

    for ds in spec.datasets:
        layers = backbone_depths(ds.cfg.backbone, MODALITIES)
        check_grouping(spec, ds, layers)


def stage_dataset(spec: SweepSpec, ds: DatasetSpec, extra: dict) -> tuple[TrialJob, int]:
    """Prepare and cache one dataset (each reused when current); returns its job and window count."""
    from xsmoe_ray.cache import open_cache
    from xsmoe_ray.prepared import read_summary
    from xsmoe_ray.stream import data_stages

    out = Path(ds.cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(ds.cfg))
    print(f"[tune] dataset {ds.name}: preparing and caching in {out}", flush=True)
    prepared, cache = data_stages(ds.cfg, out)
    opened = open_cache(cache)
    check_grouping(spec, ds, {m: opened.layers(m) for m in opened.arrays})
    check_variants(spec, ds, list(opened.arrays))
    job = TrialJob(cfg=to_dict(ds.cfg), prepared=str(prepared), cache=str(cache), workers=spec.resources.workers,
                   cpu=spec.resources.cpu, gpu=spec.resources.gpu,
                   train_storage=str(spec.out / "train" / ds.name), extra=dict(extra))
    return job, int(read_summary(prepared)["chunks"]) - 1


# ---------------------------------------------------------------------------------------------
# Tune experiments.


def param_space(search: tuple[Dimension, ...]) -> dict:
    """Dotted search keys → Tune's nested param space (sampled values are set by ``with_value``)."""
    from ray import tune

    makers = {"grid_search": lambda v: tune.grid_search(list(v)), "choice": lambda v: tune.choice(list(v)),
              "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
              "randint": lambda v: tune.randint(*v), "constant": lambda v: v[0]}
    space: dict = {}
    for dim in search:
        section, name = dim.key.split(".", 1)
        space.setdefault(section, {})[name] = makers[dim.kind](dim.values)
    return space


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # short paths (the default embeds every searched value)


def tune_config(spec: SweepSpec, n_windows: int):
    """The experiment's TuneConfig: the sweep's metric (validation by default) is what ASHA stops on."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.scheduler.kind == "asha":
        # metric and mode are set once, in TuneConfig, which hands them to the scheduler (RAY_NOTES.md);
        # the last window index is max_t.
        scheduler = ASHAScheduler(time_attr="window", max_t=max(n_windows - 1, 1),
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.TuneConfig(metric=spec.metric, mode="max", scheduler=scheduler, num_samples=spec.num_samples,
                           max_concurrent_trials=spec.max_concurrent_trials or None,
                           trial_dirname_creator=trial_dirname)


def new_tuner(spec: SweepSpec, ds: DatasetSpec, job: TrialJob, n_windows: int):
    from ray import tune

    return tune.Tuner(
        trainable_for(job),
        param_space=param_space(spec.search),
        tune_config=tune_config(spec, n_windows),
        run_config=tune.RunConfig(
            name=ds.name, storage_path=str(spec.out / "ray"),
            failure_config=tune.FailureConfig(max_failures=ds.cfg.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def tuner_for(spec: SweepSpec, ds: DatasetSpec, job: TrialJob, n_windows: int):
    """Restore the dataset's experiment when one is on disk (errored trials resumed), else start it."""
    from ray import tune

    path = str(spec.out / "ray" / ds.name)
    if tune.Tuner.can_restore(path):
        print(f"[tune] dataset {ds.name}: resuming the experiment in {path}", flush=True)
        return tune.Tuner.restore(path, trainable_for(job), resume_errored=True)
    return new_tuner(spec, ds, job, n_windows)


def check_same_sweep(spec: SweepSpec) -> None:
    """A run directory holds one sweep: refuse to resume it with other settings."""
    stamp = spec.out / "sweep.json"
    now = spec.fingerprint()
    if stamp.is_file() and stamp.read_text() != now:
        raise SweepError(f"{spec.source}: run.out={spec.out} holds a sweep with other settings "
                         f"(see {stamp}); resume it with the same file and overrides, or use another run.out")
    spec.out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(now)


def check_local_resources(spec: SweepSpec, started_local: bool) -> None:
    """On a local Ray that this process started, a trial bigger than the machine would wait forever."""
    import ray

    total = ray.cluster_resources()
    r = spec.resources
    need = {"CPU": r.cpu * r.workers + (TRAIN_DRIVER_CPU if r.workers > 1 else 0.0), "GPU": r.gpu * r.workers}
    short = {k: v for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short and started_local:
        raise SweepError(f"{spec.source}: resources: one trial needs {need} but this machine's Ray has "
                         f"{ {k: total.get(k, 0.0) for k in need} }; lower resources or run on a cluster")


# ---------------------------------------------------------------------------------------------
# Results.


def result_rows(trial_dir: Path) -> list[dict]:
    """Every report of a trial, from Tune's ``result.json`` (appended across restores)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_status(failed: bool, windows: int, last_report: dict, n_windows: int, asha: bool) -> str:
    """complete, error, stopped (by ASHA) or unfinished (the sweep was interrupted before it ended).

    Tune marks the report a scheduler stops a trial on with ``done``; a trial cut short by Ctrl-C
    has no such report, with or without ASHA, and is resumed by running the same command again."""
    if failed:
        return "error"
    if windows >= n_windows:
        return "complete"
    return "stopped" if asha and last_report.get("done") else "unfinished"


def records_of(grid, ds: DatasetSpec, n_windows: int, asha: bool) -> list:
    from xsmoe_ray.sweep_report import TrialRecord, record_rows

    records = []
    for result in grid:
        trial_dir = Path(result.path)
        raw = result_rows(trial_dir)
        rows = record_rows(raw)
        status = trial_status(bool(result.error), len(rows), raw[-1] if raw else {}, n_windows, asha)
        records.append(TrialRecord(
            dataset=ds.name, trial=trial_dir.name.removeprefix("trial_"), params=flatten(result.config or {}),
            status=status, windows=rows, wall_s=float(raw[-1].get("time_total_s", 0.0)) if raw else 0.0,
            error=str(result.error).strip() if result.error else ""))
    return records


def run_experiments(spec: SweepSpec, staged: dict[str, tuple[TrialJob, int]]) -> list:
    """Each dataset's experiment in turn, until one is interrupted.

    Tune ends an experiment on Ctrl-C and returns as if it were done; going on would start the
    next dataset's trials after the user asked to stop."""
    records: list = []
    for k, ds in enumerate(spec.datasets):
        job, n_windows = staged[ds.name]
        grid = tuner_for(spec, ds, job, n_windows).fit()
        records += records_of(grid, ds, n_windows, asha=spec.scheduler.kind == "asha")
        if any(r.status == "unfinished" for r in records):
            rest = [d.name for d in spec.datasets[k + 1:]]
            print(f"[tune] sweep {spec.name} interrupted" + (f"; not started: {', '.join(rest)}" if rest else "")
                  + "; run the same command again to resume", flush=True)
            break
    return records


def write_best_configs(spec: SweepSpec, best: dict, jobs: dict[str, TrialJob]) -> None:
    """``best/<dataset>.yaml``: the whole config of the dataset's best trial, reusing its cache."""
    from xsmoe_ray.sweep_report import best_summary

    for name, record in best.items():
        cfg = with_value(spec.dataset(name).cfg, {**record.params, "cache.dir": jobs[name].cache,
                                                   "run.out": str(spec.out / "best" / name)})
        path = spec.out / "best" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# best {best_summary(record, spec.metric)}, sweep {spec.name}\n" + dump_yaml(cfg))


def run_sweep(spec: SweepSpec, extra: dict | None = None) -> list:
    """Stage every dataset, run (or resume) one Tune experiment per dataset, write the outputs."""
    from xsmoe_ray.runlock import run_lock

    preflight_grouping(spec)  # before anything is written or started (the lock creates run.out)
    with run_lock(spec.out):  # one sweep per run.out, for the whole sweep
        return _run_sweep(spec, extra)


def _run_sweep(spec: SweepSpec, extra: dict | None) -> list:
    from xsmoe_ray.raysetup import ensure_ray
    from xsmoe_ray.sweep_report import best_summary, write_sweep_outputs

    t0 = time.perf_counter()
    check_same_sweep(spec)
    started_local = ensure_ray(spec.num_cpus)
    try:
        check_local_resources(spec, started_local)
        staged = {ds.name: stage_dataset(spec, ds, extra or {}) for ds in spec.datasets}
        records = run_experiments(spec, staged)
    finally:
        if started_local:
            # Trial workers' last log lines reach the console late; with the Ray this sweep started
            # shut down now, they come before the summary below, whose last line must stay last.
            import ray

            ray.shutdown()
    names = [d.name for d in spec.datasets]
    best = write_sweep_outputs(spec.out, spec.name, records, names, spec.metric,
                               {d.name: d.cfg.model.tau for d in spec.datasets})
    write_best_configs(spec, best, {n: staged[n][0] for n in names})
    print((spec.out / "sweep.md").read_text())
    for name, record in best.items():
        print(f"[tune] dataset {name}: best {best_summary(record, spec.metric)}", flush=True)
    print(f"[tune] sweep {spec.name}: {len(records)} trials in {time.perf_counter() - t0:.0f} s; "
          f"outputs in {spec.out}", flush=True)
    return records


def sweep_exit_code(spec: SweepSpec) -> int:
    """Run the sweep; 1, with a last line saying so, when a trial failed (an ASHA-stopped trial is no
    failure): a script or CI job must not take a failed sweep for a good one. 130 (the shell's code
    for Ctrl-C) when the sweep was interrupted, whose unfinished trials resume on the same command."""
    records = run_sweep(spec)
    failed = sum(r.status == "error" for r in records)
    if failed:
        print(f"[tune] sweep {spec.name}: {failed} of {len(records)} trials failed; their reasons are in "
              f"{spec.out / 'trials.csv'} (column error) and {spec.out / 'sweep.md'} (Failed trials)", flush=True)
    if any(r.status == "unfinished" for r in records):
        return 130
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_code = [0]  # run_guarded returns 0 whenever the sweep ran, whatever became of its trials

    def sweep() -> None:
        exit_code[0] = sweep_exit_code(load_sweep(args.sweep, args.overrides))

    return run_guarded(sweep) or exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
