"""prune_model end to end on tiny float64 models: copies, masks, torch prune, steps, BN, errors."""

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import assert_same_state, make_loader, model_state
from wfexplore.curvature import estimate_curvature
from wfexplore.params import ParameterLayout
from wfexplore.pruning import (
    PruningSettings,
    evaluate_model,
    method_curvature,
    polynomial_schedule,
    prune_model,
    recalibrate_batchnorm,
)
from wfexplore.pruning.estimation import take_examples
from wfexplore.training import evaluate

WF = PruningSettings("woodfisher", damping=1e-3, num_samples=16, block_size=8)


def flat_pruned(result):
    return torch.cat([~result.masks[n].reshape(-1) for n in result.layout.names])


@pytest.mark.parametrize(
    "settings",
    [
        PruningSettings("magnitude"),
        PruningSettings("obd", damping=1e-3, num_samples=16),
        WF,
        PruningSettings("kfac", damping=1e-3, num_samples=16),
    ],
    ids=lambda s: s.method,
)
def test_caller_model_is_bit_identical_and_the_zero_pattern_is_the_mask(
    bn_cnn, cnn_loader, settings
):
    bn_cnn.train()
    bn_cnn[0].weight.grad = torch.ones_like(bn_cnn[0].weight)
    before = model_state(bn_cnn)
    result = prune_model(
        bn_cnn, settings, 0.6, data=cnn_loader, steps=2, recalibrate_bn=True, progress=False
    )
    assert_same_state(before, model_state(bn_cnn))
    assert result.model is not bn_cnn
    params = dict(result.model.named_parameters())
    for name, keep in result.masks.items():
        assert keep.dtype == torch.bool
        assert torch.equal(params[name] != 0, keep)
    assert int(flat_pruned(result).sum()) == round(0.6 * result.layout.dim)
    assert result.sparsity == pytest.approx(round(0.6 * result.layout.dim) / result.layout.dim)


def test_torch_prune_gets_the_masks_and_remove_gives_back_the_pruned_weights(mlp, mlp_loader):
    result = prune_model(mlp, WF, 0.5, data=mlp_loader, update="group", progress=False)
    attached = result.apply_torch_prune()
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(attached(x), result.model(x), rtol=0, atol=0)
    state = attached.state_dict()
    exported = result.masks_state_dict()
    assert set(exported) == {"0.weight_mask", "3.weight_mask"}
    for key, mask in exported.items():
        assert torch.equal(state[key], mask)
    for name in result.layout.names:
        module = attached.get_submodule(name.rpartition(".")[0])
        assert torch_prune.is_pruned(module)
        torch_prune.remove(module, "weight")
    for name, value in attached.named_parameters():
        assert torch.equal(value, dict(result.model.named_parameters())[name])
    # on the original dense model: masking without the weight update
    dense = result.apply_torch_prune(make_copy(mlp))
    torch.testing.assert_close(dense[0].weight, mlp[0].weight * result.masks["0.weight"])


def make_copy(model):
    import copy

    return copy.deepcopy(model)


def test_one_shot_with_settings_equals_pruning_with_the_curvature_estimated_beforehand(
    mlp, mlp_loader
):
    layout = ParameterLayout.from_model(mlp, block_size=8)
    curv = estimate_curvature(
        mlp, mlp_loader, layout=layout, num_samples=16, progress=False, representation="dense"
    ).damped(1e-3)
    a = prune_model(mlp, WF, 0.5, data=mlp_loader, progress=False)
    b = prune_model(mlp, curv, 0.5, data=mlp_loader, progress=False)
    for n in layout.names:
        assert torch.equal(a.masks[n], b.masks[n])
    torch.testing.assert_close(layout.flatten(a.model), layout.flatten(b.model), rtol=0, atol=1e-14)
    assert a.summary["update"] == "summed" and a.summary["block_size"] == 8


def test_recomputation_follows_the_polynomial_schedule_and_keeps_earlier_pruning(mlp, mlp_loader):
    assert polynomial_schedule(0.0, 0.8, 1) == [0.8]
    assert polynomial_schedule(0.0, 0.8, 2) == pytest.approx([0.7, 0.8])
    seen = []

    def spy(step, work, keep):
        seen.append(None if keep is None else keep.clone())
        return method_curvature(
            work, take_examples(mlp_loader, 16), layout, WF, keep=keep, progress=False
        ), None

    from wfexplore.pruning.prune import PruningSchedule, RunOptions, run_pruning

    layout = WF.layout(mlp)
    schedule, options = PruningSchedule(steps=3), RunOptions(progress=False)
    result = run_pruning(mlp, layout, spy, 0.8, schedule=schedule, options=options)
    targets = [0.8 * (1 - (1 - t / 3) ** 3) for t in (1, 2, 3)]
    assert result.steps["target_sparsity"].tolist() == pytest.approx(targets)
    counts = result.steps["sparsity"].mul(layout.dim).round().astype(int).tolist()
    assert counts == [round(t * layout.dim) for t in targets]
    assert seen[0] is None  # dense model: nothing masked
    assert int((~seen[1]).sum()) == counts[0] and int((~seen[2]).sum()) == counts[1]
    assert bool((seen[1] | ~seen[2]).all())  # pruned at step 1 stays pruned at step 2
    assert result.summary["predicted_delta_loss"] == pytest.approx(
        result.steps["predicted_delta_loss"].sum()
    )


