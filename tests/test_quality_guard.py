"""bench/quality_guard.py's bookkeeping (the recorded table round-trips with its machine, a fall beyond the seed
spread is flagged, --same-as names the first window whose parameters differ) and study_report's warm/cold table."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # quality_guard imports results_study from bench/
_spec = importlib.util.spec_from_file_location("quality_guard", BENCH / "quality_guard.py")
guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guard)
from results_study import ANALYSIS_BEGIN, ANALYSIS_END  # noqa: E402

ARGS = SimpleNamespace(users=400, overrides=[], seeds=[0, 1, 2])
RESULTS = {"xsmoe": [{"ndcg": 5.2, "ran": True}, {"ndcg": 5.4, "ran": True}, {"ndcg": 5.3, "ran": True}],
           "noft": [{"ndcg": 4.0, "pop": 1.4, "ran": True}] * 3}
RESULTS["xsmoe"][0]["pop"] = 1.4
DOC = f"# Results\n\n## Analysis\n\n{ANALYSIS_BEGIN}\nhand-written\n{ANALYSIS_END}\n"


def test_a_recorded_block_reads_back_per_seed_inside_the_kept_analysis():
    text = guard.with_record(DOC, guard.record_block(ARGS, RESULTS, 7.5))
    assert text.index(ANALYSIS_BEGIN) < text.index(guard.BEGIN) < text.index(ANALYSIS_END)
    setting, per_seed = guard.recorded(text)
    assert setting == guard.settings_key(ARGS) == "users=400 overrides=(defaults)"
    assert per_seed == {"xsmoe": [5.2, 5.4, 5.3], "noft": [4.0, 4.0, 4.0]}
    # a new record replaces the old one: one block, the new figures
    again = guard.with_record(text, guard.record_block(ARGS, {"xsmoe": [{"ndcg": 6.0, "pop": 1.4, "ran": False}]}, 1.0))
    assert again.count(guard.BEGIN) == 1 and guard.recorded(again)[1] == {"xsmoe": [6.0]}
    assert "(7.5 minutes for all seeds)" in text and "from runs finished before" in again
    assert "hand-written" in again


def test_a_fall_beyond_the_seed_spread_is_a_regression_and_a_recorded_seed_is_not():
    seeds = [5.2, 5.4, 5.3]  # mean 5.3, spread 0.2
    assert guard.verdict(seeds, 5.2)[2] == "ok"  # unchanged code reproduces its recorded seed
    assert guard.verdict(seeds, 5.11)[2] == "ok"
    assert guard.verdict(seeds, 5.09)[2] == "REGRESSION"
    assert guard.verdict(seeds, 5.55)[2] == "better"
    assert guard.verdict([5.0, 5.0, 5.0], 4.99)[2] == "REGRESSION"  # zero spread: any real fall counts


def test_compare_counts_regressions_against_the_last_recorded_table(capsys):
    text = guard.with_record(DOC, guard.record_block(ARGS, RESULTS, 7.5))
    now = {"xsmoe": [{"ndcg": 4.9}], "noft": [{"ndcg": 4.0}]}
    assert guard.compare(SimpleNamespace(users=400, overrides=[]), now, text) == 1
    out = capsys.readouterr().out
    assert "xsmoe" in out and "REGRESSION" in out
    assert guard.compare(SimpleNamespace(users=400, overrides=[]), now, DOC) == 0  # nothing recorded yet


def test_the_warm_table_averages_warm_and_cold_columns_per_seed():
    import study_report

    def run(seed, ndcg, warm):
        rows = [{"window": c - 1, "test_chunk": c, "ndcg10": ndcg, "warm_ndcg10": warm, "pop_warm_ndcg10": 0.01,
                 "cold_share": 0.1} for c in (2, 3)]
        return {"seed": seed, "history": [{"window": 0, "test_chunk": None}] + rows}

    runs = {"gag": [run(0, 0.04, 0.05), run(1, 0.02, 0.03)],
            "old": [{"seed": 0, "history": [{"window": 1, "test_chunk": 2, "ndcg10": 0.05}]}]}
    table = study_report.warm_table(runs)
    assert "| gag | 3.00 ± 1.41 | 4.00 ± 1.41 | 1.00 ± 0.00 | 10.00 ± 0.00 |" in table
    assert "| old | | runs older than the warm columns | | |" in table


def test_the_significance_table_says_when_there_is_nothing_to_compare():
    import study_report

    def run(seed, ndcg):
        return {"seed": seed, "history": [{"window": c - 1, "test_chunk": c, "ndcg10": ndcg} for c in (2, 3)]}

    alone = study_report.significance_table({"xsmoe": [run(0, 0.05), run(1, 0.06)]})
    assert alone == "No other model shares a seed with `xsmoe` in this section.\n"
    paired = study_report.significance_table({"xsmoe": [run(0, 0.05), run(1, 0.06)],
                                              "static": [run(0, 0.04), run(1, 0.045)]})
    assert "| static | 5.50 / 4.25 | +29.4 % |" in paired


def test_a_record_names_its_machine_and_a_record_without_one_reads_as_none():
    text = guard.with_record(DOC, guard.record_block(ARGS, RESULTS, 7.5))
    assert guard.recorded_machine(text) == guard.machine()
    assert "torch" in guard.machine() and "transformers" in guard.machine()
    old = text.replace(f"machine: {guard.machine()}\n", "")
    assert guard.recorded_machine(old) is None and guard.recorded(old) == guard.recorded(text)


def _history(path, hashes):
    import json
    path.mkdir(parents=True)
    rows = [{"window": w, "param_hash": h} for w, h in enumerate(hashes)]
    (path / "history.json").write_text(json.dumps(rows + [{"window": 1, "param_hash": hashes[1]}]))  # a resumed window


def test_same_as_names_the_first_window_whose_parameters_differ(tmp_path, capsys, monkeypatch):
    args = SimpleNamespace(root=tmp_path, label="now", same_as="before")
    _history(tmp_path / "now" / "runs" / "xsmoe_s0", ["a", "b", "c"])
    _history(tmp_path / "before" / "runs" / "xsmoe_s0", ["a", "b", "c"])
    _history(tmp_path / "now" / "runs" / "static_s0", ["a", "b", "c"])
    _history(tmp_path / "before" / "runs" / "static_s0", ["a", "x", "c"])
    _history(tmp_path / "now" / "runs" / "noft_s0", ["a", "b", "c"])  # nothing under 'before' to compare with
    assert guard.same_hashes(args, [("xsmoe", 0), ("static", 0), ("noft", 0)]) == 1
    out = capsys.readouterr().out
    assert "xsmoe seed 0: the same parameter hashes as before in all 3 windows" in out
    assert "static seed 0: parameter hashes differ from before from window 1 on" in out
    assert "noft seed 0: no run under" in out
    # a study folder given by its path (relative to the working directory), not a label under --root
    args.root, args.label = tmp_path / "elsewhere", "../now"
    args.root.mkdir()
    monkeypatch.chdir(tmp_path)
    assert guard.same_hashes(args, [("xsmoe", 0)]) == 1


def test_same_as_without_its_reference_stops_before_any_run(tmp_path):
    for d in ("ml-1m", "all-MiniLM-L6-v2"):
        (tmp_path / "data" / d).mkdir(parents=True)
    argv = ["--data", str(tmp_path / "data"), "--root", str(tmp_path / "guard"), "--label", "after",
            "--same-as", "before"]
    with pytest.raises(SystemExit, match="--same-as before: neither .* nor a folder"):
        guard.main(argv)
    assert not (tmp_path / "guard" / "after").exists()  # nothing started, nothing recorded
