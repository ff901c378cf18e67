"""Collectives between two gloo ranks: hash agreement is checked, divergence is a hard error."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xsmoe_ray.train.sync import all_reduce_sum, check_same_across_ranks, parameter_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, diverge: bool, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
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
    finally:
        dist.destroy_process_group()


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
