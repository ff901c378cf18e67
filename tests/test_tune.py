"""Ray Tune sweeps: sweep-file validation, the sweep report, and tiny sweeps run end to end
(shared data built once, ASHA, a failed trial resumed by ``Tuner.restore``, Train inside a trial)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tests.test_stream import TINY
from xsmoe_ray.config import load_config
from xsmoe_ray import tune as tune_module
from xsmoe_ray.sweep_report import (TrialRecord, best_markdown, best_per_dataset, best_summary, efficiency_markdown,
                                    error_reason, sweep_markdown, tau_plot, tau_points, trials_csv, trials_markdown,
                                    write_sweep_outputs)
from xsmoe_ray.sweep_spec import SweepError, TestMetricSelectionWarning, check_grouping, check_variants, load_sweep
from xsmoe_ray.tune import (flatten, main, param_space, preflight_grouping, records_of, result_rows, run_sweep,
                            tune_config)

REPO = Path(__file__).resolve().parents[1]
PAPER_TAUS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]


def write_sweep(directory: Path, name: str = "sweep", **sections) -> Path:
    body = {"datasets": {"drift": {"config": "demo"}}, **sections}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# Sweep files.


@pytest.mark.parametrize("name", ["demo_sweep", "amazon_home", "amazon_elec", "hm"])
def test_shipped_sweeps_load(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TestMetricSelectionWarning)  # none selects on the test set
        spec = load_sweep(REPO / "tune_configs" / f"{name}.yaml", [f"run.out={tmp_path}"])
    assert spec.metric == "mean_val_ndcg10"
    keys = {d.key: d for d in spec.search}
    assert {"model.tau", "model.d_prime", "model.layers_per_group"} <= set(keys)
    assert sorted(keys["model.tau"].values) == PAPER_TAUS  # paper §5.4.2's grid
    assert spec.out == tmp_path.resolve()
    for ds in spec.datasets:
        assert ds.cfg.run.out == str(tmp_path.resolve() / "datasets" / ds.name)
        if name == "demo_sweep":
            preflight_grouping(spec)  # demo backbones are local: their depth is read from their config
        else:  # BERT-base and ViT-base have 12 layers; every grouping must divide it
            assert ds.cfg.backbone.text == "bert-base-uncased"
            check_grouping(spec, ds, {"text": 12, "image": 12})
    if name == "hm":
        assert [ds.cfg.data.format for ds in spec.datasets] == ["hm"] and not spec.datasets[0].cfg.data.date_from


def test_a_variant_the_datasets_modalities_cannot_feed_is_refused_before_the_trials(tmp_path):
    searched = load_sweep(write_sweep(tmp_path, search={"model.variant": {"grid_search": ["xsmoe", "visual"]}}),
                          [f"run.out={tmp_path / 'a'}"])
    (ds,) = searched.datasets
    check_variants(searched, ds, ["image", "text"])
    with pytest.raises(SweepError, match=r"search.model.variant: visual needs the image modality, which dataset "
                                         r"'drift' does not have \(its cache holds \['text'\]\)"):
        check_variants(searched, ds, ["text"])
    fixed = load_sweep(write_sweep(tmp_path, "fixed", datasets={"drift": {"config": "demo",
                                                                          "overrides": ["model.variant=textual"]}}),
                       [f"run.out={tmp_path / 'b'}"])
    with pytest.raises(SweepError, match=r"datasets.drift \(model.variant\): textual needs the text modality"):
        check_variants(fixed, fixed.datasets[0], ["image"])


def test_a_uri_run_out_is_refused_not_made_a_local_folder(tmp_path):
    path = write_sweep(tmp_path)
    with pytest.raises(SweepError, match=r"run.out=s3://bucket/sweeps: a sweep writes to a directory"):
        load_sweep(path, ["run.out=s3://bucket/sweeps"])
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_override_order_and_resources(tmp_path):
    path = write_sweep(tmp_path, overrides=["model.d_prime=8", "train.lr=0.01"],
                       datasets={"a": {"config": "demo", "overrides": {"model.d_prime": 12, "synth.seed": 3}},
                                 "b": {"config": "demo"}},
                       resources={"cpu": 2, "gpu": 1, "workers": 4}, max_concurrent_trials=2)
    spec = load_sweep(path, ["train.lr=0.02", f"run.out={tmp_path / 'out'}"])
    a, b = spec.dataset("a").cfg, spec.dataset("b").cfg
    assert (a.model.d_prime, b.model.d_prime) == (12, 8)  # dataset overrides beat the sweep's
    assert a.train.lr == b.train.lr == 0.02  # the command line beats both, for every dataset
    assert a.synth.seed == 3 and b.synth.seed == 0
    assert (a.train.num_workers, a.train.use_gpu) == (4, True)  # from resources
    assert a.run.out == str((tmp_path / "out" / "datasets" / "a").resolve())


BAD = [
    ({"serach": {}}, "serach"),
    ({"search": {"model.tua": 0.1}}, "search.model.tua"),
    ({"search": {"data.k_core": {"grid_search": [2, 3]}}}, "search.data.k_core: cannot be searched"),
    ({"search": {"train.num_workers": 2}}, "search.train.num_workers: cannot be searched"),
    ({"search": {"model.tau": {"normal": [0, 1]}}}, "search.model.tau: unknown distribution"),
    ({"search": {"model.tau": {"grid_search": [0.0, 1.5]}}}, "search.model.tau: value 1.5"),
    ({"search": {"model.d_prime": {"choice": [8, "wide"]}}}, "search.model.d_prime: value 'wide'"),
    ({"search": {"model.d_prime": {"uniform": [8, 32]}}}, "search.model.d_prime: value 8.0"),
    ({"search": {"model.tau": {"uniform": [0.2, 0.1]}}}, "search.model.tau: uniform needs [low, high]"),
    ({"datasets": {}}, "datasets"),
    ({"datasets": {"x": {"config": "nope"}}}, "datasets.x: unknown preset 'nope'"),
    ({"datasets": {"x": {"overrides": ["run.out=/elsewhere"]}}}, "datasets.x.overrides: run.out is sweep-wide"),
    ({"overrides": ["train.num_workers=2"]}, "train.num_workers is set by the sweep's 'resources'"),
    ({"overrides": ["model.tua=1"]}, "unknown config key(s) ['model.tua']"),
    ({"resources": {"workers": 0}}, "resources.workers"),
    ({"resources": {"cpu": 1, "workers": 2}}, "resources.workers=2 runs Ray Train inside each trial; set max_concurrent_trials"),
    ({"resources": {"cpu": 0}}, "resources: a worker needs cpu > 0 or gpu > 0"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
    ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period"),
    ({"metric": "loss"}, "metric"),
    ({"num_samples": 0}, "num_samples"),
]


@pytest.mark.parametrize("sections,expected", BAD, ids=[e for _, e in BAD])
def test_bad_sweep_names_file_and_key(tmp_path, sections, expected):
    path = write_sweep(tmp_path, "bad", **sections)
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_the_default_metric_is_validation(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TestMetricSelectionWarning)
        spec = load_sweep(write_sweep(tmp_path), [f"run.out={tmp_path / 'out'}"])
    assert spec.metric == "mean_val_ndcg10"


@pytest.mark.parametrize("metric", ["mean_test_ndcg10", "mean_test_hr10"])
def test_a_test_metric_loads_with_a_test_selection_warning(tmp_path, metric):
    path = write_sweep(tmp_path, metric=metric)
    with pytest.warns(TestMetricSelectionWarning, match=f"{metric} is a test figure: .* on the test set") as seen:
        spec = load_sweep(path, [f"run.out={tmp_path / 'out'}"])
    assert spec.metric == metric  # a warning, not an error: test figures stay selectable
    assert str(path) in str(seen[0].message) and seen[0].filename == __file__  # points at the caller


def test_asha_stops_on_the_val_metric(tmp_path):
    """Two trials whose val and test rank oppositely at ASHA's first rung: the val-worse one is stopped."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    spec = load_sweep(write_sweep(tmp_path, scheduler={"type": "asha", "grace_period": 1}),
                      [f"run.out={tmp_path / 'out'}"])
    config = tune_config(spec, n_windows=3)
    assert config.metric == "mean_val_ndcg10" and config.mode == "max"
    asha = config.scheduler
    assert isinstance(asha, ASHAScheduler)
    asha.set_search_properties(config.metric, config.mode)  # what Tune does with the TuneConfig's metric
    good_val, good_test = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (good_val, good_test):
        asha.on_trial_add(None, trial)
    row = {"window": 1}
    assert asha.on_trial_result(None, good_val, {**row, "mean_val_ndcg10": 0.3, "mean_test_ndcg10": 0.1}) \
        == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, good_test, {**row, "mean_val_ndcg10": 0.2, "mean_test_ndcg10": 0.9}) \
        == TrialScheduler.STOP


