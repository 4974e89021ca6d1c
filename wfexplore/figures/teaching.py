"""The two-weight quadratic: loss contours, the optimum, and where each pruning rule moves.

:func:`quadratic_figure` draws a :class:`~wfexplore.quadratic.QuadraticComparison`; the
traces always come in the order of :data:`TRACE_NAMES`, and :func:`quadratic_figure_update`
returns the data of every trace and the layout, so that a ``go.FigureWidget`` can be updated
in place (see :class:`wfexplore.widgets.teacher.OBSTeacher`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from wfexplore.figures.theme import ink
from wfexplore.quadratic import RULES, Quadratic, QuadraticComparison, compare_rules

__all__ = [
    "RULE_STYLE",
    "TRACE_NAMES",
    "quadratic_box",
    "quadratic_figure",
    "quadratic_figure_update",
    "quadratic_title",
    "saliency_bars",
    "saliency_bars_update",
]

TRACE_NAMES = (
    "loss δL",
    "w1 = 0",
    "w2 = 0",
    "OBS level set",
    "magnitude move",
    "OBD move",
    "OBS move",
    "optimum w*",
    "magnitude",
    "OBD",
    "OBS",
)
"""Trace names, in the order of ``figure.data``."""

RULE_STYLE = {
    "magnitude": {"color": "#e45756", "symbol": "square-open", "size": 17, "dash": "dot"},
    "obd": {"color": "#4c78a8", "symbol": "diamond", "size": 12, "dash": "dash"},
    "obs": {"color": "#2ca02c", "symbol": "star", "size": 15, "dash": "solid"},
}
_CONSTRAINT_COLOR = "#555555"
_LEVEL_SET_POINTS = 121


def _comparison(value: Quadratic | QuadraticComparison) -> QuadraticComparison:
    if isinstance(value, QuadraticComparison):
        comparison = value
    elif isinstance(value, Quadratic):
        comparison = compare_rules(value)
    else:
        raise TypeError(
            f"expected a Quadratic or a QuadraticComparison, got {type(value).__name__}"
        )
    if comparison.quadratic.dim != 2:
        raise ValueError(
            f"the contour figure shows two weights; this quadratic has {comparison.quadratic.dim}"
        )
    return comparison


def quadratic_box(
    comparison: QuadraticComparison, pad: float = 0.2
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(w1 range, w2 range) holding the origin, w* and every rule's point, padded by ``pad``."""
    xs = [0.0, comparison.quadratic.optimum[0]] + [r.point[0] for r in comparison.rules]
    ys = [0.0, comparison.quadratic.optimum[1]] + [r.point[1] for r in comparison.rules]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 0.5)
    margin = pad * span
    return (min(xs) - margin, max(xs) + margin), (min(ys) - margin, max(ys) + margin)


def quadratic_title(comparison: QuadraticComparison) -> str:
    """The actual δL of each rule and the weight it removes."""
    parts = [
        f"{r.label} {r.actual_delta_loss:.3g} (removes {r.removed_name})" for r in comparison.rules
    ]
    return "δL: " + " · ".join(parts)


