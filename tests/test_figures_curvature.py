import numpy as np
import pandas as pd
import pytest
import torch

from wfexplore.curvature import from_gradients
from wfexplore.figures.curvature import (
    block_heatmaps,
    dominance_by_layer,
    dominance_histograms,
    effect_figure,
    signed_log,
    spectrum_figure,
)
from wfexplore.params import ParameterLayout
from wfexplore.statistics import dominance_table


@pytest.fixture
def two_fishers(mlp):
    """Two dense-block curvatures on one layout, from random gradients, and those gradients."""
    layout = ParameterLayout.from_model(mlp, block_size=7)
    g = torch.Generator().manual_seed(5)
    ga = torch.randn(9, layout.dim, generator=g, dtype=torch.float64)
    gb = torch.randn(12, layout.dim, generator=g, dtype=torch.float64) * 0.5
    a = from_gradients(ga, layout, "dense").damped(0.3)
    b = from_gradients(gb, layout, "dense").damped(0.05)
    return layout, (ga, a), (gb, b)


def test_heatmaps_show_each_block_without_its_damping_on_one_symmetric_scale(two_fishers):
    layout, (ga, a), (gb, b) = two_fishers
    block = layout.blocks[2]
    rows = slice(block.start, block.stop)
    expected_a = (ga[:, rows].T @ ga[:, rows] / ga.shape[0]).numpy()
    expected_b = (gb[:, rows].T @ gb[:, rows] / gb.shape[0]).numpy()

    fig = block_heatmaps({"Hessian": a, "Fisher": b}, block=2)

    assert [t.name for t in fig.data] == ["Hessian", "Fisher", "Fisher − Hessian"]
    np.testing.assert_allclose(fig.data[0].z, expected_a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fig.data[1].z, expected_b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fig.data[2].z, expected_b - expected_a, rtol=1e-12, atol=1e-14)
    largest = max(np.abs(m).max() for m in (expected_a, expected_b, expected_b - expected_a))
    axis = fig.layout.coloraxis
    assert axis.cmax == pytest.approx(largest) and axis.cmin == -axis.cmax
    assert all(t.coloraxis == "coloraxis" for t in fig.data)


def test_heatmaps_keep_the_damping_when_asked_and_take_matrices_as_given(two_fishers):
    layout, (_, a), (_, b) = two_fishers
    fig = block_heatmaps({"A": a}, block=0, undamped=False)
    np.testing.assert_allclose(fig.data[0].z, a.block(0).numpy())
    assert len(fig.data) == 1  # one panel: no difference

    m1 = np.array([[2.0, -1.0], [-1.0, 3.0]])
    m2 = torch.tensor([[1.0, 0.5], [0.5, -4.0]], dtype=torch.float64)
    fig = block_heatmaps({"one": m1, "two": m2, "three": m1 * 0}, difference=("one", "two"))
    assert [t.name for t in fig.data] == ["one", "two", "three", "one − two"]
    np.testing.assert_allclose(fig.data[1].z, m2.numpy())
    np.testing.assert_allclose(fig.data[3].z, m1 - m2.numpy())
    assert fig.layout.coloraxis.cmax == pytest.approx(7.0)  # 3 − (−4) in the difference
    assert len(block_heatmaps({"one": m1, "two": m2}, difference=None).data) == 2


def test_log_magnitude_heatmaps_map_sign_times_log_and_hover_the_original_values():
    m = np.array([[1e-6, -1e-2], [-1e-2, 10.0]])
    fig = block_heatmaps({"M": m}, log_magnitude=True, epsilon=1e-4)
    expected = np.sign(m) * np.log10(1 + np.abs(m) / 1e-4)
    np.testing.assert_allclose(fig.data[0].z, expected)
    np.testing.assert_allclose(fig.data[0].customdata, m)
    assert fig.layout.coloraxis.cmax == pytest.approx(np.log10(1 + 10.0 / 1e-4))
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax
    bar = fig.layout.coloraxis.colorbar
    assert "log₁₀" in bar.title.text and "ε" in bar.title.text
    assert "1e+01" in bar.ticktext and "-1e-02" in bar.ticktext
    np.testing.assert_allclose(signed_log(np.array([-3.0, 0.0]), 1.0), [-np.log10(4.0), 0.0])


def test_heatmaps_refuse_unknown_difference_labels_and_missing_block_index(two_fishers):
    _, (_, a), (_, b) = two_fishers
    with pytest.raises(KeyError, match="not a panel"):
        block_heatmaps({"A": a, "B": b}, block=0, difference=("A", "C"))
    with pytest.raises(ValueError, match="block"):
        block_heatmaps({"A": a})
    with pytest.raises(ValueError, match="square"):
        block_heatmaps({"A": np.zeros((2, 3))})


