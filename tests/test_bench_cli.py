"""bench/results_study.py's study record (a root is one setting that later runs add variants and seeds to), and
bench/baseline_speed.py's command line."""

import json
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
