"""Window checkpoints: structure first, then weights, plus the window index and the results so far.

A checkpoint written after window ``w`` holds everything needed to run window ``w + 1`` exactly
as an uninterrupted run would: the model's structure (experts per layer, which are frozen), its
weights, the replay reservoir (``iisan_rh``) and every window's reported metrics. Per-window
randomness is seeded from (seed, window), so a resumed window repeats bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from xsmoe_ray.model import StreamModel, model_from_structure

STATE_FILE = "state.pt"


@dataclass
class WindowState:
    window: int  # the last finished window
    model: StreamModel
    history: list[dict] = field(default_factory=list)
    replay: dict | None = None


def save_state(directory: str | Path, state: WindowState, config: dict) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save({
        "window": state.window,
        "structure": state.model.structure(),
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "history": state.history,
        "replay": state.replay,
        "config": config,
    }, path)
    return path


def load_state(directory: str | Path) -> WindowState:
    with open(Path(directory) / STATE_FILE, "rb") as f:
        return read_state(f)


def read_state(source: BinaryIO) -> WindowState:
    """A checkpoint's ``state.pt`` from any binary file (a local file, a pyarrow stream from S3)."""
    state, _ = read_state_and_config(source)
    return state


def read_state_and_config(source: BinaryIO) -> tuple[WindowState, dict]:
    """:func:`read_state` plus the run settings the checkpoint was written with (``to_dict`` form)."""
    # weights_only: a checkpoint read from shared storage (S3, NFS) must not be able to run code on load.
    blob = torch.load(source, map_location="cpu", weights_only=True)
    model = model_from_structure(blob["structure"])
    model.load_state_dict(blob["model"])
    state = WindowState(window=int(blob["window"]), model=model, history=list(blob["history"]),
                        replay=blob.get("replay"))
    return state, blob["config"]
