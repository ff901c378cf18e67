"""model.item_ids: XSMoE's item-ID table beside its content embedding (an extension beyond the paper).

The row is added to the fused content embedding, trained in every window (old experts stay frozen),
grows with the catalogue under the ID models' rule, survives a checkpoint and a resume exactly, and
keeps two DDP ranks identical; its ID dropout drops whole rows in training only; variants with
their own item tower refuse the setting.
"""

from __future__ import annotations

import pytest
import torch

from xsmoe_ray.config import ConfigError, load_config
from xsmoe_ray.model import model_from_structure

from .test_baselines import FEATURES, N_ITEMS, _variant_on_two_ranks, batch, steps
from .test_baselines import make as make_model


def make(variant: str = "xsmoe", item_ids: bool = True, dropout: float = 0.0):
    return make_model(variant, dropout=dropout, item_ids=item_ids)


def test_the_id_row_is_added_to_the_content_embedding():
    with_ids, without = make(item_ids=True), make(item_ids=False)
    without.load_state_dict({k: v for k, v in with_ids.state_dict().items() if not k.startswith("item_table")})
    with torch.no_grad():
        with_ids.item_table.weight.copy_(torch.randn_like(with_ids.item_table.weight))
    ids = torch.tensor([3, 1, 3, 40])
    expected = without.item_embeddings(ids) + with_ids.item_table.weight[ids]
    assert torch.allclose(with_ids.item_embeddings(ids), expected)
    assert without.item_table is None and "item_ids" not in without.structure()  # old checkpoints unchanged


def test_id_dropout_drops_whole_rows_in_training_only():
    model = make_model("xsmoe", item_ids=True, item_id_dropout=0.5)
    content = make(item_ids=False)
    content.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("item_table")})
    with torch.no_grad():
        model.item_table.weight.copy_(torch.randn_like(model.item_table.weight))
    ids = torch.arange(1, N_ITEMS + 1)
    model.eval()
    content.eval()
    full = content.item_embeddings(ids) + model.item_table.weight[ids]
    assert torch.allclose(model.item_embeddings(ids), full)  # evaluation: every row, unscaled
    model.train()
    content.train()
    torch.manual_seed(0)
    got = model.item_embeddings(ids)
    dropped = torch.isclose(got, content.item_embeddings(ids)).all(1)
    kept = torch.isclose(got, full).all(1)
    assert bool((dropped ^ kept).all())  # each item: its whole row or none of it
    assert 0.25 < float(dropped.float().mean()) < 0.75  # 40 items at p = 0.5
    assert model_from_structure(model.structure()).args["item_id_dropout"] == 0.5
    with pytest.raises(ValueError, match="item_id_dropout"):
        make_model("xsmoe", item_ids=False, item_id_dropout=0.5)


@pytest.mark.parametrize("variant", ["xsmoe", "static", "noft", "iisan_kd"])
def test_the_table_trains_in_every_window_while_old_experts_stay_frozen(variant):
    model = make(variant)
    steps(model, batch(0), 2)
    model.begin_window()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert id(model.item_table.weight) in trainable and model.item_table.weight.requires_grad
    before = model.item_table.weight.detach().clone()
    frozen = [p.detach().clone() for p in model.parameters() if not p.requires_grad]
    steps(model, batch(1), 2)
    assert not torch.equal(model.item_table.weight, before)
    assert all(torch.equal(a, b) for a, b in zip(frozen, [p for p in model.parameters() if not p.requires_grad]))
    if variant == "xsmoe":
        assert frozen, "xsmoe froze its warm-up experts at the window start"


def test_the_table_grows_with_the_catalogue_and_keeps_its_rows():
    """Round trip and exact resume: test_baselines' test, parametrized with this model too."""
    model = make()
    grown = {m: torch.cat([t, torch.randn(7, *t.shape[1:])]) for m, t in FEATURES.items()}
    old_rows = model.item_table.weight.detach().clone()
    model.set_item_features(grown)
    assert model.structure()["n_item_rows"] == N_ITEMS + 8
    assert torch.equal(model.item_table.weight[: N_ITEMS + 1], old_rows)
    assert model_from_structure(model.structure()).item_table.rows == N_ITEMS + 8


def _ids_on_two_ranks(rank: int, port: int, out: str) -> None:
    from .test_sync import join_group, leave_group

    join_group(rank, 2, port)
    verdict = _variant_on_two_ranks("xsmoe", rank, item_ids=True)
    with open(f"{out}.{rank}", "w") as f:
        f.write(verdict)
    leave_group()


def test_two_ddp_ranks_stay_identical(tmp_path):
    import torch.multiprocessing as mp

    from .test_sync import free_port

    out = str(tmp_path / "rank")
    mp.spawn(_ids_on_two_ranks, args=(free_port(), out), nprocs=2, join=True)
    assert [open(f"{out}.{r}").read() for r in (0, 1)] == ["ok", "ok"]


def test_config_wires_the_table_and_refuses_it_for_models_with_their_own_item_tower():
    from xsmoe_ray.config import SIDE_VARIANTS
    from xsmoe_ray.model.xsmoe import VARIANTS
    from xsmoe_ray.train.worker import new_model

    assert set(SIDE_VARIANTS) == set(VARIANTS)

    cfg = load_config("demo", ["model.item_ids=true"])
    model = new_model(cfg, FEATURES)
    assert model.item_table.rows == N_ITEMS + 1
    assert new_model(load_config("demo"), FEATURES).item_table is None
    with pytest.raises(ConfigError, match="model.item_ids is for"):
        load_config("demo", ["model.variant=mmmlp", "model.item_ids=true"])
    dropping = new_model(load_config("demo", ["model.item_ids=true", "model.item_id_dropout=0.3"]), FEATURES)
    assert dropping.args["item_id_dropout"] == 0.3
    with pytest.raises(ConfigError, match="needs model.item_ids"):
        load_config("demo", ["model.item_id_dropout=0.3"])
    with pytest.raises(ConfigError, match="item_id_dropout must be in"):
        load_config("demo", ["model.item_ids=true", "model.item_id_dropout=1.0"])
