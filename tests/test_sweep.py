"""Sweeps: every row equals a direct prune_model call; shared work is computed once; the cache."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import assert_same_state, make_loader, make_mlp, model_state
from wfexplore.curvature import kfac as kfac_module
from wfexplore.pruning import PruningSettings, prune_model, sweep
from wfexplore.pruning import sweeps as sweep_module

GRID = {
    "methods": ("magnitude", "obd", "woodfisher", "kfac"),
    "sparsities": (0.3, 0.6),
    "scopes": ("global", "layerwise"),
    "updates": ("summed", "group"),
    "dampings": (1e-2, 1e-4),
    "num_samples": (8, 16),
    "block_sizes": (4, "layer"),
}


def counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def grid_frame(tmp_path_factory):
    """One sweep over the whole grid, shared by the tests of this module."""
    mlp = make_mlp()
    g = torch.Generator().manual_seed(2)  # the mlp_loader fixture of conftest
    loader = make_loader(torch.randn(48, 6, generator=g, dtype=torch.float64), 3)
    with pytest.MonkeyPatch.context() as monkeypatch:
        grads = counting(monkeypatch, sweep_module, "gradient_samples")
        factors = counting(monkeypatch, kfac_module, "kronecker_factors")
        before = model_state(mlp)
        frame = sweep(mlp, loader, cache=tmp_path_factory.mktemp("c"), progress=False, **GRID)
        assert_same_state(before, model_state(mlp))
    return frame, len(grads), len(factors)


def test_grid_rows_and_tidy_columns(grid_frame):
    frame, _, _ = grid_frame
    # magnitude: 2 scopes × 2 sparsities; OBD: 4 (λ, m) × 4; WoodFisher: 8 (λ, m, B) × 2 updates
    # × 4; K-FAC: 4 (λ, m) × 2 × 4
    assert len(frame) == 4 + 16 + 64 + 32
    magnitude = frame[frame["method"] == "magnitude"]
    assert magnitude["damping"].isna().all() and set(magnitude["update"]) == {"none"}
    assert set(frame[frame["method"] == "obd"]["update"]) == {"none"}
    assert frame[frame["method"] == "kfac"]["block_size"].isna().all()
    assert set(frame.columns) >= {
        "method", "update", "scope", "steps", "sparsity", "damping", "num_samples",
        "block_size", "achieved_sparsity", "predicted_delta_loss", "loss", "accuracy",
        "delta_loss", "dense_loss", "dense_accuracy", "curvature_s", "prune_s", "cached",
    }  # fmt: skip
    assert not frame["cached"].any()
    for s in (0.3, 0.6):
        rows = frame[(frame["sparsity"] == s) & (frame["scope"] == "global")]
        assert (rows["achieved_sparsity"] == round(s * 45) / 45).all()


def test_gradients_and_kfac_factors_are_computed_once_per_sample_count(grid_frame):
    _, gradient_calls, factor_calls = grid_frame
    assert gradient_calls == 2  # m = 8 and m = 16, shared by OBD and WoodFisher at every λ, B
    assert factor_calls == 2  # re-damped per λ


@pytest.mark.parametrize(
    "method, update, scope, lam, m, block",
    [
        ("woodfisher", "group", "global", 1e-4, 16, 4),
        ("woodfisher", "summed", "layerwise", 1e-2, 8, "layer"),
        ("kfac", "group", "global", 1e-2, 16, None),
        ("obd", "none", "layerwise", 1e-4, 8, None),
        ("magnitude", "none", "global", None, None, None),
    ],
)
def test_each_row_equals_a_direct_prune_model_call(
    grid_frame, mlp, mlp_loader, method, update, scope, lam, m, block
):
    frame, _, _ = grid_frame
    settings = PruningSettings(
        method, damping=lam or 1e-5, num_samples=m or 256, block_size=block or 128
    )
    direct = prune_model(
        mlp, settings, 0.6, data=mlp_loader, scope=scope, update=update, progress=False,
        per_layer_actual=False,
    )  # fmt: skip
    select = (frame["method"] == method) & (frame["update"] == update) & (frame["scope"] == scope)
    select &= frame["sparsity"] == 0.6
    if lam is not None:
        select &= (frame["damping"] == lam) & (frame["num_samples"] == m)
    if block is not None:
        select &= frame["block_size"] == block
    (row,) = frame[select].to_dict("records")
    assert row["loss"] == pytest.approx(direct.summary["loss"], rel=1e-10)
    assert row["accuracy"] == direct.summary["accuracy"]
    assert row["predicted_delta_loss"] == pytest.approx(
        direct.summary["predicted_delta_loss"], rel=1e-8, abs=1e-15
    )
    assert row["dense_loss"] == pytest.approx(direct.summary["dense_loss"], rel=1e-12)


def test_the_cache_returns_the_same_rows_and_computes_only_what_is_new(
    mlp, mlp_loader, monkeypatch, tmp_path
):
    small = {"methods": ("obd", "woodfisher"), "sparsities": (0.5,), "num_samples": (8,)}
    first = sweep(mlp, mlp_loader, cache=tmp_path, progress=False, **small)
    grads = counting(monkeypatch, sweep_module, "gradient_samples")
    again = sweep(mlp, mlp_loader, cache=tmp_path, progress=False, **small)
    assert grads == [] and again["cached"].all()
    cols = [c for c in first.columns if c != "cached"]
    assert again[cols].equals(first[cols])
    more = sweep(mlp, mlp_loader, cache=tmp_path, progress=False, dampings=(1e-5, 1e-3), **small)
    assert more["cached"].tolist() == [True, False, True, False] and len(grads) == 1
    changed = mlp
    with torch.no_grad():
        changed[0].weight[0, 0] += 1e-6  # any change of the model misses the cache
    assert not sweep(changed, mlp_loader, cache=tmp_path, progress=False, **small)["cached"].any()


def test_several_eval_sets_and_recomputation_steps(mlp, mlp_loader):
    frame = sweep(
        mlp, mlp_loader, methods=("woodfisher",), sparsities=(0.5,), steps=(1, 3),
        num_samples=(16,), block_sizes=(8,), eval_data={"train": mlp_loader, "other": mlp_loader},
        cache=False, progress=False,
    )  # fmt: skip
    assert {"train_loss", "other_accuracy", "dense_train_loss"} <= set(frame.columns)
    direct = prune_model(
        mlp, PruningSettings("woodfisher", num_samples=16, block_size=8), 0.5, data=mlp_loader,
        steps=3, progress=False, per_layer_actual=False,
    )  # fmt: skip
    row = frame[frame["steps"] == 3].iloc[0]
    assert row["train_loss"] == pytest.approx(direct.summary["loss"], rel=1e-10)


def test_bad_grids_are_named(mlp, mlp_loader):
    kwargs = {"cache": False, "progress": False}
    with pytest.raises(ValueError, match=r"sparsities must be a number in \[0, 1\)"):
        sweep(mlp, mlp_loader, sparsities=(0.5, 1.2), **kwargs)
    with pytest.raises(ValueError, match=r"methods must be one of \['magnitude'"):
        sweep(mlp, mlp_loader, methods=("magnitude", "snip"), **kwargs)
    with pytest.raises(ValueError, match=r"scopes must be one of"):
        sweep(mlp, mlp_loader, scopes=("local",), **kwargs)
    with pytest.raises(ValueError, match=r"updates must be one of"):
        sweep(mlp, mlp_loader, updates=("exact",), **kwargs)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sweep(mlp, mlp_loader, steps=(0,), **kwargs)
    with pytest.raises(ValueError, match="sparsities: give at least one value"):
        sweep(mlp, mlp_loader, sparsities=(), **kwargs)
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="data: the loader yielded no examples"):
        sweep(mlp, empty, methods=("obd",), **kwargs)
    with pytest.raises(ValueError, match="eval_data: the loader yielded no examples"):
        sweep(mlp, None, methods=("magnitude",), eval_data=empty, **kwargs)


def test_kept_masks_equal_prune_model_and_come_back_from_the_cache(mlp, mlp_loader, tmp_path):
    small = {
        "methods": ("magnitude", "woodfisher"),
        "sparsities": (0.5,),
        "dampings": (1e-3,),
        "num_samples": (16,),
        "block_sizes": (4,),
    }
    first = sweep(mlp, mlp_loader, cache=tmp_path, keep_masks=True, progress=False, **small)
    again = sweep(mlp, mlp_loader, cache=tmp_path, keep_masks=True, progress=False, **small)
    assert again["cached"].all() and not first["cached"].any()
    for method in small["methods"]:
        settings = PruningSettings(method, damping=1e-3, num_samples=16, block_size=4)
        direct = prune_model(mlp, settings, 0.5, data=mlp_loader, progress=False)
        before = dict(mlp.named_parameters())
        after = dict(direct.model.named_parameters())
        for frame in (first, again):
            row = frame[frame["method"] == method].iloc[0]
            for name, keep in direct.masks.items():
                assert torch.equal(row["masks"][name], keep)
                moved = keep & (after[name] != before[name])
                assert torch.equal(row["moved"][name], moved)
        assert any(row["moved"][n].any() for n in row["moved"]) == (method == "woodfisher")
    without = sweep(mlp, mlp_loader, cache=tmp_path, progress=False, **small)
    assert "masks" not in without.columns
