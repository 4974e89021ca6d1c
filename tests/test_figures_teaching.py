"""The two-weight contour figure draws what the quadratic says, checked independently."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from wfexplore.figures.teaching import (
    TRACE_NAMES,
    quadratic_box,
    quadratic_figure,
    quadratic_figure_update,
    saliency_bars,
)
from wfexplore.quadratic import (
    Quadratic,
    compare_rules,
    obd_wrong_weight_example,
    teaching_example,
)

SETTINGS = [
    teaching_example(),
    {"h11": 10.0, "h22": 0.1, "c": -0.95, "w1": 2.0, "w2": -0.3},
    {"h11": 0.5, "h22": 3.0, "c": 0.0, "w1": -1.0, "w2": 1.5},
]


def reference(setting: dict) -> dict:
    """Loss and the three destination points, from the definition (torch, float64)."""
    h11, h22, c = setting["h11"], setting["h22"], setting["c"]
    off = c * (h11 * h22) ** 0.5
    h = torch.tensor([[h11, off], [off, h22]], dtype=torch.float64)
    w = torch.tensor([setting["w1"], setting["w2"]], dtype=torch.float64)

    def loss(point) -> float:
        d = torch.as_tensor(point, dtype=torch.float64) - w
        return float(0.5 * d @ h @ d)

    mag_q = int(torch.argmin(w.abs()))
    obd_q = int(torch.argmin(torch.diagonal(h) * w**2))
    # OBS: the constrained minimum with the least loss, by brute force over both lines
    best = None
    for q in range(2):
        bordered = torch.zeros(3, 3, dtype=torch.float64)
        bordered[:2, :2] = h
        bordered[q, 2] = bordered[2, q] = 1.0
        point = torch.linalg.solve(bordered, torch.cat([h @ w, torch.zeros(1, dtype=h.dtype)]))[:2]
        if best is None or loss(point) < best[1]:
            best = (point, loss(point))
    points = {}
    for name, q in (("magnitude", mag_q), ("obd", obd_q)):
        p = w.clone()
        p[q] = 0.0
        points[name] = p
    points["obs"] = best[0]
    return {"loss": loss, "w": w, "points": points}


@pytest.mark.parametrize("setting", SETTINGS)
def test_figure_draws_the_quadratic_and_each_rule(setting):
    ref = reference(setting)
    fig = quadratic_figure(Quadratic.two_weight(**setting), resolution=21)
    assert isinstance(fig, go.Figure)
    assert tuple(t.name for t in fig.data) == TRACE_NAMES
    by_name = {t.name: t for t in fig.data}

    contour = by_name["loss δL"]
    x, y, z = np.asarray(contour.x), np.asarray(contour.y), np.asarray(contour.z)
    assert z.shape == (21, 21)
    for i, j in [(0, 0), (3, 17), (20, 20), (10, 5)]:
        assert z[i, j] == pytest.approx(ref["loss"]([x[j], y[i]]), rel=1e-9, abs=1e-12)
    # the box holds the origin, the optimum and every destination
    inside = [np.zeros(2), ref["w"].numpy(), *[p.numpy() for p in ref["points"].values()]]
    for p in inside:
        assert x.min() < p[0] < x.max() and y.min() < p[1] < y.max()

    assert tuple(by_name["optimum w*"].x) + tuple(by_name["optimum w*"].y) == pytest.approx(
        tuple(ref["w"].tolist())
    )
    for rule, name in (("magnitude", "magnitude"), ("obd", "OBD"), ("obs", "OBS")):
        expected = ref["points"][rule].numpy()
        marker = by_name[name]
        assert (marker.x[0], marker.y[0]) == pytest.approx(tuple(expected), abs=1e-9)
        move = by_name[f"{name} move"]
        assert (move.x[0], move.y[0]) == pytest.approx(tuple(ref["w"].tolist()))
        assert (move.x[-1], move.y[-1]) == pytest.approx(tuple(expected), abs=1e-9)

    # the constraint lines are w1 = 0 and w2 = 0 and cross the whole box
    v, hz = by_name["w1 = 0"], by_name["w2 = 0"]
    assert set(v.x) == {0.0} and min(v.y) < y.min() and max(v.y) > y.max()
    assert set(hz.y) == {0.0} and min(hz.x) < x.min() and max(hz.x) > x.max()

    # the dotted ellipse is the level set of the OBS loss, touching the OBS point's line
    obs_loss = ref["loss"](ref["points"]["obs"])
    level = by_name["OBS level set"]
    for px, py in list(zip(level.x, level.y, strict=True))[::10]:
        assert ref["loss"]([px, py]) == pytest.approx(obs_loss, rel=1e-7, abs=1e-12)


def test_title_states_each_rules_delta_loss():
    setting = teaching_example()
    ref = reference(setting)
    title = quadratic_figure(Quadratic.two_weight(**setting)).layout.title.text
    for rule, label in (("magnitude", "magnitude"), ("obd", "OBD"), ("obs", "OBS")):
        value = ref["loss"](ref["points"][rule])
        assert f"{label} {value:.3g} (removes" in title
    assert "magnitude 2.56 (removes w2)" in title
    assert "OBS 0.405 (removes w1)" in title


def test_figure_accepts_a_comparison_and_update_matches_figure():
    comparison = compare_rules(Quadratic.two_weight(**SETTINGS[1]))
    fig = quadratic_figure(comparison, resolution=15)
    traces, layout = quadratic_figure_update(comparison, resolution=15)
    assert len(traces) == len(fig.data)
    for trace, props in zip(fig.data, traces, strict=True):
        for key, value in props.items():
            if key in ("x", "y", "z"):
                assert np.allclose(np.asarray(getattr(trace, key)), np.asarray(value))
    assert fig.layout.title.text == layout["title"]["text"]
    assert tuple(fig.layout.xaxis.range) == pytest.approx(tuple(layout["xaxis"]["range"]))


def test_box_is_padded_around_points():
    comparison = compare_rules(Quadratic.two_weight(**teaching_example()))
    (x0, x1), (y0, y1) = quadratic_box(comparison, pad=0.0)
    assert x0 == pytest.approx(0.0) and x1 == pytest.approx(1.5)
    assert y0 == pytest.approx(0.0) and y1 == pytest.approx(comparison.obs.point[1])


def test_figure_refuses_other_inputs():
    with pytest.raises(ValueError, match="two weights"):
        quadratic_figure(obd_wrong_weight_example())
    with pytest.raises(TypeError, match="Quadratic"):
        quadratic_figure(np.eye(2))


def test_bars_mark_once_each_rules_removed_weight_with_one_character():
    """Marks over side-by-side bars of one group stay narrower than a bar."""
    comparison = compare_rules(obd_wrong_weight_example())
    fig = saliency_bars(comparison)
    removed = {"magnitude": 2, "obd": 2, "obs": 0}  # ½w² = (0.5, 1.125, 0.32): magnitude picks w3
    for rule, trace in zip(("magnitude", "obd", "obs"), fig.data[:3], strict=True):
        marked = [i for i, text in enumerate(trace.text) if text]
        assert marked == [removed[rule]], rule
        assert all(len(text) <= 1 for text in trace.text)
        assert list(trace.marker.line.width) == [3 if i in marked else 0 for i in range(3)]