def test_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as ok:
        main(["--help"])
    assert ok.value.code == 0 and "run.out" in capsys.readouterr().out
    # The demo backbones have 4 layers: a grouping of 3 is refused before anything runs.
    path = write_sweep(tmp_path, "grouping", search={"model.layers_per_group": {"grid_search": [1, 3]}})
    assert main([str(path), f"run.out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "search.model.layers_per_group: 3 does not divide" in err
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert main([str(write_sweep(tmp_path, "typo")), "model.tua=1"]) == 2
    assert "model.tua" in capsys.readouterr().err


def test_param_space_and_flatten():
    from ray import tune

    path = REPO / "tune_configs" / "demo_sweep.yaml"
    space = param_space(load_sweep(path).search)
    assert space["model"]["tau"] == tune.grid_search(PAPER_TAUS)
    assert flatten({"model": {"tau": np.float64(0.1), "d_prime": np.int64(8)}, "run": {"seed": 2}}) == \
        {"model.tau": 0.1, "model.d_prime": 8, "run.seed": 2}
    assert type(flatten({"model": {"d_prime": np.int64(8)}})["model.d_prime"]) is int


# ---------------------------------------------------------------------------------------------
# The sweep report, on hand-made trial records.


def record(trial, tau, ndcgs, status="complete", dataset="a", g=1, vals=None):
    """``vals``: each window's best val NDCG@10, warm-up first (default: the test NDCG@10s')."""
    vals = vals or ndcgs[:1] + ndcgs
    windows = [{"window": 0, "val_ndcg10": vals[0], "seconds": 1.0, "epochs": 2, "mp_mb": 1.0, "trp_mb": 0.5}]
    for w, v in enumerate(ndcgs, start=1):
        windows.append({"window": w, "ndcg10": v, "hr10": 2 * v, "val_ndcg10": vals[w], "seconds": 2.0, "epochs": 2,
                        "mp_mb": 1.0 + w, "trp_mb": 0.5, "experts": {"text": [w + 1]}})
    return TrialRecord(dataset=dataset, trial=trial, params={"model.tau": tau, "model.layers_per_group": g},
                       status=status, windows=windows, wall_s=9.0)


def test_best_uses_complete_trials_only():
    records = [record("t1", 0.0, [0.2, 0.1]), record("t2", 0.1, [0.3, 0.2]),
               record("t3", 0.2, [0.9], status="stopped"),  # higher, but over one early window only
               record("t4", 0.0, [0.5, 0.5], status="error"), record("t5", 0.0, [0.1, 0.1], dataset="b")]
    best = best_per_dataset(records, "mean_test_ndcg10")
    assert best["a"].trial == "t2" and best["b"].trial == "t5"
    assert best_per_dataset(records, "mean_test_hr10")["a"].trial == "t2"


def test_the_best_is_chosen_on_val_and_its_test_avg_shown_beside_it():
    # t1 is better on val (warm-up included), t2 on test: selecting on val must pick t1.
    records = [record("t1", 0.0, [0.10, 0.20], vals=[0.50, 0.40, 0.30]),
               record("t2", 0.1, [0.30, 0.40], vals=[0.10, 0.40, 0.30])]
    t1 = records[0]
    assert t1.avg("val_ndcg10") == pytest.approx(0.40)  # all three windows, warm-up included
    assert t1.avg("ndcg10") == pytest.approx(0.15)  # the two test windows
    best = best_per_dataset(records, "mean_val_ndcg10")
    assert best["a"].trial == "t1" and best_per_dataset(records, "mean_test_ndcg10")["a"].trial == "t2"
    table = best_markdown(best, ["a"], "mean_val_ndcg10")
    assert "chosen on val (mean_val_ndcg10); test shown, not used" in table
    assert "| mean_val_ndcg10 (selection) | test HR@10 AVG | test NDCG@10 AVG |" in table
    assert "| a | t1 | layers/group=1, τ=0.0 | 40.00 | 30.00 | 15.00 | best/a.yaml |" in table  # t1's test AVG
    assert best_summary(t1, "mean_val_ndcg10") == ("trial t1: mean_val_ndcg10 40.00%, test AVG NDCG@10 15.00% "
                                                   "HR@10 30.00% (chosen on val (mean_val_ndcg10); test shown, not used)")
    assert "test-set selection" in best_markdown(best_per_dataset(records, "mean_test_ndcg10"), ["a"],
                                                 "mean_test_ndcg10")
    rows = trials_markdown(records, "mean_val_ndcg10").splitlines()
    assert "val NDCG@10 AVG" in rows[0] and [r.split(" | ")[1] for r in rows[2:]] == ["t1", "t2"]
    assert [row["trial"] for row in csv.DictReader(trials_csv(records).splitlines())] == ["t1", "t2"]
    assert "best chosen by mean_val_ndcg10 (chosen on val" in sweep_markdown("s", records, ["a"], "mean_val_ndcg10")


def test_the_report_averages_val_as_the_window_loop_reports_it():
    """The val AVG the report selects on is the ``mean_val_ndcg10`` the last window reported to Tune."""
    from xsmoe_ray.train.worker import window_metrics

    r = record("t1", 0.0, [0.1, 0.2, 0.3], vals=[0.7, 0.2, 0.6, 0.1])
    reported = window_metrics(r.windows[-1], r.windows)
    assert r.avg("val_ndcg10") == pytest.approx(reported["mean_val_ndcg10"]) == pytest.approx(0.4)
    assert r.avg("ndcg10") == pytest.approx(reported["mean_test_ndcg10"])


def test_tau_points_pool_other_settings_and_tables():
    records = [record("t1", 0.0, [0.2, 0.2], g=1), record("t2", 0.0, [0.4, 0.4], g=2),
               record("t3", 0.1, [0.1, 0.3]), record("t4", 0.2, [0.9], status="stopped")]
    points = tau_points(records, "a", "ndcg10")  # (τ, mean, min, max) in %; t4 stopped early: left out
    assert np.allclose(points, [(0.0, 30.0, 20.0, 40.0), (0.1, 20.0, 20.0, 20.0)])
    png = tau_plot(records, ["a", "empty"], {"a": 0.0, "empty": 0.0})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(trials_csv(records).splitlines()))
    assert [r["trial"] for r in rows] == ["t1", "t2", "t3", "t4"]
    assert rows[0]["model.tau"] == "0.0" and float(rows[1]["ndcg10_avg"]) == pytest.approx(0.4)
    assert float(rows[0]["tt_s"]) == 5.0 and rows[0]["experts"] == "text:3" and rows[3]["status"] == "stopped"
    table = efficiency_markdown(records)
    assert "| a | τ = 0.1 (layers/group=1) | 3.00 | 0.50 | n/a | 5.0 | 0.83 |" in table
    assert "τ = 0.2" not in table  # a stopped trial's time is not a whole run's


# What a Ray trial's error looks like as text (str of a RayTaskError, from the audit's sweep): a
# colour-coded header first, the exception's own message last.
RAY_TASK_ERROR = (
    "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=26432, ip=192.0.2.2, actor_id=894f87, repr=window_trial)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/xsmoe_ray/model/xsmoe.py", line 315, in build_xsmoe\n'
    '    raise ValueError(f"variant {variant!r} needs the {spec.modality!r} modality, which this dataset "\n'
    "ValueError: variant 'visual' needs the 'image' modality, which this dataset does not have "
    "(modalities: ['text'])\n")
VISUAL_REASON = ("ValueError: variant 'visual' needs the 'image' modality, which this dataset does not have "
                 "(modalities: ['text'])")


def test_a_failed_trials_reason_is_its_exception_not_rays_header():
    assert error_reason(RAY_TASK_ERROR) == VISUAL_REASON
    # A message of several lines is kept whole, on one line; the traceback before it is not.
    multi = ('Traceback (most recent call last):\n  File "x.py", line 1\nray.exceptions.OutOfMemoryError: Task was '
             'killed due to the node running low on memory.\nMemory on the node was 7.6GB / 8GB.\n\n')
    assert error_reason(multi) == ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on "
                                   "memory. Memory on the node was 7.6GB / 8GB.")
    assert error_reason("Traceback:\n  x\nException: bare\n") == "Exception: bare"
    assert error_reason("worker died unexpectedly\n") == "worker died unexpectedly"  # no exception line: the last
    long = error_reason("RuntimeError: " + "x" * 1000)
    assert len(long) == 300 and long.startswith("RuntimeError: xxx") and long.endswith("…")
    assert error_reason("") == ""


