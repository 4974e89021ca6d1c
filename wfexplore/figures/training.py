r"""Figures of training-aware pruning: accuracy over training, final accuracy, wall time.

Every function takes the tidy frames of a :class:`~wfexplore.experiments.ProtocolSweep`
(``points``, ``steps``, ``history``) or of one :class:`~wfexplore.pruning.GradualResult`
(its ``history`` and ``steps``, with a ``method`` column added) and returns a plotly figure;
none prunes or trains anything.

- :func:`training_curves`: accuracy (or loss) against epochs of training, one line per
  method and protocol; each pruning step is a vertical drop at its epoch (right before →
  right after), marked with a downward triangle, recovered by the training that follows;
- :func:`step_drops`: accuracy right before and right after every gradual step, per method;
- :func:`final_accuracy_vs_sparsity`: final accuracy per method (colour) and protocol (dash);
- :func:`accuracy_vs_wall_time`: final accuracy against the wall seconds a point took
  (curvature + pruning + training), log scale: what the second-order information costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wfexplore.experiments import method_label, protocol_label
from wfexplore.figures.pruning import method_color

PROTOCOL_DASHES = {"one_shot": "dot", "one_shot_finetune": "dash", "gradual": "solid"}
PROTOCOL_SYMBOLS = {"one_shot": "x", "one_shot_finetune": "square", "gradual": "circle"}


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing}; got {list(frame.columns)}")
    if not len(frame):
        raise ValueError(f"{name}: the frame is empty")


def _protocols(frame: pd.DataFrame) -> list:
    return list(dict.fromkeys(frame["protocol"])) if "protocol" in frame.columns else [None]


def _groups(frame: pd.DataFrame):
    """((method, protocol or None), rows) in order of appearance."""
    if "protocol" not in frame.columns:
        for method, rows in frame.groupby("method", sort=False):
            yield (method, None), rows
        return
    yield from frame.groupby(["method", "protocol"], sort=False)


def _label(method: str, protocol, protocols: list) -> str:
    if protocol is None or len(protocols) < 2:
        return method_label(method)
    return f"{method_label(method)} · {protocol_label(protocol)}"


def training_curves(
    history: pd.DataFrame,
    *,
    y: str = "accuracy",
    sparsities: Sequence[float] | None = None,
    protocols: Sequence[str] | None = None,
    title: str | None = "Accuracy over training, pruning steps marked",
) -> go.Figure:
    """``y`` against epochs trained, one line per (method, protocol), one panel per sparsity.

    ``history`` has ``method``, ``epoch``, ``event`` and ``y`` (plus ``protocol`` and
    ``sparsity`` for several); rows in the order they were measured, so that a pruning step
    draws as a vertical segment at its epoch. Points right after a step are downward
    triangles; the dense model is the first point. ``sparsities`` and ``protocols`` select
    (default: all; the one-shot protocol, which does not train, is left out by default).
    """
    _require(history, ["method", "epoch", "event", y], "history")
    frame = history
    if "protocol" in frame.columns:
        chosen = protocols or [p for p in _protocols(frame) if p != "one_shot"] or _protocols(frame)
        frame = frame[frame["protocol"].isin(chosen)]
    panels = sorted(frame["sparsity"].unique()) if "sparsity" in frame.columns else [None]
    if sparsities is not None:
        panels = [s for s in panels if any(abs(s - t) < 1e-12 for t in sparsities)]
    titles = [f"target {s:.0%}" for s in panels] if panels != [None] else None
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=titles)
    protocols_shown = _protocols(frame)
    methods = list(dict.fromkeys(frame["method"]))
    for c, s in enumerate(panels, start=1):
        part = frame if s is None else frame[frame["sparsity"] == s]
        for (method, protocol), rows in _groups(part):
            for trace in _curve(rows, y, method, protocol, protocols_shown, methods, c == 1):
                fig.add_trace(trace, row=1, col=c)
        fig.update_xaxes(title_text="epochs trained", row=1, col=c)
    fig.update_yaxes(title_text=y.replace("_", " "), row=1, col=1)
    fig.update_layout(title=title, height=420, hovermode="closest", legend_title_text="")
    return fig


def _curve(rows, y, method, protocol, protocols, methods, legend) -> list[go.Scatter]:
    label = _label(method, protocol, protocols)
    color = method_color(method, methods.index(method))
    dash = PROTOCOL_DASHES.get(protocol, "solid")
    line = go.Scatter(
        x=rows["epoch"].to_numpy(dtype=float),
        y=rows[y].to_numpy(dtype=float),
        mode="lines",
        name=label,
        legendgroup=label,
        showlegend=legend,
        line={"color": color, "dash": dash},
        hovertemplate=f"epoch %{{x}}<br>{y} %{{y:.4g}}<extra>{label}</extra>",
    )
    after = rows[rows["event"] == "after_step"]
    marks = go.Scatter(
        x=after["epoch"].to_numpy(dtype=float),
        y=after[y].to_numpy(dtype=float),
        mode="markers",
        name=f"{label}: right after a step",
        legendgroup=label,
        showlegend=False,
        marker={"color": color, "symbol": "triangle-down", "size": 9},
        hovertemplate=f"right after step, epoch %{{x}}<br>{y} %{{y:.4g}}<extra>{label}</extra>",
    )
    return [line, marks]


def step_drops(
    steps: pd.DataFrame, *, sparsity: float | None = None, protocol: str = "gradual"
) -> go.Figure:
    """Accuracy right before (hollow) and right after (filled) every pruning step of
    ``protocol`` at ``sparsity`` (default: the highest), one line per method against the
    step's target sparsity: where second-order information shows most."""
    _require(steps, ["method", "target_sparsity", "accuracy_before", "accuracy_after"], "steps")
    frame = steps
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"] == protocol]
    if "sparsity" in frame.columns and len(frame):
        chosen = max(frame["sparsity"]) if sparsity is None else sparsity
        frame = frame[(frame["sparsity"] - chosen).abs() < 1e-12]
    if not len(frame):
        raise ValueError(f"steps: no steps of protocol {protocol!r} at sparsity {sparsity}")
    fig = go.Figure()
    methods = list(dict.fromkeys(frame["method"]))
    for method, rows in frame.groupby("method", sort=False):
        color = method_color(method, methods.index(method))
        x = rows["target_sparsity"].to_numpy(dtype=float)
        for column, symbol, name in (
            ("accuracy_before", "circle-open", "right before"),
            ("accuracy_after", "circle", "right after"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=rows[column].to_numpy(dtype=float),
                    mode="lines+markers",
                    name=f"{method_label(method)}, {name}",
                    line={"color": color, "dash": "dot" if "before" in column else "solid"},
                    marker={"symbol": symbol, "size": 9, "color": color},
                    hovertemplate=f"step to %{{x:.1%}}<br>{name}: %{{y:.3f}}"
                    f"<extra>{method_label(method)}</extra>",
                )
            )
    fig.update_xaxes(title_text="target sparsity of the step", tickformat=".0%")
    fig.update_yaxes(title_text="accuracy")
    fig.update_layout(title="Accuracy right before and right after each pruning step", height=420)
    return fig


