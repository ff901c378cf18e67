"""Top-k recommendations from a finished (or running) run: one window's checkpoint, its cache and data.

A :class:`Recommender` serves the model as it was after window ``w``, the model evaluation tested
on chunk ``w + 1``. It ranks what evaluation ranks there: the *candidates* are every item seen in
D_0..D_h with ``h = min(w + 1, last chunk)`` (the horizon), items new in D_h scored from content
(an ID model: from their untrained rows);
a user is encoded from their last ``L`` kept interactions up to the horizon, exactly as a test
case's context is built; scores come from the same :class:`~xsmoe_ray.scoring.ItemTable`. So a test
case's ranking here equals evaluation's (tests/test_recommend.py). The checkpoint holds the model
after the window's pruning (what the next window starts from): with τ = 0 it is the model that was
tested; with τ > 0, experts pruned after the test are gone here too.

Window checkpoints are the ones Ray Train *registered*: those listed in its
``checkpoint_manager_snapshot.json`` under ``<run.out>/ray/<run.name>/``, which Ray writes after a
checkpoint is complete, so a half-copied checkpoint is never loaded. Ray Train keeps the last two
(``CheckpointConfig(num_to_keep=2)``). ``run.out`` may be a URI; its prepared data and cache are
read from ``run.local_dir`` (xsmoe_ray/rundir.py), where the run wrote them.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml

from xsmoe_ray.config import ExperimentConfig, RunConfig, from_dict
from xsmoe_ray.prepared import read_summary
from xsmoe_ray.rundir import read_bytes, run_dir, snapshot_location
from xsmoe_ray.scoring import ItemTable
from xsmoe_ray.train.checkpoint import STATE_FILE, read_state_and_config


class RecommendError(ValueError):
    """A request the run cannot answer: unknown users or items, a window without a checkpoint."""


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this process can use; a :class:`RecommendError` saying why not
    (checked before the checkpoint is read, so a wrong flag costs no loading)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RecommendError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RecommendError(f"device {device!r}: this machine's torch sees no CUDA device; use cpu")
        if dev.index is not None and dev.index >= count:
            raise RecommendError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RecommendError(f"device {device!r}: this machine's torch has no MPS backend; use cpu")
    elif dev.type not in ("cpu", "mps"):
        raise RecommendError(f"device {device!r}: recommendations run on cpu, cuda or mps")
    return dev


@dataclass(frozen=True)
class WindowCheckpoint:
    window: int
    location: str  # a local directory or a URI

    def read(self) -> bytes:
        return read_bytes(f"{self.location}/{STATE_FILE}")


def _run_config(run_out: str) -> ExperimentConfig:
    where = run_dir(RunConfig(out=run_out))
    saved = where.local / "config.yaml"
    if not saved.is_file():
        raise RecommendError(f"{run_out}: not a run directory (no config.yaml in {where.local}); "
                             "give the run.out of a python -m xsmoe_ray.stream run")
    return from_dict(yaml.safe_load(saved.read_text()) or {})


def registered_windows(run_out: str) -> list[WindowCheckpoint]:
    """The run's registered window checkpoints, oldest first ([] before the first window ends)."""
    cfg = _run_config(run_out)
    storage = run_dir(RunConfig(out=run_out)).storage
    try:
        snapshot = json.loads(read_bytes(snapshot_location(storage, cfg.run.name)))
    except (FileNotFoundError, json.JSONDecodeError):  # no window yet, or Ray is rewriting it
        return []
    out = []
    for entry in snapshot.get("checkpoint_results", []):
        name, metrics = entry.get("checkpoint_dir_name"), entry.get("metrics") or {}
        if name and "window" in metrics:
            out.append(WindowCheckpoint(int(metrics["window"]), f"{storage}/{cfg.run.name}/{name}"))
    return sorted(out, key=lambda c: c.window)


def pick_window(run_out: str, window: int | None) -> WindowCheckpoint:
    kept = registered_windows(run_out)
    if not kept:
        raise RecommendError(f"{run_out}: no window checkpoint registered yet")
    if window is None:
        return kept[-1]
    for c in kept:
        if c.window == window:
            return c
    raise RecommendError(f"{run_out}: window {window} has no kept checkpoint (kept: "
                         f"{', '.join(str(c.window) for c in kept)}; Ray Train keeps the last two)")