def test_the_failure_reason_is_in_trials_csv_and_sweep_md():
    records = [record("t1", 0.0, [0.2, 0.1]), record("t2", 0.1, [0.3], status="error")]
    records[1].error = RAY_TASK_ERROR
    text = trials_csv(records)
    assert "\r" not in text and text.count("\n") == 3  # Unix line endings: header and two rows
    rows = {row["trial"]: row for row in csv.DictReader(io.StringIO(text))}
    assert rows["t2"]["error"] == VISUAL_REASON and rows["t1"]["error"] == ""
    md = sweep_markdown("s", records, ["a"], "mean_val_ndcg10")
    assert "2 trials: 1 complete, 1 failed." in md
    assert f"## Failed trials\n\nEach failed trial's exception" in md
    assert f"\n- a t2 (layers/group=1, τ=0.1): {VISUAL_REASON}\n" in md
    assert "## Failed trials" not in sweep_markdown("s", records[:1], ["a"], "mean_val_ndcg10")


def fake_result(directory: Path, name: str, rows: list[dict], error: str | None = None) -> SimpleNamespace:
    """What records_of reads of a Tune result: its trial directory's result.json, error and config."""
    trial_dir = directory / f"trial_{name}"
    trial_dir.mkdir()
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SimpleNamespace(path=str(trial_dir), error=error, config={"model": {"tau": 0.1}})


