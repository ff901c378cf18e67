"""Side layer properties: Eq. 1-3 and 5, expansion, pruning, utilization sums (toy sizes)."""

from __future__ import annotations

import math

import pytest
import torch

from xsmoe_ray.model import Expert, ExpertStart, SideLayer, SideNetwork

D, DP = 8, 3


def reference_layer(layer: SideLayer, h: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Eq. 3 literally: alpha_0 l + sum_j alpha_j E_j(h), one expert at a time."""
    alpha = torch.softmax(layer.router.proj(h), -1)
    out = alpha[:, :1] * l
    for j, expert in enumerate(layer.experts):
        out = out + alpha[:, j + 1:j + 2] * (expert.up(torch.nn.functional.gelu(expert.down(h))) + h)
    return out


def grown_layer(n_experts: int, seed: int = 0) -> SideLayer:
    torch.manual_seed(seed)
    layer = SideLayer(D, DP)
    for _ in range(n_experts - 1):
        layer.expand()
        with torch.no_grad():  # make the experts differ
            for p in layer.experts[-1].parameters():
                p.add_(torch.randn_like(p))
    return layer


def test_expert_is_eq1():
    torch.manual_seed(0)
    e, h = Expert(D, DP), torch.randn(5, D)
    assert torch.allclose(e(h), e.up(torch.nn.functional.gelu(e.down(h))) + h)


@pytest.mark.parametrize("n_experts", [1, 2, 4])
@pytest.mark.parametrize("grad", [True, False])
def test_fused_layer_equals_eq3(n_experts, grad):
    layer = grown_layer(n_experts)
    h, l = torch.randn(7, D), torch.randn(7, D)
    with torch.set_grad_enabled(grad):
        assert torch.allclose(layer(h, l), reference_layer(layer, h, l), atol=1e-5)


def test_fused_layer_gradients_equal_eq3():
    layer = grown_layer(3)
    for expert, frozen in zip(layer.experts, layer.frozen):
        expert.requires_grad_(not frozen)
    h, l = torch.randn(7, D, requires_grad=True), torch.randn(7, D)
    grads = []
    for fn in (layer, lambda x, y: reference_layer(layer, x, y)):
        layer.zero_grad()
        h.grad = None
        fn(h, l).pow(2).sum().backward()
        grads.append([h.grad.clone()] + [p.grad.clone() for p in layer.parameters() if p.requires_grad])
    assert len(grads[0]) == 1 + 2 + 4  # input, router weight and bias, newest expert
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))


def test_router_weights_sum_to_one():
    layer = grown_layer(3)
    alpha = layer.router(torch.randn(4, D))
    assert alpha.shape == (4, 4) and torch.allclose(alpha.sum(-1), torch.ones(4))


def test_expansion_freezes_old_experts_and_adds_mean_expert():
    layer = grown_layer(2)
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in layer.experts]
    router_before = {k: v.clone() for k, v in layer.router.state_dict().items()}
    layer.expand()
    assert layer.n_experts == 3 and layer.frozen == [True, True, False]
    assert layer.router.n_outputs == 4
    for name, value in layer.experts[2].state_dict().items():
        assert torch.allclose(value, (before[0][name] + before[1][name]) / 2)
    for name, value in layer.router.state_dict().items():
        assert torch.equal(value[:3], router_before[name])  # existing rows kept bit-identical
    trainable = {id(p) for p in layer.trainable_parameters()}
    assert trainable == {id(p) for p in [*layer.router.parameters(), *layer.experts[2].parameters()]}


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6])
def test_new_expert_share_sets_its_initial_router_share(share):
    layer = grown_layer(3)
    with torch.no_grad():  # every expert row at the same logit, so the share is exact
        layer.router.proj.weight[1:] = layer.router.proj.weight[1]
        layer.router.proj.bias[1:] = layer.router.proj.bias[1]
    old_rows = layer.router.proj.weight.detach().clone()
    layer.expand(ExpertStart(share=share))
    alpha = layer.router(torch.randn(6, D))
    new_of_experts = alpha[:, -1] / alpha[:, 1:].sum(-1)
    want = share if share > 0 else 1 / layer.n_experts
    assert torch.allclose(new_of_experts, torch.full_like(new_of_experts, want), atol=1e-5)
    assert torch.equal(layer.router.proj.weight[:-1], old_rows)  # only the new row's bias moves


def test_last_init_copies_the_newest_expert_and_keeps_the_output():
    layer = grown_layer(3)
    h, l = torch.randn(5, D), torch.randn(5, D)
    before = layer(h, l).detach()
    newest = {k: v.clone() for k, v in layer.experts[-1].state_dict().items()}
    bias = layer.router.proj.bias[-1].detach().clone()
    layer.expand(ExpertStart(init="last"))
    # both halves hold bias - log 2 to the last bit, as before model.new_expert_copy_share existed
    assert torch.equal(layer.router.proj.bias[-2:], torch.stack([bias - math.log(2.0)] * 2))
    assert layer.frozen == [True, True, True, False]
    assert all(torch.equal(v, newest[k]) for k, v in layer.experts[-1].state_dict().items())
    assert torch.equal(layer.router.proj.weight[-1], layer.router.proj.weight[-2])
    assert torch.equal(layer.router.proj.bias[-1], layer.router.proj.bias[-2])
    assert torch.allclose(layer(h, l), before, atol=1e-5)  # the copy splits the newest expert's share


@pytest.mark.parametrize("copy_share", [0.5, 0.9, 0.1])
def test_last_init_copy_share_hands_over_that_share_and_keeps_the_output(copy_share):
    layer = grown_layer(3)
    h, l = torch.randn(5, D), torch.randn(5, D)
    before, alpha = layer(h, l).detach(), layer.router(h).detach()
    layer.expand(ExpertStart(init="last", copy_share=copy_share))
    after = layer.router(h).detach()
    assert torch.allclose(after[:, :3], alpha[:, :3], atol=1e-6)  # backbone and older experts untouched
    assert torch.allclose(after[:, 4], copy_share * alpha[:, 3], atol=1e-6)  # the copy's share
    assert torch.allclose(after[:, 3], (1 - copy_share) * alpha[:, 3], atol=1e-6)  # the frozen original's
    assert torch.allclose(layer(h, l), before, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(init="last", copy_share=1.0), "copy_share must be in"),
    (dict(init="last", copy_share=0.0), "copy_share must be in"),
    (dict(init="mean", copy_share=0.9), "copy_share applies to init='last' only"),
    (dict(share=1.0), "share must be in"),
    (dict(share=-0.1), "share must be in"),
    (dict(init="first"), "init must be one of"),
])
def test_an_expert_start_out_of_range_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpertStart(**kwargs)


def test_gradients_reach_only_trainable_parameters():
    net = SideNetwork(D, DP, n_layers=2)
    net.expand()
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.trainable_parameters():
        p.requires_grad_(True)
    frozen = [p.clone() for layer in net.layers for p in layer.experts[0].parameters()]
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(6, 3, D)).pow(2).sum().backward()
        opt.step()
    after = [p for layer in net.layers for p in layer.experts[0].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after))
    assert all(p.grad is None for layer in net.layers for p in layer.experts[0].parameters())


def test_prune_removes_lowest_expert_below_tau_and_its_router_row():
    layer = grown_layer(3)
    rows = layer.router.proj.weight.detach().clone()
    kept = [layer.experts[0], layer.experts[2]]
    j = layer.prune_candidate(0.3, torch.tensor([0.5, 0.1, 0.2]) * 10, torch.tensor([10.0]))
    assert j == 1
    layer.remove_expert(j)
    assert list(layer.experts) == kept and layer.router.n_outputs == 3
    assert torch.equal(layer.router.proj.weight, rows[[0, 1, 3]])


def test_prune_keeps_experts_above_tau_and_the_last_one():
    layer = grown_layer(2)
    assert layer.prune_candidate(0.05, torch.tensor([0.4, 0.3]), torch.tensor([1.0])) is None
    single = SideLayer(D, DP)
    assert single.prune_candidate(0.9, torch.tensor([0.0]), torch.tensor([5.0])) is None
    with pytest.raises(ValueError):
        single.remove_expert(0)


def test_utilization_is_eq5_over_experts_only():
    layer = grown_layer(3).train()
    layer.track_utilization = True
    h, l = torch.randn(5, D), torch.randn(5, D)
    layer(h, l)
    alpha = layer.router(h).detach()
    norms = torch.stack([e(h).norm(dim=-1) for e in layer.experts], 1) * alpha[:, 1:]  # [n, N]
    expected = (norms / norms.sum(-1, keepdim=True)).sum(0)
    sums, count = layer.utilization_sums()
    assert torch.allclose(sums.float(), expected, atol=1e-5) and count.item() == 5
    # shares of the experts: every sample's scores sum to one, whatever the backbone's weight or output
    assert torch.isclose(sums.sum(), count.double(), atol=1e-5)
    layer.reset_utilization()
    layer(h, 100 * l)  # a far larger backbone output leaves the experts' shares unchanged
    assert torch.allclose(layer.utilization_sums()[0].float(), expected, atol=1e-5)


def test_utilization_sums_merge_by_addition():
    layer = grown_layer(3).train()
    layer.track_utilization = True
    h, l = torch.randn(8, D), torch.randn(8, D)
    layer(h, l)
    whole = [t.clone() for t in layer.utilization_sums()]
    layer.reset_utilization()
    layer(h[:4], l[:4])
    first = [t.clone() for t in layer.utilization_sums()]
    layer.reset_utilization()
    layer(h[4:], l[4:])
    second = layer.utilization_sums()
    for w, a, b in zip(whole, first, second):
        assert torch.allclose(w, a + b)


def test_utilization_not_accumulated_when_off_or_in_eval():
    layer = grown_layer(2)
    layer(torch.randn(3, D), torch.randn(3, D))
    layer.track_utilization = True
    layer.eval()(torch.randn(3, D), torch.randn(3, D))
    assert layer.utilization_sums()[1].item() == 0
