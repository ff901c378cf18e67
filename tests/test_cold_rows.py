"""bench/cold_rows.py: never-trained ID rows refilled, the evaluation repeated, the table left as it was."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from xsmoe_ray.model import build_model
from xsmoe_ray.train.data import Cases
from xsmoe_ray.train.window import evaluate_cases

_spec = importlib.util.spec_from_file_location("cold_rows", Path(__file__).resolve().parents[1] / "bench" / "cold_rows.py")
cold_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cold_rows)

N = 12  # items 1..11, row 0 the padding


def _model_and_cases():
    torch.manual_seed(0)
    model = build_model("xsmoe", text_dim=6, image_dim=None, n_groups=2, d_prime=3, embed_dim=4, max_len=4,
                        seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",), item_ids=True, n_item_rows=N)
    model.set_item_features({"text": torch.randn(N, 3, 6)})
    with torch.no_grad():  # trained rows: far from the small random start
        model.item_table.weight[1:8] += torch.randn(7, 4)
    rng = np.random.default_rng(0)
    targets = rng.integers(1, N, 40)
    seen = torch.zeros(N, dtype=torch.bool)
    seen[1:8] = True
    cases = Cases(rng.integers(1, 8, (40, 4)), targets, np.arange(1, N), cold=~seen.numpy()[targets])
    return model.eval(), cases, seen


def test_fills_replace_only_the_unseen_rows_and_never_the_padding():
    weight = torch.randn(N, 4)
    weight[0] = 0.0
    seen = torch.zeros(N, dtype=torch.bool)
    seen[1:8] = True
    assert torch.equal(cold_rows.filled_rows(weight, seen, "start"), weight)
    zero = cold_rows.filled_rows(weight, seen, "zero")
    assert torch.equal(zero[:8], weight[:8]) and not zero[8:].any()
    mean = cold_rows.filled_rows(weight, seen, "seen_mean")
    assert torch.equal(mean[:8], weight[:8]) and torch.allclose(mean[8:], weight[1:8].mean(0).expand(4, 4))
    assert not mean[0].any()  # the padding row is no item
    with pytest.raises(ValueError, match="fill must be one of"):
        cold_rows.filled_rows(weight, seen, "random")


def test_the_content_fill_takes_the_rows_of_the_nearest_seen_items():
    weight = torch.randn(N, 4)
    weight[0] = 0.0
    seen = torch.zeros(N, dtype=torch.bool)
    seen[1:8] = True
    content = torch.randn(N, 3)
    content[8] = 2.0 * content[3] + 0.01 * content[5]  # item 8 points (almost) as item 3 does
    content[0] = content[8]  # the padding row must never count as a neighbour
    one = cold_rows.filled_rows(weight, seen, "content_knn", content, k=1)
    assert torch.equal(one[:8], weight[:8]) and torch.equal(one[8], weight[3])
    cos = torch.nn.functional.normalize(content, dim=1)
    nearest = (cos[9] @ cos[1:8].T).topk(3).indices + 1
    three = cold_rows.filled_rows(weight, seen, "content_knn", content, k=3)
    assert torch.allclose(three[9], weight[nearest].mean(0))
    assert torch.allclose(cold_rows.filled_rows(weight, seen, "content_knn", content, k=50)[10], weight[1:8].mean(0))
    with pytest.raises(ValueError, match="one content embedding per table row"):
        cold_rows.filled_rows(weight, seen, "content_knn", content[:5])
    with pytest.raises(ValueError, match="k must be >= 1"):
        cold_rows.filled_rows(weight, seen, "content_knn", content, k=0)


def test_content_embeddings_leave_the_id_rows_out_and_the_table_as_it_was():
    model, _, _ = _model_and_cases()
    before = model.item_table.weight.detach().clone()
    content = cold_rows.content_embeddings(model)
    ids = torch.arange(N)
    with torch.no_grad():
        assert torch.allclose(content + before, model.item_embeddings(ids), atol=1e-6)
    assert torch.equal(model.item_table.weight, before)


def test_the_report_splits_warm_and_cold_and_restores_the_table():
    model, cases, seen = _model_and_cases()
    before = model.item_table.weight.detach().clone()
    report = cold_rows.cold_report(model, cases, seen, torch.device("cpu"))
    assert torch.equal(model.item_table.weight, before)
    plain = evaluate_cases(model, cases, torch.device("cpu"))
    start = report["start"]
    assert start["ndcg10"] == pytest.approx(100 * plain.ndcg / plain.count)
    assert start["cold_share"] == pytest.approx(cases.cold.mean())
    # all = warm and cold, weighted by their shares
    for r in report.values():
        assert r["ndcg10"] == pytest.approx((1 - r["cold_share"]) * r["warm"] + r["cold_share"] * r["cold"])
    # the fills reach the evaluation (a report that ignored them would repeat 'start' for each)
    assert list(report) == list(cold_rows.FILLS)
    assert report["seen_mean"]["ndcg10"] != pytest.approx(start["ndcg10"])
    assert report["content_knn"]["ndcg10"] != pytest.approx(start["ndcg10"])


def test_a_model_without_an_id_table_is_refused_by_name():
    model = build_model("xsmoe", text_dim=6, image_dim=None, n_groups=2, d_prime=3, embed_dim=4, max_len=4,
                        seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",))
    with pytest.raises(SystemExit, match="runs/x: its xsmoe model has no item-ID table"):
        cold_rows.require_id_table(model, "runs/x")
    with_table, _, _ = _model_and_cases()
    assert cold_rows.require_id_table(with_table, "runs/x") is with_table


def test_a_run_without_that_window_stops_with_a_message_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=r"^\[cold_rows\] .*nothing"):
        cold_rows.main(["--run", str(tmp_path / "nothing"), "--window", "0"])
