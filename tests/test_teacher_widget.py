"""The OBD/OBS teacher in-process: sliders move the figure and the table, quickly, in place."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from wfexplore.widgets.teacher import SLIDER_RANGES, OBSTeacher


def destinations(h11: float, h22: float, c: float, w1: float, w2: float) -> dict:
    """Where magnitude, OBD and OBS go, and the OBS δL, computed from the definitions."""
    off = c * (h11 * h22) ** 0.5
    h = torch.tensor([[h11, off], [off, h22]], dtype=torch.float64)
    w = torch.tensor([w1, w2], dtype=torch.float64)
    costs, points = [], []
    for q in range(2):
        bordered = torch.zeros(3, 3, dtype=torch.float64)
        bordered[:2, :2] = h
        bordered[q, 2] = bordered[2, q] = 1.0
        p = torch.linalg.solve(bordered, torch.cat([h @ w, torch.zeros(1, dtype=h.dtype)]))[:2]
        points.append(p)
        costs.append(float(0.5 * (p - w) @ h @ (p - w)))
    out = {"obs": points[int(np.argmin(costs))].tolist(), "obs_loss": min(costs)}
    for rule, q in (("magnitude", int(w.abs().argmin())), ("obd", int((h.diag() * w**2).argmin()))):
        p = w.clone()
        p[q] = 0.0
        out[rule] = p.tolist()
    return out


def marker(teacher: OBSTeacher, name: str) -> tuple[float, float]:
    trace = next(t for t in teacher.figure.data if t.name == name)
    return float(trace.x[0]), float(trace.y[0])


@pytest.fixture(scope="module")
def teacher() -> OBSTeacher:
    return OBSTeacher()


def test_starts_at_the_teaching_example(teacher):
    values = {name: s.value for name, s in teacher.sliders.items()}
    ref = destinations(**values)
    assert marker(teacher, "OBS") == pytest.approx(tuple(ref["obs"]))
    assert marker(teacher, "OBD") == pytest.approx(tuple(ref["obd"]))
    assert marker(teacher, "magnitude") == pytest.approx(tuple(ref["magnitude"]))
    assert "Magnitude picks the wrong weight" in teacher.table.value
    assert "wfx-teacher-magnitude-wrong" in teacher.table.value


def test_each_slider_moves_the_figure_and_table_in_place(teacher):
    figure, traces = teacher.figure, tuple(teacher.figure.data)
    settings = [
        ("c", -0.6),
        ("h11", 4.0),
        ("h22", 0.25),
        ("w1", -0.4),
        ("w2", 1.65),
    ]
    for name, value in settings:
        before_table = teacher.table.value
        before_obs = marker(teacher, "OBS")
        before_z = np.array(teacher.figure.data[0].z)
        teacher.sliders[name].value = value
        ref = destinations(**{n: s.value for n, s in teacher.sliders.items()})
        assert marker(teacher, "OBS") == pytest.approx(tuple(ref["obs"]), abs=1e-9), name
        assert marker(teacher, "OBD") == pytest.approx(tuple(ref["obd"]), abs=1e-9), name
        assert marker(teacher, "magnitude") == pytest.approx(tuple(ref["magnitude"])), name
        assert teacher.table.value != before_table, name
        assert f"{ref['obs_loss']:.4g}" in teacher.table.value, name
        assert f"OBS {ref['obs_loss']:.3g}" in teacher.figure.layout.title.text, name
        moved = marker(teacher, "OBS") != before_obs
        reshaped = not np.allclose(np.array(teacher.figure.data[0].z), before_z)
        assert moved or reshaped, name
    # the widget and its traces are the same objects: updated, not rebuilt
    assert teacher.figure is figure
    assert all(a is b for a, b in zip(teacher.figure.data, traces, strict=True))


def test_a_redraw_takes_under_half_a_second(teacher):
    teacher.c.value = 0.3  # warm up
    times = []
    for value in (0.1, -0.2, 0.45):
        start = time.perf_counter()
        teacher.c.value = value
        times.append(time.perf_counter() - start)
    assert sorted(times)[1] < 0.5, times  # the median of three
    assert marker(teacher, "OBS") == pytest.approx(
        tuple(destinations(**{n: s.value for n, s in teacher.sliders.items()})["obs"])
    )


def test_uncorrelated_curvature_says_obd_is_obs():
    teacher = OBSTeacher(h11=1.0, h22=4.0, c=0.0, w1=1.0, w2=0.3)
    assert "With c = 0 the Hessian is diagonal" in teacher.table.value
    assert marker(teacher, "OBD") == pytest.approx(marker(teacher, "OBS"))
    teacher.c.value = 0.9
    assert "OBD removes the same weight as OBS" in teacher.table.value
    assert "wfx-teacher-obd-wrong" not in teacher.table.value


def test_magnitude_warning_follows_the_weights():
    teacher = OBSTeacher(h11=1.0, h22=1.0, c=0.5, w1=1.0, w2=0.5)
    assert "Magnitude picks the wrong weight" not in teacher.table.value
    teacher.h22.value = 8.0
    assert "Magnitude picks the wrong weight" in teacher.table.value


def test_sliders_cannot_leave_the_valid_ranges():
    teacher = OBSTeacher()
    for name, (low, high) in SLIDER_RANGES.items():
        slider = teacher.sliders[name]
        slider.value = high * 100 if high > 0 else 100.0
        assert slider.value == pytest.approx(high)
        slider.value = -100.0 if name in ("c", "w1", "w2") else 1e-6
        assert slider.value == pytest.approx(low)
        assert "Cannot draw" not in teacher.table.value
    assert teacher.c.max < 1 and teacher.c.min > -1
    assert teacher.h11.value > 0 and teacher.h22.value > 0


def test_css_classes_for_browser_tests():
    teacher = OBSTeacher()
    assert "wfx-teacher" in teacher.widget._dom_classes
    assert "wfx-teacher-figure" in teacher.figure._dom_classes
    assert "wfx-teacher-table" in teacher.table._dom_classes
    for name, slider in teacher.sliders.items():
        assert f"wfx-teacher-{name}" in slider._dom_classes


@pytest.mark.parametrize(
    "kwargs", [{"h11": 0.0}, {"h22": 50.0}, {"c": 1.0}, {"w1": float("nan")}, {"w2": "1"}]
)
def test_constructor_rejects_values_outside_the_sliders(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OBSTeacher(**kwargs)


def test_a_failing_setting_shows_a_message_not_a_traceback(monkeypatch):
    import wfexplore.widgets.teacher as teacher_module

    teacher = OBSTeacher()
    before = [np.array(t.x, dtype=float) for t in teacher.figure.data[1:]]

    def refuse(quadratic):
        raise ValueError("the Hessian must be positive definite")

    monkeypatch.setattr(teacher_module, "compare_rules", refuse)
    teacher.w1.value = 0.5
    assert "Cannot draw this setting" in teacher.table.value
    assert "positive definite" in teacher.table.value
    after = [np.array(t.x, dtype=float) for t in teacher.figure.data[1:]]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# --- presets, three weights, reset, layout --------------------------------------------------
def test_obd_picks_wrong_preset_shows_three_weights_where_obd_and_obs_differ():
    from wfexplore.quadratic import compare_rules, obd_wrong_weight_example

    teacher = OBSTeacher()
    teacher.preset.value = "OBD picks wrong"
    assert teacher.state.weights == 3
    np.testing.assert_allclose(teacher.quadratic.hessian, obd_wrong_weight_example().hessian)
    np.testing.assert_allclose(teacher.quadratic.optimum, obd_wrong_weight_example().optimum)
    reference = compare_rules(obd_wrong_weight_example())
    assert teacher.comparison.obd.removed != teacher.comparison.obs.removed
    assert teacher.comparison.obd.removed == reference.obd.removed == 2  # w3
    assert "OBD picks the wrong weight" in teacher.table.value
    # the bars are shown, the contour hidden, and the third weight's sliders appear
    assert teacher.bars_box.layout.display is None and teacher.figure_box.layout.display == "none"
    assert teacher.h33.layout.display is None and teacher.w3.layout.display is None
    obd_bars = teacher.bars.data[1]
    np.testing.assert_allclose(obd_bars.y, reference.obd.saliencies)
    assert list(obd_bars.marker.line.width) == [0, 0, 3]  # the outlined bar: OBD removes w3
    np.testing.assert_allclose(teacher.bars.data[3].y, reference.best_costs)
    # a slider of the third weight redraws the bars in place
    teacher.w3.value = 0.1
    assert teacher.bars.data[1].y[2] == pytest.approx(0.5 * 0.1**2)


def test_presets_and_reset_set_the_lessons():
    teacher = OBSTeacher()
    teacher.preset.value = "all agree"
    assert teacher.state.weights == 2
    assert not teacher.comparison.magnitude_picks_wrong_weight
    assert not teacher.comparison.obd_picks_wrong_weight
    assert len({r.removed for r in teacher.comparison.rules}) == 1
    assert teacher.figure_box.layout.display is None and teacher.h33.layout.display == "none"
    teacher.w1.value, teacher.c.value = -1.5, -0.7
    teacher.reset.click()
    assert teacher.w1.value == 0.5 and teacher.c.value == pytest.approx(0.3)
    teacher.preset.value = "magnitude picks wrong"
    assert teacher.comparison.magnitude_picks_wrong_weight
    assert "wfx-teacher-reset" in teacher.reset._dom_classes
    assert "wfx-teacher-preset" in teacher.preset._dom_classes


def test_magnitude_has_no_predicted_loss_in_the_table_and_says_why(teacher):
    row = teacher.table.value.split('class="wfx-teacher-row-magnitude"')[1].split("</tr>")[0]
    cells = [c.split(">", 1)[1] for c in row.split("<td")[1:]]
    assert cells[4].startswith("–")  # rule, removes, two saliencies, predicted δL
    assert "not a loss prediction" in teacher.table.value


def test_plot_sits_beside_the_sliders_at_1024_by_768():
    teacher = OBSTeacher()
    controls, plots = teacher.widget.children[0].children
    width = int(controls.layout.width.rstrip("px")) + max(
        teacher.figure.layout.width, teacher.bars.layout.width
    )
    assert width <= 1024 - 2 * 40  # Voilà's lab template pads the page
    assert teacher.figure.layout.height <= 768 - 200


def test_callouts_follow_the_theme(teacher):
    assert "var(--jp-ui-font-color1" in teacher.table.value
    assert "#533f03" not in teacher.table.value


def test_save_writes_the_current_figure_and_table(tmp_path):
    teacher = OBSTeacher(preset="OBD picks wrong")
    path = teacher.save(str(tmp_path / "teacher.html"))
    text = path.read_text(encoding="utf-8")
    assert "OBD picks wrong" in text and "plotly-graph-div" in text
    assert "Which weight each rule removes" in text
