"""Never a silently wrong number (issue 8): each input that used to give a wrong result, a
crash deep inside torch or pathlib, or a hang now gives the right result or a clear refusal."""

from __future__ import annotations

import json
import math
import os
import warnings
from itertools import count

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import assert_same_state, make_loader, make_mlp, model_state
from wfexplore.curvature import DiagonalCurvature, estimate_curvature, hessian_blocks
from wfexplore.params import ParameterLayout
from wfexplore.pruning import PruningSettings, layer_sensitivity, prune_model, sweep
from wfexplore.statistics import compare_blocks

OBD = PruningSettings("obd", num_samples=16)
SWEEP = {"methods": ("magnitude", "obd"), "sparsities": (0.5,), "num_samples": (16,)}


def mlp_data(seed: int = 2, n: int = 48) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return make_loader(torch.randn(n, 6, generator=g, dtype=torch.float64), 3)


def run_sweep(model, data, folder, **kwargs):
    return sweep(model, data, cache=folder, progress=False, **{**SWEEP, **kwargs})


def cache_files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def with_nan_input(loader: DataLoader) -> list[tuple]:
    """The loader's batches with one NaN in the inputs of the first batch."""
    batches = [(x.clone(), y) for x, y in loader]
    batches[0][0][1, 2] = float("nan")
    return batches


# --- 1. the sweep cache key covers what determines a row ------------------------------------------
def test_a_loss_module_with_other_settings_does_not_hit_the_cached_rows(tmp_path):
    model, data = make_mlp(), mlp_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a loss module is cached, no warning
        plain = run_sweep(model, data, tmp_path, loss_fn=nn.CrossEntropyLoss())
        smoothed = run_sweep(
            model, data, tmp_path, loss_fn=nn.CrossEntropyLoss(label_smoothing=0.5)
        )
        again = run_sweep(model, data, tmp_path, loss_fn=nn.CrossEntropyLoss(label_smoothing=0.5))
    assert not plain["cached"].any()
    assert not smoothed["cached"].any()
    assert (plain["loss"] - smoothed["loss"]).abs().min() > 1e-3
    # the entry of the smoothed loss is its own: the third sweep reads it back
    assert again["cached"].all()
    assert again["loss"].tolist() == smoothed["loss"].tolist()


def scaled_cross_entropy(scale: float):
    return lambda out, y: scale * F.cross_entropy(out, y)


def test_lambdas_capturing_different_values_are_not_cached_without_a_cache_key(tmp_path):
    model, data = make_mlp(), mlp_data()
    frames = []
    for scale in (1.0, 2.0):
        with pytest.warns(RuntimeWarning, match="caching is off"):
            frames.append(run_sweep(model, data, tmp_path, loss_fn=scaled_cross_entropy(scale)))
        assert cache_files(tmp_path) == []  # nothing stored
    assert not frames[0]["cached"].any() and not frames[1]["cached"].any()
    torch.testing.assert_close(
        torch.tensor(frames[1]["loss"].to_numpy()), 2 * torch.tensor(frames[0]["loss"].to_numpy())
    )


def test_lambdas_are_cached_under_an_explicit_cache_key(tmp_path):
    model, data = make_mlp(), mlp_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        first = run_sweep(model, data, tmp_path, loss_fn=scaled_cross_entropy(1.0), cache_key="ce")
        second = run_sweep(model, data, tmp_path, loss_fn=scaled_cross_entropy(1.0), cache_key="ce")
        other = run_sweep(model, data, tmp_path, loss_fn=scaled_cross_entropy(2.0), cache_key="2ce")
    assert not first["cached"].any() and second["cached"].all()
    assert second["loss"].tolist() == first["loss"].tolist()
    assert not other["cached"].any()
    assert (other["loss"] - 2 * first["loss"]).abs().max() < 1e-12


