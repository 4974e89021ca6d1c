"""The OBD/OBS teacher: a two-weight quadratic with sliders, its contour plot and a table.

Moving a slider recomputes :func:`wfexplore.quadratic.compare_rules` (microseconds) and
updates the figure's traces in place; the table says which weight each rule removes, its
saliencies and its predicted and actual δL, and highlights the rules that pick the wrong
weight.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets

from wfexplore.figures.teaching import quadratic_figure, quadratic_figure_update
from wfexplore.quadratic import Quadratic, QuadraticComparison, compare_rules, teaching_example
from wfexplore.widgets.base import Dashboard, message_html

__all__ = ["OBSTeacher", "SLIDER_RANGES", "TeacherState"]

SLIDER_RANGES: dict[str, tuple[float, float]] = {
    "h11": (0.0625, 16.0),
    "h22": (0.0625, 16.0),
    "c": (-0.95, 0.95),
    "w1": (-2.0, 2.0),
    "w2": (-2.0, 2.0),
}
"""What each slider allows: curvatures on a log scale, |c| < 1, weights of either sign."""

_DESCRIPTIONS = {
    "h11": "curvature h11 of w1",
    "h22": "curvature h22 of w2",
    "c": "correlation c",
    "w1": "trained weight w1*",
    "w2": "trained weight w2*",
}
_WARNING = (
    "background:#fff3cd;border-left:4px solid #e0a800;padding:4px 8px;margin:4px 0;color:#533f03"
)
_INFO = "background:#e8f1fb;border-left:4px solid #4c78a8;padding:4px 8px;margin:4px 0"


def _check_setting(name: str, value: float) -> float:
    low, high = SLIDER_RANGES[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be a number between {low} and {high}, got {value!r}")
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def rules_table_html(comparison: QuadraticComparison) -> str:
    """The teacher's panel: a table of the three rules and sentences on what went wrong."""
    q = comparison.quadratic
    dim = q.dim
    head = "".join(f"<th>saliency w{i + 1}</th>" for i in range(dim))
    rows = []
    for r in comparison.rules:
        wrong = comparison.picks_wrong_weight(r.rule)
        mark = ' style="background:#fff3cd"' if wrong else ""
        saliencies = "".join(f"<td>{_fmt(s)}</td>" for s in r.saliencies)
        point = ", ".join(f"{p:.3g}" for p in r.point)
        rows.append(
            f'<tr class="wfx-teacher-row-{r.rule}"{mark}><td><b>{r.label}</b></td>'
            f"<td>{r.removed_name}</td>{saliencies}<td>{_fmt(r.predicted_delta_loss)}</td>"
            f"<td>{_fmt(r.actual_delta_loss)}</td><td>({point})</td></tr>"
        )
    table = (
        '<table class="wfx-teacher-rules" style="border-collapse:collapse" cellpadding="4">'
        f"<thead><tr><th>rule</th><th>removes</th>{head}<th>predicted δL</th>"
        f"<th>actual δL</th><th>moves to</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return table + "".join(_sentences(comparison))


def _sentences(comparison: QuadraticComparison) -> list[str]:
    best_name = f"w{comparison.best + 1}"
    best_cost = _fmt(comparison.best_delta_loss)
    out = []
    mag, obd, obs = comparison.rules
    if comparison.magnitude_picks_wrong_weight:
        out.append(
            f'<p class="wfx-teacher-warning wfx-teacher-magnitude-wrong" style="{_WARNING}">'
            f"<b>Magnitude picks the wrong weight</b>: it removes {mag.removed_name}, the "
            f"smaller in magnitude, for δL = {_fmt(mag.actual_delta_loss)}; removing "
            f"{best_name} with the OBS update costs only {best_cost}.</p>"
        )
    if comparison.obd_picks_wrong_weight:
        out.append(
            f'<p class="wfx-teacher-warning wfx-teacher-obd-wrong" style="{_WARNING}">'
            f"<b>OBD picks the wrong weight</b>: it removes {obd.removed_name} for "
            f"δL = {_fmt(obd.actual_delta_loss)}; removing {best_name} with the OBS update "
            f"costs only {best_cost}.</p>"
        )
    h = comparison.quadratic.hessian
    if comparison.quadratic.dim == 2 and not comparison.obd_picks_wrong_weight:
        other = 1 - obd.removed
        c = h[0, 1] / math.sqrt(h[0, 0] * h[1, 1])
        if abs(c) < 1e-12:
            out.append(
                f'<p class="wfx-teacher-note" style="{_INFO}">With c = 0 the Hessian is '
                "diagonal: OBD is OBS, and removing one weight does not move the other.</p>"
            )
        else:
            out.append(
                f'<p class="wfx-teacher-note" style="{_INFO}">OBD removes the same weight as '
                f"OBS: with two weights it always does, since both saliencies carry the same "
                f"factor 1 − c² = {1 - c * c:.3g}. But OBD leaves w{other + 1} at "
                f"{comparison.quadratic.optimum[other]:.3g}: δL = {_fmt(obd.actual_delta_loss)}, "
                f"against {_fmt(obs.actual_delta_loss)} when OBS moves it to "
                f"{obs.point[other]:.3g}.</p>"
            )
    return out


class TeacherState(traitlets.HasTraits):
    """The quadratic of an :class:`OBSTeacher`: curvatures, correlation and trained weights."""

    h11 = traitlets.Float()
    h22 = traitlets.Float()
    c = traitlets.Float()
    w1 = traitlets.Float()
    w2 = traitlets.Float()


class OBSTeacher(Dashboard):
    """Sliders for h11, h22, c, w1*, w2*; the contour figure and the rules table follow them.

    ``widget`` is the container to display; ``h11``, ``h22``, ``c``, ``w1``, ``w2`` are the
    sliders (their values live in ``state``), ``figure`` the ``go.FigureWidget`` (traces in
    :data:`wfexplore.figures.teaching.TRACE_NAMES` order) and ``table`` the HTML panel.
    Starting values default to :func:`wfexplore.quadratic.teaching_example`.
    """

    def __init__(
        self,
        h11: float | None = None,
        h22: float | None = None,
        c: float | None = None,
        w1: float | None = None,
        w2: float | None = None,
        *,
        resolution: int = 61,
    ):
        start = teaching_example()
        given = {"h11": h11, "h22": h22, "c": c, "w1": w1, "w2": w2}
        values = {k: _check_setting(k, v if v is not None else start[k]) for k, v in given.items()}
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 5:
            raise ValueError(f"resolution must be an integer ≥ 5, got {resolution!r}")
        self.resolution = resolution
        super().__init__("wfx-teacher", TeacherState(**values))
        curvature = {"base": 2, "min": -4, "max": 4, "step": 0.25, "readout_format": ".3g"}
        weight = {"min": -2.0, "max": 2.0, "step": 0.05, "readout_format": ".2f"}
        self.h11 = widgets.FloatLogSlider(value=values["h11"], **curvature)
        self.h22 = widgets.FloatLogSlider(value=values["h22"], **curvature)
        self.c = widgets.FloatSlider(
            value=values["c"], min=-0.95, max=0.95, step=0.05, readout_format=".2f"
        )
        self.w1 = widgets.FloatSlider(value=values["w1"], **weight)
        self.w2 = widgets.FloatSlider(value=values["w2"], **weight)
        for name, slider in self.sliders.items():
            slider.description = _DESCRIPTIONS[name]
            slider.layout = widgets.Layout(width="380px")
            slider.continuous_update = True
        self.bind(
            self.sliders, {name: name for name in self.sliders}, {"description_width": "150px"}
        )

        self.comparison = compare_rules(self.quadratic)
        figure = quadratic_figure(self.comparison, resolution=resolution, height=540)
        figure.update_layout(width=620)
        self.figure = go.FigureWidget(figure)
        self.figure.add_class("wfx-teacher-figure")
        self.table = widgets.HTML(rules_table_html(self.comparison))
        self.table.add_class("wfx-teacher-table")
        intro = widgets.HTML(
            "<b>OBD and OBS on two weights.</b> L(w) = ½(w − w*)ᵀH(w − w*); removing a weight "
            "means reaching the line w1 = 0 or w2 = 0. Magnitude and OBD step straight onto "
            "it; OBS also moves the other weight, to the lowest point of the line."
        )
        controls = widgets.VBox(
            [intro, *self.sliders.values()], layout=widgets.Layout(width="400px")
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([controls, self.figure], layout=widgets.Layout(flex_flow="row wrap")),
                self.table,
            ]
        )
        self.widget.add_class("wfx-teacher")
        self.state.observe(lambda _: self.update(), names=list(self.sliders))

    @property
    def sliders(self) -> dict[str, widgets.FloatSlider | widgets.FloatLogSlider]:
        return {"h11": self.h11, "h22": self.h22, "c": self.c, "w1": self.w1, "w2": self.w2}

    @property
    def quadratic(self) -> Quadratic:
        """The quadratic the sliders describe now."""
        s = self.state
        return Quadratic.two_weight(s.h11, s.h22, s.c, s.w1, s.w2)

    def update(self) -> None:
        """Recompute the rules and redraw the figure's traces and the table in place."""
        try:
            comparison = compare_rules(self.quadratic)
            traces, layout = quadratic_figure_update(comparison, resolution=self.resolution)
        except ValueError as err:  # the slider ranges should make this unreachable
            self.table.value = message_html(
                f"Cannot draw this setting: {err}", error=True, css_class="wfx-teacher-error"
            )
            return
        self.comparison = comparison
        with self.figure.batch_update():
            for trace, props in zip(self.figure.data, traces, strict=True):
                trace.update(props)
            self.figure.update_layout(layout)
        self.table.value = rules_table_html(comparison)
