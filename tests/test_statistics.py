import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wfexplore.curvature import (
    DenseBlockCurvature,
    DiagonalCurvature,
    IdentityCurvature,
    estimate_curvature,
    from_gradients,
)
from wfexplore.curvature.dense import group_blocks
from wfexplore.params import ParameterLayout
from wfexplore.statistics import (
    DOMINANCE_COLUMNS,
    compare_blocks,
    diagonal_dominance,
    dominance_table,
    spectra,
)

DAMPING = 1e-3


def _tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    # weights: 0.weight 4×3 = 12, 2.weight 2×4 = 8
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _tiny_data(n: int = 10) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _per_example_gradients(model: nn.Module, loader: DataLoader, names: list[str]) -> torch.Tensor:
    """G (m×d) by a plain autograd loop, one example at a time."""
    params = dict(model.named_parameters())
    rows = []
    for x, y in loader:
        for i in range(x.shape[0]):
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _dense_curvature(layout: ParameterLayout, matrices: dict[int, np.ndarray], damping: float):
    """M + λI whose block i is ``matrices[i]`` (already dampened), as a damped view."""
    groups = group_blocks(layout)
    for grp in groups:
        grp.matrix = torch.stack(
            [torch.as_tensor(matrices[b]) - damping * torch.eye(grp.size) for b in grp.blocks]
        ).double()
    undamped = DenseBlockCurvature(layout, groups, kind="handmade", requires_damping=False)
    return undamped.damped(damping)


def _random_spd(size: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((size, size))
    return a @ a.T + size * np.eye(size)


# --- diagonal_dominance ---------------------------------------------------------------------
def test_dominance_of_a_three_by_three_matrix_matches_hand_computation():
    m = torch.tensor([[-4.0, 1.0, -2.0], [1.0, 1.0, 1.0], [-2.0, 1.0, 5.0]])
    # r_0 = |-4| / (1 + 2) = 4/3;  r_1 = 1 / (1 + 1) = 1/2;  r_2 = 5 / (2 + 1) = 5/3
    # dominant rows: r_0, r_2 -> 2/3; sorted ratios 1/2, 4/3, 5/3 -> median 4/3
    # diagonal squares 16 + 1 + 25 = 42; all squares 42 + 2·(1 + 4 + 1) = 54 -> 42/54 = 7/9
    stats = diagonal_dominance(m)
    assert stats["dominant_row_share"] == pytest.approx(2 / 3)
    assert stats["median_row_ratio"] == pytest.approx(4 / 3)
    assert stats["diagonal_frobenius_share"] == pytest.approx(7 / 9)


def test_diagonal_matrix_is_fully_dominant_with_infinite_ratios():
    stats = diagonal_dominance(torch.diag(torch.tensor([3.0, -1.0, 0.5])))
    assert {k: stats[k] for k in DOMINANCE_COLUMNS[:3]} == {
        "dominant_row_share": 1.0,
        "median_row_ratio": math.inf,
        "diagonal_frobenius_share": 1.0,
    }
    assert stats["dominant_nonzero_row_share"] == 1.0
    assert stats["zero_row_share"] == 0.0


def test_zero_row_counts_as_dominant_with_infinite_ratio():
    m = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    # r_0 = 1/2;  r_1 = 0/0 -> inf by convention;  r_2 = 3 / (1 + 1) = 3/2
    # dominant: r_1, r_2 -> 2/3; sorted 1/2, 3/2, inf -> median 3/2
    # diagonal squares 1 + 0 + 9 = 10; all squares 1 + 4 + 1 + 1 + 9 = 16 -> 10/16
    stats = diagonal_dominance(m)
    assert stats["dominant_row_share"] == pytest.approx(2 / 3)
    assert stats["median_row_ratio"] == pytest.approx(3 / 2)
    assert stats["diagonal_frobenius_share"] == pytest.approx(10 / 16)


def test_dominance_among_nonzero_rows_leaves_the_all_zero_rows_out():
    m = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    # of the rows 0 and 2 (row 1 is all zero) only row 2 is dominant: 1/2; zero rows 1/3
    stats = diagonal_dominance(m)
    assert stats["dominant_nonzero_row_share"] == pytest.approx(1 / 2)
    assert stats["zero_row_share"] == pytest.approx(1 / 3)


def test_dead_units_alone_do_not_make_a_block_look_dominant():
    # two dead rows (zero) and two coupled live rows with r = 1/2: the naive share is 1/2,
    # all from the dead rows; among the live rows nothing is dominant
    m = torch.zeros(4, 4)
    m[:2, :2] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    stats = diagonal_dominance(m)
    assert stats["dominant_row_share"] == 0.5
    assert stats["zero_row_share"] == 0.5
    assert stats["dominant_nonzero_row_share"] == 0.0


def test_median_of_an_even_number_of_rows_averages_the_middle_two():
    # r_0 = 2/1 = 2;  r_1 = 1/3 -> median (2 + 1/3) / 2 = 7/6; row with r = 1 counts as dominant
    stats = diagonal_dominance(torch.tensor([[2.0, 1.0], [3.0, 1.0]]))
    assert stats["median_row_ratio"] == pytest.approx(7 / 6)
    assert stats["dominant_row_share"] == 0.5
    # a row with |M_ii| equal to its off-diagonal sum has r = 1 and counts
    assert diagonal_dominance(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))["dominant_row_share"] == 1.0


