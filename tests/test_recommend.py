"""Recommendations from a run: evaluation's ranking, clear errors, the CLI, and Serve's hot swap."""

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from xsmoe_ray.prepared import load_prepared
from xsmoe_ray.recommend import main as recommend_main
from xsmoe_ray.recommender import LiveRecommender, Query, Recommender, RecommendError, registered_windows
from xsmoe_ray.stream import run
from xsmoe_ray.train.data import Cases, window_data
from xsmoe_ray.train.window import evaluate_cases

from .test_stream import tiny


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_session):
    """A tiny run stopped after window 2 (of 0..3); the hot-swap test continues it to window 3."""
    tmp = tmp_path_factory.mktemp("recommend")
    cfg = tiny(tmp, "run", "train.last_window=2")
    history = run(cfg)
    return cfg, history, tmp


def _users(cfg):
    import pyarrow.parquet as pq

    return [str(u) for u in pq.read_table(f"{cfg.run.out}/prepared/users.parquet").column("user_id").to_pylist()]


def test_registered_windows_are_the_kept_checkpoints(demo_run):
    cfg, _, _ = demo_run
    assert [c.window for c in registered_windows(cfg.run.out)] == [1, 2]  # Ray Train keeps the last two
    assert Recommender(cfg.run.out).window == 2
    with pytest.raises(RecommendError, match=r"window 0 has no kept checkpoint \(kept: 1, 2"):
        Recommender(cfg.run.out, window=0)


