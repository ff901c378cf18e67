"""Ray Serve application: top-k recommendations over HTTP from a run, with hot swap to newer windows.

    serve run xsmoe_ray.serve:app run_out=runs/demo
    curl -X POST localhost:8000/recommend -H 'Content-Type: application/json' -d '{"user": "<user id>", "k": 10}'
    curl localhost:8000/health

``POST /recommend`` takes ``{"user": id}`` or ``{"history": [item ids, oldest first]}``, plus ``k``
(default 10) and ``exclude_seen``; it answers the items, their scores, the window and checkpoint
they come from. ``GET /health`` names the window and checkpoint being served. Concurrent requests
are scored together (``@serve.batch``): one sequence-encoder pass and one ``[B, D] x [D, C]``
product per batch against the item table, which is built once per checkpoint.

While the run goes on (or is continued), each replica polls it every ``poll_s`` seconds and swaps
in a newly registered window (:class:`~xsmoe_ray.recommender.LiveRecommender`). A batch reads the
current model once, so no answer mixes two checkpoints and none waits for a load.

Arguments (``key=value`` after the import path, or ``args:`` in a Serve config file such as
cluster/serve.yaml): ``run_out`` (required), ``poll_s`` (10; 0 turns polling off), ``device`` (cpu),
``max_k`` (100), ``num_replicas`` (1), ``num_cpus`` per replica (1), ``num_gpus`` per replica (0).
"""

import asyncio
from typing import Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

from xsmoe_ray.recommender import LiveRecommender, Query, Recommendation, RecommendError

api = FastAPI(title="xsmoe_ray", description="XSMoE recommendations from a streaming run")


class RecommendRequest(BaseModel):
    user: Optional[str] = None
    history: Optional[list[str]] = None
    k: int = 10
    exclude_seen: bool = False


class ServeArgs(BaseModel):
    run_out: str
    poll_s: float = Field(10.0, ge=0)
    device: str = "cpu"
    max_k: int = Field(100, ge=1)
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


@serve.deployment(max_ongoing_requests=64)  # room for a full batch of 32 and the next one
@serve.ingress(api)
class RecommendService:
    def __init__(self, run_out: str, poll_s: float, device: str, max_k: int) -> None:
        self.live = LiveRecommender(run_out, device, poll_s)
        self.max_k = max_k

    @api.get("/health")
    def health(self) -> dict:
        rec = self.live.current
        return {"status": "ok", "window": rec.window, "checkpoint": rec.checkpoint, "candidates": len(rec.items),
                "horizon_chunk": rec.horizon, "swaps": self.live.swaps, "last_error": self.live.last_error}

    @api.post("/recommend")
    async def recommend(self, body: RecommendRequest) -> dict:
        query = Query(user=body.user, history=body.history, k=body.k, exclude_seen=body.exclude_seen)
        try:
            query.check(self.max_k)
        except RecommendError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        answer = await self.batched(query)
        if isinstance(answer, RecommendError):
            raise HTTPException(status_code=400, detail=str(answer))
        return answer.to_dict()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def batched(self, queries: list[Query]) -> list[Recommendation | RecommendError]:
        rec = self.live.current  # read once: the whole batch is answered by one checkpoint
        return await asyncio.to_thread(rec.answer, queries)

    def __del__(self) -> None:
        self.live.close()


def app(args: dict):
    """Application builder for ``serve run xsmoe_ray.serve:app run_out=...`` (see the module docstring)."""
    a = ServeArgs.model_validate(args)
    options = {"num_cpus": a.num_cpus, "num_gpus": a.num_gpus}
    return RecommendService.options(num_replicas=a.num_replicas, ray_actor_options=options).bind(
        a.run_out, a.poll_s, a.device, a.max_k)


if __name__ == "__main__":  # `python -m xsmoe_ray.serve` is a natural first try: say how the app starts
    import sys

    print(__doc__)
    if not set(sys.argv[1:]) <= {"-h", "--help"}:
        print("error: this module is a Ray Serve application; start it with `serve run xsmoe_ray.serve:app "
              "run_out=<run directory>`", file=sys.stderr)
        raise SystemExit(2)