def test_zero_matrix_has_undefined_frobenius_share():
    stats = diagonal_dominance(torch.zeros(2, 2))
    assert stats["dominant_row_share"] == 1.0
    assert math.isnan(stats["diagonal_frobenius_share"])
    assert math.isnan(stats["dominant_nonzero_row_share"])
    assert stats["zero_row_share"] == 1.0


def test_dominance_matches_a_numpy_row_loop_on_a_random_matrix():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((7, 7))
    ratios = []
    for i in range(7):
        off = sum(abs(m[i, j]) for j in range(7) if j != i)
        ratios.append(abs(m[i, i]) / off)
    stats = diagonal_dominance(torch.as_tensor(m))
    assert stats["dominant_row_share"] == pytest.approx(np.mean(np.array(ratios) >= 1))
    assert stats["median_row_ratio"] == pytest.approx(np.median(ratios))
    assert stats["diagonal_frobenius_share"] == pytest.approx(
        np.sum(np.diag(m) ** 2) / np.sum(m**2)
    )


def test_dominance_does_not_modify_the_matrix():
    m = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    before = m.clone()
    diagonal_dominance(m)
    assert torch.equal(m, before)


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 2, 2), (0, 0)])
def test_dominance_rejects_non_square_input_naming_the_argument(shape):
    with pytest.raises(ValueError, match="matrix"):
        diagonal_dominance(torch.zeros(shape))


def test_dominance_rejects_non_finite_entries():
    with pytest.raises(ValueError, match="matrix"):
        diagonal_dominance(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


# --- dominance_table --------------------------------------------------------------------------
def test_dominance_table_on_a_fisher_matches_a_hand_built_dense_fisher():
    model, loader = _tiny_model(), _tiny_data(10)
    fisher = estimate_curvature(
        model, loader, block_size=4, num_samples=10, progress=False, representation="dense"
    ).damped(DAMPING)
    layout = fisher.layout
    g = _per_example_gradients(model, loader, layout.names)
    dense = g.T @ g / g.shape[0]  # F = (1/m) Σ g gᵀ, the undamped Fisher

    table = dominance_table(fisher.undamped)
    assert list(table["block"]) == [0, 1, 2, 3, 4]
    assert list(table["layer"]) == [0, 0, 0, 1, 1]
    assert list(table["parameter"]) == ["0.weight"] * 3 + ["2.weight"] * 2
    assert list(table["size"]) == [4] * 5
    assert set(table["kind"]) == {"dense"}
    damped = dominance_table(fisher)
    for b in layout.blocks:
        block = dense[b.start : b.stop, b.start : b.stop]
        expected = diagonal_dominance(block)
        expected_damped = diagonal_dominance(
            block + DAMPING * torch.eye(b.size, dtype=torch.float64)
        )
        row, row_damped = table.iloc[b.index], damped.iloc[b.index]
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-9)
            assert row_damped[name] == pytest.approx(expected_damped[name], rel=1e-9)


