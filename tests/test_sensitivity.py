"""Per-layer sensitivity, global allocation and mask overlap against direct computations."""

import math

import pytest
import torch

from tests.conftest import assert_same_state, model_state
from wfexplore.curvature import estimate_curvature
from wfexplore.params import ParameterLayout
from wfexplore.pruning import (
    PruningSettings,
    evaluate_model,
    global_allocation,
    layer_sensitivity,
    mask_overlap,
    prune_model,
)


@pytest.fixture
def fisher(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp, block_size=8)
    return estimate_curvature(
        mlp, mlp_loader, layout=layout, num_samples=24, progress=False, representation="dense"
    ).damped(1e-3)


def test_layer_sensitivity_prunes_one_layer_at_a_time(mlp, mlp_loader, fisher):
    before = model_state(mlp)
    frame = layer_sensitivity(
        mlp, fisher, mlp_loader, sparsities=(0.2, 0.6), update="group", progress=False
    )
    assert_same_state(before, model_state(mlp))
    assert len(frame) == 4 and list(frame["parameter"]) == ["0.weight"] * 2 + ["3.weight"] * 2
    dense = evaluate_model(mlp, mlp_loader)["loss"]
    for row in frame.to_dict("records"):
        direct = prune_model(
            mlp,
            fisher,
            {row["parameter"]: row["sparsity"]},
            scope="layerwise",
            update="group",
            eval_data=mlp_loader,
            progress=False,
        )
        other = [n for n in direct.masks if n != row["parameter"]][0]
        assert direct.masks[other].all()
        assert row["pruned"] == round(row["sparsity"] * row["numel"])
        assert row["predicted_delta_loss"] == pytest.approx(
            direct.summary["predicted_delta_loss"], rel=1e-10
        )
        assert row["actual_delta_loss"] == pytest.approx(direct.summary["loss"] - dense, rel=1e-10)


def test_layer_sensitivity_estimates_the_curvature_once(mlp, mlp_loader, monkeypatch):
    from wfexplore.pruning import prune as prune_module  # RunOptions.curvature calls it there

    calls = []
    original = prune_module.method_curvature

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prune_module, "method_curvature", counted)
    settings = PruningSettings("kfac", num_samples=16)
    frame = layer_sensitivity(mlp, settings, mlp_loader, sparsities=(0.1, 0.5, 0.9), progress=False)
    assert len(calls) == 1 and len(frame) == 6
    assert set(frame["update"]) == {"summed"} and set(frame["curvature"]) == {"kfac"}


def test_global_allocation_of_magnitude_equals_a_hand_sorted_threshold(mlp):
    frame = global_allocation(mlp, "magnitude", (0.25, 0.75), progress=False)
    w = torch.cat([mlp[0].weight.reshape(-1), mlp[3].weight.reshape(-1)]).detach()
    for s in (0.25, 0.75):
        count = round(s * 45)
        chosen = sorted(range(45), key=lambda i: (abs(float(w[i])), i))[:count]
        by_hand = [sum(i < 30 for i in chosen), sum(i >= 30 for i in chosen)]
        rows = frame[frame["sparsity"] == s]
        assert rows["pruned"].tolist() == by_hand
        assert rows["layer_sparsity"].tolist() == pytest.approx([by_hand[0] / 30, by_hand[1] / 15])


def test_global_allocation_respects_min_density(mlp, fisher):
    frame = global_allocation(mlp, fisher, (0.6,), min_density=0.3, progress=False)
    assert (frame["pruned"] <= [21, 10]).all()  # each layer keeps ceil(0.3 n)
    assert frame["pruned"].sum() == round(0.6 * 45)
    with pytest.raises(ValueError, match="min_density=0.3 lets at most 31 of 45"):
        global_allocation(mlp, fisher, (0.9,), min_density=0.3, progress=False)


def test_mask_overlap_is_the_jaccard_index_of_the_pruned_sets(mlp, mlp_loader, fisher):
    a = prune_model(mlp, "magnitude", 0.5, progress=False)
    b = prune_model(mlp, fisher, 0.5, progress=False)
    frame = mask_overlap(a, b)
    for row in frame.to_dict("records"):
        pa = set((~a.masks[row["parameter"]]).reshape(-1).nonzero()[:, 0].tolist())
        pb = set((~b.masks[row["parameter"]]).reshape(-1).nonzero()[:, 0].tolist())
        assert row["jaccard"] == pytest.approx(len(pa & pb) / len(pa | pb))
        assert (row["pruned_a"], row["pruned_b"]) == (len(pa), len(pb))
    same = mask_overlap(a, a.masks)
    assert (same["jaccard"] == 1.0).all()
    nothing = {n: torch.ones_like(m) for n, m in a.masks.items()}
    assert math.isnan(mask_overlap(nothing, nothing)["jaccard"][0])
    with pytest.raises(ValueError, match="different parameters"):
        mask_overlap(a, {"0.weight": a.masks["0.weight"]})


def test_sensitivity_arguments_are_named(mlp, mlp_loader, fisher):
    with pytest.raises(ValueError, match=r"sparsities must be a number in \[0, 1\)"):
        layer_sensitivity(mlp, fisher, mlp_loader, sparsities=(1.0,), progress=False)
    with pytest.raises(ValueError, match="eval_data: pass a loader"):
        layer_sensitivity(mlp, "magnitude", progress=False)
    with pytest.raises(ValueError, match="the curvature was built for"):
        global_allocation(mlp, fisher, (0.5,), names=["3.weight"], progress=False)