def test_an_interrupted_trial_is_unfinished_not_stopped_by_asha(tmp_path):
    """Tune marks the report ASHA stops a trial on ``done``; a trial cut short by Ctrl-C has none."""
    reports = [{"window": w, "done": False, "time_total_s": 1.0} for w in range(3)]
    grid = [fake_result(tmp_path, "cut", reports[:2]),
            fake_result(tmp_path, "asha", [reports[0], {**reports[1], "done": True}]),
            fake_result(tmp_path, "full", reports), fake_result(tmp_path, "failed", reports[:1], RAY_TASK_ERROR)]
    ds = SimpleNamespace(name="drift")
    with_asha = {r.trial: r.status for r in records_of(grid, ds, 3, asha=True)}
    assert with_asha == {"cut": "unfinished", "asha": "stopped", "full": "complete", "failed": "error"}
    without = {r.trial: r.status for r in records_of(grid, ds, 3, asha=False)}
    assert without == {"cut": "unfinished", "asha": "unfinished", "full": "complete", "failed": "error"}
    md = sweep_markdown("s", records_of(grid[:1] + grid[2:3], ds, 3, asha=False), ["drift"], "mean_val_ndcg10")
    assert "2 trials: 1 complete, 1 unfinished (interrupted; run the same command again to resume), 0 failed." in md
    assert "ASHA" not in md