def _level_set(quadratic: Quadratic, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The ellipse L(w) = level: w* + √(2·level) R⁻¹u over the unit circle, H = RᵀR."""
    t = np.linspace(0.0, 2.0 * np.pi, _LEVEL_SET_POINTS)
    circle = np.stack([np.cos(t), np.sin(t)])
    upper = np.linalg.cholesky(quadratic.hessian).T  # H = RᵀR with R upper triangular
    offsets = np.sqrt(2.0 * max(level, 0.0)) * np.linalg.solve(upper, circle)
    return quadratic.optimum[0] + offsets[0], quadratic.optimum[1] + offsets[1]


def _hover(rule_label: str, removed: str, delta: float, predicted: float) -> str:
    if rule_label == "magnitude":  # ½w² is OBS's formula with H = I, no loss prediction
        return f"{rule_label} removes {removed}<br>actual δL = {delta:.4g}"
    return (
        f"{rule_label} removes {removed}<br>actual δL = {delta:.4g}"
        f"<br>predicted δL = {predicted:.4g}"
    )


def quadratic_figure_update(
    value: Quadratic | QuadraticComparison, *, resolution: int = 81
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-trace properties (in :data:`TRACE_NAMES` order) and layout properties of the figure."""
    comparison = _comparison(value)
    quadratic = comparison.quadratic
    (x0, x1), (y0, y1) = quadratic_box(comparison)
    x = np.linspace(x0, x1, resolution)
    y = np.linspace(y0, y1, resolution)
    z = quadratic.loss_grid(x, y)
    top = max(0.6 * float(z.max()), 1e-12)
    far = 10.0 * max(x1 - x0, y1 - y0)
    w1, w2 = (float(v) for v in quadratic.optimum)
    level_x, level_y = _level_set(quadratic, comparison.obs.actual_delta_loss)

    traces: list[dict[str, Any]] = [
        {"x": x, "y": y, "z": z, "contours": {"start": 0.0, "end": top, "size": top / 24}},
        {"x": [0.0, 0.0], "y": [y0 - far, y1 + far]},
        {"x": [x0 - far, x1 + far], "y": [0.0, 0.0]},
        {"x": level_x, "y": level_y},
    ]
    for r in comparison.rules:
        traces.append({"x": [w1, r.point[0]], "y": [w2, r.point[1]]})
    traces.append({"x": [w1], "y": [w2], "text": [f"optimum w* = ({w1:.3g}, {w2:.3g})"]})
    for r in comparison.rules:
        text = _hover(r.label, r.removed_name, r.actual_delta_loss, r.predicted_delta_loss)
        traces.append({"x": [r.point[0]], "y": [r.point[1]], "text": [text]})
    layout = {
        "title": {"text": quadratic_title(comparison)},
        "xaxis": {"range": [x0, x1]},
        "yaxis": {"range": [y0, y1]},
    }
    return traces, layout


def quadratic_figure(
    value: Quadratic | QuadraticComparison, *, resolution: int = 81, height: int = 520
) -> go.Figure:
    """Loss contours of a two-weight quadratic, w*, the lines w1 = 0 and w2 = 0, and the point
    each rule moves to: magnitude and OBD straight onto the line (no update), OBS with its
    compensating update, tangent to the level set δL_OBS. The title gives each rule's δL."""
    traces, layout = quadratic_figure_update(value, resolution=resolution)
    fig = go.Figure()
    fig.add_trace(
        go.Contour(
            name=TRACE_NAMES[0],
            colorscale=[[0.0, "#f7fbff"], [1.0, "#9ecae1"]],
            line={"color": "#6b8db5", "width": 0.6},
            colorbar={"title": {"text": "δL"}, "thickness": 12},
            hovertemplate="w1 = %{x:.3g}<br>w2 = %{y:.3g}<br>δL = %{z:.3g}<extra></extra>",
            **traces[0],
        )
    )
    for name, props in zip(TRACE_NAMES[1:3], traces[1:3], strict=True):
        fig.add_trace(
            go.Scatter(
                name=name,
                mode="lines",
                line={"color": _CONSTRAINT_COLOR, "width": 2},
                hoverinfo="skip",
                legendgroup="constraints",
                **props,
            )
        )
    fig.add_trace(
        go.Scatter(
            name=TRACE_NAMES[3],
            mode="lines",
            line={"color": RULE_STYLE["obs"]["color"], "width": 1, "dash": "dot"},
            hoverinfo="skip",
            legendgroup="obs",
            **traces[3],
        )
    )
    for rule, name, props in zip(
        ("magnitude", "obd", "obs"), TRACE_NAMES[4:7], traces[4:7], strict=True
    ):
        style = RULE_STYLE[rule]
        fig.add_trace(
            go.Scatter(
                name=name,
                mode="lines+markers",
                line={
                    "color": style["color"],
                    "width": 3 if rule == "obs" else 2,
                    "dash": style["dash"],
                },
                marker={
                    "symbol": "arrow",
                    "angleref": "previous",
                    "size": [0, 13],
                    "color": style["color"],
                },
                hoverinfo="skip",
                legendgroup=rule,
                showlegend=rule == "obs",
                **props,
            )
        )
    fig.add_trace(
        go.Scatter(
            name=TRACE_NAMES[7],
            mode="markers",
            marker={"symbol": "circle", "size": 11, "color": ink()},
            hovertemplate="%{text}<extra></extra>",
            **traces[7],
        )
    )
    for rule, name, props in zip(
        ("magnitude", "obd", "obs"), TRACE_NAMES[8:], traces[8:], strict=True
    ):
        style = RULE_STYLE[rule]
        fig.add_trace(
            go.Scatter(
                name=name,
                mode="markers",
                marker={
                    "symbol": style["symbol"],
                    "size": style["size"],
                    "color": style["color"],
                    "line": {
                        "width": 2.5 if rule == "magnitude" else 1,
                        "color": style["color"] if rule == "magnitude" else "white",
                    },
                },
                hovertemplate="%{text}<extra></extra>",
                legendgroup=rule,
                **props,
            )
        )
    fig.update_layout(
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 110},
        title={"x": 0.5, "xanchor": "center", "font": {"size": 14}},
        xaxis={"title": {"text": "w1"}, "zeroline": False, "constrain": "domain"},
        yaxis={
            "title": {"text": "w2"},
            "zeroline": False,
            "scaleanchor": "x",
            "scaleratio": 1,
            "constrain": "domain",
        },
        legend={"orientation": "h", "x": 0.0, "y": -0.14, "yanchor": "top"},
    )
    fig.update_layout(**layout)
    return fig


