"""Window checkpoints load with weights_only=True: structure, weights, replay state; no code on load."""

import pickle

import numpy as np
import pytest
import torch

from xsmoe_ray.config import ConfigError, load_config
from xsmoe_ray.model import ReservoirBuffer, build_model
from xsmoe_ray.train.checkpoint import STATE_FILE, WindowState, load_state, save_state


def test_replay_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("iisan_rh", text_dim=6, image_dim=None, n_groups=2, d_prime=3, embed_dim=4, max_len=4,
                        seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",))
    replay = ReservoirBuffer(8, seed=3)
    replay.add(torch.arange(1, 61).view(10, 6))
    save_state(tmp_path, WindowState(window=2, model=model, history=[{"window": 2, "ndcg10": 0.1}],
                                     replay=replay.state_dict()), config={"model": {"variant": "iisan_rh"}})
    back = load_state(tmp_path)
    again = ReservoirBuffer(1)
    again.load_state_dict(back.replay)
    assert back.window == 2 and back.history == [{"window": 2, "ndcg10": 0.1}]
    assert np.array_equal(again.data[:again.size], replay.data[:replay.size])
    assert torch.equal(again.sample(4), replay.sample(4))  # the generator state came back too


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / STATE_FILE, "wb") as f:
        torch.save({"window": 0, "evil": _Payload()}, f, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        load_state(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_zero_train_workers_is_a_config_error():
    with pytest.raises(ConfigError, match="train.num_workers must be >= 1"):
        load_config("demo", ["train.num_workers=0"])
