"""Collectives between two gloo ranks: hash agreement is checked, divergence is a hard error."""

import datetime
import gc
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xsmoe_ray.train.sync import all_reduce_sum, check_same_across_ranks, parameter_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """A gloo group on this machine; a rank that waits two minutes for the other fails, not hangs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def leave_group() -> None:
    """Ends a spawned rank whose verdict is already written: the ranks meet, the group is destroyed
    while the interpreter is whole, and the process exits without interpreter finalization. Gloo's
    threads may still hold finished work whose tensors need the GIL; torn down at interpreter exit,
    they abort the process ("terminate called without an active exception", SIGABRT), as one CI run
    saw after every check of a rank had passed."""
    dist.barrier()
    gc.collect()  # a DDP wrapper left in a cycle still holds the group
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, port: int, diverge: bool, results):
    join_group(rank, 2, port)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    if diverge and rank == 1:
        with torch.no_grad():
            model.bias[0] += 1e-6
    total = all_reduce_sum(torch.tensor([float(rank + 1)]))
    try:
        check_same_across_ranks(parameter_hash(model))
        results[rank] = ("ok", float(total))
    except RuntimeError as e:
        results[rank] = ("error", str(e))
    leave_group()


def run_pair(diverge: bool):
    # A spawned manager: forking this process after Ray's threads started (the session fixture) can
    # deadlock the child, as it once did here.
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), diverge, results), nprocs=2, join=True)
        return dict(results)


def test_identical_ranks_pass_and_sums_reduce():
    results = run_pair(diverge=False)
    assert results == {0: ("ok", 3.0), 1: ("ok", 3.0)}


def test_diverged_ranks_raise_on_every_rank():
    results = run_pair(diverge=True)
    assert {r[0] for r in results.values()} == {"error"}
    assert "differ across ranks" in results[0][1]


def _ddp_two_windows(variant: str) -> None:
    """Two steps before and after an expansion under the project's DDP settings: a trainable
    parameter without a gradient makes the second step raise."""
    from torch.nn.parallel import DistributedDataParallel

    from xsmoe_ray.model import build_model
    from xsmoe_ray.train.sync import DDP_KWARGS

    torch.manual_seed(0)
    model = build_model(variant, text_dim=6, image_dim=5, n_groups=2, d_prime=3, embed_dim=4, max_len=4,
                        seq_blocks=1, seq_heads=1, dropout=0.1, feature_norm="layer", n_item_rows=21,
                        n_user_rows=9)
    model.set_item_features({"text": torch.randn(21, 3, 6), "image": torch.randn(21, 3, 5)})
    model.fit_feature_norm(torch.arange(1, 21))
    seq, log_pop, users = torch.randint(0, 21, (8, 5)), torch.zeros(21), torch.arange(8)
    model.set_window_rows(torch.cat([seq, torch.ones(8, 1, dtype=torch.long), users[:, None]], 1).numpy())
    for _ in range(2):  # window 0, then window 1 after expansion / teacher snapshot
        ddp = DistributedDataParallel(model, **DDP_KWARGS)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            ddp(seq, log_pop, None, users)[0].backward()
            opt.step()
        model.begin_window()


def _ddp_steps(rank: int, port: int, out: str):
    """Each variant under DDP on a one-rank group; the first failure is reported with its variant."""
    import json

    from xsmoe_ray.model import ALL_VARIANTS

    results = {}
    join_group(rank, 1, port)
    for variant in sorted(ALL_VARIANTS):
        try:
            _ddp_two_windows(variant)
        except Exception as e:  # reported per variant to the parent
            results["error"] = f"{variant}: {type(e).__name__}: {e}"
            break
        results[variant] = "ok"
    with open(out, "w") as f:
        json.dump(results, f)
    leave_group()


def test_every_variant_gives_every_trainable_parameter_a_gradient_under_ddp(tmp_path):
    # Results come back in a file: a multiprocessing Manager would fork this process, which may
    # hold the test session's Ray connection.
    import json

    from xsmoe_ray.model import ALL_VARIANTS

    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_steps, args=(free_port(), str(out)), nprocs=1)
    results = json.loads(out.read_text())

    assert "error" not in results, results.get("error")
    assert sorted(results.keys()) == sorted(ALL_VARIANTS)