@pytest.mark.parametrize("first_status,started", [("unfinished", ["a"]), ("stopped", ["a", "b"])])
def test_an_interrupted_experiment_ends_the_sweep(tmp_path, monkeypatch, capsys, first_status, started):
    """Tune returns from an experiment cut short by Ctrl-C as if it were done: the next dataset's
    trials must not start then."""
    spec = load_sweep(write_sweep(tmp_path, datasets={"a": {"config": "demo"}, "b": {"config": "demo"}}),
                      [f"run.out={tmp_path / 'out'}"])
    ran = []
    monkeypatch.setattr(tune_module, "tuner_for", lambda spec, ds, job, n: SimpleNamespace(fit=lambda: ds.name))
    monkeypatch.setattr(tune_module, "records_of", lambda grid, ds, n, asha: ran.append(grid) or [
        record("t", 0.0, [0.1], status=first_status if grid == "a" else "complete", dataset=grid)])
    records = tune_module.run_experiments(spec, {"a": (None, 3), "b": (None, 3)})
    assert ran == started and [r.dataset for r in records] == started
    interrupted = "[tune] sweep sweep interrupted; not started: b; run the same command again to resume"
    assert (interrupted in capsys.readouterr().out) == (first_status == "unfinished")


def test_the_tau_plot_is_drawn_only_when_tau_is_searched(tmp_path):
    one_tau = [record("t1", 0.0, [0.2, 0.1]), record("t2", 0.0, [0.3, 0.1], g=2)]
    write_sweep_outputs(tmp_path, "s", one_tau, ["a"], "mean_val_ndcg10", {"a": 0.0})
    assert not (tmp_path / "tau_sensitivity.png").exists()
    assert "tau_sensitivity.png" not in (tmp_path / "sweep.md").read_text()
    assert b"\r" not in (tmp_path / "trials.csv").read_bytes()
    two_taus = one_tau + [record("t3", 0.1, [0.2, 0.2])]
    write_sweep_outputs(tmp_path, "s", two_taus, ["a"], "mean_val_ndcg10", {"a": 0.0})
    assert (tmp_path / "tau_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "![τ sensitivity](tau_sensitivity.png)" in (tmp_path / "sweep.md").read_text()


@pytest.mark.parametrize("statuses,code", [(["complete", "stopped"], 0), (["complete", "error"], 1),
                                           (["error", "error"], 1), (["complete", "stopped", "unfinished"], 130),
                                           (["error", "unfinished"], 130)])
def test_the_exit_code_is_1_when_a_trial_failed(tmp_path, monkeypatch, capsys, statuses, code):
    records = [record(f"t{i}", 0.0, [0.1], status=s) for i, s in enumerate(statuses)]
    monkeypatch.setattr(tune_module, "run_sweep", lambda spec: records)
    out = tmp_path / "out"
    assert main([str(write_sweep(tmp_path)), f"run.out={out}"]) == code
    failed = statuses.count("error")
    last = capsys.readouterr().out.strip().splitlines()[-1:] if failed else []
    assert last == ([f"[tune] sweep sweep: {failed} of {len(statuses)} trials failed; their reasons are in "
                     f"{out.resolve() / 'trials.csv'} (column error) and {out.resolve() / 'sweep.md'} (Failed trials)"]
                    if failed else [])


# ---------------------------------------------------------------------------------------------
# Tiny sweeps on Ray (the session's 2-CPU local Ray).


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """One synthetic dataset and cache location for every sweep in this module (built on first use).

    4 chunks: windows 0 (warm-up), 1 and 2 (tested on D_2, D_3)."""
    root = tmp_path_factory.mktemp("tune_shared")
    return TINY + ["data.chunks=4", "train.max_epochs=1", f"data.path={root / 'synthetic'}", f"cache.dir={root / 'cache'}"]


@pytest.fixture(scope="module")
def failed_then_resumed(tmp_path_factory, shared_data, ray_session):
    """A 4-trial ASHA sweep in which a trial fails (no retries), then the same command again."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp, "tiny", overrides=shared_data + ["train.max_failures=0"],
                       search={"model.tau": {"grid_search": [0.0, 0.3]},
                               "model.layers_per_group": {"grid_search": [1, 2]}},
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                       resources={"cpu": 1}, max_concurrent_trials=2)
    out = tmp / "out"
    marker = tmp / "failed"
    first = run_sweep(load_sweep(path, [f"run.out={out}"]), extra={"fail_at_window": 1, "fail_marker": str(marker)})
    before = {r.trial: (out / "ray" / "drift" / f"trial_{r.trial}" / "result.json").read_bytes() for r in first}
    assert main([str(path), f"run.out={out}"]) == 0  # the documented command resumes
    second = load_records(out)
    return first, before, second, out, marker


def load_records(out: Path) -> dict[str, dict]:
    return {row["trial"]: row for row in csv.DictReader((out / "trials.csv").open())}


def test_a_failed_trial_is_recorded(failed_then_resumed):
    first, _, _, out, marker = failed_then_resumed
    assert marker.is_file()  # the injected failure happened
    failed = [r for r in first if r.status == "error"]
    assert failed and all("injected worker failure" in r.error for r in failed)
    assert all([w["window"] for w in r.windows] == [0] for r in failed)  # failed at the start of window 1
    assert {r.status for r in first} - {"error"} <= {"complete", "stopped"}


def test_resume_finishes_failed_trials_without_rerunning_finished_ones(failed_then_resumed):
    first, before, second, out, _ = failed_then_resumed
    assert set(second) == {r.trial for r in first}  # the same trials, no new ones
    assert {row["status"] for row in second.values()} <= {"complete", "stopped"}
    for r in first:
        after = (out / "ray" / "drift" / f"trial_{r.trial}" / "result.json").read_bytes()
        if r.status != "error":
            assert after == before[r.trial]  # a finished trial was not run again
            continue
        windows = [row["window"] for row in result_rows(out / "ray" / "drift" / f"trial_{r.trial}")]
        # Resumed from its window-0 checkpoint: window 0 is not trained again, later windows ran.
        assert windows[0] == 0 and windows.count(0) == 1 and windows == sorted(set(windows)) and len(windows) > 1


def test_trial_values_reach_the_window_loop(failed_then_resumed):
    first, _, _, out, _ = failed_then_resumed
    for trial_dir in (out / "ray" / "drift").glob("trial_*"):
        config = json.loads((trial_dir / "params.json").read_text())
        tau, g = config["model"]["tau"], config["model"]["layers_per_group"]
        for row in result_rows(trial_dir):
            assert all(len(n) == 4 // g for n in row["experts"].values())  # demo backbones: 4 layers
            if tau == 0.0:  # no pruning: one expert per layer per window
                assert all(n == [row["window"] + 1] * (4 // g) for n in row["experts"].values())


def test_sweep_outputs(failed_then_resumed):
    _, _, second, out, _ = failed_then_resumed
    assert len(second) == 4
    assert (out / "tau_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "sweep.md").read_text()
    assert "0 failed" in text and "## Efficiency (paper Table 3 shape)" in text
    complete = {t: row for t, row in second.items() if row["status"] == "complete"}
    assert complete and all(int(row["windows"]) == 3 for row in complete.values())
    # Chosen on val (the default metric), ASHA included; the test AVG is shown beside it, not used.
    best_trial = max(complete.values(), key=lambda row: float(row["val_ndcg10_avg"]))
    header = (out / "best" / "drift.yaml").read_text().splitlines()[0]
    assert header.startswith(f"# best trial {best_trial['trial']}: mean_val_ndcg10 ")
    assert f"test AVG NDCG@10 {100 * float(best_trial['ndcg10_avg']):.2f}%" in header
    assert "(chosen on val (mean_val_ndcg10); test shown, not used)" in header
    assert "chosen on val (mean_val_ndcg10); test shown, not used" in text
    best = load_config(str(out / "best" / "drift.yaml"))
    assert best.model.tau == float(best_trial["model.tau"])
    assert best.model.layers_per_group == int(best_trial["model.layers_per_group"])
    # Every trial read the one prepared dataset and cache built before the trials started.
    assert best.cache.dir == str(Path(shared_cache_dir(out)).resolve())
    assert (out / "datasets" / "drift" / "prepared" / "summary.json").is_file()
    assert not [p for p in (out / "ray").rglob("*") if p.name in ("prepared", "cache", "manifest.json")]


def shared_cache_dir(out: Path) -> str:
    return yaml.safe_load((out / "datasets" / "drift" / "config.yaml").read_text())["cache"]["dir"]


def test_a_sweep_whose_trial_fails_exits_1_with_the_reason_in_its_outputs(tmp_path, shared_data, ray_session,
                                                                          monkeypatch, capsys):
    """The trial raises at the start of window 0 (no retries): the documented command exits 1 and
    trials.csv and sweep.md carry the exception's message, not Ray's header; τ is not searched."""
    path = write_sweep(tmp_path, "failing", overrides=shared_data + ["train.max_failures=0"],
                       search={"run.seed": 0}, resources={"cpu": 1}, max_concurrent_trials=1)
    out = tmp_path / "out"
    failing = {"fail_at_window": 0, "fail_marker": str(tmp_path / "failed")}
    monkeypatch.setattr(tune_module, "run_sweep", lambda spec: run_sweep(spec, extra=failing))
    assert main([str(path), f"run.out={out}"]) == 1
    assert "1 of 1 trials failed; their reasons are in" in capsys.readouterr().out.strip().splitlines()[-1]
    reason = "RuntimeError: injected worker failure at window 0 (test switch fail_at_window)"
    (row,) = load_records(out).values()
    assert row["status"] == "error" and row["error"] == reason
    assert f"(seed=0): {reason}\n" in (out / "sweep.md").read_text()
    assert not (out / "tau_sensitivity.png").exists()


def test_train_inside_a_trial_and_its_resume_keep_every_window(tmp_path, shared_data, ray_session):
    """resources.workers = 2: each trial drives a 2-worker TorchTrainer and Tune gets its reports.

    The trial fails at window 1 (no retries), then the sweep is run again: the Train run resumes
    after window 0, and the trial's results still hold every window. (The sweep *driver* killed
    mid-trial is the next test.)"""
    path = write_sweep(tmp_path, "ddp", overrides=shared_data + ["train.max_failures=0"], search={"model.tau": 0.0},
                       resources={"cpu": 0.5, "workers": 2}, max_concurrent_trials=1)
    out = tmp_path / "out"
    (failed,) = run_sweep(load_sweep(path, [f"run.out={out}"]),
                          extra={"fail_at_window": 1, "fail_marker": str(tmp_path / "failed")})
    assert failed.status == "error" and (tmp_path / "failed").is_file()
    (rec,) = run_sweep(load_sweep(path, [f"run.out={out}"]))
    assert rec.trial == failed.trial
    assert rec.status == "complete" and [w["window"] for w in rec.windows] == [0, 1, 2]
    assert [w["experts"]["text"] for w in rec.windows] == [[1] * 4, [2] * 4, [3] * 4]
    assert all(len(w["param_hash"]) == 64 for w in rec.windows)  # compared across the 2 ranks each window
    assert load_records(out)[rec.trial]["status"] == "complete"  # trials.csv, which picks the best config
    rows = result_rows(out / "ray" / "drift" / f"trial_{rec.trial}")
    assert any("checkpoint_path" in r for r in rows)  # forwarded by TuneReportCallback from the Train run
    assert (out / "train" / "drift").is_dir()


def test_a_killed_sweep_driver_loses_no_window_of_a_train_inside_trial(tmp_path, shared_data, ray_session):
    """Issue 11.1: the sweep process is SIGKILLed while its workers: 2 trial runs window 1, then the
    same sweep is run again. Tune holds no checkpoint of such a trial and starts it afresh, while its
    Train run resumes after window 0: the trial's results must still hold windows 0, 1 and 2."""
    path = write_sweep(tmp_path, "ddp", overrides=shared_data, search={"model.tau": 0.0},
                       resources={"cpu": 0.5, "workers": 2}, max_concurrent_trials=1)
    out, held = tmp_path / "out", tmp_path / "held"
    code = ("from xsmoe_ray.sweep_spec import load_sweep; from xsmoe_ray.tune import run_sweep; "
            f"run_sweep(load_sweep({str(path)!r}, ['run.out={out}']), "
            f"extra={{'hold_at_window': 1, 'hold_marker': {str(held)!r}}})")
    log = (tmp_path / "killed_sweep.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the driver and its local Ray
    try:
        deadline = time.monotonic() + 600  # start-up of a local Ray + Train run: minutes on a loaded 2-core machine
        while not (held.is_file() and _reported_windows(out) >= 1):  # window 0 reached Tune; window 1 started
            assert proc.poll() is None, (tmp_path / "killed_sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the held sweep never reached window 1"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, by its id
        proc.wait()
    (rec,) = run_sweep(load_sweep(path, [f"run.out={out}"]))
    assert rec.status == "complete" and [w["window"] for w in rec.windows] == [0, 1, 2]
    assert load_records(out)[rec.trial]["status"] == "complete"
    rows = result_rows(out / "ray" / "drift" / f"trial_{rec.trial}")
    assert sorted({r["window"] for r in rows}) == [0, 1, 2]


def _reported_windows(out: Path) -> int:
    return max((len(result_rows(d)) for d in (out / "ray" / "drift").glob("trial_*")), default=0)
