"""Mask selection: exact counts, scopes, minimum density, ties and already-pruned weights."""

import math

import pytest
import torch

from wfexplore.params import AnalysedParameter, ParameterLayout
from wfexplore.pruning import keep_masks, select_pruned
from wfexplore.pruning.masks import pruned_from_masks


def layout_of(sizes=(7, 30, 13, 50)) -> ParameterLayout:
    params, offset = [], 0
    for i, n in enumerate(sizes):
        params.append(AnalysedParameter(f"l{i}.weight", f"l{i}", "Linear", (n,), offset))
        offset += n
    return ParameterLayout(params, "layer")


def scores_for(layout, seed=0):
    return torch.rand(
        layout.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


SPARSITIES = [0.0, 0.05, 0.3, 1 / 3, 0.5, 0.77, 0.9, 0.99]


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_count_is_exact_and_equals_a_hand_sorted_threshold(sparsity):
    layout = layout_of()
    weights = torch.randn(
        layout.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    pruned = select_pruned(weights**2 / 2, layout, sparsity, scope="global")
    count = round(sparsity * layout.dim)
    assert int(pruned.sum()) == count
    by_hand = sorted(range(layout.dim), key=lambda i: (abs(float(weights[i])), i))[:count]
    assert set(pruned.nonzero()[:, 0].tolist()) == set(by_hand)


# 0.99 rounds to every weight of the layers of 7, 13, 30 and 50: refused, see below
@pytest.mark.filterwarnings("ignore:sparsity rounds to 0 weights")
@pytest.mark.parametrize("sparsity", [s for s in SPARSITIES if s < 0.99])
def test_layerwise_count_is_exact_in_every_layer(sparsity):
    layout = layout_of()
    scores = scores_for(layout)
    pruned = select_pruned(scores, layout, sparsity, scope="layerwise")
    for p in layout.parameters:
        part = pruned[p.offset : p.stop]
        assert int(part.sum()) == round(sparsity * p.numel)
        kept = scores[p.offset : p.stop][~part]
        if part.any() and (~part).any():
            assert scores[p.offset : p.stop][part].max() <= kept.min()


def test_ties_go_by_flat_index_and_the_choice_is_deterministic():
    layout = layout_of((6, 6))
    scores = torch.tensor([1.0, 0.5, 0.5, 2.0, 0.5, 3.0, 0.5, 4.0, 0.5, 5.0, 6.0, 7.0])
    pruned = select_pruned(scores, layout, 0.25, scope="global")  # 3 of the five 0.5s
    assert pruned.nonzero()[:, 0].tolist() == [1, 2, 4]
    assert torch.equal(pruned, select_pruned(scores, layout, 0.25, scope="global"))
    layerwise = select_pruned(scores, layout, 1 / 6, scope="layerwise")
    assert layerwise.nonzero()[:, 0].tolist() == [1, 6]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_already_pruned_weights_stay_pruned_and_count(scope):
    layout = layout_of()
    scores = scores_for(layout, 2)
    fixed = torch.zeros(layout.dim, dtype=torch.bool)
    fixed[[0, 1, 40, 41, 42, 99]] = True
    scores[fixed] = 10.0  # even with high scores they stay pruned
    pruned = select_pruned(scores, layout, 0.4, scope=scope, fixed=fixed)
    assert bool(pruned[fixed].all())
    if scope == "global":
        assert int(pruned.sum()) == round(0.4 * layout.dim)
    else:
        for p in layout.parameters:
            assert int(pruned[p.offset : p.stop].sum()) == round(0.4 * p.numel)


def test_more_already_pruned_than_the_target_keeps_them_all_with_a_warning():
    layout = layout_of((10, 10))
    fixed = torch.zeros(20, dtype=torch.bool)
    fixed[:8] = True
    with pytest.warns(RuntimeWarning, match="already pruned"):
        pruned = select_pruned(scores_for(layout), layout, 0.2, fixed=fixed)
    assert torch.equal(pruned, fixed)


def test_min_density_keeps_every_layer_alive_and_the_count_exact():
    layout = layout_of()
    scores = scores_for(layout, 3)
    scores[50:100] *= 1e-3  # the last layer would otherwise be emptied first
    pruned = select_pruned(scores, layout, 0.8, scope="global", min_density=0.1)
    assert int(pruned.sum()) == round(0.8 * layout.dim)
    for p in layout.parameters:
        assert int((~pruned[p.offset : p.stop]).sum()) >= math.ceil(0.1 * p.numel)
    assert int(pruned[50:100].sum()) == 45  # capped at 90 % of 50
    without = select_pruned(scores, layout, 0.8, scope="global")
    assert int(without[50:100].sum()) == 50


def test_min_density_that_cannot_be_met_is_a_clear_error():
    layout = layout_of()
    with pytest.raises(ValueError, match="min_density=0.5"):
        select_pruned(scores_for(layout), layout, 0.9, scope="global", min_density=0.5)
    with pytest.raises(ValueError, match="min_density=0.5 keeps at least 4 of the 7"):
        select_pruned(scores_for(layout), layout, 0.9, scope="layerwise", min_density=0.5)


def test_layerwise_per_layer_map_accepts_parameter_and_module_names():
    layout = layout_of()
    pruned = select_pruned(
        scores_for(layout), layout, {"l1": 0.5, "l3.weight": 0.1}, scope="layerwise"
    )
    counts = [int(pruned[p.offset : p.stop].sum()) for p in layout.parameters]
    assert counts == [0, 15, 0, 5]
    with pytest.raises(ValueError, match="'l9' is not an analysed parameter"):
        select_pruned(scores_for(layout), layout, {"l9": 0.5}, scope="layerwise")
    with pytest.raises(ValueError, match="needs scope='layerwise'"):
        select_pruned(scores_for(layout), layout, {"l1": 0.5}, scope="global")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.5", True, float("nan")])
def test_sparsity_outside_the_unit_interval_is_refused(bad):
    layout = layout_of()
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        select_pruned(scores_for(layout), layout, bad)


def test_unknown_scope_lists_the_valid_ones():
    layout = layout_of()
    with pytest.raises(ValueError, match=r"scope must be one of \['global', 'layerwise'\]"):
        select_pruned(scores_for(layout), layout, 0.5, scope="per-layer")


def test_keep_masks_round_trip():
    layout = layout_of()
    pruned = select_pruned(scores_for(layout), layout, 0.5)
    masks = keep_masks(pruned, layout)
    assert list(masks) == layout.names and all(m.dtype == torch.bool for m in masks.values())
    assert torch.equal(pruned_from_masks(masks, layout), pruned)


@pytest.mark.parametrize("sparsity", [0.995, 0.999])
def test_a_global_target_that_rounds_to_every_weight_is_refused(sparsity):
    layout = layout_of()  # d = 100
    with pytest.raises(
        ValueError, match=r"sparsity .* rounds to 100 weights, all 100 analysed"
    ) as err:
        select_pruned(scores_for(layout), layout, sparsity, scope="global")
    assert "largest sparsity that keeps at least one weight is 99/100 = 0.99" in str(err.value)
    assert int(select_pruned(scores_for(layout), layout, 0.99).sum()) == 99


def test_a_layerwise_target_that_empties_a_layer_names_it():
    layout = layout_of()
    with pytest.raises(ValueError, match=r"rounds to 7 weights, the 7 weights of l0.weight.*6/7"):
        select_pruned(scores_for(layout), layout, 0.95, scope="layerwise")
    with pytest.raises(ValueError, match=r"the 13 weights of l2.weight"):
        select_pruned(scores_for(layout), layout, {"l2": 0.97}, scope="layerwise")


def test_a_positive_target_that_rounds_to_nothing_warns_with_the_count():
    layout = layout_of()
    with pytest.warns(RuntimeWarning, match=r"sparsity 0.001 of 100 .* rounds to 0 weights"):
        pruned = select_pruned(scores_for(layout), layout, 0.001, scope="global")
    assert not pruned.any()
    with pytest.warns(RuntimeWarning, match=r"0 weights in 1 layer\(s\): l0.weight \(0.05 of 7"):
        pruned = select_pruned(scores_for(layout), layout, 0.05, scope="layerwise")
    assert [int(pruned[p.offset : p.stop].sum()) for p in layout.parameters] == [0, 2, 1, 2]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_pruned(scores_for(layout), layout, 0.0, scope="global")  # zero asks for nothing
