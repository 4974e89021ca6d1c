"""Magnitude, OBD and OBS on a quadratic, checked against independent computations.

The reference for "remove weight q and do the best with the others" is the KKT system of
min ½(w − w*)ᵀH(w − w*) subject to w_q = 0, solved with torch.linalg.solve on the bordered
matrix [[H, e_q], [e_qᵀ, 0]].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wfexplore.quadratic import (
    Quadratic,
    compare_rules,
    obd_wrong_weight_example,
    teaching_example,
    two_weight_hessian,
)


def kkt_point(hessian, optimum, q: int) -> torch.Tensor:
    """argmin ½(w − w*)ᵀH(w − w*) s.t. w_q = 0, from H w + μ e_q = H w*, w_q = 0."""
    h = torch.tensor(np.asarray(hessian), dtype=torch.float64)
    w = torch.tensor(np.asarray(optimum), dtype=torch.float64)
    d = h.shape[0]
    bordered = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    bordered[:d, :d] = h
    bordered[q, d] = 1.0
    bordered[d, q] = 1.0
    rhs = torch.cat([h @ w, torch.zeros(1, dtype=torch.float64)])
    return torch.linalg.solve(bordered, rhs)[:d]


def loss(hessian, optimum, point) -> float:
    delta = torch.tensor(np.asarray(point), dtype=torch.float64) - torch.tensor(
        np.asarray(optimum), dtype=torch.float64
    )
    return float(0.5 * delta @ torch.tensor(np.asarray(hessian), dtype=torch.float64) @ delta)


def kkt_costs(quadratic: Quadratic) -> list[float]:
    return [
        loss(
            quadratic.hessian, quadratic.optimum, kkt_point(quadratic.hessian, quadratic.optimum, q)
        )
        for q in range(quadratic.dim)
    ]


# Two-weight settings (h11, h22, c, w1, w2) within the teacher's ranges.
two_weight_settings = st.tuples(
    st.floats(0.0625, 16.0),
    st.floats(0.0625, 16.0),
    st.floats(-0.95, 0.95),
    st.floats(-2.0, 2.0),
    st.floats(-2.0, 2.0),
)


@st.composite
def quadratics(draw, max_dim: int = 5) -> Quadratic:
    """Well-conditioned SPD Hessians H = AAᵀ + δI and optima of any sign, 2 ≤ d ≤ max_dim."""
    d = draw(st.integers(2, max_dim))
    entries = draw(st.lists(st.floats(-2, 2), min_size=d * d, max_size=d * d))
    a = np.array(entries).reshape(d, d)
    optimum = np.array(draw(st.lists(st.floats(-2, 2), min_size=d, max_size=d)))
    return Quadratic(optimum, a @ a.T + 0.1 * np.eye(d))


def test_hand_worked_example():
    # h11 = 1, h22 = 16, c = 0.5  →  H = [[1, 2], [2, 16]], det H = 12,
    # H⁻¹ = [[16, −2], [−2, 1]] / 12, so [H⁻¹]_11 = 4/3 and [H⁻¹]_22 = 1/12.
    # w* = (1, 0.5):
    #   magnitude saliency w_q²/2            = (0.5,   0.125) → removes w2, δL = ½·16·0.25 = 2
    #   OBD saliency ½ H_qq w_q²            = (0.5,   2)     → removes w1, δL = 0.5
    #   OBS saliency w_q² / (2 [H⁻¹]_qq)    = (0.375, 1.5)   → removes w1,
    #   δw = −(1 / (4/3)) · (16, −2)/12 = (−1, 0.125) → point (0, 0.625),
    #   δL = ½ (1·1 + 2·2·(−1)(0.125) + 16·0.125²) = ½ (1 − 0.5 + 0.25) = 0.375.
    result = compare_rules(Quadratic.two_weight(1.0, 16.0, 0.5, 1.0, 0.5))
    assert result.quadratic.hessian == pytest.approx(np.array([[1.0, 2.0], [2.0, 16.0]]))
    mag, obd, obs = result.rules
    assert (mag.removed, obd.removed, obs.removed) == (1, 0, 0)
    assert mag.saliencies == pytest.approx((0.5, 0.125))
    assert mag.point == pytest.approx((1.0, 0.0))
    assert (mag.predicted_delta_loss, mag.actual_delta_loss) == pytest.approx((0.125, 2.0))
    assert obd.saliencies == pytest.approx((0.5, 2.0))
    assert obd.point == pytest.approx((0.0, 0.5))
    assert (obd.predicted_delta_loss, obd.actual_delta_loss) == pytest.approx((0.5, 0.5))
    assert obs.saliencies == pytest.approx((0.375, 1.5))
    assert obs.point == pytest.approx((0.0, 0.625))
    assert (obs.predicted_delta_loss, obs.actual_delta_loss) == pytest.approx((0.375, 0.375))
    assert result.best == 0
    assert result.best_costs == pytest.approx((0.375, 1.5))
    assert result.magnitude_picks_wrong_weight
    assert not result.obd_picks_wrong_weight


@settings(max_examples=60, deadline=None)
@given(quadratics())
def test_obs_point_is_the_kkt_solution_and_its_prediction_is_exact(quadratic):
    result = compare_rules(quadratic)
    q = result.obs.removed
    reference = kkt_point(quadratic.hessian, quadratic.optimum, q)
    scale = 1.0 + float(np.abs(quadratic.optimum).max())
    assert np.allclose(result.obs.point, reference.numpy(), rtol=1e-7, atol=1e-7 * scale)
    assert result.obs.point[q] == 0.0
    actual = loss(quadratic.hessian, quadratic.optimum, reference)
    assert result.obs.actual_delta_loss == pytest.approx(actual, rel=1e-7, abs=1e-10)
    assert result.obs.predicted_delta_loss == pytest.approx(actual, rel=1e-7, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(quadratics())
def test_best_weight_is_obs_choice_and_costs_match_kkt(quadratic):
    result = compare_rules(quadratic)
    costs = kkt_costs(quadratic)
    assert np.allclose(result.best_costs, costs, rtol=1e-7, atol=1e-10)
    # OBS saliencies are the constrained minima of every weight, not only of the chosen one
    assert np.allclose(result.obs.saliencies, costs, rtol=1e-7, atol=1e-10)
    assert costs[result.best] == pytest.approx(min(costs), rel=1e-9, abs=1e-12)
    assert costs[result.obs.removed] == pytest.approx(min(costs), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(quadratics())
def test_rules_without_update_only_zero_their_weight(quadratic):
    result = compare_rules(quadratic)
    w, h = quadratic.optimum, quadratic.hessian
    for rule, saliency in ((result.magnitude, 0.5 * w**2), (result.obd, 0.5 * np.diag(h) * w**2)):
        assert np.allclose(rule.saliencies, saliency)
        assert saliency[rule.removed] == pytest.approx(saliency.min())
        expected = w.copy()
        expected[rule.removed] = 0.0
        assert np.array_equal(rule.point, expected)
        assert rule.actual_delta_loss == pytest.approx(loss(h, w, expected), rel=1e-9, abs=1e-12)
    # for OBD the prediction is the actual loss (only weight q moved, by −w_q)
    assert result.obd.predicted_delta_loss == pytest.approx(result.obd.actual_delta_loss)


@settings(max_examples=60, deadline=None)
@given(two_weight_settings)
def test_obd_and_obs_coincide_when_uncorrelated(setting):
    h11, h22, _, w1, w2 = setting
    result = compare_rules(Quadratic.two_weight(h11, h22, 0.0, w1, w2))
    assert result.obd.removed == result.obs.removed
    assert np.allclose(result.obd.saliencies, result.obs.saliencies)
    assert np.allclose(result.obd.point, result.obs.point)
    assert result.obd.actual_delta_loss == pytest.approx(result.obs.actual_delta_loss)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.lists(st.floats(-2, 2), min_size=5, max_size=5))
def test_magnitude_is_obs_with_identity_curvature(d, values):
    quadratic = Quadratic(np.array(values[:d]), np.eye(d))
    result = compare_rules(quadratic)
    assert result.magnitude.removed == result.obs.removed
    assert np.allclose(result.magnitude.saliencies, result.obs.saliencies)
    assert np.allclose(result.magnitude.point, result.obs.point)
    assert result.magnitude.actual_delta_loss == pytest.approx(result.obs.actual_delta_loss)


@settings(max_examples=80, deadline=None)
@given(two_weight_settings)
def test_with_two_weights_obd_always_removes_the_obs_weight(setting):
    # [H⁻¹]_qq = 1 / (H_qq (1 − c²)) for both q: OBS saliency = (1 − c²) × OBD saliency
    h11, h22, c, w1, w2 = setting
    result = compare_rules(Quadratic.two_weight(h11, h22, c, w1, w2))
    ratio = np.array(result.obs.saliencies) / np.maximum(np.array(result.obd.saliencies), 1e-300)
    for s_obd, r in zip(result.obd.saliencies, ratio, strict=True):
        if s_obd > 1e-12:
            assert r == pytest.approx(1 - c * c, rel=1e-9)
    costs = kkt_costs(result.quadratic)
    assert costs[result.obd.removed] == pytest.approx(min(costs), rel=1e-9, abs=1e-12)


def test_obd_wrong_weight_example_really_fools_obd():
    quadratic = obd_wrong_weight_example()
    result = compare_rules(quadratic)
    costs = kkt_costs(quadratic)  # best achievable δL for removing each weight
    obd_choice = int(np.argmin(0.5 * np.diag(quadratic.hessian) * quadratic.optimum**2))
    assert obd_choice == result.obd.removed == 2
    assert costs[obd_choice] > 5 * min(costs)
    assert int(np.argmin(costs)) == result.best == result.obs.removed == 0
    assert result.obd_picks_wrong_weight
    # even followed by the optimal update OBD's choice costs more than OBS's
    assert result.obd.actual_delta_loss == pytest.approx(0.32)
    assert result.obs.actual_delta_loss == pytest.approx(0.5 * 1.0 * (1 - 0.95**2))


def test_teaching_example_makes_magnitude_pick_the_wrong_weight():
    setting = teaching_example()
    quadratic = Quadratic.two_weight(**setting)
    result = compare_rules(quadratic)
    costs = kkt_costs(quadratic)
    smaller = int(np.argmin(np.abs(quadratic.optimum)))
    assert result.magnitude.removed == smaller
    assert costs[smaller] > min(costs)
    assert result.magnitude_picks_wrong_weight
    assert result.magnitude.actual_delta_loss > 5 * result.obs.actual_delta_loss
    # the OBS update makes a visible difference against OBD (same weight, no update)
    assert result.obd.removed == result.obs.removed
    assert result.obs.actual_delta_loss < 0.5 * result.obd.actual_delta_loss


def test_ties_are_not_wrong_choices():
    # equal weights and curvatures: every rule's saliencies tie, whichever weight it removes
    result = compare_rules(Quadratic.two_weight(2.0, 2.0, 0.7, 0.9, 0.9))
    assert result.best_costs[0] == pytest.approx(result.best_costs[1])
    assert not result.obd_picks_wrong_weight
    assert not result.magnitude_picks_wrong_weight
    assert not result.table()["wrong_weight"].any()


def test_two_weight_hessian_matches_definition():
    h = two_weight_hessian(2.0, 8.0, -0.25)
    assert np.array_equal(h, np.array([[2.0, -1.0], [-1.0, 8.0]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"h11": 0.0}, "h11 must be positive"),
        ({"h11": -1.0}, "h11 must be positive"),
        ({"h22": 0.0}, "h22 must be positive"),
        ({"h22": math.nan}, "h22 must be a finite number"),
        ({"c": 1.0}, "strictly between -1 and 1"),
        ({"c": -1.5}, "strictly between -1 and 1"),
        ({"c": math.inf}, "c must be a finite number"),
        ({"w1": math.inf}, "w1 must be a finite number"),
        ({"w2": "1"}, "w2 must be a real number"),
        ({"w1": True}, "w1 must be a real number"),
    ],
)
def test_two_weight_input_is_validated(kwargs, message):
    setting = {"h11": 1.0, "h22": 1.0, "c": 0.0, "w1": 1.0, "w2": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        Quadratic.two_weight(**setting)


@pytest.mark.parametrize(
    ("optimum", "hessian", "message"),
    [
        ([1.0], [[1.0]], "at least two weights"),
        ([1.0, 2.0], np.eye(3), "must be 2×2"),
        ([1.0, 2.0], [[1.0, 0.5], [0.4, 1.0]], "symmetric"),
        ([1.0, 2.0], [[1.0, 2.0], [2.0, 1.0]], "positive definite"),
        ([1.0, math.nan], np.eye(2), "finite"),
    ],
)
def test_quadratic_input_is_validated(optimum, hessian, message):
    with pytest.raises(ValueError, match=message):
        Quadratic(np.array(optimum), np.array(hessian))


def test_compare_rules_rejects_other_types():
    with pytest.raises(TypeError, match="Quadratic.two_weight"):
        compare_rules(np.eye(2))


def test_quadratic_is_a_frozen_copy():
    w = np.array([1.0, 2.0])
    quadratic = Quadratic(w, np.eye(2))
    w[0] = 5.0
    assert quadratic.optimum[0] == 1.0
    with pytest.raises(ValueError):
        quadratic.optimum[0] = 3.0


def test_table_has_one_row_per_rule():
    result = compare_rules(Quadratic.two_weight(**teaching_example()))
    table = result.table()
    assert list(table["rule"]) == ["magnitude", "OBD", "OBS"]
    assert list(table["removes"]) == ["w2", "w1", "w1"]
    assert list(table["wrong_weight"]) == [True, False, False]
    assert table.loc[2, "actual_delta_loss"] == pytest.approx(result.obs.actual_delta_loss)
    assert {"saliency_w1", "saliency_w2", "predicted_delta_loss"} <= set(table.columns)


def test_loss_grid_matches_loss():
    quadratic = Quadratic.two_weight(2.0, 0.5, -0.6, 0.7, -1.2)
    x, y = np.array([-1.0, 0.0, 0.5]), np.array([0.25, 2.0])
    grid = quadratic.loss_grid(x, y)
    assert grid.shape == (2, 3)
    for i, yi in enumerate(y):
        for j, xj in enumerate(x):
            assert grid[i, j] == pytest.approx(loss(quadratic.hessian, quadratic.optimum, [xj, yi]))