# --- three weights and more: saliencies as bars ------------------------------------------------
REMOVED_MARK = "✕"
"""Drawn above the bar of the weight each rule removes: one character, so that marks above
side-by-side bars of a group never run into each other."""
BAR_TRACE_NAMES = ("magnitude ½w²", "OBD ½H_qq w²", "OBS w²/(2[H⁻¹]_qq)", "δL with the best update")
"""Trace names of :func:`saliency_bars`, in the order of ``figure.data``."""


def saliency_bars_update(comparison: QuadraticComparison) -> tuple[list[dict], dict]:
    """Per-trace properties (in :data:`BAR_TRACE_NAMES` order) and layout of the bar figure."""
    names = [f"w{i + 1}" for i in range(comparison.quadratic.dim)]
    traces = []
    for r in comparison.rules:
        edge = [3 if i == r.removed else 0 for i in range(len(names))]
        traces.append(
            {
                "x": names,
                "y": list(r.saliencies),
                "marker": {"line": {"width": edge, "color": ink()}},
                "text": [REMOVED_MARK if i == r.removed else "" for i in range(len(names))],
            }
        )
    traces.append({"x": names, "y": list(comparison.best_costs)})
    layout = {"title": {"text": quadratic_title(comparison)}}
    return traces, layout


def saliency_bars(comparison: QuadraticComparison, *, height: int = 480) -> go.Figure:
    """Each rule's saliency of every weight (the outlined bar, marked ✕, is the weight it
    removes) and
    the true cost of removing each weight followed by the best update of the others.

    The picture for three weights and more, where the contour plot no longer fits: OBD picks
    wrong when its outlined bar is not above the lowest diamond.
    """
    traces, layout = saliency_bars_update(comparison)
    fig = go.Figure()
    for rule, name, props in zip(RULES, BAR_TRACE_NAMES, traces, strict=False):
        fig.add_trace(
            go.Bar(
                name=name,
                marker_color=RULE_STYLE[rule]["color"],
                textposition="outside",
                hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>",
                **props,
            )
        )
    fig.add_trace(
        go.Scatter(
            name=BAR_TRACE_NAMES[3],
            mode="markers",
            marker={"symbol": "diamond-wide", "size": 16, "color": ink()},
            hovertemplate="remove %{x}, best update: δL = %{y:.4g}<extra></extra>",
            **traces[3],
        )
    )
    fig.update_layout(
        barmode="group",
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 110},
        title={"x": 0.5, "xanchor": "center", "font": {"size": 14}},
        xaxis={"title": {"text": f"weight removed ({REMOVED_MARK}: the weight each rule removes)"}},
        yaxis={"title": {"text": "saliency / δL"}, "rangemode": "tozero"},
        legend={"orientation": "h", "x": 0.0, "y": -0.16, "yanchor": "top"},
    )
    fig.update_layout(**layout)
    return fig
