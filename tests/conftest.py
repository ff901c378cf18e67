"""Shared fixtures. One local Ray session serves every test that needs Ray (num_cpus=2)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once for the whole test session and shut down at its end."""
    import ray
    from ray.data import DataContext

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        started = True
    DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        watchdog = threading.Timer(SHUTDOWN_GRACE_S, _end_own_gcs)
        watchdog.start()
        try:
            ray.shutdown()
        finally:
            watchdog.cancel()


SHUTDOWN_GRACE_S = 60


def _end_own_gcs() -> None:
    """Unblock a hung ``ray.shutdown()``.

    Seen once here, under heavy load: shutdown blocked for half an hour in
    ``gcs_error_subscriber.close()`` on a GCS long-poll that was never cancelled (the known
    subscriber hang, ray-project/ray#45044). Ending this session's own GCS server — a child of this
    process, found by parent pid — makes the poll fail and shutdown return.
    """
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (name) state ppid ..."
        except OSError:  # the process ended meanwhile
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if fields[1] == me and name == "gcs_server":
            print(f"conftest: ray.shutdown() hung for {SHUTDOWN_GRACE_S} s; ending own gcs_server {stat.parent.name}")
            os.kill(int(stat.parent.name), signal.SIGTERM)
