"""``python -m xsmoe_ray.recommend``: top-k items from a run's window checkpoint.

    python -m xsmoe_ray.recommend --run runs/demo --users U1,U2 -k 10
    python -m xsmoe_ray.recommend --run runs/demo --history ITEM,ITEM,ITEM --json
    python -m xsmoe_ray.recommend --run runs/demo --window 7 --users U1 --exclude-seen

Candidates and user encoding are evaluation's (xsmoe_ray/recommender.py): the model after window
``w`` ranks every item seen up to chunk ``w + 1``.
"""

from __future__ import annotations

import argparse
import json
import sys

from xsmoe_ray.cli import run_guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xsmoe_ray.recommend",
        description="Top-k recommendations from a finished or running xsmoe_ray.stream run: for users in the "
                    "data, or for a session of item ids that is not in it.")
    p.add_argument("--run", required=True, metavar="RUN_OUT", help="the run's run.out (a directory or a URI)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", metavar="U1,U2,...", help="comma-separated user ids of the dataset")
    who.add_argument("--history", metavar="ITEM,ITEM,...",
                     help="comma-separated item ids, oldest first: a session to recommend for")
    p.add_argument("-k", type=int, default=10, help="items per answer (default 10)")
    p.add_argument("--window", type=int, default=None,
                   help="the window whose checkpoint to use (default: the latest registered one)")
    p.add_argument("--exclude-seen", action="store_true", help="leave out items the user (or history) already has")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def table(rec, answers) -> str:
    lines = [f"window {rec.window} (checkpoint {rec.checkpoint}); {len(rec.items):,} candidates "
             f"(items seen up to chunk {rec.horizon})"]
    for a in answers:
        who = f"user {a.user}" if a.user is not None else "history"
        if rec.model.reads_context:
            lines.append(f"\n{who}: encoded from {len(a.history)} item(s): {', '.join(a.history)}")
        else:
            vector = "the user's own vector" if a.user is not None else "the one vector of unknown users"
            lines.append(f"\n{who}: scored from {vector} ({rec.model.variant} does not read the sequence); "
                         f"last {len(a.history)} item(s): {', '.join(a.history)}")
        if a.unseen:
            lines.append(f"  not seen in the stream up to chunk {rec.horizon} (new to the model; content models "
                         f"read their content): {', '.join(a.unseen)}")
        lines.append(f"  {'rank':>4}  {'item_id':<24} {'score':>9}  text")
        for r, (item, score) in enumerate(zip(a.items, a.scores), 1):
            text = (rec.text_of(item) or "").replace("\n", " ")
            lines.append(f"  {r:>4}  {item:<24} {score:>9.4f}  {text[:60]}")
    return "\n".join(lines)


def run(args) -> None:
    from xsmoe_ray.recommender import Query, Recommender, RecommendError

    if args.k < 1:
        raise RecommendError(f"-k must be at least 1, got {args.k}")
    rec = Recommender(args.run, args.window, args.device)
    if args.users is not None:
        users = _ids(args.users)
        if not users:
            raise RecommendError("--users names no user id")
        queries = [Query(user=u, k=args.k, exclude_seen=args.exclude_seen) for u in users]
    else:
        queries = [Query(history=_ids(args.history), k=args.k, exclude_seen=args.exclude_seen)]
    unknown = [q.user for q in queries if q.user is not None and q.user not in rec.catalogue.user_code]
    if unknown:
        raise RecommendError(f"unknown user ids: {', '.join(unknown)}")
    answers = rec.recommend(queries)
    if args.json:
        print(json.dumps({"window": rec.window, "checkpoint": rec.checkpoint, "horizon_chunk": rec.horizon,
                          "candidates": len(rec.items), "results": [a.to_dict() for a in answers]}, indent=1))
    else:
        print(table(rec, answers))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
