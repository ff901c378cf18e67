"""The main job end to end on tiny synthetic data: outputs, resume after an injected failure."""

import csv
import json

import pytest

from xsmoe_ray.config import load_config
from xsmoe_ray.stream import run

TINY = ["synth.users=150", "synth.items=80", "synth.interactions=5000", "data.chunks=5", "data.k_core=2",
        "train.max_epochs=2", "train.patience=1", "model.embed_dim=16", "model.d_prime=8",
        "train.max_failures=1", "train.batch_size=128"]


def tiny(tmp_path, name, *extra):
    shared = tmp_path.parent / "shared_data"  # one synthetic dataset and cache for all runs here
    return load_config("demo", TINY + [f"run.out={tmp_path / name}", f"data.path={shared / 'synthetic'}",
                                        f"cache.dir={shared / 'cache'}", *extra])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("stream")
    cfg = tiny(tmp, "plain")
    return cfg, run(cfg), tmp


def test_run_writes_every_output(uninterrupted):
    cfg, history, _ = uninterrupted
    out = __import__("pathlib").Path(cfg.run.out)
    for name in ["config.yaml", "results.csv", "results.md", "metrics.png", "experts.png", "history.json"]:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["test_chunk"]) for r in rows] == [2, 3, 4]  # windows 1-3 test on D_2-D_4
    assert all(0.0 <= float(r["hr10"]) <= 1.0 for r in rows)
    assert [r["window"] for r in history] == [0, 1, 2, 3]
    # xsmoe adds one expert per layer each window after the warm-up (tau = 0 prunes nothing)
    assert [h["experts"]["text"][0] for h in history] == [1, 2, 3, 4]
    assert "| xsmoe | HR@10 |" in (out / "results.md").read_text()


def test_injected_failure_resumes_and_matches(uninterrupted, tmp_path):
    cfg0, plain, tmp = uninterrupted
    cfg = tiny(tmp, "crashed")
    history = run(cfg, extra={"fail_at_window": 3, "fail_marker": str(tmp_path / "failed")})
    assert (tmp_path / "failed").is_file()  # the failure really happened
    assert [r["window"] for r in history] == [0, 1, 2, 3]  # every window exactly once
    for a, b in zip(plain, history):
        assert a["hr10"] == b["hr10"] and a["ndcg10"] == b["ndcg10"] and a["experts"] == b["experts"]
    saved = json.loads((tmp / "crashed" / "history.json").read_text())
    assert len(saved) == 4


def test_last_window_stops_early_and_a_relaunch_continues_identically(uninterrupted):
    _, plain, tmp = uninterrupted
    first = run(tiny(tmp, "stepwise", "train.last_window=1"))
    assert [r["window"] for r in first] == [0, 1]
    history = run(tiny(tmp, "stepwise"))  # last_window is result-neutral: the relaunch resumes
    assert [r["window"] for r in history] == [0, 1, 2, 3]
    assert [r["param_hash"] for r in history] == [r["param_hash"] for r in plain]
    assert [r["ndcg10"] for r in history] == [r["ndcg10"] for r in plain]


def test_two_gloo_workers_agree_with_one(uninterrupted):
    cfg1, plain, tmp = uninterrupted
    history = run(tiny(tmp, "two_workers", "train.num_workers=2"))
    # Every window ended with a cross-rank comparison of the parameter hash (a mismatch raises),
    # and the structure evolves exactly as with one worker.
    assert [r["window"] for r in history] == [0, 1, 2, 3]
    assert all(len(r["param_hash"]) == 64 for r in history)
    assert [r["experts"] for r in history] == [r["experts"] for r in plain]
    # The ranks split each global batch (same steps over the same rows as one worker), but each
    # rank's in-batch negatives are its own half, so the runs agree within a tolerance, not exactly.
    # At this tiny scale one window's metric swings more than that between seeds of ONE worker
    # (window 2 HR@10: 0.64 / 0.64 / 0.19 for seeds 0 / 1 / 2), so the mean over windows is compared.
    for key in ("hr10", "ndcg10"):
        one, two = (sum(r[key] for r in h[1:]) / len(h[1:]) for h in (plain, history))
        assert abs(one - two) <= 0.1, (key, one, two)


def _final_norms(cfg) -> dict:
    from pathlib import Path

    from xsmoe_ray.train.checkpoint import load_state

    last = sorted((Path(cfg.run.out) / "ray" / cfg.run.name).glob("window_*"))[-1]
    model = load_state(last).model
    return {f"{m}.{k}": getattr(n, k) for m, n in model.norms.items() for k in ("mean", "scale", "fitted")}


