"""Node loss on a real multi-node Ray cluster (issue 11): a training node and a cache-encoder node die.

    python bench/node_loss.py [--dir /tmp/xsmoe_node_loss] [--kill-window 2]

On this machine, ``ray.cluster_utils.Cluster`` starts a head with no CPUs (the driver and the
0-CPU Train controller live there) and two worker nodes of one CPU each, every node its own raylet
and object store. The demo config, shrunk as the test suite's tiny run (5 chunks, 2 epochs), then:

Each scenario gets a fresh cluster.

1. **Cache build, encoder node killed.** The layer cache is built with ``cache.workers=1``; once
   the encoder actor is alive, the node it runs on is removed (all its processes killed) and a
   fresh node added. Outcome: the build finishes or fails with an error; either way the cache
   directory must hold either a complete, checkable cache or none — never a partial commit.
2. **Training, worker node killed.** An uninterrupted ``python -m xsmoe_ray.stream`` run with
   ``train.num_workers=2`` (one worker per node), then the same run into another ``run.out``
   during which, once window ``--kill-window`` has started, one worker node is removed and a fresh
   node added. Ray Train restarts the worker group from the last registered window checkpoint.
   Outcome: both runs report the same windows with the same per-window parameter hashes and metrics.

The processes killed are the ones this script's cluster started. Last line:
``cache_outcome= cache_intact= train_windows= train_identical= node_kills=``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = ["synth.users=150", "synth.items=80", "synth.interactions=5000", "data.chunks=5", "data.k_core=2",
        "train.max_epochs=2", "train.patience=1", "model.embed_dim=16", "model.d_prime=8", "train.batch_size=128"]


def config(d: Path, name: str, *extra: str):
    from xsmoe_ray.config import load_config

    return load_config("demo", TINY + [f"data.path={d / 'synthetic'}", f"cache.dir={d / 'cache'}",
                                       f"run.out={d / name}", "train.max_failures=3", *extra])


def node_of_actor(class_part: str, timeout: float = 120.0) -> str:
    """Node id of the first alive actor whose class name contains ``class_part``."""
    # The GCS actor table directly: the state API needs the dashboard, which this cluster does not run.
    from ray._private.state import actors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for actor in actors(actor_state_name="ALIVE").values():
            if class_part in actor["ActorClassName"]:
                return actor["Address"]["NodeID"]
        time.sleep(0.2)
    raise TimeoutError(f"no alive actor named *{class_part}* within {timeout:.0f} s")


def replace_node(cluster, node_id: str) -> None:
    """Kill every process of the worker node ``node_id`` and add a fresh 1-CPU node.

    Called from a watcher thread while the main thread runs the job; a new node registers a SIGTERM
    handler, which Python allows in the main thread only, so that registration is skipped here (the
    cluster's shutdown ends the node's processes)."""
    from unittest import mock

    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    with mock.patch("ray._private.utils.set_sigterm_handler", lambda handler: None):
        cluster.add_node(num_cpus=1)


def cache_scenario(cluster, d: Path) -> dict:
    from xsmoe_ray.cache import build_cache, check_cache
    from xsmoe_ray.cache.layout import CacheError
    from xsmoe_ray.prepare import prepare_data
    from xsmoe_ray.prepared import load_prepared

    cfg = config(d, "cache_run", "cache.workers=1")
    prepare_data(cfg, d / "prepared")
    killed: list[str] = []

    def kill_encoder():
        try:
            node = node_of_actor("MapWorker")  # Ray Data's actor for the encoder stage
            if node != cluster.head_node.node_id:
                replace_node(cluster, node)
                killed.append(node)
        except Exception as e:  # reported below; the build outcome is what is measured
            killed.append(f"no kill: {e}")

    killer = threading.Thread(target=kill_encoder)
    killer.start()
    t0 = time.perf_counter()
    try:
        report = build_cache(d / "prepared", d / "cache", cfg)
        outcome = f"finished (encoded {report.encoded})"
    except Exception as e:
        outcome = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    killer.join()
    try:
        check_cache(d / "cache", load_prepared(d / "prepared").items, cfg.backbone, cfg.data.max_words,
                    cfg.cache.pooling)
        intact = "complete"
    except CacheError as e:
        manifest = (d / "cache" / "manifest.json").is_file()
        intact = "no cache committed" if not manifest else f"BROKEN: {e}"
    return {"cache_outcome": outcome, "cache_intact": intact, "cache_s": time.perf_counter() - t0,
            "cache_kills": [k for k in killed]}


def train_scenario(cluster, d: Path, kill_window: int) -> dict:
    import ray

    from xsmoe_ray.stream import run

    t0 = time.perf_counter()
    plain = run(config(d, "plain", "train.num_workers=2"))
    plain_s = time.perf_counter() - t0
    cfg = config(d, "killed", "train.num_workers=2")
    marker = d / "killed" / "ray" / "xsmoe" / f"window_{kill_window - 1:04d}"
    killed: list[str] = []

    def kill_worker_node():
        deadline = time.monotonic() + 600
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # inside window kill_window
        node = sorted(n.node_id for n in cluster.worker_nodes)[-1]
        replace_node(cluster, node)
        killed.append(node)
        time.sleep(20)  # what the cluster offers the restarting worker group once the dead node is noticed
        alive = [n for n in ray.nodes() if n["Alive"]]
        print(f"[node_loss] after the kill: {len(alive)} alive nodes, CPUs {ray.cluster_resources().get('CPU')}, "
              f"available {ray.available_resources().get('CPU')}", flush=True)

    killer = threading.Thread(target=kill_worker_node)
    killer.start()
    t0 = time.perf_counter()
    history = run(cfg)
    killed_s = time.perf_counter() - t0
    killer.join()
    same = [a["window"] == b["window"] and a["param_hash"] == b["param_hash"] and a["ndcg10"] == b["ndcg10"]
            and a["experts"] == b["experts"] for a, b in zip(plain, history)]
    return {"train_windows": [r["window"] for r in history], "train_identical": len(plain) == len(history) and all(same),
            "plain_s": plain_s, "killed_s": killed_s, "train_kills": killed,
            "hashes": [[a["param_hash"][:12], b["param_hash"][:12]] for a, b in zip(plain, history)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/xsmoe_node_loss", help="working directory (emptied first)")
    p.add_argument("--kill-window", type=int, default=2, help="kill a worker node once this window has started")
    args = p.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    result: dict = {}
    # One fresh cluster per scenario: a Ray Data actor pool that lost its node can keep retrying
    # submissions for a while and hold a CPU the Train worker group would then wait for.
    for name, scenario in (("cache", lambda c: cache_scenario(c, d)),
                           ("train", lambda c: train_scenario(c, d, args.kill_window))):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False)
        try:
            part = scenario(cluster)
        finally:
            ray.shutdown()
            cluster.shutdown()
        print(f"[node_loss] {name}: {json.dumps(part)}", flush=True)
        result.update(part)
    (d / "node_loss.json").write_text(json.dumps(result, indent=1))
    kills = len([k for k in result["cache_kills"] + result["train_kills"] if not k.startswith("no kill")])
    print(f"cache_outcome={result['cache_outcome'].split(':')[0].split(' (')[0]} "
          f"cache_intact={result['cache_intact'].split(':')[0].replace(' ', '_')} "
          f"train_windows={len(result['train_windows'])} train_identical={result['train_identical']} node_kills={kills}")
    return 0 if result["train_identical"] and not result["cache_intact"].startswith("BROKEN") else 1


if __name__ == "__main__":
    sys.exit(main())
