"""Per-layer standardisation of cached states (model.feature_norm): fitted on D_0 items, saved, applied."""

import pytest
import torch

from xsmoe_ray.model import build_model
from xsmoe_ray.train.checkpoint import WindowState, load_state, save_state

N_ITEMS, G, D = 30, 2, 6


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    # A large shared component and a small item-specific part, as BERT-family states have.
    common = 8.0 * torch.randn(1, G + 1, D, generator=g)
    return {"text": (common + 0.01 * (torch.arange(G + 1)[None, :, None] + 1) * torch.randn(N_ITEMS + 1, G + 1, D, generator=g)).half()}


def model(variant="xsmoe", feature_norm="layer"):
    torch.manual_seed(0)
    m = build_model(variant, text_dim=D, image_dim=None, n_groups=G, d_prime=3, embed_dim=4, max_len=4,
                    seq_blocks=1, seq_heads=1, dropout=0.0, modalities=("text",), feature_norm=feature_norm)
    m.set_item_features(features())
    return m


def test_fit_uses_only_the_given_items_and_standardises_them():
    m = model()
    warm = torch.arange(1, 16)
    m.fit_feature_norm(warm)
    norm = m.norms["text"]
    x = norm(features()["text"][warm].float())
    assert torch.allclose(x.mean(0), torch.zeros(G + 1, D), atol=1e-4)
    assert torch.allclose(x.std(0, unbiased=False).mean(-1), torch.ones(G + 1), atol=1e-3)
    before = (norm.mean.clone(), norm.scale.clone())
    changed = features()
    changed["text"][16:] += 5.0  # later items: no influence on the statistics
    m.set_item_features(changed)
    m.fit_feature_norm(warm)
    assert torch.equal(norm.mean, before[0]) and torch.equal(norm.scale, before[1])


@pytest.mark.parametrize("variant", ["xsmoe", "noft"])
def test_every_variant_sees_standardised_features(variant):
    m = model(variant)
    m.fit_feature_norm(torch.arange(1, 16))
    ids = torch.arange(1, 6)
    out = m.item_embeddings(ids)
    raw = model(variant, feature_norm="none")
    assert not torch.allclose(out, raw.item_embeddings(ids))  # same weights, different inputs
    cache = m.norms["text"](features()["text"][ids].float())
    e = m.sides["text"](cache) if m.spec.side else cache[:, -1]
    assert torch.allclose(out, m.fusion(e), atol=1e-5)


def test_none_is_the_raw_cached_path():
    m = model(feature_norm="none")
    assert len(m.norms) == 0 and not any("norms" in k for k in m.state_dict())
    ids = torch.arange(1, 6)
    cache = features()["text"][ids].float()
    assert torch.allclose(m.item_embeddings(ids), m.fusion(m.sides["text"](cache)), atol=1e-6)


def test_unfitted_standardisation_is_an_error():
    with pytest.raises(RuntimeError, match="never fitted"):
        model().item_embeddings(torch.arange(1, 3))


def test_statistics_travel_in_the_checkpoint(tmp_path):
    m = model()
    m.fit_feature_norm(torch.arange(1, 16))
    save_state(tmp_path, WindowState(window=0, model=m), config={})
    back = load_state(tmp_path).model
    assert back.args["feature_norm"] == "layer"
    for k in ("mean", "scale", "fitted"):
        assert torch.equal(getattr(back.norms["text"], k), getattr(m.norms["text"], k))
    back.set_item_features(features())
    assert torch.allclose(back.item_embeddings(torch.arange(1, 6)), m.item_embeddings(torch.arange(1, 6)))


def test_loading_an_unfitted_state_is_noticed():
    fitted, fresh = model(), model()
    fitted.fit_feature_norm(torch.arange(1, 16))
    fitted.item_embeddings(torch.arange(1, 3))
    fitted.load_state_dict(fresh.state_dict())  # statistics of a model that was never fitted
    with pytest.raises(RuntimeError, match="never fitted"):
        fitted.item_embeddings(torch.arange(1, 3))