@dataclass
class Catalogue:
    """Item and user ids of a prepared dataset, and each user's kept interactions up to the horizon."""

    item_ids: np.ndarray  # [n_items + 1] object; index = item code, 0 = padding
    text: list[str | None]
    first_chunk: np.ndarray  # [n_items + 1] int16, -1 for items never kept
    user_code: dict[str, int]
    history_items: np.ndarray  # kept items grouped by user, time order inside a user
    history_start: np.ndarray  # [n_users + 1] offsets into history_items
    item_code: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, prepared: Path, horizon: int) -> "Catalogue":
        items = pq.read_table(prepared / "items.parquet", columns=["item", "item_id", "text", "first_chunk"])
        if not np.array_equal(items.column("item").to_numpy(), np.arange(1, items.num_rows + 1)):
            raise RecommendError(f"{prepared}/items.parquet: item codes are not 1..n in order")
        ids = np.array([""] + [str(i) for i in items.column("item_id").to_pylist()], dtype=object)
        users = pq.read_table(prepared / "users.parquet")
        user_ids = [str(u) for u in users.column("user_id").to_pylist()]
        parts = [pq.read_table(prepared / "windows" / f"chunk_{c:02d}.parquet", columns=["user", "item"])
                 for c in range(horizon + 1)]
        user = np.concatenate([p.column("user").to_numpy() for p in parts])
        item = np.concatenate([p.column("item").to_numpy() for p in parts])
        order = np.argsort(user, kind="stable")  # rows are time ordered; stable keeps that per user
        start = np.searchsorted(user[order], np.arange(len(user_ids) + 1))
        return cls(item_ids=ids, text=[None] + items.column("text").to_pylist(),
                   first_chunk=np.concatenate([[-1], items.column("first_chunk").to_numpy()]).astype(np.int16),
                   user_code=dict(zip(user_ids, users.column("user").to_pylist())),
                   history_items=item[order].astype(np.int64), history_start=start,
                   item_code={s: k for k, s in enumerate(ids) if k})

    def items_of(self, user_id: str) -> np.ndarray:
        u = self.user_code[user_id]
        return self.history_items[self.history_start[u]: self.history_start[u + 1]]

    def codes(self, item_ids: list[str]) -> np.ndarray:
        unknown = [i for i in item_ids if i not in self.item_code]
        if unknown:
            raise RecommendError(f"unknown item ids (not in the prepared item table): {', '.join(unknown[:20])}"
                                 + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""))
        return np.array([self.item_code[i] for i in item_ids], dtype=np.int64)


@dataclass
class Query:
    """One request: a known user (``user``) or a session of item ids (``history``), ``k``, and whether
    to leave out the items the user already has."""

    user: str | None = None
    history: list[str] | None = None
    k: int = 10
    exclude_seen: bool = False

    def check(self, max_k: int | None = None) -> None:
        if (self.user is None) == (self.history is None):
            raise RecommendError("give either a user id or a history of item ids, not both or neither")
        if self.history is not None and not self.history:
            raise RecommendError("history is empty: give at least one item id")
        if self.k < 1 or (max_k is not None and self.k > max_k):
            raise RecommendError(f"k must be between 1 and {max_k or 'the number of candidates'}, got {self.k}")


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    user: str | None
    history: list[str]  # the item ids the user vector was encoded from (at most L, oldest first)
    unseen: list[str]  # history items not among the candidates (never seen up to the horizon)
    window: int
    checkpoint: str

    def to_dict(self) -> dict:
        return {"user": self.user, "history": self.history, "unseen": self.unseen, "window": self.window,
                "checkpoint": self.checkpoint,
                "items": [{"item_id": i, "score": s} for i, s in zip(self.items, self.scores)]}