def test_dominance_histograms_plot_the_tables_values_per_kind(two_fishers):
    _, (_, a), (_, b) = two_fishers
    table = pd.concat(
        [dominance_table(a).assign(kind="Hessian"), dominance_table(b).assign(kind="Fisher")]
    )
    # the default leads with dominance among non-zero rows; the plain share on request
    default = dominance_histograms(table)
    assert "non-zero rows" in default.layout.annotations[0].text.replace("<br>", " ")
    fig = dominance_histograms(table, ["dominant_row_share", "diagonal_frobenius_share"])
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(np.asarray(trace.x))
    for kind in ("Hessian", "Fisher"):
        part = table[table["kind"] == kind]
        np.testing.assert_allclose(by_name[kind][0], part["dominant_row_share"])
        np.testing.assert_allclose(by_name[kind][1], part["diagonal_frobenius_share"])
    assert fig.layout.barmode == "overlay"


def test_dominance_bars_use_the_layer_frame_or_block_medians():
    layers = pd.DataFrame(
        {
            "layer": [0, 1],
            "parameter": ["fc1.weight", "fc2.weight"],
            "fisher_dominant_rows": [0.1, 0.2],
            "hessian_dominant_rows": [0.5, 0.7],
            "fisher_diag_share": [0.3, 0.4],
            "hessian_diag_share": [0.6, 0.9],
        }
    )
    fig = dominance_by_layer(layers)
    bars = {(t.name, t.xaxis): t for t in fig.data}
    assert list(bars["Fisher", "x"].x) == ["fc1.weight", "fc2.weight"]
    np.testing.assert_allclose(bars["Fisher", "x"].y, [0.1, 0.2])
    np.testing.assert_allclose(bars["Hessian", "x"].y, [0.5, 0.7])
    np.testing.assert_allclose(bars["Fisher", "x2"].y, [0.3, 0.4])
    np.testing.assert_allclose(bars["Hessian", "x2"].y, [0.6, 0.9])

    blocks = pd.DataFrame(
        {
            "kind": ["F", "F", "F", "H"],
            "block": [0, 1, 2, 0],
            "layer": [0, 0, 1, 0],
            "parameter": ["a", "a", "b", "a"],
            "size": [3, 3, 3, 3],
            "dominant_row_share": [0.2, 0.4, 1.0, 0.5],
            "median_row_ratio": [1.0, 1.0, 1.0, 1.0],
            "diagonal_frobenius_share": [0.1, 0.3, 0.8, 0.9],
        }
    )
    fig = dominance_by_layer(blocks, ["dominant_row_share"])
    f = next(t for t in fig.data if t.name == "F")
    assert list(f.x) == ["a", "b"]
    np.testing.assert_allclose(f.y, [0.3, 1.0])


def test_spectrum_draws_magnitudes_on_a_log_axis_and_marks_negative_eigenvalues():
    frame = pd.DataFrame(
        {
            "kind": ["hessian"] * 4 + ["fisher"] * 4,
            "block": [0] * 8,
            "rank": [1, 2, 3, 4] * 2,
            "eigenvalue": [4.0, 0.5, -0.2, -1e-13, 3.0, 1e-3, 1e-14, 0.0],
        }
    )
    fig = spectrum_figure(frame)
    assert fig.layout.yaxis.type == "log"
    lines = [t for t in fig.data if t.mode == "lines"]
    # numerically zero eigenvalues (below 1e-10 × the largest) are left out
    np.testing.assert_allclose(lines[0].y, [4.0, 0.5, 0.2, np.nan])
    np.testing.assert_allclose(lines[1].y, [3.0, 1e-3, np.nan, np.nan])
    negative = [t for t in fig.data if t.mode == "markers"]
    assert len(negative) == 1
    assert list(negative[0].x) == [3] and list(negative[0].y) == [0.2]


def test_effect_figure_draws_one_line_per_fisher_kind_for_each_swept_parameter():
    rows = []
    for varied, values in {"num_samples": [8, 32], "damping": [1e-4, 1e-2]}.items():
        for v in values:
            for kind, err in (("empirical", 0.5), ("true", 0.3)):
                setting = {"num_samples": 16, "damping": 1e-3, "batch_size": 1, varied: v}
                rows.append(
                    {"varied": varied, **setting, "fisher": kind,
                     "relative_frobenius_error": err * v, "obs_update_cosine": 0.9}
                )  # fmt: skip
    frame = pd.DataFrame(rows)
    fig = effect_figure(frame, ["relative_frobenius_error", "obs_update_cosine"])
    assert len(fig.data) == 2 * 2 * 2  # statistics × parameters × kinds
    first = fig.data[0]
    assert first.name == "empirical"
    assert list(first.x) == [8, 32]
    np.testing.assert_allclose(first.y, [4.0, 16.0])
    damping_true = fig.data[3]
    assert damping_true.name == "true"
    np.testing.assert_allclose(damping_true.x, [1e-4, 1e-2])
    np.testing.assert_allclose(damping_true.y, [0.3e-4, 0.3e-2])
    assert fig.layout.xaxis.type == "log"
