"""The OBD/OBS teacher: a quadratic of two or three weights with sliders, a plot and a table.

Moving a slider recomputes :func:`wfexplore.quadratic.compare_rules` (microseconds) and
updates the figure's traces in place; the table says which weight each rule removes, its
saliencies and its predicted and actual δL, and highlights the rules that pick the wrong
weight. With two weights the plot is the loss contour with each rule's move; with three
(w3 independent of w1 and w2) it is the saliencies as bars, where OBD can pick wrong.
Presets set up the three lessons ("magnitude picks wrong", "OBD picks wrong", "all agree");
"reset" goes back to the chosen preset.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import traitlets

from wfexplore.figures.teaching import (
    quadratic_figure,
    quadratic_figure_update,
    saliency_bars,
    saliency_bars_update,
)
from wfexplore.figures.theme import callout_style
from wfexplore.quadratic import (
    Quadratic,
    QuadraticComparison,
    compare_rules,
    obd_wrong_weight_example,
    teaching_example,
)
from wfexplore.widgets.base import Dashboard, SaveBar, message_html

__all__ = ["OBSTeacher", "PRESETS", "SLIDER_RANGES", "TeacherState"]

SLIDER_RANGES: dict[str, tuple[float, float]] = {
    "h11": (0.0625, 16.0),
    "h22": (0.0625, 16.0),
    "c": (-0.95, 0.95),
    "w1": (-2.0, 2.0),
    "w2": (-2.0, 2.0),
}
"""What each slider allows: curvatures on a log scale, |c| < 1, weights of either sign."""
THIRD_WEIGHT_RANGES: dict[str, tuple[float, float]] = {"h33": (0.0625, 16.0), "w3": (-2.0, 2.0)}
"""The same for the sliders of the third weight."""
_RANGES = {**SLIDER_RANGES, **THIRD_WEIGHT_RANGES}


def _obd_wrong() -> dict[str, float]:
    q = obd_wrong_weight_example()  # H = [[1, c, 0], [c, 1, 0], [0, 0, h33]]
    h, w = q.hessian, q.optimum
    c = h[0, 1] / math.sqrt(h[0, 0] * h[1, 1])
    return {
        "weights": 3, "h11": h[0, 0], "h22": h[1, 1], "c": round(float(c), 6), "h33": h[2, 2],
        "w1": w[0], "w2": w[1], "w3": w[2],
    }  # fmt: skip


PRESETS: dict[str, dict[str, float]] = {
    "magnitude picks wrong": {"weights": 2, **teaching_example(), "h33": 1.0, "w3": 0.8},
    "OBD picks wrong": _obd_wrong(),
    "all agree": {
        "weights": 2,
        "h11": 1.0,
        "h22": 1.0,
        "c": 0.3,
        "w1": 0.5,
        "w2": 1.5,
        "h33": 1.0,
        "w3": 0.8,
    },  # fmt: skip
}
"""The lessons: slider values (and two or three weights) of each preset."""

_DESCRIPTIONS = {
    "h11": "curvature h11 of w1",
    "h22": "curvature h22 of w2",
    "c": "w1–w2 correlation c",
    "w1": "trained weight w1*",
    "w2": "trained weight w2*",
    "h33": "curvature h33 of w3",
    "w3": "trained weight w3*",
}
_WARNING = callout_style("warn")
_INFO = callout_style("info")
_MAGNITUDE_NOTE = (
    "Magnitude's score ½w² is not a loss prediction: it is the OBS formula with the identity "
    "in place of H, so it has no predicted δL (–); compare its actual δL."
)


def _check_setting(name: str, value: float) -> float:
    low, high = _RANGES[name]
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
        mark = f' style="{_WARNING}"' if wrong else ""
        saliencies = "".join(f"<td>{_fmt(s)}</td>" for s in r.saliencies)
        point = ", ".join(f"{p:.3g}" for p in r.point)
        predicted = "–" if r.rule == "magnitude" else _fmt(r.predicted_delta_loss)
        rows.append(
            f'<tr class="wfx-teacher-row-{r.rule}"{mark}><td><b>{r.label}</b></td>'
            f"<td>{r.removed_name}</td>{saliencies}<td>{predicted}</td>"
            f"<td>{_fmt(r.actual_delta_loss)}</td><td>({point})</td></tr>"
        )
    table = (
        '<table class="wfx-teacher-rules" style="border-collapse:collapse" cellpadding="4">'
        f"<thead><tr><th>rule</th><th>removes</th>{head}<th>predicted δL</th>"
        f"<th>actual δL</th><th>moves to</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    note = f'<p class="wfx-teacher-magnitude-note" style="{_INFO}">{_MAGNITUDE_NOTE}</p>'
    return table + note + "".join(_sentences(comparison))


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
    """The quadratic of an :class:`OBSTeacher`: curvatures, correlation and trained weights;
    ``weights`` is 2 or 3 (w3 then joins, independent of w1 and w2)."""

    h11 = traitlets.Float()
    h22 = traitlets.Float()
    c = traitlets.Float()
    w1 = traitlets.Float()
    w2 = traitlets.Float()
    h33 = traitlets.Float(1.0)
    w3 = traitlets.Float(0.8)
    weights = traitlets.Int(2)


_SETTINGS = ("h11", "h22", "c", "w1", "w2", "h33", "w3")


class OBSTeacher(Dashboard):
    """Presets, sliders for h11, h22, c, w1*, w2* (and h33, w3* with three weights), a reset
    button; the figure and the rules table follow them.

    ``widget`` is the container to display; ``h11``, ``h22``, ``c``, ``w1``, ``w2`` are the
    sliders of two weights (``sliders``), ``h33`` and ``w3`` those the third weight adds;
    their values live in ``state``. ``figure`` is the contour ``go.FigureWidget`` of two
    weights (traces in :data:`wfexplore.figures.teaching.TRACE_NAMES` order), ``bars`` the
    saliency bars of three, ``table`` the HTML panel, ``preset`` the preset buttons,
    ``reset`` the button that goes back to the chosen preset and ``save_bar`` saves the page.
    Starting values default to :func:`wfexplore.quadratic.teaching_example` (the preset
    "magnitude picks wrong"); ``preset`` picks another.
    """

    def __init__(
        self,
        h11: float | None = None,
        h22: float | None = None,
        c: float | None = None,
        w1: float | None = None,
        w2: float | None = None,
        *,
        h33: float | None = None,
        w3: float | None = None,
        preset: str = "magnitude picks wrong",
        resolution: int = 61,
    ):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
        start = PRESETS[preset]
        given = {"h11": h11, "h22": h22, "c": c, "w1": w1, "w2": w2, "h33": h33, "w3": w3}
        values = {k: _check_setting(k, v if v is not None else start[k]) for k, v in given.items()}
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 5:
            raise ValueError(f"resolution must be an integer ≥ 5, got {resolution!r}")
        self.resolution = resolution
        super().__init__("wfx-teacher", TeacherState(**values, weights=int(start["weights"])))
        self._build_controls(values, preset)
        self.comparison = compare_rules(self.quadratic)
        self._plots: dict[int, go.FigureWidget] = {}
        self.table = widgets.HTML(rules_table_html(self.comparison))
        self.table.add_class("wfx-teacher-table")
        self.save_bar = SaveBar(self, "obd-obs-teacher.html")
        self._layout()
        self._show_mode()
        self.state.observe(lambda _: self.update(), names=list(_SETTINGS))
        self.state.observe(lambda _: self._mode_changed(), names=["weights"])

    def _build_controls(self, values: dict, preset: str) -> None:
        curvature = {"base": 2, "min": -4, "max": 4, "step": 0.25, "readout_format": ".3g"}
        weight = {"min": -2.0, "max": 2.0, "step": 0.05, "readout_format": ".2f"}
        self.h11 = widgets.FloatLogSlider(value=values["h11"], **curvature)
        self.h22 = widgets.FloatLogSlider(value=values["h22"], **curvature)
        self.c = widgets.FloatSlider(
            value=values["c"], min=-0.95, max=0.95, step=0.05, readout_format=".2f"
        )
        self.w1 = widgets.FloatSlider(value=values["w1"], **weight)
        self.w2 = widgets.FloatSlider(value=values["w2"], **weight)
        self.h33 = widgets.FloatLogSlider(value=values["h33"], **curvature)
        self.w3 = widgets.FloatSlider(value=values["w3"], **weight)
        for name, slider in self.all_sliders.items():
            slider.description = _DESCRIPTIONS[name]
            slider.layout = widgets.Layout(width="330px")
            slider.continuous_update = True
        self.preset = widgets.ToggleButtons(
            options=list(PRESETS), value=preset, tooltips=[f"set up: {p}" for p in PRESETS]
        )
        self.preset.style.button_width = "155px"
        self.reset = widgets.Button(description="reset", icon="undo", tooltip="back to the preset")
        self.bind(
            {**self.all_sliders, "preset": self.preset, "reset": self.reset},
            {name: name for name in self.all_sliders},
        )
        for slider in self.all_sliders.values():
            slider.style = {"description_width": "140px"}
        self.preset.observe(lambda _: self.apply_preset(), names="value")
        self.reset.on_click(lambda _: self.apply_preset())

    def _layout(self) -> None:
        intro = widgets.HTML(
            "<b>OBD and OBS, which weight goes?</b> L(w) = ½(w − w*)ᵀH(w − w*); removing "
            "a weight means reaching w_q = 0. Magnitude and OBD step straight there; OBS also "
            "moves the other weights, to the lowest point. Choose a lesson:"
        )
        controls = widgets.VBox(
            [intro, self.preset, *self.all_sliders.values(), self.reset],
            layout=widgets.Layout(width="350px", flex="0 0 350px"),
        )
        self.figure_box = widgets.Box()
        self.bars_box = widgets.Box()
        plots = widgets.Box(
            [self.figure_box, self.bars_box], layout=widgets.Layout(flex="1 1 auto")
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([controls, plots], layout=widgets.Layout(flex_flow="row wrap")),
                self.table,
                self.save_bar.widget,
            ]
        )
        self.widget.add_class("wfx-teacher")

    @property
    def figure(self) -> go.FigureWidget:
        """The contour plot of two weights (made when first shown)."""
        return self._plot(2)

    @property
    def bars(self) -> go.FigureWidget:
        """The saliency bars of three weights (made when first shown)."""
        return self._plot(3)

    def _plot(self, weights: int) -> go.FigureWidget:
        """The plot of ``weights`` weights, made from the sliders when first asked for: a
        FigureWidget sends plotly.js (about 5 MB) to the page, so the hidden one waits."""
        if weights not in self._plots:
            if weights == 2:
                fig = quadratic_figure(
                    compare_rules(self._two_weights()), resolution=self.resolution, height=500
                )
                box, css_class = self.figure_box, "wfx-teacher-figure"
            else:
                fig = saliency_bars(compare_rules(self._three()), height=500)
                box, css_class = self.bars_box, "wfx-teacher-bars"
            fig.update_layout(width=560, autosize=False)
            plot = self._plots[weights] = go.FigureWidget(fig)
            plot.add_class(css_class)
            box.children = (plot,)
        return self._plots[weights]

    @property
    def sliders(self) -> dict[str, widgets.FloatSlider | widgets.FloatLogSlider]:
        """The sliders of the two-weight quadratic."""
        return {"h11": self.h11, "h22": self.h22, "c": self.c, "w1": self.w1, "w2": self.w2}

    @property
    def all_sliders(self) -> dict[str, widgets.FloatSlider | widgets.FloatLogSlider]:
        """Every slider, those of the third weight last."""
        return {**self.sliders, "h33": self.h33, "w3": self.w3}

    def _two_weights(self) -> Quadratic:
        s = self.state
        return Quadratic.two_weight(s.h11, s.h22, s.c, s.w1, s.w2)

    def _three(self) -> Quadratic:
        s = self.state
        two = self._two_weights()
        hessian = np.zeros((3, 3))
        hessian[:2, :2] = two.hessian
        hessian[2, 2] = s.h33
        return Quadratic(np.array([s.w1, s.w2, s.w3]), hessian)

    @property
    def quadratic(self) -> Quadratic:
        """The quadratic the sliders describe now (two or three weights)."""
        return self._three() if self.state.weights == 3 else self._two_weights()

    def apply_preset(self, name: str | None = None) -> None:
        """Set every slider to the preset ``name`` (default: the one chosen); also "reset"."""
        if name is not None:
            self.preset.value = name  # observed: comes back here with name None
            return
        values = PRESETS[self.preset.value]
        with self.state.hold_trait_notifications():
            for key in _SETTINGS:
                setattr(self.state, key, float(values[key]))
            self.state.weights = int(values["weights"])

    def _mode_changed(self) -> None:
        self._show_mode()
        self.update()

    def _show_mode(self) -> None:
        three = self.state.weights == 3
        self._plot(self.state.weights)
        self.figure_box.layout.display = "none" if three else None
        self.bars_box.layout.display = None if three else "none"
        for slider in (self.h33, self.w3):
            slider.layout.display = None if three else "none"

    def update(self) -> None:
        """Recompute the rules and redraw the figure's traces and the table in place."""
        three = self.state.weights == 3
        try:
            comparison = compare_rules(self.quadratic)
            if three:
                traces, layout = saliency_bars_update(comparison)
            else:
                traces, layout = quadratic_figure_update(comparison, resolution=self.resolution)
        except ValueError as err:  # the slider ranges should make this unreachable
            self.table.value = message_html(
                f"Cannot draw this setting: {err}", error=True, css_class="wfx-teacher-error"
            )
            return
        self.comparison = comparison
        figure = self.bars if three else self.figure
        with figure.batch_update():
            for trace, props in zip(figure.data, traces, strict=True):
                trace.update(props)
            figure.update_layout(layout)
        self.table.value = rules_table_html(comparison)

    def saved(self) -> tuple[str, dict[str, go.Figure], dict]:
        shown = self.bars if self.state.weights == 3 else self.figure
        table = self.comparison.table()
        return (
            f"OBD and OBS: {self.preset.value}",
            {"The quadratic and each rule's choice": go.Figure(shown)},
            {"Which weight each rule removes": table},
        )
