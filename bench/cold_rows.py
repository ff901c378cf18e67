"""How a trained model with an item-ID table ranks cold targets when its never-trained rows hold other values.

    python bench/cold_rows.py --run runs/study/runs/xsmoe_s0 --window 7

An item first seen in a test chunk (a *cold* target) was in no training batch, so its ID row keeps
its random start (``model/id_table.py``) and content alone scores it. Such models rank cold targets
far lower than the same model without the table (docs/RESULTS.md). This asks whether the start
values are to blame: it re-evaluates the window's checkpoint on its test chunk with the rows of the
items not yet seen by that window (a) as they are, (b) zero, (c) the mean of the seen items' rows
(what an item of average popularity carries), (d) the mean row of the ``--k`` seen items nearest in
content (cosine of the model's item embedding with the table left out: a content-initialised ID row),
and prints NDCG@10 on all, warm and cold targets.
"Seen" is the protocol's: first interaction in D_0..D_window (an item seen only in a validation split
was not trained either, so the seen rows are a slight over-count of the trained ones).

Needs a run of a model with an item-ID table (``model.item_ids=true``, or an ID baseline: sasrec_id,
mmmlp, lgmrec, gag, ssrm) whose window checkpoint is kept (a run keeps
its last ``train.num_to_keep``). Last line: ``<fill>_ndcg10= <fill>_warm= <fill>_cold=`` for each fill.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsmoe_ray.train.data import Cases  # noqa: E402
from xsmoe_ray.train.window import evaluate_cases  # noqa: E402

FILLS = ("start", "zero", "seen_mean", "content_knn")


def filled_rows(weight: torch.Tensor, seen: torch.Tensor, fill: str, content: torch.Tensor | None = None,
                k: int = 5) -> torch.Tensor:
    """``weight`` [rows, D] with the rows not ``seen`` (row 0, the padding, excepted) replaced as ``fill`` says;
    ``content_knn`` needs ``content`` [rows, E], each item's embedding without its ID row."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    out = weight.detach().clone()
    unseen = ~seen
    unseen[0] = False
    if fill == "zero":
        out[unseen] = 0.0
    elif fill == "seen_mean":
        out[unseen] = weight.detach()[seen].mean(0)
    elif fill == "content_knn":
        out[unseen] = nearest_rows(weight.detach(), seen, unseen, content, k)
    return out


def nearest_rows(weight: torch.Tensor, seen: torch.Tensor, unseen: torch.Tensor, content: torch.Tensor | None,
                 k: int) -> torch.Tensor:
    """Per unseen item, the mean ``weight`` row of the ``k`` seen items whose ``content`` is nearest (cosine)."""
    if content is None or content.shape[0] != weight.shape[0]:
        raise ValueError("content_knn needs one content embedding per table row")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen = seen.clone()
    seen[0] = False  # the padding row is no item
    unit = torch.nn.functional.normalize(content.float(), dim=1)
    nearest = (unit[unseen] @ unit[seen].T).topk(min(k, int(seen.sum())), dim=1).indices
    return weight[seen][nearest].mean(1)


def content_embeddings(model) -> torch.Tensor:
    """Every item's embedding as the model scores it, with the ID table's part left out."""
    table = model.item_table.weight
    start = table.detach().clone()
    try:
        with torch.no_grad():
            table.zero_()
            return model.item_embeddings(torch.arange(table.shape[0], device=table.device))
    finally:
        with torch.no_grad():
            table.copy_(start)


def cold_report(model, cases: Cases, seen: torch.Tensor, device: torch.device,
                k: int = 5) -> dict[str, dict[str, float]]:
    """Per fill, NDCG@10 in % over all, warm and cold test targets (``cases.cold`` marks the cold)."""
    table = model.item_table.weight
    start = table.detach().clone()
    content = content_embeddings(model)
    report = {}
    try:
        for fill in FILLS:
            with torch.no_grad():
                table.copy_(filled_rows(start, seen, fill, content, k))
            print(f"[cold_rows] {fill}: ranking {len(cases):,} cases", flush=True)  # minutes at H&M size
            s = evaluate_cases(model, cases, device)
            n_cold = s.count - s.warm.count
            report[fill] = {"ndcg10": 100 * s.ndcg / s.count, "warm": 100 * s.warm.ndcg / max(s.warm.count, 1),
                            "cold": 100 * (s.ndcg - s.warm.ndcg) / n_cold if n_cold else float("nan"),
                            "cold_share": n_cold / s.count}
    finally:
        with torch.no_grad():
            table.copy_(start)
    return report


def require_id_table(model, run_out: str):
    """``model``, if it has an item-ID table; else stop with what to run instead."""
    if getattr(model, "item_table", None) is None:
        raise SystemExit(f"[cold_rows] {run_out}: its {model.variant} model has no item-ID table; run one with "
                         "model.item_ids=true or an ID baseline")
    return model


def load_window(run_out: str, window: int, device: torch.device):
    """The window's model over its cached features (loaded as serving loads it), and its test cases
    (those of chunk window + 1)."""
    from xsmoe_ray.config import RunConfig
    from xsmoe_ray.prepared import load_prepared
    from xsmoe_ray.recommender import Recommender
    from xsmoe_ray.rundir import run_dir
    from xsmoe_ray.train.data import window_data

    served = Recommender(run_out, window, device)
    stream = load_prepared(run_dir(RunConfig(out=run_out)).local / "prepared").stream
    if window + 1 >= stream.n_chunks:
        raise SystemExit(f"[cold_rows] window {window} has no test chunk (the stream has {stream.n_chunks} chunks)")
    model = require_id_table(served.model, run_out)
    test = window_data(stream, window, model.n_item_rows, served.cfg.train.rows).test
    first = torch.from_numpy(stream.item_first_chunk.astype(np.int64))
    return model, test, (first >= 0) & (first <= window)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/cold_rows.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run", required=True, help="the run's run.out (a model with an item-ID table)")
    p.add_argument("--window", type=int, required=True, help="a window whose checkpoint the run kept")
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=5, help="seen neighbours per item for the content_knn fill")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    device = torch.device(args.device)
    from xsmoe_ray.recommender import RecommendError

    try:
        model, test, seen = load_window(args.run, args.window, device)
    except RecommendError as e:  # no such run, window or checkpoint: say which, no traceback
        raise SystemExit(f"[cold_rows] {e}") from None
    report = cold_report(model, test, seen.to(device), device, args.k)
    share = next(iter(report.values()))["cold_share"]
    print(f"window {args.window}, test chunk {args.window + 1}: {len(test):,} cases, {100 * share:.1f} % cold")
    print(f"{'fill':<12} {'NDCG@10':>8} {'warm':>8} {'cold':>8}")
    for fill, r in report.items():
        print(f"{fill:<12} {r['ndcg10']:8.2f} {r['warm']:8.2f} {r['cold']:8.2f}")
    print(" ".join(f"{f}_ndcg10={r['ndcg10']:.2f} {f}_warm={r['warm']:.2f} {f}_cold={r['cold']:.2f}"
                   for f, r in report.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