def test_standardisation_is_fitted_on_d0_and_kept_through_resume_and_ranks(uninterrupted):
    """Fixed at warm-up from D_0's items, saved in every checkpoint, identical after a crash + resume
    and with two ranks (each rank fits it; the per-window hash comparison covers the buffers)."""
    import torch

    from xsmoe_ray.cache import load_grouped
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.train.worker import warm_up_items

    cfg, _, tmp = uninterrupted
    assert cfg.model.feature_norm == "layer"
    plain = _final_norms(cfg)
    assert plain and all(float(v) == 1.0 for k, v in plain.items() if k.endswith("fitted"))
    prepared = load_prepared(tmp / "plain" / "prepared")
    features = load_grouped(cfg.cache.dir, cfg.model.layers_per_group, None, torch.device("cpu"))
    d0 = warm_up_items(prepared.stream)
    for m, t in features.items():
        assert torch.allclose(plain[f"{m}.mean"], t[d0].double().mean(0).float(), atol=1e-5)
    for other in ("crashed", "two_workers"):
        if (tmp / other / "ray").exists():  # written by the tests above
            got = _final_norms(tiny(tmp, other))
            assert all(torch.equal(got[k], plain[k]) for k in plain), other


def test_a_grouping_the_backbones_cannot_take_stops_before_encoding(uninterrupted, capsys):
    from xsmoe_ray.stream import main

    cfg, _, tmp = uninterrupted
    fresh_cache = tmp / "bad_grouping_cache"
    overrides = [*TINY, f"run.out={tmp / 'bad_grouping'}", f"data.path={tmp.parent / 'shared_data' / 'synthetic'}",
                 f"cache.dir={fresh_cache}", "model.layers_per_group=3"]
    assert main(overrides) == 2
    assert "cannot be split into groups of 3" in capsys.readouterr().err
    assert not fresh_cache.exists()  # read from the backbones' configs: nothing was encoded
    assert not (tmp / "bad_grouping" / "ray").exists()  # no trainer was started


def test_a_relaunch_with_result_changing_settings_is_refused(uninterrupted, capsys):
    """Issue 11: resuming a finished run as another variant on other data once exited 0 and retitled
    the old results; now it names what differs, and nothing is trained or overwritten."""
    from pathlib import Path

    from xsmoe_ray.stream import main

    cfg, _, tmp = uninterrupted
    out = Path(cfg.run.out)
    before = (out / "history.json").read_text()
    overrides = [*TINY, f"run.out={out}", f"data.path={tmp.parent / 'shared_data' / 'synthetic'}",
                 f"cache.dir={tmp.parent / 'shared_data' / 'cache'}"]
    assert main([*overrides, "model.variant=static", "data.k_core=3"]) == 2
    err = capsys.readouterr().err
    assert "model.variant: 'xsmoe' -> 'static'" in err and "data.k_core: 2 -> 3" in err
    assert (out / "history.json").read_text() == before and "variant: xsmoe" in (out / "config.yaml").read_text()


def test_more_workers_than_the_local_machine_holds_is_an_error(ray_session, tmp_path):
    """Issue 11: train.num_workers above a local Ray's CPUs (or GPUs) once waited forever."""
    import xsmoe_ray.stream as stream
    from xsmoe_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.num_workers=3 needs \{'CPU': 3.0, 'GPU': 0.0\} but this machine"):
        stream.check_local_resources(tiny(tmp_path, "w", "train.num_workers=3"), True)
    with pytest.raises(ConfigError, match="with train.use_gpu=true needs"):
        stream.check_local_resources(tiny(tmp_path, "g", "train.use_gpu=true"), True)
    stream.check_local_resources(tiny(tmp_path, "ok", "train.num_workers=2"), True)
    stream.check_local_resources(tiny(tmp_path, "cluster", "train.num_workers=3"), False)  # a cluster may grow


