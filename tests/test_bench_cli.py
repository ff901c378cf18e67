"""bench/results_study.py's study record (a root is one setting that later runs add variants and seeds to), its
committed archive (bench/study_archive.py), kept sections of the report, bench/baseline_speed.py's command line and
bench/gpu_bundle.sh's modes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from results_study import record_study  # noqa: E402


def _study(variants, seeds, overrides=("data.sample_users=400",), config="ml1m"):
    return {"config": config, "overrides": list(overrides), "knobs": [], "variants": list(variants),
            "seeds": list(seeds), "argv": ["results_study.py"]}


def test_a_second_run_on_a_root_adds_its_variants_and_seeds(tmp_path):
    record_study(tmp_path, _study(["xsmoe", "static"], [0]))
    merged = record_study(tmp_path, _study(["noft", "xsmoe"], [2, 1]))
    on_disk = json.loads((tmp_path / "study.json").read_text())
    assert on_disk == merged
    assert merged["variants"] == ["xsmoe", "static", "noft"] and merged["seeds"] == [0, 1, 2]


def _record_many(root: str, lane: int) -> None:
    for _ in range(25):
        record_study(Path(root), _study([f"lane{lane}"], [lane]))


def test_lanes_started_together_on_one_root_lose_nothing(tmp_path):
    # four processes read-merge-write the same study.json at once (lanes of one study): no lane may
    # read a half-written file, and every lane's variant and seed must survive the others' writes
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        for done in [pool.submit(_record_many, str(tmp_path), lane) for lane in range(4)]:
            done.result()
    on_disk = json.loads((tmp_path / "study.json").read_text())
    assert sorted(on_disk["variants"]) == [f"lane{k}" for k in range(4)] and on_disk["seeds"] == [0, 1, 2, 3]


@pytest.mark.parametrize("change", [{"overrides": ["data.sample_users=2000"]}, {"config": "synth_medium"},
                                    {"knobs": ["drift=0.5"]}])
def test_a_run_with_another_setting_on_the_same_root_stops_and_keeps_the_record(tmp_path, change):
    first = record_study(tmp_path, _study(["xsmoe"], [0]))
    with pytest.raises(SystemExit, match="records another setting"):
        record_study(tmp_path, {**_study(["static"], [1]), **change})
    assert json.loads((tmp_path / "study.json").read_text()) == first


def test_baseline_speed_takes_overrides_before_or_after_its_variants(capsys):
    import baseline_speed

    args = baseline_speed.parse_args(["--variants", "mmmlp", "gag", "data.sample_users=400", "--epochs", "3",
                                      "data.path=x"])
    assert args.variants == ["iisan_rh", "mmmlp", "gag"] and args.epochs == 3
    assert sorted(args.overrides) == ["data.path=x", "data.sample_users=400"]
    with pytest.raises(SystemExit):
        baseline_speed.parse_args(["--variants", "mmlp"])
    assert "unknown variant(s) ['mmlp']" in capsys.readouterr().err


def _live_run(root: Path, name: str, history: list[dict]) -> None:
    run = root / "runs" / name
    (run / "ray").mkdir(parents=True)
    (run / "history.json").write_text(json.dumps(history))
    (run / "config.yaml").write_text("train:\n  max_epochs: 50\n")
    (run / "ray" / "checkpoint.pt").write_bytes(b"\0" * 64)  # large files stay behind


def test_the_archive_keeps_each_finished_runs_small_files_and_merges_the_study(tmp_path):
    from study_archive import main

    live, record = tmp_path / "live", tmp_path / "record"
    _live_run(live / "a", "xsmoe_s0", [{"window": 0, "val_ndcg10": 0.1}])
    record_study(live / "a", _study(["xsmoe"], [0]))
    (live / "a" / "runs" / "xsmoe_s1").mkdir()  # a run in progress: no history yet
    assert main(["--from", str(live), "--into", str(record), "a:named", "missing"]) == 0
    kept = record / "named" / "runs"
    assert sorted(p.name for p in kept.iterdir()) == ["xsmoe_s0"]
    assert sorted(p.name for p in (kept / "xsmoe_s0").iterdir()) == ["config.yaml", "history.json"]
    assert not (record / "missing").exists()
    # a later session's live root of the same setting adds its runs to the record
    _live_run(live / "b", "static_s1", [{"window": 0, "val_ndcg10": 0.2}])
    record_study(live / "b", _study(["static"], [1]))
    main(["--from", str(live), "--into", str(record), "b:named"])
    assert sorted(p.name for p in kept.iterdir()) == ["static_s1", "xsmoe_s0"]
    study = json.loads((record / "named" / "study.json").read_text())
    assert study["variants"] == ["xsmoe", "static"] and study["seeds"] == [0, 1]


def test_the_archive_refuses_a_rerun_under_a_recorded_name(tmp_path):
    from study_archive import main

    live, record = tmp_path / "live", tmp_path / "record"
    _live_run(live / "a", "xsmoe_s0", [{"window": 0, "val_ndcg10": 0.1}])
    record_study(live / "a", _study(["xsmoe"], [0]))
    main(["--from", str(live), "--into", str(record), "a"])
    main(["--from", str(live), "--into", str(record), "a"])  # the same run twice is no conflict
    rerun = live / "a" / "runs" / "xsmoe_s0" / "history.json"
    rerun.write_text(json.dumps([{"window": 0, "val_ndcg10": 0.1, "seconds": 9.0, "train_s": 8.0}]))
    main(["--from", str(live), "--into", str(record), "a"])  # a re-run of the seed: other timings only
    assert "seconds" not in json.loads((record / "a" / "runs" / "xsmoe_s0" / "history.json").read_text())[0]
    rerun.write_text(json.dumps([{"window": 0, "val_ndcg10": 0.3}]))
    with pytest.raises(SystemExit, match="two runs under one name"):
        main(["--from", str(live), "--into", str(record), "a"])
    assert json.loads((record / "a" / "runs" / "xsmoe_s0" / "history.json").read_text())[0]["val_ndcg10"] == 0.1


def test_a_kept_section_survives_a_rewrite_word_for_word(tmp_path):
    from study_report import KEPT_NOTE, main

    out = tmp_path / "RESULTS.md"
    old = ("# Results\n\n## Old study\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Other\n\ntext\n\n## Analysis\n\n"
           "<!-- analysis:begin -->\nmine\n<!-- analysis:end -->\n")
    out.write_text(old)
    for _ in range(2):  # kept twice: marked once
        assert main(["--out", str(out), "--kept", "Old study"]) == 0
    new = out.read_text()
    assert new.count(KEPT_NOTE) == 1 and "| 1 | 2 |" in new and "## Other" not in new
    assert new.split("<!-- analysis:begin -->")[1].startswith("\nmine")
    with pytest.raises(SystemExit, match="no such section"):
        main(["--out", str(out), "--kept", "Never written"])


def test_a_record_without_variants_or_seeds_merges(tmp_path):
    """quality_guard.py wrote study.json with the setting only until 2026-12-04; archiving such a root
    a second time stopped the report (KeyError)."""
    (tmp_path / "study.json").write_text(json.dumps({"config": "ml1m, 400 users", "overrides": []}))
    merged = record_study(tmp_path, {"config": "ml1m, 400 users", "overrides": [], "variants": ["xsmoe"], "seeds": [0]})
    assert merged["variants"] == ["xsmoe"] and merged["seeds"] == [0]
    again = record_study(tmp_path, {"config": "ml1m, 400 users", "overrides": []})
    assert again["variants"] == ["xsmoe"] and again["seeds"] == [0]


def test_gpu_bundle_names_its_modes_and_stops_on_a_missing_bundle_with_its_log(tmp_path):
    script = str(Path(__file__).resolve().parents[1] / "bench" / "gpu_bundle.sh")
    usage = subprocess.run(["bash", script], capture_output=True, text=True)
    assert usage.returncode == 2 and "gpu_bundle.sh build DIR" in usage.stdout
    out = tmp_path / "out"
    run = subprocess.run(["bash", script, "run", str(tmp_path / "no_bundle"), str(out)], capture_output=True, text=True)
    assert run.returncode == 3  # the unpack step, before anything is imported or started
    log = (out / "gpu_bundle.log").read_text()
    assert "[gpu_bundle] unpack" in log and "exit 2" in log and "import" not in log


def test_a_study_run_names_each_setting_once_when_the_user_overrides_a_root_default(tmp_path):
    from results_study import stream_command

    plain = stream_command("synth_medium", tmp_path, "xsmoe", 1, [])
    assert f"data.path={tmp_path / 'data'}" in plain and f"cache.dir={tmp_path / 'cache'}" in plain
    moved = stream_command("synth_medium", tmp_path, "xsmoe", 1, ["data.path=/elsewhere", "cache.dir=/c"])
    assert [a for a in moved if a.startswith(("data.path=", "cache.dir="))] == ["data.path=/elsewhere", "cache.dir=/c"]
    assert f"run.out={tmp_path / 'runs' / 'xsmoe_s1'}" in moved