class Tempered(nn.Module):
    """An MLP whose logits are divided by a plain float attribute read in ``forward``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        self.temperature = 1.0

    def forward(self, x):
        return self.net(x) / self.temperature


def test_a_plain_attribute_read_by_forward_is_part_of_the_cache_key(tmp_path):
    model, data = Tempered(), mlp_data()
    cool = run_sweep(model, data, tmp_path)
    model.temperature = 3.0
    warm = run_sweep(model, data, tmp_path)
    warm_again = run_sweep(model, data, tmp_path)
    assert not cool["cached"].any() and not warm["cached"].any()
    assert (cool["loss"] - warm["loss"]).abs().min() > 1e-3
    assert (cool["dense_loss"] - warm["dense_loss"]).abs().min() > 1e-3
    assert warm_again["cached"].all()
    assert warm_again["loss"].tolist() == warm["loss"].tolist()


# --- 2. non-finite inputs: a refusal naming the layer, never NaN blocks ---------------------------
def test_hessian_blocks_of_non_finite_inputs_are_refused_naming_the_layer():
    model = make_mlp()
    layout = ParameterLayout.from_model(model, block_size=7)
    with pytest.raises(FloatingPointError, match=r"non-finite Hessian entries in \[.*'0\.weight'"):
        hessian_blocks(model, with_nan_input(mlp_data()), layout, progress=False)


def test_kfac_of_non_finite_inputs_is_refused_before_its_eigendecomposition(monkeypatch):
    model = make_mlp()
    eigh_inputs = []
    original = torch.linalg.eigh

    def watched(matrix, *args, **kwargs):
        eigh_inputs.append(bool(torch.isfinite(matrix).all()))
        return original(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", watched)
    with pytest.raises(FloatingPointError, match=r"non-finite K-FAC factors for 0\.weight"):
        estimate_curvature(
            model,
            with_nan_input(mlp_data()),
            representation="kfac",
            num_samples=16,
            progress=False,
        )
    assert all(eigh_inputs)  # no non-finite factor reached eigh


def test_comparing_with_a_hessian_of_non_finite_data_never_reports_nan():
    model = make_mlp()
    data = mlp_data()
    layout = ParameterLayout.from_model(model, block_size=7)
    fisher = estimate_curvature(model, data, layout=layout, num_samples=32, progress=False)
    clean = compare_blocks(fisher, hessian_blocks(model, data, layout, progress=False), damping=0.1)
    assert not clean.isna().any().any()  # the comparison itself gives numbers on clean data
    with pytest.raises(FloatingPointError, match="non-finite Hessian entries"):
        compare_blocks(
            fisher,
            hessian_blocks(model, with_nan_input(data), layout, progress=False),
            damping=0.1,
        )


# --- 3. internal passes run without the caller's hooks --------------------------------------------
class HookedModel:
    """A model with a counting forward hook and forward pre-hook on its first layer."""

    def __init__(self):
        self.model = make_mlp()
        self.calls: list[str] = []
        first = self.model[0]
        self.post = first.register_forward_hook(lambda m, i, o: self.calls.append("post"))
        self.pre = first.register_forward_pre_hook(lambda m, i: self.calls.append("pre"))
        self.hooks = (list(first._forward_hooks), list(first._forward_pre_hooks))
        self.state = model_state(self.model)

    def check_untouched(self) -> None:
        assert self.calls == [], f"the caller's hooks fired {len(self.calls)} times"
        first = self.model[0]
        assert (list(first._forward_hooks), list(first._forward_pre_hooks)) == self.hooks
        assert_same_state(self.state, model_state(self.model))
        self.model(torch.randn(2, 6, dtype=torch.float64))  # still registered: they fire
        assert self.calls == ["pre", "post"]


def test_hessian_blocks_run_without_the_callers_hooks():
    hooked = HookedModel()
    layout = ParameterLayout.from_model(hooked.model, block_size=7)
    hessian_blocks(hooked.model, mlp_data(), layout, progress=False)
    hooked.check_untouched()


def test_kfac_runs_without_the_callers_hooks():
    hooked = HookedModel()
    estimate_curvature(
        hooked.model, mlp_data(), representation="kfac", num_samples=16, progress=False
    )
    hooked.check_untouched()


@pytest.mark.parametrize("method", ["magnitude", "woodfisher"])
def test_prune_model_runs_without_the_callers_hooks(method):
    hooked = HookedModel()
    data = mlp_data()
    result = prune_model(
        hooked.model,
        PruningSettings(method, num_samples=16, block_size=8),
        0.5,
        data=data,
        eval_data=data,
        progress=False,
    )
    hooked.check_untouched()
    assert not math.isnan(result.summary["loss"])


# --- 4. unreadable sweep cache entries are recomputed with a warning ------------------------------
@pytest.mark.parametrize(
    "content", ["null", "[1, 2]", '{"row": 5}', "{key_and_empty_row}", "directory"]
)
def test_unreadable_cache_entries_are_recomputed_with_a_warning(tmp_path, content):
    model, data = make_mlp(), mlp_data()
    first = run_sweep(model, data, tmp_path, methods=("magnitude",))
    (name,) = cache_files(tmp_path)
    path = tmp_path / name
    key = name.removesuffix(".json")
    if content == "directory":
        path.unlink()
        path.mkdir()
    elif content == "{key_and_empty_row}":
        path.write_text(json.dumps({"key": key, "row": {}}))
    else:
        path.write_text(content)
    with pytest.warns(RuntimeWarning) as record:
        again = run_sweep(model, data, tmp_path, methods=("magnitude",))
    messages = [str(r.message) for r in record]
    assert any("cannot be read" in m and str(path) in m for m in messages), messages
    if content == "directory":  # and storing the new row there fails, with a warning too
        assert any("could not be stored" in m for m in messages), messages
    assert not again["cached"].any()
    columns = ["method", "sparsity", "achieved_sparsity", "loss", "accuracy"]
    assert again[columns].to_dict("records") == first[columns].to_dict("records")
    leftovers = [n for n in cache_files(tmp_path) if n.endswith(".tmp")]
    assert leftovers == []
    if content != "directory":  # the entry was stored again and is read back
        third = run_sweep(model, data, tmp_path, methods=("magnitude",))
        assert third["cached"].all()


# --- 5. cache locations -------------------------------------------------------------------------
def test_cache_locations_that_name_no_folder_are_refused_naming_cache(tmp_path, monkeypatch):
    model, data = make_mlp(), mlp_data()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cache='' names no folder"):
        run_sweep(model, data, "")
    with pytest.raises(TypeError, match="cache must be True, False, None or a folder path"):
        run_sweep(model, data, 0)
    assert cache_files(tmp_path) == []  # nothing written into the working folder


def test_a_cache_folder_that_cannot_be_created_says_cache_false(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cache=False"):
        run_sweep(make_mlp(), mlp_data(), blocker / "sweeps")
    assert blocker.read_text() == "not a folder"


# --- 6. messy data and arguments: named errors, no hang -------------------------------------------
def test_hessian_blocks_refuse_dict_batches_with_a_named_type_error():
    model = make_mlp()
    layout = ParameterLayout.from_model(model)
    x, y = next(iter(mlp_data()))
    with pytest.raises(TypeError, match=r"data must yield \(inputs, targets\) batches"):
        hessian_blocks(model, [{"x": x, "y": y}], layout, progress=False)


def test_hessian_blocks_refuse_examples_without_a_batch_dimension():
    model = make_mlp()
    layout = ParameterLayout.from_model(model)
    x, y = next(iter(mlp_data()))
    with pytest.raises(ValueError, match="need a batch dimension.*unsqueeze"):
        hessian_blocks(model, [(x[0], y[0]), (x[1], y[1])], layout, progress=False)


def endless_batches(pulled: list):
    """An endless source of batches that gives up (AssertionError) after 10,000."""
    x, y = next(iter(mlp_data()))
    for i in count():
        if i >= 10_000:
            raise AssertionError("the endless source was read 10,000 times")
        pulled.append(i)
        yield x[:4], y[:4]


def test_hessian_blocks_refuse_an_endless_source_without_a_count():
    model = make_mlp()
    layout = ParameterLayout.from_model(model, block_size=7)
    pulled: list = []
    with pytest.raises(ValueError, match="has no length.*num_examples"):
        hessian_blocks(model, endless_batches(pulled), layout, progress=False)
    assert len(pulled) < 10_000
    # with a count the same source is fine: the first 8 examples, as from a list
    counted = hessian_blocks(model, endless_batches([]), layout, num_examples=8, progress=False)
    x, y = next(iter(mlp_data()))
    listed = hessian_blocks(model, [(x[:4], y[:4])] * 2, layout, progress=False)
    torch.testing.assert_close(counted.block(0), listed.block(0), rtol=1e-12, atol=1e-14)


def test_a_damping_that_is_not_a_number_is_refused_naming_damping():
    model, data = make_mlp(), mlp_data()
    layout = ParameterLayout.from_model(model, block_size=7)
    hessian = hessian_blocks(model, data, layout, num_examples=8, progress=False)
    fisher = estimate_curvature(model, data, layout=layout, num_samples=8, progress=False)
    for curvature in (hessian, fisher):
        with pytest.raises(ValueError, match="damping must be a finite .*'foo'"):
            curvature.damped("foo")


def test_layer_sensitivity_refuses_one_number_as_sparsities():
    model, data = make_mlp(), mlp_data()
    with pytest.raises(TypeError, match=r"sparsities must be a list.*sparsities=\[0\.5\]"):
        layer_sensitivity(model, "magnitude", data, sparsities=0.5, progress=False)


def test_prune_model_refuses_a_one_shot_generator_it_would_read_twice():
    model, data = make_mlp(), mlp_data()
    with pytest.raises(ValueError, match="data: a one-shot iterator .*pass a list or a DataLoader"):
        prune_model(model, OBD, 0.5, data=(batch for batch in data), progress=False)
    # read once (eval_data given), a generator is fine and gives the list's result
    from_generator = prune_model(
        model, OBD, 0.5, data=(b for b in data), eval_data=data, progress=False
    )
    from_list = prune_model(model, OBD, 0.5, data=list(data), eval_data=data, progress=False)
    for name, keep in from_list.masks.items():
        assert torch.equal(from_generator.masks[name], keep)
    assert from_generator.summary["loss"] == from_list.summary["loss"]


# --- 7. a ready curvature: an undamped Fisher is refused, an invertible M is used undamped --------
@pytest.mark.parametrize("representation", ["dense", "woodbury", "lowrank", "kfac"])
def test_a_ready_undamped_fisher_is_refused_naming_the_damped_view(representation):
    model, data = make_mlp(), mlp_data()
    fisher = estimate_curvature(
        model,
        data,
        representation=representation,
        num_samples=8,
        block_size="layer" if representation == "kfac" else 16,
        progress=False,
    )
    with pytest.raises(ValueError, match=r"singular without damping; pass curvature\.damped\(λ\)"):
        prune_model(model, fisher, 0.5, progress=False)
    damped = prune_model(model, fisher.damped(1e-3), 0.5, progress=False)
    assert damped.summary["damping"] == 1e-3


def obs_pruned_set(w: torch.Tensor, inverse_diag: torch.Tensor, count: int) -> set[int]:
    """Reference: the ``count`` weights of least w²/(2[C⁻¹]_qq) (no ties in these tests)."""
    return set(torch.argsort(w**2 / (2 * inverse_diag))[:count].tolist())


def test_a_positive_diagonal_is_used_undamped():
    model = make_mlp()
    layout = ParameterLayout.from_model(model)
    values = torch.rand(layout.dim, generator=torch.Generator().manual_seed(5)).double() + 0.1
    result = prune_model(model, DiagonalCurvature(layout, values), 0.5, progress=False)
    assert result.summary["damping"] == 0.0
    w = layout.flatten(model).double()
    pruned = set((layout.flatten(result.model) == 0).nonzero()[:, 0].tolist())
    assert len(pruned) == round(0.5 * layout.dim)
    assert pruned == obs_pruned_set(w, 1.0 / values, len(pruned))


def squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error written out (``F.mse_loss`` fails under forward-over-reverse)."""
    return ((out - target) ** 2).mean()


