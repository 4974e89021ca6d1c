"""Models under torch.nn.utils.prune / parametrize / legacy weight_norm, and private copies
that leave the caller's hooks behind."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parametrize, prune
from torch.nn.utils.parametrizations import orthogonal, weight_norm

from tests.conftest import assert_same_state, make_loader, make_mlp, model_state
from wfexplore.copies import private_copy
from wfexplore.gradients import gradient_samples
from wfexplore.params import ParameterLayout


def pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model = model.double()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.random_unstructured(model[2], "weight", amount=0.25)
    return model


def loader(n: int = 24):
    g = torch.Generator().manual_seed(5)
    return make_loader(torch.randn(n, 6, generator=g, dtype=torch.float64), 3, batch=8)


def hook_dicts(model: nn.Module) -> list:
    attrs = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [
        (name, a, list(getattr(m, a).items())) for name, m in model.named_modules() for a in attrs
    ]


# --- private_copy -------------------------------------------------------------------------------
def test_private_copy_works_right_after_prune_where_deepcopy_fails():
    model = pruned_mlp()
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)
    work = private_copy(model)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(work(x), model(x), rtol=0, atol=0)
    assert work[0].weight_orig.data_ptr() != model[0].weight_orig.data_ptr()
    assert torch.equal(work[0].weight, model[0].weight)
    with torch.no_grad():
        work[0].weight_orig.add_(1.0)  # the copy computes with its own weight_orig and mask
    work(x)
    assert torch.equal(work[0].weight, (model[0].weight_orig + 1) * model[0].weight_mask)
    private_copy(work)  # and after a forward pass, with a non-leaf weight again


def test_private_copy_drops_the_callers_hooks_and_keeps_prune_and_parametrizations():
    model = pruned_mlp()
    model[2] = orthogonal(nn.Linear(5, 4).double())
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append("forward"))
    model[2].register_forward_pre_hook(lambda m, i: calls.append("pre"))
    model[4].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    model.register_forward_hook(lambda m, i, k, o: calls.append("kwargs"), with_kwargs=True)
    before_hooks, before = hook_dicts(model), model_state(model)

    work = private_copy(model)
    work(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    assert calls == []
    assert isinstance(next(iter(work[0]._forward_pre_hooks.values())), prune.BasePruningMethod)
    assert parametrize.is_parametrized(work[2], "weight")
    assert not work._forward_hooks and not work._forward_hooks_with_kwargs

    assert hook_dicts(model) == before_hooks
    assert_same_state(before, model_state(model))
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    assert sorted(calls) == ["backward", "forward", "kwargs", "pre"]


def test_private_copy_of_a_legacy_weight_norm_model_still_differentiates_through_g_and_v():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 3))).double()
    model(torch.randn(2, 4, dtype=torch.float64))  # weight is now a non-leaf tensor
    work = private_copy(model)
    work(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    assert work[0].weight_v.grad is not None and work[0].weight_v.grad.abs().sum() > 0
    assert model[0].weight_v.grad is None


# --- the layout of reparametrised models --------------------------------------------------------
def test_pruned_layers_are_analysed_with_their_masks_and_their_zeros_count_as_pruned():
    model = pruned_mlp()
    layout = ParameterLayout.from_model(model)
    assert layout.names == ["0.weight_orig", "2.weight_orig", "4.weight"]
    assert layout.dim == 30 + 20 + 12  # every layer, not only the unpruned one
    assert [p.mask for p in layout.parameters] == ["0.weight_mask", "2.weight_mask", None]
    assert [p.tensor_name for p in layout.parameters] == ["0.weight", "2.weight", "4.weight"]
    assert layout.masked == ["0.weight_orig", "2.weight_orig"]
    flat = layout.flatten(model)
    effective = torch.cat([model[i].weight.detach().reshape(-1) for i in (0, 2, 4)])
    assert torch.equal(flat, effective)
    masked = layout.masked_out(model)
    assert int(masked.sum()) == 15 + 5
    assert bool((flat[masked] == 0).all())
    table = layout.table()
    assert list(table["analysed"]) == [True, True, True]
    assert "0.weight_mask" in table["note"][0]


def test_pruned_layers_are_found_by_module_name_tensor_name_and_pattern():
    model = pruned_mlp()
    assert ParameterLayout.from_model(model, names=["0"]).names == ["0.weight_orig"]
    assert ParameterLayout.from_model(model, names=["2.weight"]).names == ["2.weight_orig"]
    by_pattern = ParameterLayout.from_model(model, pattern=r"weight$").names
    assert by_pattern == ["0.weight_orig", "2.weight_orig", "4.weight"]


def test_other_reparametrisations_are_named_in_a_warning_and_in_the_table():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(
            nn.Linear(6, 5),
            weight_norm(nn.Linear(5, 4)),
            orthogonal(nn.Linear(4, 4)),
            torch.nn.utils.weight_norm(nn.Linear(4, 3)),
        ).double()
    with pytest.warns(UserWarning, match="3 Conv/Linear layer") as caught:
        layout = ParameterLayout.from_model(model)
    message = str(caught[0].message)
    for text in ("1: weight", "_WeightNorm", "_Orthogonal", "legacy torch.nn.utils.weight_norm"):
        assert text in message
    assert layout.names == ["0.weight"]
    table = layout.table()
    assert list(table["parameter"]) == ["0.weight", "1.weight", "2.weight", "3.weight"]
    assert list(table["analysed"]) == [True, False, False, False]
    assert table["note"][2].startswith("not analysed: weight is computed by")
    assert layout.with_block_size(2).skipped == layout.skipped
    with pytest.raises(ValueError, match=r"names: '1' is reparametrised"):
        ParameterLayout.from_model(model, names=["1"])
    explicit = ParameterLayout.from_model(model, names=["3.weight_v"])  # underlying parameters
    assert explicit.names == ["3.weight_v"]


def test_when_every_layer_is_reparametrised_the_error_says_so():
    model = nn.Sequential(weight_norm(nn.Linear(3, 3)), orthogonal(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="every Conv/Linear layer of the model is reparametrised"):
        ParameterLayout.from_model(model)


# --- gradients through masks, and the caller's hooks ---------------------------------------------
def test_gradient_samples_of_a_pruned_model_are_zero_on_masked_entries_and_exact():
    model = pruned_mlp()
    before = model_state(model)
    data = loader()
    layout = ParameterLayout.from_model(model)
    g = gradient_samples(model, data, layout, 20, chunk_size=6, progress=False)
    assert bool((g[:, layout.masked_out(model)] == 0).all())
    # reference: the same network with plain weights, per-example grads times the mask
    plain = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    plain = plain.double()
    with torch.no_grad():
        for i in (0, 2, 4):
            plain[i].weight.copy_(model[i].weight)
            plain[i].bias.copy_(model[i].bias)
    params = {k: v.detach() for k, v in plain.named_parameters()}
    xs, ys = data.dataset.tensors

    def loss(p, x, y):
        return F.cross_entropy(functional_call(plain, p, (x[None],)), y[None])

    ref = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs[:20], ys[:20])
    masks = {"0.weight": model[0].weight_mask, "2.weight": model[2].weight_mask}
    rows = [
        (ref[name] * masks.get(name, 1.0)).reshape(20, -1)
        for name in ("0.weight", "2.weight", "4.weight")
    ]
    torch.testing.assert_close(g, torch.cat(rows, 1), rtol=0, atol=1e-13)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("make", [make_mlp, pruned_mlp])
def test_the_callers_forward_hooks_do_not_fire_during_gradient_samples(make):
    model = make()
    calls = []

    def count(module, inputs, output):
        calls.append(output.shape)

    def refuse_vmap(module, inputs, output):
        if torch._C._functorch.is_batchedtensor(output):
            raise RuntimeError("this hook cannot run under vmap")

    handles = [model[0].register_forward_hook(count), model[-1].register_forward_hook(refuse_vmap)]
    layout = ParameterLayout.from_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the slow loop either
        gradient_samples(model, loader(), layout, 8, progress=False)
    assert calls == []
    assert list(model[0]._forward_hooks.values()) == [count]
    model(torch.randn(2, 6, dtype=torch.float64))
    assert calls == [torch.Size([2, 5])]
    for h in handles:
        h.remove()
