"""One Ray start-up rule for every entry point (RAY_NOTES.md, "Jobs and start-up").

Inside a Ray job (``RAY_ADDRESS`` set) the driver joins that cluster; standalone it starts a local
one. ``address="local"`` matters: a bare ``ray.init()`` would attach to whatever ``ray start``
cluster ran last on this machine.
"""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int = 0) -> bool:
    """Make sure this process is connected to Ray; True when this call started a local instance.

    ``num_cpus`` sizes a local instance only (0 = all cores); a cluster's size is its own.
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
        return False
    ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=False)
    return True