def test_the_exact_hessian_is_used_undamped():
    """A regression layer whose MSE Hessian is positive definite: the OBS choice of H⁻¹ itself."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    data = DataLoader(TensorDataset(x, torch.randn(40, 3, generator=g, dtype=torch.float64)), 8)
    layout = ParameterLayout.from_model(model, names=["2.weight"], block_size="layer")
    hessian = hessian_blocks(model, data, layout, loss_fn=squared_error, progress=False)
    result = prune_model(
        model, hessian, 0.4, update="group", eval_data=data, loss_fn=squared_error, progress=False
    )
    assert result.summary["damping"] == 0.0
    # reference: the Hessian of the mean MSE in the last layer's weights, by plain autograd
    params = {n: p.detach() for n, p in model.named_parameters()}
    w = params["2.weight"].reshape(-1)

    def loss(flat):
        out = functional_call(model, {**params, "2.weight": flat.reshape(3, 5)}, (x,))
        return squared_error(out, torch.cat([t for _, t in data]))

    H = torch.autograd.functional.hessian(loss, w)
    assert torch.linalg.eigvalsh(H).min() > 1e-6  # positive definite: no damping needed
    inverse = torch.linalg.inv(H)
    pruned_mask = result.model[2].weight.detach().reshape(-1) == 0
    pruned = set(pruned_mask.nonzero()[:, 0].tolist())
    assert len(pruned) == round(0.4 * 15)
    assert pruned == obs_pruned_set(w, inverse.diagonal(), len(pruned))
    # the group update with H itself: w_Q = 0 and the gradient H(w' − w) vanishes on the kept
    new = result.model[2].weight.detach().reshape(-1)
    torch.testing.assert_close(
        (H @ (new - w))[~pruned_mask], torch.zeros(9, dtype=torch.float64), rtol=0, atol=1e-10
    )