def test_test_cases_rank_as_in_evaluation(demo_run):
    """Every test case of window 2 (chunk 3), recommended from its context alone, ranks its target as
    the evaluation did: the mean NDCG@10 equals the run's recorded figure (τ = 0: nothing pruned)."""
    cfg, history, _ = demo_run
    rec = Recommender(cfg.run.out, window=2)
    stream = load_prepared(f"{cfg.run.out}/prepared").stream
    cases = window_data(stream, 2, rec.model.n_item_rows - 1).test
    assert np.array_equal(rec.items.candidates.numpy(), cases.candidates)
    ids = rec.catalogue.item_ids
    queries = [Query(history=[ids[c] for c in ctx if c > 0], k=10) for ctx in cases.contexts]
    answers = rec.recommend(queries)
    gains = []
    for answer, target in zip(answers, cases.targets):
        rank = answer.items.index(ids[target]) if ids[target] in answer.items else None
        gains.append(0.0 if rank is None else 1.0 / np.log2(rank + 2))
    recorded = next(h for h in history if h["window"] == 2)["ndcg10"]
    assert np.mean(gains) == pytest.approx(recorded, abs=1e-9)
    # and case by case, against evaluation run on the loaded model
    for i in range(0, len(cases), max(1, len(cases) // 10)):
        one = Cases(cases.contexts[i:i + 1], cases.targets[i:i + 1], cases.candidates)
        assert evaluate_cases(rec.model, one, torch.device("cpu")).ndcg == pytest.approx(gains[i], abs=1e-12)


def test_a_user_is_encoded_from_their_last_items_and_seen_items_can_be_left_out(demo_run):
    cfg, _, _ = demo_run
    rec = Recommender(cfg.run.out, window=2)
    user = _users(cfg)[0]
    mine = rec.catalogue.items_of(user)
    plain, = rec.recommend([Query(user=user, k=10)])
    assert plain.history == [rec.catalogue.item_ids[c] for c in mine[-cfg.data.max_len:]]
    assert len(plain.items) == 10 and plain.scores == sorted(plain.scores, reverse=True)
    fresh, = rec.recommend([Query(user=user, k=10, exclude_seen=True)])
    assert not set(fresh.items) & {rec.catalogue.item_ids[c] for c in mine}
    assert len(fresh.items) == 10
    same, = rec.recommend([Query(history=plain.history, k=10)])
    assert same.items == plain.items  # a user's answer is the answer for their history


def test_unknown_ids_are_named_and_unseen_items_are_reported(demo_run):
    cfg, _, _ = demo_run
    rec = Recommender(cfg.run.out, window=1)  # horizon: chunk 2
    with pytest.raises(RecommendError, match="unknown user id: nobody"):
        rec.recommend([Query(user="nobody")])
    with pytest.raises(RecommendError, match="unknown item ids .*: no-such-item"):
        rec.recommend([Query(history=["no-such-item"])])
    later = int(np.flatnonzero(rec.catalogue.first_chunk > 2)[0])  # first seen after the horizon
    seen = int(rec.items.candidates[0])
    ids = rec.catalogue.item_ids
    answer, bad = rec.answer([Query(history=[ids[seen], ids[later]]), Query(user="nobody")])
    assert answer.unseen == [ids[later]] and answer.history == [ids[seen], ids[later]]
    assert ids[later] not in answer.items  # not a candidate before it is seen
    assert isinstance(bad, RecommendError)  # a bad query in a batch fails alone


def test_cli_prints_a_table_json_and_clear_errors(demo_run, capsys):
    cfg, _, _ = demo_run
    user = _users(cfg)[1]
    assert recommend_main(["--run", cfg.run.out, "--users", user, "-k", "10", "--window", "2"]) == 0
    out = capsys.readouterr().out
    ranked = re.findall(r"^ +(\d+)  \S+ +-?\d+\.\d{4}  ", out, flags=re.M)
    assert "window 2" in out and ranked == [str(r) for r in range(1, 11)]
    assert recommend_main(["--run", cfg.run.out, "--users", user, "-k", "5", "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["window"] == 2 and len(blob["results"][0]["items"]) == 5
    assert recommend_main(["--run", cfg.run.out, "--users", f"{user},ghost1,ghost2"]) == 2
    assert "error: unknown user ids: ghost1, ghost2" in capsys.readouterr().err
    assert recommend_main(["--run", str(cfg.run.out) + "-missing", "--users", user]) == 2
    assert "not a run directory" in capsys.readouterr().err
    # a device this machine cannot use is a one-line error too (was a torch traceback)
    assert recommend_main(["--run", cfg.run.out, "--users", user, "--device", "cuda:99"]) == 2
    assert "error: device 'cuda:99': this machine" in capsys.readouterr().err
    assert recommend_main(["--run", cfg.run.out, "--users", user, "--device", "gpu0"]) == 2
    assert "error: device 'gpu0' is not a device name" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_serve_answers_and_hot_swaps_without_failed_or_mixed_answers(demo_run):
    """Requests fire from 4 threads while the run is continued to window 3; every answer must equal
    the answer of the window (2 or 3) it says it came from, and none may fail."""
    from ray import serve

    from xsmoe_ray.serve import app

    cfg, _, tmp = demo_run
    users = _users(cfg)[:20]
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"run_out": cfg.run.out, "poll_s": "0.5", "num_cpus": "0"}), blocking=False)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60).read())
        assert health["window"] == 2
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post(port, {"user": "nobody"})
        assert bad.value.code == 400 and "unknown user id: nobody" in bad.value.read().decode()

        answers, failures, stop = [], [], threading.Event()

        def client(offset: int) -> None:
            i = offset
            while not stop.is_set():
                body = {"user": users[i % len(users)], "k": 5}
                try:
                    answers.append((body, _post(port, body)))
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    failures.append(repr(e))
                i += 4

        clients = [threading.Thread(target=client, args=(o,)) for o in range(4)]
        for t in clients:
            t.start()
        try:
            run(tiny(tmp, "run", "train.last_window=3"))  # registers window 3 while requests go on
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(a["window"] == 3 for _, a in answers[-20:]):
                time.sleep(0.5)
            time.sleep(2)
        finally:
            stop.set()
            for t in clients:
                t.join()
    finally:
        serve.shutdown()
    assert not failures, failures[:3]
    windows = {a["window"] for _, a in answers}
    assert windows == {2, 3}, windows
    reference = {w: Recommender(cfg.run.out, window=w) for w in (2, 3)}
    for body, got in answers:
        want, = reference[got["window"]].recommend([Query(user=body["user"], k=5)])
        assert got["checkpoint"] == want.checkpoint
        assert [i["item_id"] for i in got["items"]] == want.items
        assert [i["score"] for i in got["items"]] == pytest.approx(want.scores, rel=1e-5)


def test_live_recommender_swaps_only_to_a_newer_window(demo_run):
    cfg, _, _ = demo_run
    live = LiveRecommender(cfg.run.out, poll_s=0)
    latest = registered_windows(cfg.run.out)[-1].window
    assert live.current.window == latest and live.refresh() is False and live.swaps == 0
    live.current = Recommender(cfg.run.out, window=latest - 1)  # as if started before the last window
    assert live.refresh() is True and live.current.window == latest and live.swaps == 1
    live.close()


def test_usable_device_names_what_is_wrong():
    from xsmoe_ray.recommender import RecommendError, usable_device

    assert usable_device("cpu") == torch.device("cpu")
    with pytest.raises(RecommendError, match="not a device name"):
        usable_device("banana")
    with pytest.raises(RecommendError, match="recommendations run on cpu, cuda or mps"):
        usable_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(RecommendError, match="sees no CUDA device; use cpu"):
            usable_device("cuda")
    else:
        assert usable_device("cuda").type == "cuda"


def test_running_the_serve_module_says_how_the_app_starts():
    import subprocess
    import sys

    helped = subprocess.run([sys.executable, "-m", "xsmoe_ray.serve", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "serve run xsmoe_ray.serve:app run_out=" in helped.stdout
    bare = subprocess.run([sys.executable, "-m", "xsmoe_ray.serve", "runs/demo"], capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 2 and "is a Ray Serve application" in bare.stderr