def test_undamped_table_takes_the_damping_off_the_diagonal():
    layout = ParameterLayout.from_model(_tiny_model(), block_size=4)
    rng = np.random.default_rng(0)
    raw = {b.index: rng.standard_normal((4, 4)) for b in layout.blocks}
    lam = 10.0
    curvature = _dense_curvature(layout, {i: m + lam * np.eye(4) for i, m in raw.items()}, lam)
    table = dominance_table(curvature.undamped)
    for i, m in raw.items():
        assert table.iloc[i]["diagonal_frobenius_share"] == pytest.approx(
            np.sum(np.diag(m) ** 2) / np.sum(m**2)
        )
    # with λ = 10 on the diagonal every row is dominant
    assert (dominance_table(curvature)["dominant_row_share"] == 1.0).all()
    # the curvature's own blocks are untouched
    assert np.allclose(curvature.block(0).numpy(), raw[0] + lam * np.eye(4))


def test_lowrank_and_dense_fisher_from_the_same_gradients_have_the_same_table():
    layout = ParameterLayout.from_model(_tiny_model(), block_size=4)
    g = torch.randn(6, layout.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dense = from_gradients(g, layout, "dense").damped(DAMPING)
    lowrank = from_gradients(g, layout, "lowrank").damped(DAMPING)
    a, b = dominance_table(dense), dominance_table(lowrank)
    assert set(b["kind"]) == {"lowrank"}
    pd.testing.assert_frame_equal(a.drop(columns="kind"), b.drop(columns="kind"), rtol=1e-9)


def test_default_blocks_skip_blocks_over_the_size_limit():
    layout = ParameterLayout.from_model(_tiny_model(), block_size="layer")  # sizes 12 and 8
    table = dominance_table(IdentityCurvature(layout), max_block_size=8)
    assert list(table["block"]) == [1]
    assert list(table["parameter"]) == ["2.weight"]
    # explicit blocks are taken as asked
    assert list(dominance_table(IdentityCurvature(layout), [0], max_block_size=8)["size"]) == [12]
    with pytest.raises(ValueError, match="max_block_size"):
        dominance_table(IdentityCurvature(layout), max_block_size=4)


def test_whole_model_block_names_every_parameter_it_spans():
    layout = ParameterLayout.from_model(_tiny_model(), block_size="model")
    table = dominance_table(IdentityCurvature(layout))
    assert table.iloc[0]["parameter"] == "0.weight+2.weight"
    assert table.iloc[0]["size"] == 20


def test_block_indices_are_checked():
    curvature = IdentityCurvature(ParameterLayout.from_model(_tiny_model(), block_size=4))
    with pytest.raises(IndexError, match="blocks"):
        dominance_table(curvature, [5])
    with pytest.raises(TypeError, match="blocks"):
        dominance_table(curvature, 0)


# --- spectra ----------------------------------------------------------------------------------
def test_spectra_match_numpy_eigvalsh_largest_first():
    layout = ParameterLayout.from_model(_tiny_model(), block_size=4)
    rng = np.random.default_rng(4)
    matrices = {b.index: _random_spd(4, rng) for b in layout.blocks}
    curvature = _dense_curvature(layout, matrices, damping=0.5)

    table = spectra(curvature)
    assert list(table.columns) == [
        "kind",
        "block",
        "layer",
        "parameter",
        "size",
        "rank",
        "eigenvalue",
    ]
    assert len(table) == 5 * 4
    for i, m in matrices.items():
        rows = table[table["block"] == i]
        assert list(rows["rank"]) == [1, 2, 3, 4]
        np.testing.assert_allclose(rows["eigenvalue"], np.linalg.eigvalsh(m)[::-1], rtol=1e-12)

    top = spectra(curvature.undamped, [2], top_k=2)  # undamped: eigenvalues minus λ = 0.5
    np.testing.assert_allclose(top["eigenvalue"], np.linalg.eigvalsh(matrices[2])[::-1][:2] - 0.5)
    with pytest.raises(ValueError, match="top_k"):
        spectra(curvature, top_k=0)


# --- compare_blocks ---------------------------------------------------------------------------
def test_curvature_compared_with_itself_has_zero_error_and_unit_cosines():
    model, loader = _tiny_model(), _tiny_data(10)
    fisher = estimate_curvature(
        model, loader, block_size=4, num_samples=10, progress=False, representation="dense"
    ).damped(DAMPING)
    table = compare_blocks(fisher, fisher)
    assert len(table) == 5
    assert (table["relative_frobenius_error"] == 0.0).all()
    np.testing.assert_allclose(table["obs_update_cosine_median"], 1.0, atol=1e-12)
    np.testing.assert_allclose(table["obs_update_cosine_min"], 1.0, atol=1e-12)


def test_compare_hand_built_blocks_against_numpy():
    layout = ParameterLayout.from_model(_tiny_model(), block_size=4)
    rng = np.random.default_rng(5)
    ref = {b.index: _random_spd(4, rng) for b in layout.blocks}
    approx = {i: m + 0.3 * _random_spd(4, rng) for i, m in ref.items()}
    reference = _dense_curvature(layout, ref, 0.0)
    approximation = _dense_curvature(layout, approx, 0.0)
    approximation.undamped.kind = "approx"

    table = compare_blocks(approximation, reference)
    assert list(table.columns) == [
        "kind_approx",
        "kind_reference",
        "block",
        "layer",
        "parameter",
        "size",
        "relative_frobenius_error",
        "obs_update_cosine_median",
        "obs_update_cosine_min",
    ]
    assert set(table["kind_approx"]) == {"approx"}
    assert set(table["kind_reference"]) == {"handmade"}
    for i in ref:
        a_inv, r_inv = np.linalg.inv(approx[i]), np.linalg.inv(ref[i])
        cosines = [
            a_inv[:, q] @ r_inv[:, q] / (np.linalg.norm(a_inv[:, q]) * np.linalg.norm(r_inv[:, q]))
            for q in range(4)
        ]
        row = table.iloc[i]
        assert row["relative_frobenius_error"] == pytest.approx(
            np.linalg.norm(approx[i] - ref[i]) / np.linalg.norm(ref[i]), rel=1e-12
        )
        assert row["obs_update_cosine_median"] == pytest.approx(np.median(cosines), rel=1e-10)
        assert row["obs_update_cosine_min"] == pytest.approx(min(cosines), rel=1e-10)
        assert row["obs_update_cosine_min"] < 1.0


def test_diagonal_approximation_cosines_are_inverse_diagonal_over_column_norm():
    # A = diag(R): A⁻¹e_q = e_q / R_qq, so cos_q = [R⁻¹]_qq / ‖R⁻¹e_q‖ (R⁻¹_qq > 0 for SPD R)
    layout = ParameterLayout.from_model(_tiny_model(), block_size=4)
    rng = np.random.default_rng(6)
    ref = {b.index: _random_spd(4, rng) for b in layout.blocks}
    reference = _dense_curvature(layout, ref, 0.0)
    values = torch.cat([torch.tensor(np.diag(ref[b.index])) for b in layout.blocks])
    diagonal = DiagonalCurvature(layout, values)

    table = compare_blocks(diagonal, reference, [1, 3])
    assert list(table["block"]) == [1, 3]
    for _, row in table.iterrows():
        r, r_inv = ref[row["block"]], np.linalg.inv(ref[row["block"]])
        cosines = np.diag(r_inv) / np.linalg.norm(r_inv, axis=0)
        off = r - np.diag(np.diag(r))
        assert row["relative_frobenius_error"] == pytest.approx(
            np.linalg.norm(off) / np.linalg.norm(r)
        )
        assert row["obs_update_cosine_median"] == pytest.approx(np.median(cosines))
        assert row["obs_update_cosine_min"] == pytest.approx(cosines.min())


def test_compare_refuses_curvatures_of_different_layouts():
    model = _tiny_model()
    a = IdentityCurvature(ParameterLayout.from_model(model, block_size=4))
    b = IdentityCurvature(ParameterLayout.from_model(model, block_size="layer"))
    with pytest.raises(ValueError, match="same layout"):
        compare_blocks(a, b)