class Recommender:
    """One window's model over its candidates; see the module docstring."""

    def __init__(self, run_out: str, window: int | None = None, device: str | torch.device = "cpu") -> None:
        from xsmoe_ray.stream import cache_dir_of
        from xsmoe_ray.train.worker import model_features

        self.device = usable_device(device)
        chosen = pick_window(run_out, window)
        state, config = read_state_and_config(io.BytesIO(chosen.read()))
        self.cfg = from_dict(config)
        self.run_out, self.window, self.checkpoint = run_out, chosen.window, chosen.location
        local = run_dir(RunConfig(out=run_out)).local
        prepared = local / "prepared"
        summary = read_summary(prepared)
        if summary is None:
            raise RecommendError(f"{prepared}: the run's prepared data is missing")
        self.horizon = min(self.window + 1, int(summary["chunks"]) - 1)
        self.catalogue = Catalogue.read(prepared, self.horizon)
        model = state.model
        model.set_item_features(model_features(self.cfg, cache_dir_of(self.cfg, local), self.device))
        self.model = model.to(self.device).eval()
        first = self.catalogue.first_chunk
        candidates = torch.from_numpy(np.flatnonzero((first >= 0) & (first <= self.horizon))).long()
        self.items = ItemTable(self.model, candidates.to(self.device))
        self.max_len = self.cfg.data.max_len

    def __repr__(self) -> str:
        return f"Recommender(window={self.window}, candidates={len(self.items)}, checkpoint={self.checkpoint!r})"

    def context_of(self, query: Query) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Query → left-padded context codes ``[L]``, the codes to exclude, and its unseen history items."""
        query.check()
        if query.user is not None:
            if query.user not in self.catalogue.user_code:
                raise RecommendError(f"unknown user id: {query.user}")
            items = self.catalogue.items_of(query.user)
            if not len(items):
                raise RecommendError(f"user {query.user} has no kept interactions up to chunk {self.horizon} "
                                     "(the k-core filter may have dropped them): give a history instead")
        else:
            items = self.catalogue.codes(query.history)
        recent = items[-self.max_len:]
        context = np.zeros(self.max_len, dtype=np.int64)
        context[self.max_len - len(recent):] = recent
        first = self.catalogue.first_chunk[recent]
        unseen = [self.catalogue.item_ids[c] for c in recent[(first < 0) | (first > self.horizon)]]
        return context, (np.unique(items) if query.exclude_seen else np.zeros(0, np.int64)), unseen

    def recommend(self, queries: list[Query]) -> list[Recommendation]:
        """Top-k for each query, scored in one batch; raises :class:`RecommendError` on the first bad one."""
        answers = self.answer(queries)
        for a in answers:
            if isinstance(a, RecommendError):
                raise a
        return answers

    @torch.inference_mode()
    def answer(self, queries: list[Query]) -> list[Recommendation | RecommendError]:
        """Top-k for each good query, all scored in one batch; a bad query gets its error in its place."""
        resolved: list = []
        for q in queries:
            try:
                resolved.append(self.context_of(q))
            except RecommendError as e:
                resolved.append(e)
        good = [i for i, r in enumerate(resolved) if not isinstance(r, RecommendError)]
        out: list = list(resolved)
        if not good:
            return out
        contexts = torch.from_numpy(np.stack([resolved[i][0] for i in good])).to(self.device)
        users = torch.tensor([self.catalogue.user_code[queries[i].user] if queries[i].user is not None else -1
                              for i in good], device=self.device)  # -1: a session without a user
        scores = self.items.scores(contexts, users=users)  # [B, C]
        for row, i in enumerate(good):
            exclude = resolved[i][1]
            if len(exclude):
                col, inside = self.items.columns(torch.from_numpy(exclude).to(self.device))
                scores[row, col[inside]] = float("-inf")
        k = min(max(queries[i].k for i in good), len(self.items))
        top_scores, top_cols = scores.topk(k, dim=1)
        top_items = self.items.candidates[top_cols].cpu().numpy()
        top_scores = top_scores.cpu().numpy()
        for row, i in enumerate(good):
            q, (context, _, unseen) = queries[i], resolved[i]
            keep = np.isfinite(top_scores[row, : q.k])  # excluded items never fill a short list
            out[i] = Recommendation(
                items=[self.catalogue.item_ids[c] for c in top_items[row, : q.k][keep]],
                scores=[float(s) for s in top_scores[row, : q.k][keep]],
                user=q.user, history=[self.catalogue.item_ids[c] for c in context if c > 0],
                unseen=unseen, window=self.window, checkpoint=self.checkpoint)
        return out

    def text_of(self, item_id: str) -> str | None:
        return self.catalogue.text[self.catalogue.item_code[item_id]]



class LiveRecommender:
    """The latest registered window of a run, replaced when a newer one registers (hot swap).

    A background thread polls the run every ``poll_s`` seconds and builds the new
    :class:`Recommender` (checkpoint, cache, item table) beside the one in use; only then is
    ``current`` rebound, one atomic reference assignment. A caller that reads ``current`` once per
    request (or per batch) therefore answers wholly from one checkpoint, old or new, and never waits
    for a load. A failed load keeps the old model and is reported in ``last_error``.
    """

    def __init__(self, run_out: str, device: str | torch.device = "cpu", poll_s: float = 10.0) -> None:
        self.run_out, self.device = run_out, device
        self.current = Recommender(run_out, None, device)
        self.swaps, self.last_error = 0, None
        self._stop = threading.Event()
        self._thread = None
        if poll_s > 0:
            self._thread = threading.Thread(target=self._poll, args=(poll_s,), name="xsmoe-hot-swap", daemon=True)
            self._thread.start()

    def refresh(self) -> bool:
        """Load and switch to a newer registered window, if there is one; whether it switched."""
        kept = registered_windows(self.run_out)
        if not kept or kept[-1].window <= self.current.window:
            return False
        self.current = Recommender(self.run_out, kept[-1].window, self.device)
        self.swaps += 1
        return True

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - keep serving the old window; /health shows why
                self.last_error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