def final_accuracy_vs_sparsity(
    points: pd.DataFrame, *, y: str = "accuracy", title: str | None = "Final accuracy"
) -> go.Figure:
    """Final ``y`` against sparsity: colour the method, dash and marker the protocol; the
    unpruned model (``dense_<y>``) dotted."""
    _require(points, ["method", "sparsity", y], "points")
    fig = go.Figure()
    methods = list(dict.fromkeys(points["method"]))
    protocols = _protocols(points)
    for (method, protocol), group in _groups(points):
        rows = group.sort_values("sparsity")
        label = _label(method, protocol, protocols)
        fig.add_trace(
            go.Scatter(
                x=rows["sparsity"].to_numpy(dtype=float),
                y=rows[y].to_numpy(dtype=float),
                mode="lines+markers",
                name=label,
                line={
                    "color": method_color(method, methods.index(method)),
                    "dash": PROTOCOL_DASHES.get(protocol, "solid"),
                },
                marker={"symbol": PROTOCOL_SYMBOLS.get(protocol, "circle"), "size": 8},
                hovertemplate=f"sparsity %{{x:.1%}}<br>{y} %{{y:.4g}}<extra>{label}</extra>",
            )
        )
    dense = f"dense_{y}"
    if dense in points.columns:
        xs = points["sparsity"].to_numpy(dtype=float)
        value = float(points[dense].iloc[0])
        fig.add_trace(
            go.Scatter(
                x=[xs.min(), xs.max()],
                y=[value, value],
                mode="lines",
                name="unpruned",
                line={"color": "black", "dash": "dot", "width": 1},
            )
        )
    fig.update_xaxes(title_text="sparsity", tickformat=".0%")
    fig.update_yaxes(title_text=y.replace("_", " "))
    fig.update_layout(title=title, height=500, legend_title_text="", legend_font_size=11)
    return fig


def accuracy_vs_wall_time(
    points: pd.DataFrame,
    *,
    y: str = "accuracy",
    x: str = "seconds",
    title: str | None = "Final accuracy against wall time",
) -> go.Figure:
    """Final ``y`` against the wall seconds of each point (``x``, default curvature +
    pruning + training), log scale: colour the method, marker the protocol, the sparsity in
    the hover."""
    _require(points, ["method", x, y, "sparsity"], "points")
    fig = go.Figure()
    methods = list(dict.fromkeys(points["method"]))
    protocols = _protocols(points)
    for (method, protocol), rows in _groups(points):
        label = _label(method, protocol, protocols)
        fig.add_trace(
            go.Scatter(
                x=rows[x].to_numpy(dtype=float),
                y=rows[y].to_numpy(dtype=float),
                mode="markers",
                text=[f"{s:.0%}" for s in rows["sparsity"]],
                name=label,
                marker={
                    "color": method_color(method, methods.index(method)),
                    "symbol": PROTOCOL_SYMBOLS.get(protocol, "circle"),
                    "size": 10,
                },
                hovertemplate=f"%{{x:.2f}} s<br>{y} %{{y:.4g}}<br>sparsity %{{text}}"
                f"<extra>{label}</extra>",
            )
        )
    fig.update_xaxes(title_text="wall seconds (curvature + pruning + training)", type="log")
    fig.update_yaxes(title_text=y.replace("_", " "))
    fig.update_layout(title=title, height=500, legend_title_text="", legend_font_size=11)
    return fig


__all__ = [
    "PROTOCOL_DASHES",
    "PROTOCOL_SYMBOLS",
    "accuracy_vs_wall_time",
    "final_accuracy_vs_sparsity",
    "step_drops",
    "training_curves",
]
