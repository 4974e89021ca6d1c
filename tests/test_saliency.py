"""Saliencies ρ_q = w_q² / (2[C⁻¹]_qq) and their predicted loss increases, against dense algebra."""

import pytest
import torch

from tests.conftest import dense_block_fisher, loop_gradients
from wfexplore.curvature import DiagonalCurvature, IdentityCurvature, estimate_curvature
from wfexplore.params import ParameterLayout
from wfexplore.pruning import compute_saliency, obs_saliency, update_weights


def test_saliency_of_a_model_matches_the_dense_inverse_and_predicts_single_removals(
    mlp, mlp_loader
):
    layout = ParameterLayout.from_model(mlp, block_size=8)
    curv = estimate_curvature(
        mlp, mlp_loader, layout=layout, num_samples=20, progress=False, representation="dense"
    ).damped(1e-3)
    fisher, inverse = dense_block_fisher(loop_gradients(mlp, mlp_loader, layout, 20), layout, 1e-3)
    sal = compute_saliency(mlp, curv)
    w = layout.flatten(mlp).double()
    torch.testing.assert_close(sal.scores, w**2 / (2 * inverse.diag()), rtol=1e-8, atol=0)
    torch.testing.assert_close(sal.predicted_without_update, 0.5 * fisher.diag() * w**2)
    # ρ_q is the quadratic model's loss increase of removing q alone with the OBS update
    for q in (0, 17, 44):
        alone = torch.zeros(layout.dim, dtype=torch.bool)
        alone[q] = True
        change = update_weights(w, alone, curv, "group")
        assert change.predicted_delta_loss == pytest.approx(float(sal.scores[q]), rel=1e-8)
        delta = change.weights - w
        assert float(0.5 * delta @ fisher @ delta) == pytest.approx(float(sal.scores[q]), rel=1e-8)


def test_identity_and_diagonal_give_magnitude_and_obd(mlp):
    layout = ParameterLayout.from_model(mlp)
    w = layout.flatten(mlp).double()
    torch.testing.assert_close(compute_saliency(mlp, IdentityCurvature(layout)).scores, w**2 / 2)
    values = torch.linspace(0.5, 2.0, layout.dim, dtype=torch.float64)
    obd = compute_saliency(w, DiagonalCurvature(layout, values))
    torch.testing.assert_close(obd.scores, 0.5 * values * w**2)


def test_saliency_tables(mlp):
    layout = ParameterLayout.from_model(mlp)
    sal = compute_saliency(mlp, IdentityCurvature(layout))
    frame = sal.to_frame()
    assert len(frame) == layout.dim
    row = frame.iloc[31]  # 3.weight is 3×5, offset 30: flat 31 is position (0, 1)
    assert (row["parameter"], row["position"]) == ("3.weight", (0, 1))
    assert row["weight"] == pytest.approx(float(mlp[3].weight[0, 1].detach()))
    per_layer = sal.per_layer()
    assert per_layer["numel"].tolist() == [30, 15]
    assert per_layer["max"][1] == pytest.approx(float(mlp[3].weight.detach().pow(2).max() / 2))


def test_non_positive_inverse_diagonal_is_refused_with_the_fix():
    w = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="increase the damping"):
        obs_saliency(w, torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="flat index 2"):
        obs_saliency(w, torch.tensor([1.0, 1.0, float("inf"), 1.0], dtype=torch.float64))


def test_a_model_without_the_curvatures_parameters_is_refused(mlp, bn_cnn):
    curv = IdentityCurvature(ParameterLayout.from_model(mlp))
    with pytest.raises(ValueError, match="the curvature was built for"):
        compute_saliency(bn_cnn, curv)
    with pytest.raises(ValueError, match=r"weights: expected shape \(45,\)"):
        compute_saliency(torch.zeros(3), curv)
