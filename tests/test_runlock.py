"""One job per run directory: a second stream job or sweep on a held run.out is refused at once."""

import subprocess
import sys

import pytest

from xsmoe_ray.runlock import RunLockedError, run_lock

HOLD = "import sys, time; from xsmoe_ray.runlock import run_lock\nwith run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"


@pytest.fixture
def held(tmp_path):
    """A separate process holding tmp_path/run's lock, ended by its own pid."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield tmp_path / "run", proc
    proc.kill()
    proc.wait()


def test_a_second_holder_is_refused_naming_the_first(held):
    run, proc = held
    with pytest.raises(RunLockedError, match=rf"in use by another job \(pid {proc.pid} on "):
        with run_lock(run):
            pass


def test_the_lock_goes_with_its_process_even_on_kill(held):
    run, proc = held
    proc.kill()
    proc.wait()
    with run_lock(run):  # no stale lock after a kill -9
        pass
    with run_lock(run):  # and released again on a normal exit from the block
        pass


def test_stream_and_tune_refuse_a_held_run_out_before_starting_anything(held, capsys):
    from xsmoe_ray.stream import main as stream_main
    from xsmoe_ray.tune import main as tune_main

    run, proc = held
    assert stream_main([f"run.out={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"pid {proc.pid}" in err
    assert not (run / "config.yaml").exists()  # refused before writing or preparing anything
    assert tune_main(["tune_configs/demo_sweep.yaml", f"run.out={run}"]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
