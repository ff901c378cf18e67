"""Shared fixtures. One local Ray session serves every test that needs Ray (num_cpus=2)."""

from __future__ import annotations

import os

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
        ray.shutdown()
