"""The main job under `ray job submit` against a local head this test starts (and stops)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_stream import TINY

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A `ray start --head` on free ports with its own temp dir; stopped by that dir only."""
    port, dash = free_port(), free_port()
    # Every port the head binds, free: the tests' own Ray session (conftest) already holds the
    # defaults (the dashboard agent's 52365 above all), and a head whose agent cannot bind its port
    # answers every submission with "No available agent".
    agent_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    temp_dir = Path("/tmp") / f"xsr_{os.getpid()}_{port}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "start", "--head", "--num-cpus=2", "--disable-usage-stats", f"--port={port}",
                    f"--dashboard-port={dash}", "--include-dashboard=true", f"--temp-dir={temp_dir}", *agent_ports],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}", env, temp_dir
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _pids_naming(str(temp_dir)), "the head's processes outlived the test"


def _pids_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:  # the process ended meanwhile
                pass
    return pids


def _stop_head(temp_dir: Path) -> None:
    """End only the processes of the head this test started: their command lines name its temp dir."""
    for sig in (15, 9):
        for pid in _pids_naming(str(temp_dir)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _pids_naming(str(temp_dir)) and time.time() < deadline:
            time.sleep(0.5)


def submit(address: str, env: dict, args: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the fresh head's job agent is still starting."""
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           sys.executable, "-m", "xsmoe_ray.stream", *args]
    deadline = time.time() + 120  # a fresh head's job agent takes a few seconds to register
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(3)


def test_demo_runs_as_a_submitted_job(head, tmp_path):
    address, env, _ = head
    out = tmp_path / "job_run"
    args = [*TINY, f"run.out={out}", f"data.path={tmp_path / 'synthetic'}"]
    proc = submit(address, env, args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    for name in ["results.csv", "results.md", "metrics.png", "experts.png", "config.yaml"]:
        assert (out / name).is_file(), name
    assert (out / "results.csv").read_text().count("\n") == 4  # header + D_2, D_3, D_4 (TINY: 5 chunks)