def test_an_unloadable_backbone_is_a_one_line_error(tmp_path, ray_session, capsys):
    from xsmoe_ray.stream import main

    assert main([*TINY, f"run.out={tmp_path / 'r'}", "backbone.text=/nonexistent/bert"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "/nonexistent/bert" in err and "text" in err


def test_a_uri_run_out_gets_outputs_and_checkpoints_and_resumes_from_it(uninterrupted, tmp_path):
    """``run.out`` as a URI goes through pyarrow's filesystem layer (file:// here, s3:// on a cluster)."""
    _, plain, tmp = uninterrupted
    remote, local = tmp_path / "bucket" / "run", tmp_path / "local"
    cfg = tiny(tmp, "unused", f"run.out=file://{remote}", f"run.local_dir={local}")
    history = run(cfg)
    assert [r["ndcg10"] for r in history] == [r["ndcg10"] for r in plain]  # same run, other place
    for name in ["config.yaml", "results.csv", "results.md", "metrics.png", "experts.png", "history.json"]:
        assert (remote / name).is_file(), name
    assert sorted(p.name for p in (remote / "ray" / cfg.run.name).glob("window_*")) == ["window_0002", "window_0003"]
    assert (local / "prepared" / "summary.json").is_file() and not (remote / "prepared").exists()
    # A relaunch with the same run.out restores from the URI: nothing is trained again.
    again = run(cfg)
    assert [r["window"] for r in again] == [0, 1, 2, 3] and again == history


def test_run_dir_resolves_paths_and_refuses_unknown_schemes(tmp_path):
    from xsmoe_ray.config import ConfigError, RunConfig
    from xsmoe_ray.rundir import run_dir

    local = run_dir(RunConfig(out=str(tmp_path / "r")))
    assert local.uri is None and local.storage == str(tmp_path / "r" / "ray")
    a, b = run_dir(RunConfig(out="file:///x/run/")), run_dir(RunConfig(out="file:///x/run"))
    assert a == b and a.storage == "file:///x/run/ray" and a.local.name != "run"
    with pytest.raises(ConfigError, match="nosuch://bucket/run"):
        run_dir(RunConfig(out="nosuch://bucket/run"))


def test_a_one_modality_variant_without_its_modality_stops_before_training(uninterrupted, capsys):
    from xsmoe_ray.stream import main

    _, _, tmp = uninterrupted
    shared = tmp.parent / "shared_data"
    overrides = [*TINY, f"run.out={tmp / 'visual_no_image'}", f"data.path={shared / 'synthetic'}",
                 f"cache.dir={shared / 'cache_text_only'}", "backbone.image=none", "model.variant=visual"]
    assert main(overrides) == 2
    assert "model.variant=visual needs the image modality" in capsys.readouterr().err
    assert not (tmp / "visual_no_image" / "ray").exists()  # no trainer was started


def test_placeholders_are_counted_and_named_on_the_console(tmp_path):
    from xsmoe_ray.cache.build import placeholder_lines

    manifest = {"modalities": {
        "image": {"failures": {f"sku-{i}": "corrupt image: UnidentifiedImageError" for i in range(5)}},
        "text": {"failures": {}}}}
    lines = placeholder_lines(manifest, tmp_path)
    assert len(lines) == 1  # nothing to say of the text modality
    assert lines[0].startswith("image: 5 item(s) encoded as placeholders, e.g. sku-0: corrupt image")
    assert "sku-2" in lines[0] and "sku-3" not in lines[0]  # three examples, the manifest has the rest
    assert str(tmp_path / "manifest.json") in lines[0]


def test_a_run_puts_back_the_sigint_handler_it_found(uninterrupted):
    """Ray Train's fit installs its own SIGINT handler and leaves it; --follow, waiting between runs,
    then needed three Ctrl-C and never printed its stop line."""
    import signal

    cfg, history, _ = uninterrupted
    def mine(signum, frame):  # a handler the caller owns
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGINT, mine)
    try:
        assert run(cfg) == history  # a relaunch of the finished run: fit() runs, trains nothing
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigint_kept_restores_whatever_the_block_installs():
    import signal

    from xsmoe_ray.stream import sigint_kept

    def mine(signum, frame):
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGINT, mine)
    try:
        with sigint_kept():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # as Ray Train's fit does with its own
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


def test_ray_trains_ctrl_c_exit_becomes_an_interrupt_with_a_resume_hint(tmp_path, monkeypatch, capsys):
    """After Ctrl-C, Ray Train's fit aborts the run and leaves by SystemExit(1) without a word; the
    stream says what was kept and how to go on, and exits 130 (--follow: 0, it was asked to stop)."""
    import ray.train.torch

    import xsmoe_ray.stream as stream

    def aborted(self):
        raise SystemExit(1)
    monkeypatch.setattr(ray.train.torch.TorchTrainer, "fit", aborted)
    cfg = tiny(tmp_path, "aborted")
    with pytest.raises(KeyboardInterrupt):
        stream.fit(cfg, str(tmp_path / "storage"), tmp_path / "prepared", tmp_path / "cache")

    def interrupted(cfg, *rest):
        raise KeyboardInterrupt
    monkeypatch.setattr(stream, "run", interrupted)
    assert stream.main([f"run.out={tmp_path / 'x'}"]) == 130
    assert "[stream] interrupted; the windows finished so far are kept: run the same command again" \
        in capsys.readouterr().out
    assert stream.main(["--follow", "5", f"run.out={tmp_path / 'x'}"]) == 0
    assert "[stream] stopped following; the windows finished so far are kept" in capsys.readouterr().out
