"""Pruning figures draw exactly the numbers of the frames, saliencies and masks they are given."""

import numpy as np
import pandas as pd
import pytest
import torch

from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.figures.pruning import (
    COMPENSATED,
    KEPT,
    PRUNED,
    accuracy_vs_sparsity,
    layer_sparsity_bars,
    mask_categories,
    mask_figure,
    mask_overlap_bars,
    mask_tiles,
    quantile_subsample,
    result_categories,
    saliency_distributions,
    saliency_frame,
    sensitivity_scatter,
    tile_position,
)
from wfexplore.params import ParameterLayout
from wfexplore.pruning import (
    PruningSettings,
    compute_saliency,
    global_allocation,
    mask_overlap,
    prune_model,
)


def by_name(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


# --- saliencies ------------------------------------------------------------------------------
def test_saliency_frame_of_magnitude_is_half_the_squared_weights(mlp):
    layout = ParameterLayout.from_model(mlp)
    frame = saliency_frame({"magnitude": compute_saliency(mlp, IdentityCurvature(layout))})
    w = torch.cat([mlp[0].weight.reshape(-1), mlp[3].weight.reshape(-1)]).detach().double()
    np.testing.assert_allclose(frame["saliency"], (w**2 / 2).numpy(), rtol=1e-12)
    assert list(frame["parameter"]) == ["0.weight"] * 30 + ["3.weight"] * 15


def test_violins_hold_the_positive_saliencies_of_each_layer():
    frame = pd.DataFrame(
        {
            "method": ["a"] * 6 + ["b"] * 6,
            "parameter": ["x", "x", "x", "y", "y", "y"] * 2,
            "saliency": [3.0, 1.0, 0.0, 5.0, 2.0, 4.0, 0.5, 0.25, 1.0, -1.0, 8.0, 2.0],
        }
    )
    fig = saliency_distributions(frame)
    a, b = fig.data
    assert a.type == "violin" and list(a.x) == [0, 0, 1, 1, 1]
    assert list(fig.layout.xaxis.ticktext) == ["x", "y"]
    assert list(fig.layout.xaxis.tickvals) == [0, 1]
    assert list(a.y) == [1.0, 3.0, 2.0, 4.0, 5.0]  # the zero cannot sit on a log axis
    assert "1 ≤ 0 not drawn" in a.name
    assert list(b.y) == [0.25, 0.5, 1.0, 2.0, 8.0] and b.name == "b (1 ≤ 0 not drawn)"
    assert fig.layout.yaxis.type == "log"
    linear = saliency_distributions(frame, layers=["y"], log=False)
    assert list(linear.data[1].y) == [-1.0, 2.0, 8.0]


def test_quantile_subsample_keeps_the_extremes_and_evenly_spaced_ranks():
    values = np.arange(1000.0)[::-1]
    kept = quantile_subsample(values, 11)
    np.testing.assert_array_equal(kept, np.arange(0, 1000, 99.9).round())
    assert kept[0] == 0 and kept[-1] == 999
    np.testing.assert_array_equal(quantile_subsample(values, None), np.arange(1000.0))


# --- sweeps ----------------------------------------------------------------------------------
@pytest.fixture
def sweep_frame():
    rows = []
    accuracy = {
        ("magnitude", "none"): [0.9, 0.7, 0.3],
        ("woodfisher", "summed"): [0.92, 0.85, 0.5],
        ("woodfisher", "group"): [0.93, 0.88, 0.6],
    }
    for (method, update), values in accuracy.items():
        for s, a in zip((0.9, 0.5, 0.8), values[::-1], strict=True):  # rows out of order
            rows.append(
                {
                    "method": method,
                    "scope": "global",
                    "update": update,
                    "steps": 1,
                    "sparsity": s,
                    "accuracy": a,
                    "loss": 1 - a,
                    "dense_accuracy": 0.95,
                    "dense_loss": 0.05,
                }
            )
    return pd.DataFrame(rows)


def test_accuracy_lines_follow_the_sweep_frame_sorted_by_sparsity(sweep_frame):
    fig = accuracy_vs_sparsity(sweep_frame, ["accuracy", "loss"], marker_at=0.78)
    for name, method, update in [
        ("magnitude · update none", "magnitude", "none"),
        ("WoodFisher · update summed", "woodfisher", "summed"),
        ("WoodFisher · update group", "woodfisher", "group"),
    ]:
        lines = [t for t in fig.data if t.name == name]
        assert len(lines) == 2  # accuracy and loss panels
        rows = sweep_frame[(sweep_frame["method"] == method) & (sweep_frame["update"] == update)]
        rows = rows.sort_values("sparsity")
        assert list(lines[0].x) == [0.5, 0.8, 0.9]
        np.testing.assert_allclose(lines[0].y, rows["accuracy"])
        np.testing.assert_allclose(lines[1].y, rows["loss"])
        assert lines[1].yaxis == "y2"
    dense = [t for t in fig.data if t.name == "unpruned"]
    assert list(dense[0].y) == [0.95, 0.95] and list(dense[1].y) == [0.05, 0.05]
    markers = [t for t in fig.data if t.name == "at sparsity"]
    assert len(markers) == 2 and fig.data[-1].name == "at sparsity"
    at = sweep_frame[sweep_frame["sparsity"] == 0.8]  # the swept sparsity nearest to 0.78
    assert list(markers[0].x[:3]) == [0.8] * 3
    assert list(markers[0].y[:3]) == list(at["accuracy"])
    assert list(markers[1].y[:3]) == list(at["loss"])


def test_legend_names_only_the_settings_that_vary(sweep_frame):
    one = sweep_frame[sweep_frame["update"] != "group"].assign(update="summed")
    fig = accuracy_vs_sparsity(one)
    assert [t.name for t in fig.data] == ["magnitude", "WoodFisher", "unpruned"]


# --- allocation ------------------------------------------------------------------------------
def test_layer_bars_equal_the_global_magnitude_allocation_computed_by_hand(mlp):
    frame = global_allocation(mlp, "magnitude", [0.3, 0.6], progress=False)
    fig = layer_sparsity_bars(frame.assign(method="magnitude"), sparsity=0.6)
    (bars,) = fig.data
    w = [mlp[0].weight.detach().reshape(-1), mlp[3].weight.detach().reshape(-1)]
    flat = torch.cat(w).abs()
    gone = torch.zeros(45, dtype=torch.bool)
    gone[torch.sort(flat, stable=True).indices[: round(0.6 * 45)]] = True
    expected = [float(gone[:30].double().mean()), float(gone[30:].double().mean())]
    assert list(bars.x) == ["0.weight", "3.weight"]
    np.testing.assert_allclose(bars.y, expected)
    pruned = [int(gone[:30].sum()), int(gone[30:].sum())]
    np.testing.assert_array_equal(np.asarray(bars.customdata)[:, 0], pruned)
    assert fig.layout.shapes[0].y0 == 0.6
    with pytest.raises(ValueError, match="several overall sparsities"):
        layer_sparsity_bars(frame)


# --- predicted against actual ----------------------------------------------------------------
def test_sensitivity_scatter_draws_the_frame_and_gathers_non_positive_points():
    frame = pd.DataFrame(
        {
            "parameter": ["a", "a", "b", "b"],
            "sparsity": [0.3, 0.6, 0.3, 0.6],
            "predicted_delta_loss": [1e-3, 1e-2, 2e-3, 5e-2],
            "actual_delta_loss": [2e-3, 3e-2, -1e-4, 0.2],
        }
    )
    fig = sensitivity_scatter(frame)
    a, b = by_name(fig, "a"), by_name(fig, "b")
    assert list(a.x) == [1e-3, 1e-2] and list(a.y) == [2e-3, 3e-2]
    assert list(b.x) == [5e-2] and list(b.y) == [0.2]
    hidden = by_name(fig, "≤ 0 (drawn at the floor)")
    assert list(hidden.customdata[0]) == [2e-3, -1e-4]
    assert hidden.y[0] == pytest.approx(1e-4)  # a tenth of the smallest positive value
    line = by_name(fig, "y = x")
    assert list(line.x) == list(line.y) == [pytest.approx(1e-4), 0.2]
    linear = sensitivity_scatter(frame, log=False)
    assert list(by_name(linear, "b").y) == [-1e-4, 0.2]


# --- masks -----------------------------------------------------------------------------------
def test_mask_categories_by_hand():
    keep = torch.tensor([[True, False], [True, True]])
    before = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    after = torch.tensor([[1.0, 0.0], [3.5, 4.0]])
    np.testing.assert_array_equal(
        mask_categories(keep, before, after), [[KEPT, PRUNED], [COMPENSATED, KEPT]]
    )
    assert (mask_categories(keep, before, after, min_change=1.0) != COMPENSATED).all()
    np.testing.assert_array_equal(mask_categories(keep), [[KEPT, PRUNED], [KEPT, KEPT]])


def test_linear_rows_become_images_and_conv_kernels_tiles():
    weight = np.arange(4 * 9).reshape(4, 9)  # 4 units of 3×3 images
    picture = mask_tiles(weight, image_shape=(3, 3))
    assert picture.shape == (7, 7) and np.isnan(picture[3]).all()
    for index in range(weight.size):
        r, c = tile_position(index, weight.shape, image_shape=(3, 3))
        assert picture[r, c] == weight.reshape(-1)[index]
    conv = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    tiles = mask_tiles(conv)
    assert tiles.shape == (2 * 3 - 1, 3 * 3 - 1)
    for index in range(conv.size):
        r, c = tile_position(index, conv.shape)
        assert tiles[r, c] == conv.reshape(-1)[index]
    with pytest.raises(ValueError, match="image_shape"):
        mask_tiles(weight, image_shape=(2, 2))


@pytest.mark.parametrize("method", ["magnitude", "woodfisher"])
def test_mask_picture_shows_pruned_kept_and_compensated_weights(mlp, mlp_loader, method):
    settings = PruningSettings(method, num_samples=24, block_size=5, damping=1e-3)
    result = prune_model(mlp, settings, 0.5, data=mlp_loader, scope="layerwise", progress=False)
    keep = result.masks["0.weight"]
    before, after = mlp[0].weight.detach(), result.model[0].weight.detach()
    expected = np.where(keep.numpy(), KEPT, PRUNED)
    expected[(keep & (after != before)).numpy()] = COMPENSATED
    categories = result_categories(result, mlp, "0.weight")
    np.testing.assert_array_equal(categories, expected)
    assert (expected == COMPENSATED).any() == (method == "woodfisher")
    fig = mask_figure({method: categories}, image_shape=(2, 3), columns=5)
    (heatmap,) = fig.data
    for index in range(keep.numel()):
        r, c = tile_position(index, (5, 6), image_shape=(2, 3), columns=5)
        assert heatmap.z[r][c] == expected.reshape(-1)[index]
    counts = {n: int((expected == k).sum()) for k, n in enumerate(("pruned", "kept"))}
    assert f"{counts['pruned']} pruned · {counts['kept']} kept" in fig.layout.annotations[0].text


def test_conv_kernels_are_tiles_in_the_mask_picture(bn_cnn):
    keep = torch.ones(3, 1, 3, 3, dtype=torch.bool)
    keep[1, 0, 2, 0] = False
    fig = mask_figure({"m": keep})
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (7, 7)  # three 3×3 tiles in a 2 × 2 grid with one-pixel gaps
    r, c = tile_position(1 * 9 + 6, (3, 1, 3, 3))
    assert (r, c) == (2, 4) and z[r, c] == PRUNED
    assert np.nansum(z == PRUNED) == 1 and np.nansum(z == KEPT) == 26


# --- overlap ---------------------------------------------------------------------------------
def test_overlap_bars_equal_the_jaccard_of_the_pruned_sets():
    a = {"p": torch.tensor([True, False, False, True]), "q": torch.tensor([False, True])}
    b = {"p": torch.tensor([False, False, True, True]), "q": torch.tensor([True, True])}
    fig = mask_overlap_bars(mask_overlap(a, b), labels=("A", "B"))
    (bars,) = fig.data
    # pruned: p → {1, 2} vs {0, 1}: 1 / 3; q → {0} vs {}: 0 / 1
    np.testing.assert_allclose(bars.y, [1 / 3, 0.0])
    assert list(bars.x) == ["p", "q"] and "A vs B" in fig.layout.title.text


def test_mask_categories_from_a_moved_mask_equal_those_from_the_weights():
    keep = torch.tensor([[True, False], [True, True]])
    before = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    after = torch.tensor([[1.0, 0.0], [3.5, 4.0]])
    moved = keep & (after != before)
    np.testing.assert_array_equal(
        mask_categories(keep, moved=moved), mask_categories(keep, before, after)
    )


def test_sensitivity_scatter_keeps_twenty_layers_apart():
    from wfexplore.figures.pruning import sensitivity_scatter

    layers = [f"layer{k}.weight" for k in range(20)]
    frame = pd.DataFrame(
        {
            "parameter": layers,
            "sparsity": 0.5,
            "predicted_delta_loss": np.linspace(0.1, 2, 20),
            "actual_delta_loss": np.linspace(0.2, 3, 20),
        }
    )
    fig = sensitivity_scatter(frame)
    colors = [t.marker.color for t in fig.data if t.name in layers]
    assert len(colors) == 20 and len(set(colors)) == 20