def test_masked_gradients_decouple_pruned_weights(mlp, mlp_loader):
    layout = WF.layout(mlp)
    keep = torch.ones(layout.dim, dtype=torch.bool)
    keep[[0, 3, 9]] = False
    curv = method_curvature(mlp, take_examples(mlp_loader, 16), layout, WF, keep=keep)
    block = curv.block(0)
    for q in (0, 3):
        expected = torch.zeros(8, dtype=torch.float64)
        expected[q] = 1e-3
        torch.testing.assert_close(block[q], expected, rtol=0, atol=0)


def test_layer_table_predicted_and_actual_loss_changes(mlp, mlp_loader):
    result = prune_model(mlp, WF, 0.4, data=mlp_loader, progress=False)
    layers, summary = result.layers, result.summary
    assert list(layers["parameter"]) == ["0.weight", "3.weight"]
    assert layers["pruned"].sum() == summary["pruned"]
    assert layers["predicted_delta_loss"].sum() == pytest.approx(summary["predicted_delta_loss"])
    # actual: only layer 0's final weights substituted into the dense model
    probe = make_copy(mlp)
    with torch.no_grad():
        probe[0].weight.copy_(result.model[0].weight)
    dense = evaluate_model(mlp, mlp_loader)["loss"]
    expected = evaluate_model(probe, mlp_loader)["loss"] - dense
    assert layers["actual_delta_loss"][0] == pytest.approx(expected, rel=1e-12)
    assert summary["dense_loss"] == pytest.approx(dense)
    after = evaluate_model(result.model, mlp_loader)
    assert summary["actual_delta_loss"] == pytest.approx(after["loss"] - dense)
    assert summary["accuracy"] == after["accuracy"]


def test_the_summary_times_each_phase_within_the_call(mlp, mlp_loader):
    start = time.perf_counter()
    summary = prune_model(mlp, WF, 0.4, data=mlp_loader, steps=2, progress=False).summary
    wall = time.perf_counter() - start
    phases = [summary[k] for k in ("curvature_s", "prune_s", "eval_s")]
    assert all(p > 0 for p in phases) and sum(phases) <= wall


@pytest.mark.parametrize("update", ["summed", "group"])
def test_kfac_and_lowrank_prune_with_both_updates(bn_cnn, cnn_loader, update):
    for settings in (
        PruningSettings("kfac", damping=1e-2, num_samples=20),
        PruningSettings(
            "woodfisher", damping=1e-2, num_samples=20, block_size="layer", representation="lowrank"
        ),
    ):
        result = prune_model(
            bn_cnn,
            settings,
            0.7,
            data=cnn_loader,
            update=update,
            per_layer_actual=False,
            progress=False,
        )
        assert result.summary["update"] == update
        assert int(flat_pruned(result).sum()) == round(0.7 * result.layout.dim)
        assert result.summary["predicted_delta_loss"] > 0


def test_batchnorm_recalibration_averages_batch_statistics(bn_cnn):
    x = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8)
    before = model_state(bn_cnn)
    model = recalibrate_batchnorm(make_copy(bn_cnn), loader)
    assert_same_state(before, model_state(bn_cnn))
    with torch.no_grad():
        conv = [bn_cnn[0](xb) for xb in x.split(8)]
    mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv]).mean(0)
    var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in conv]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == bn_cnn[1].momentum and model.training == bn_cnn.training


def test_bad_arguments_are_named(mlp, mlp_loader):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune_model(mlp, "magnitude", 1.0, progress=False)
    with pytest.raises(ValueError, match=r"method must be one of \['magnitude', 'obd'"):
        prune_model(mlp, "random", 0.5, progress=False)
    with pytest.raises(ValueError, match=r"scope must be one of \['global', 'layerwise'\]"):
        prune_model(mlp, "magnitude", 0.5, scope="blocks", progress=False)
    with pytest.raises(ValueError, match=r"update must be one of \['none', 'summed', 'group'\]"):
        prune_model(mlp, "magnitude", 0.5, update="exact", progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        prune_model(mlp, "magnitude", 0.5, steps=0, progress=False)
    with pytest.raises(ValueError, match="data: a data loader is needed"):
        prune_model(mlp, "obd", 0.5, progress=False)
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="data: the loader yielded no examples"):
        prune_model(mlp, "obd", 0.5, data=empty, progress=False)
    with pytest.raises(ValueError, match="eval_data: the loader yielded no examples"):
        prune_model(mlp, "magnitude", 0.5, eval_data=empty, progress=False)
    with pytest.raises(ValueError, match="holds only 48 examples"):
        prune_model(mlp, PruningSettings("obd", num_samples=100), 0.5, data=mlp_loader)
    with pytest.raises(ValueError, match="model: nothing to prune"):
        prune_model(mlp, "magnitude", 0.5, pattern="conv", progress=False)
    with pytest.raises(ValueError, match="model: nothing to prune"):
        prune_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "magnitude", 0.5)
    with pytest.raises(ValueError, match="damping must be a finite positive number"):
        PruningSettings("woodfisher", damping=0.0)


def test_a_curvature_for_another_selection_is_refused(mlp, mlp_loader, bn_cnn):
    first = ParameterLayout.from_model(mlp, names=["0.weight"], block_size=8)
    curv = estimate_curvature(
        mlp, mlp_loader, layout=first, num_samples=8, progress=False, representation="dense"
    ).damped(1e-5)
    with pytest.raises(ValueError, match="the curvature was built for"):
        prune_model(mlp, curv, 0.5, names=["3.weight"], progress=False)
    with pytest.raises(ValueError, match="the curvature was built for"):
        prune_model(bn_cnn, curv, 0.5, progress=False)
    with pytest.raises(ValueError, match="steps=2 re-estimates the curvature"):
        prune_model(mlp, curv, 0.5, steps=2, progress=False)
    ok = prune_model(mlp, curv, 0.5, names=["0.weight"], progress=False)
    assert list(ok.masks) == ["0.weight"]
    assert torch.equal(ok.model[3].weight, mlp[3].weight)


def test_already_zero_weights_are_counted(mlp, mlp_loader):
    model = make_copy(mlp)
    with torch.no_grad():
        model[0].weight[0, :] = 0.0  # 6 of 45 analysed weights
    result = prune_model(model, "magnitude", 0.4, progress=False)
    assert int(flat_pruned(result).sum()) == round(0.4 * 45)
    assert not result.masks["0.weight"][0].any()
    assert result.layers["newly_pruned"].sum() == round(0.4 * 45) - 6


def test_layerwise_map_with_steps(mlp, mlp_loader):
    result = prune_model(
        mlp, WF, {"0": 0.5}, data=mlp_loader, scope="layerwise", steps=2, progress=False
    )
    assert result.layers["pruned"].tolist() == [15, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pruning_runs_on_the_gpu(bn_cnn):
    model = make_copy(bn_cnn).cuda()
    x = torch.randn(40, 1, 4, 4, dtype=torch.float64)
    loader = make_loader(x, 4, batch=8)
    for method in ("magnitude", "obd", "woodfisher", "kfac"):
        settings = PruningSettings(method, damping=1e-3, num_samples=16, block_size=8)
        for update in ("summed", "group"):
            result = prune_model(model, settings, 0.5, data=loader, update=update, progress=False)
            assert next(result.model.parameters()).is_cuda
            assert result.masks["0.weight"].is_cuda


def test_per_layer_losses_are_measured_for_small_models_and_counted_in_the_plan(
    mlp, mlp_loader, monkeypatch
):
    from wfexplore.pruning import prune as prune_module

    result = prune_model(mlp, "magnitude", 0.5, data=mlp_loader, progress=False)
    assert result.plan.evaluations == 2 + 2  # dense, pruned, and one per layer
    assert "4 evaluation passes" in result.plan.summary()
    # each layer's own loss change, measured by hand: only that layer's pruned weights
    for row in result.layers.itertuples():
        probe = copy.deepcopy(mlp)
        dict(probe.named_parameters())[row.parameter].data.copy_(
            dict(result.model.named_parameters())[row.parameter].data
        )
        expected = evaluate(probe, mlp_loader)["loss"] - evaluate(mlp, mlp_loader)["loss"]
        assert row.actual_delta_loss == pytest.approx(expected, rel=1e-9, abs=1e-12)
    monkeypatch.setattr(prune_module, "PER_LAYER_AUTO_LIMIT", 1)  # a "large" model
    large = prune_model(mlp, "magnitude", 0.5, data=mlp_loader, progress=False)
    assert large.plan.evaluations == 2 and large.layers["actual_delta_loss"].isna().all()
    asked = prune_model(
        mlp, "magnitude", 0.5, data=mlp_loader, per_layer_actual=True, progress=False
    )
    assert asked.plan.evaluations == 4
    np.testing.assert_allclose(
        asked.layers["actual_delta_loss"], result.layers["actual_delta_loss"]
    )
