r"""Figures of pruning: saliencies, accuracy against sparsity, per-layer allocation, masks.

Every function takes the tidy frames of :mod:`wfexplore.pruning` (sweeps, sensitivity,
global allocation, mask overlap), :class:`~wfexplore.pruning.Saliency` objects or mask
tensors, and returns a plotly figure; none computes a curvature or prunes anything.

- :func:`saliency_distributions`: ρ_q = w_q²/(2[C⁻¹]_qq) per layer for several methods
  (violins on a log axis);
- :func:`accuracy_vs_sparsity`: accuracy (and loss) of a sweep frame against sparsity, one
  line per method, scope, update and number of steps, with an optional marker;
- :func:`layer_sparsity_bars`: the sparsity each layer receives under global pruning;
- :func:`sensitivity_scatter`: predicted against actual loss increase, with the line y = x;
- :func:`mask_figure`: masks as pictures (first-layer weights of the digits models as 8×8
  images, convolution kernels as tiles), each weight pruned, kept or compensated (kept and
  moved by the OBS update), see :func:`mask_categories`;
- :func:`mask_overlap_bars`: Jaccard overlap of two methods' pruned sets per layer;
- :func:`saliency_ecdf`: a static seaborn ECDF of the saliencies (matplotlib figure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from wfexplore.experiments.common import METHOD_LABELS, method_label
from wfexplore.figures.theme import ink
from wfexplore.pruning.prune import PruningResult
from wfexplore.pruning.saliency import Saliency

METHOD_COLORS = {
    "magnitude": "#7f7f7f",
    "obd": "#1f77b4",
    "woodfisher": "#d62728",
    "kfac": "#2ca02c",
}
OTHER_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DEPTH_COLORSCALE = "Turbo"
"""Colours of more groups than :data:`OTHER_COLORS` holds (layers in network order)."""
_LABEL_TO_METHOD = {label: method for method, label in METHOD_LABELS.items()}

PRUNED, KEPT, COMPENSATED = 0, 1, 2
CATEGORY_NAMES = ("pruned", "kept", "compensated")
CATEGORY_COLORS = ("#e6e6e6", "#1f4e79", "#f28e2b")

DEFAULT_MAX_POINTS = 2000
"""Values per (method, layer) kept for a violin: evenly spaced order statistics."""


def method_color(method: str, index: int = 0) -> str:
    """The colour of a method, by name or label (fixed for the four built-in ones)."""
    key = _LABEL_TO_METHOD.get(str(method), str(method))
    return METHOD_COLORS.get(key, OTHER_COLORS[index % len(OTHER_COLORS)])


# --- saliencies ------------------------------------------------------------------------------
def saliency_frame(saliencies: Mapping[str, Saliency]) -> pd.DataFrame:
    """Long frame ``method``, ``parameter``, ``layer``, ``saliency`` from method → Saliency."""
    frames = []
    for method, sal in saliencies.items():
        scores = sal.scores.detach().to(torch.float64).cpu().numpy()
        for i, p in enumerate(sal.layout.parameters):
            frames.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "parameter": p.name,
                        "layer": i,
                        "saliency": scores[p.offset : p.stop],
                    }
                )
            )
    if not frames:
        raise ValueError("saliencies: give at least one method → Saliency")
    return pd.concat(frames, ignore_index=True)


def quantile_subsample(values: np.ndarray, max_points: int | None) -> np.ndarray:
    """The sorted values, or ``max_points`` evenly spaced order statistics of them (min and max
    included): the distribution's shape with a bounded number of points."""
    values = np.sort(np.asarray(values, dtype=float))
    if max_points is None or values.size <= max_points:
        return values
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    ranks = np.round(np.linspace(0, values.size - 1, max_points)).astype(int)
    return values[ranks]


def saliency_distributions(
    saliencies: Mapping[str, Saliency] | pd.DataFrame,
    *,
    layers: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    log: bool = True,
    max_points: int | None = DEFAULT_MAX_POINTS,
    title: str | None = "Saliency ρ = w² / (2 [C⁻¹]_qq) per layer",
) -> go.Figure:
    r"""Violins of the saliencies of each layer, one colour per method, side by side.

    ``saliencies`` maps a method to its :class:`~wfexplore.pruning.Saliency` (see
    :func:`saliency_frame`) or is a long frame with ``method``, ``parameter``, ``saliency``.
    On the log axis (``log=True``) saliencies ≤ 0 cannot be drawn: they are left out and
    their count is given in the trace's hover name. Each violin holds at most
    ``max_points`` values (:func:`quantile_subsample`). Layer ``i`` sits at x = i, named by
    the axis ticks (numeric positions keep the figure light to build and to send).
    """
    frame = saliencies if isinstance(saliencies, pd.DataFrame) else saliency_frame(saliencies)
    _require_columns(frame, ["method", "parameter", "saliency"], "saliencies")
    all_layers = list(pd.unique(frame["parameter"]))
    layers = all_layers if layers is None else list(layers)
    unknown = [name for name in layers if name not in all_layers]
    if unknown:
        raise ValueError(f"layers: {unknown} are not in the frame; it has {all_layers}")
    methods = list(pd.unique(frame["method"])) if methods is None else list(methods)
    groups = frame.groupby(["method", "parameter"], sort=False)["saliency"]
    fig = go.Figure()
    for k, method in enumerate(methods):
        xs, ys, dropped = [], [], 0
        for position, layer in enumerate(layers):
            if (method, layer) not in groups.groups:
                continue
            values = groups.get_group((method, layer)).to_numpy(dtype=float)
            if log:
                dropped += int((values <= 0).sum())
                values = values[values > 0]
            values = quantile_subsample(values, max_points)
            xs.append(np.full(values.size, position))
            ys.append(values)
        x, y = (np.concatenate(v) if v else np.zeros(0) for v in (xs, ys))
        note = f" ({dropped} ≤ 0 not drawn)" if dropped else ""
        fig.add_trace(
            go.Violin(
                x=x,
                y=y,
                name=f"{method_label(method)}{note}",
                legendgroup=str(method),
                line_color=method_color(method, k),
                box_visible=False,
                meanline_visible=False,
                quartilemethod="linear",
                points=False,
                spanmode="hard",
                scalemode="width",
                hoveron="violins+kde",
            )
        )
    fig.update_layout(
        violinmode="group",
        title=title,
        height=420,
        legend_title_text="method",
        margin={"t": 60 if title else 30},
    )
    fig.update_yaxes(
        type="log" if log else "linear", title_text="saliency ρ", exponentformat="power"
    )
    fig.update_xaxes(
        title_text="layer",
        tickvals=list(range(len(layers))),
        ticktext=[str(layer) for layer in layers],
        range=[-0.5, len(layers) - 0.5],
    )
    return fig


def saliency_ecdf(
    saliencies: Mapping[str, Saliency] | pd.DataFrame, *, layer: str | None = None, ax=None
):
    """Static seaborn ECDF of the saliencies (log x axis), one line per method.

    ``layer`` restricts to one parameter (default: all analysed weights). Returns the
    matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = saliencies if isinstance(saliencies, pd.DataFrame) else saliency_frame(saliencies)
    if layer is not None:
        frame = frame[frame["parameter"] == layer]
    frame = frame[frame["saliency"] > 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    methods = list(dict.fromkeys(frame["method"]))
    palette = {m: method_color(m, i) for i, m in enumerate(methods)}
    sns.ecdfplot(data=frame, x="saliency", hue="method", log_scale=True, palette=palette, ax=ax)
    ax.set_xlabel("saliency ρ (log)")
    ax.set_ylabel("share of weights with smaller ρ")
    ax.set_title(f"Saliencies of {layer}" if layer else "Saliencies of all analysed weights")
    return ax


# --- sweeps ----------------------------------------------------------------------------------
CURVE_KEYS = ("method", "scope", "update", "steps")


def curve_label(key: Mapping[str, object], varying: Sequence[str]) -> str:
    """A short name for one curve: the method and whichever other settings vary."""
    parts = [method_label(str(key["method"]))]
    for column in varying:
        if column == "method":
            continue
        value = key[column]
        if column == "steps":
            parts.append(f"{value} step{'s' if value != 1 else ''}")
        elif column == "update":
            parts.append(f"update {value}")
        else:
            parts.append(str(value))
    return " · ".join(parts)


def sweep_curves(frame: pd.DataFrame, y: str = "accuracy") -> list[tuple[dict, pd.DataFrame]]:
    """The curves of a sweep frame: (setting, rows sorted by sparsity) per distinct
    (method, scope, update, steps) present; missing columns are ignored."""
    _require_columns(frame, ["method", "sparsity", y], "frame")
    keys = [c for c in CURVE_KEYS if c in frame.columns]
    curves = []
    for values, rows in frame.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        curves.append((dict(zip(keys, values, strict=True)), rows.sort_values("sparsity")))
    return curves


def accuracy_vs_sparsity(
    frame: pd.DataFrame,
    y: str | Sequence[str] = "accuracy",
    *,
    marker_at: float | None = None,
    show_dense: bool = True,
    title: str | None = "Accuracy after pruning",
) -> go.Figure:
    """Lines of ``y`` (``"accuracy"``, ``"loss"`` or both) against sparsity from a sweep frame.

    One line per (method, scope, update, steps) in ``frame`` (a
    :func:`~wfexplore.pruning.sweep` frame, or any frame with ``method``, ``sparsity`` and
    ``y``); colour is the method, dash the scope, marker the update. The legend names only
    the settings that vary. ``marker_at`` marks the points at that sparsity (the nearest
    swept one) with large rings and a vertical line; the marker trace is the last one and
    is named ``"at sparsity"``. ``show_dense`` adds the unpruned model's value
    (``dense_<y>`` column) as a dotted line.
    """
    ys = [y] if isinstance(y, str) else list(y)
    if not len(frame):
        raise ValueError("frame: the sweep frame is empty")
    varying = [c for c in CURVE_KEYS if c in frame.columns and frame[c].astype(str).nunique() > 1]
    if "update" in varying and frame.groupby("method")["update"].nunique().max() < 2:
        varying.remove("update")  # one update per method (e.g. "none" for magnitude and OBD)
    methods = list(dict.fromkeys(frame["method"]))
    scopes = list(dict.fromkeys(frame["scope"])) if "scope" in frame.columns else [None]
    updates = list(dict.fromkeys(frame["update"])) if "update" in frame.columns else [None]
    dashes = ("solid", "dash", "dot", "dashdot")
    symbols = ("circle", "square", "diamond", "triangle-up")
    fig = make_subplots(rows=len(ys), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for r, column in enumerate(ys, start=1):
        for key, rows in sweep_curves(frame, column):
            label = curve_label(key, varying)
            dash = dashes[scopes.index(key.get("scope")) % len(dashes)]
            symbol = symbols[updates.index(key.get("update")) % len(symbols)]
            fig.add_trace(
                go.Scatter(
                    x=rows["sparsity"].to_numpy(dtype=float),
                    y=rows[column].to_numpy(dtype=float),
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=r == 1,
                    line={
                        "color": method_color(key["method"], methods.index(key["method"])),
                        "dash": dash,
                    },
                    marker={"symbol": symbol, "size": 7},
                    hovertemplate=f"sparsity %{{x:.3g}}<br>{column} %{{y:.4g}}"
                    f"<extra>{label}</extra>",
                ),
                row=r,
                col=1,
            )
        dense_column = f"dense_{column}"
        if show_dense and dense_column in frame.columns:
            dense = float(frame[dense_column].iloc[0])
            xs = frame["sparsity"].to_numpy(dtype=float)
            fig.add_trace(
                go.Scatter(
                    x=[float(xs.min()), float(xs.max())],
                    y=[dense, dense],
                    mode="lines",
                    name="unpruned",
                    legendgroup="unpruned",
                    showlegend=r == 1,
                    line={"color": ink(), "dash": "dot", "width": 1},
                    hovertemplate=f"unpruned {column} %{{y:.4g}}<extra></extra>",
                ),
                row=r,
                col=1,
            )
        fig.update_yaxes(title_text=column.replace("_", " "), row=r, col=1)
    if marker_at is not None:
        for trace in marker_traces(frame, ys, marker_at):
            fig.add_trace(trace)
    fig.update_xaxes(title_text="sparsity (fraction of analysed weights removed)", row=len(ys))
    fig.update_layout(
        title=title,
        height=360 * len(ys) + 40,
        autosize=True,
        legend_title_text="",
        hovermode="closest",
    )
    return fig


def nearest_sparsity(frame: pd.DataFrame, sparsity: float) -> float:
    """The swept sparsity closest to ``sparsity``."""
    values = np.unique(frame["sparsity"].to_numpy(dtype=float))
    return float(values[np.argmin(np.abs(values - sparsity))])


def marker_traces(frame: pd.DataFrame, ys: Sequence[str], sparsity: float) -> list[go.Scatter]:
    """The "at sparsity" markers of :func:`accuracy_vs_sparsity` (one trace per panel)."""
    s = nearest_sparsity(frame, sparsity)
    out = []
    for r, column in enumerate(ys, start=1):
        at = frame[np.isclose(frame["sparsity"].to_numpy(dtype=float), s)]
        values = at[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 1.0
        if column == "accuracy":
            low, high = 0.0, 1.0
        suffix = "" if r == 1 else str(r)
        out.append(
            go.Scatter(
                x=[s] * len(values) + [None, s, s],
                y=list(values) + [None, low, high],
                mode="markers+lines",
                name="at sparsity",
                legendgroup="at sparsity",
                legendgrouptitle={"text": f"rings and dashed line: {s:.0%} sparsity"},
                showlegend=r == 1,
                marker={
                    "size": [14] * len(values) + [0, 0, 0],
                    "symbol": "circle-open",
                    "color": ink(),
                    "line": {"width": 2},
                },
                line={"color": "rgba(128,128,128,0.6)", "width": 1, "dash": "dash"},
                hovertemplate=f"sparsity %{{x:.3g}}<br>{column} %{{y:.4g}}<extra></extra>",
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
            )
        )
    return out


# --- per-layer allocation --------------------------------------------------------------------
def layer_sparsity_bars(
    frame: pd.DataFrame,
    *,
    sparsity: float | None = None,
    color: str = "method",
    title: str | None = "Sparsity of each layer",
) -> go.Figure:
    """Grouped bars of each layer's sparsity, one bar per ``color`` value (e.g. method).

    ``frame`` has ``parameter`` and ``layer_sparsity`` (a
    :func:`~wfexplore.pruning.global_allocation` frame, relabel ``curvature`` as ``method``,
    or :func:`~wfexplore.experiments.allocation_frame`). With a ``sparsity`` column,
    ``sparsity`` selects the rows of that overall sparsity (the nearest present); the overall
    sparsity is drawn as a dashed line. Bars are in the frame's order of layers; hover shows
    pruned / numel.
    """
    _require_columns(frame, ["parameter", "layer_sparsity"], "frame")
    if "sparsity" in frame.columns:
        if sparsity is None:
            if frame["sparsity"].nunique() > 1:
                raise ValueError(
                    "frame holds several overall sparsities; pass sparsity= to choose one"
                )
            sparsity = float(frame["sparsity"].iloc[0])
        sparsity = nearest_sparsity(frame, sparsity)
        frame = frame[np.isclose(frame["sparsity"].to_numpy(dtype=float), sparsity)]
    groups = list(dict.fromkeys(frame[color])) if color in frame.columns else [None]
    layers = [str(p) for p in dict.fromkeys(frame["parameter"])]
    fig = go.Figure()
    for k, group in enumerate(groups):
        part = frame if group is None else frame[frame[color] == group]
        part = part.set_index(part["parameter"].astype(str)).reindex(layers)
        custom = None
        if {"pruned", "numel"} <= set(part.columns):
            custom = np.stack([part["pruned"].to_numpy(), part["numel"].to_numpy()], axis=1)
        name = method_label(group) if group is not None else "layer sparsity"
        fig.add_trace(
            go.Bar(
                x=layers,
                y=part["layer_sparsity"].to_numpy(dtype=float),
                name=name,
                marker_color=method_color(group, k) if group is not None else OTHER_COLORS[0],
                customdata=custom,
                hovertemplate="%{x}<br>sparsity %{y:.3f}"
                + ("<br>%{customdata[0]} of %{customdata[1]} pruned" if custom is not None else "")
                + f"<extra>{name}</extra>",
            )
        )
    if sparsity is not None:
        fig.add_hline(
            y=sparsity,
            line_dash="dash",
            line_color=ink(),
            annotation_text=f"overall {sparsity:.0%}",
            annotation_position="top left",
        )
    fig.update_layout(
        barmode="group",
        title=title if sparsity is None or title is None else f"{title} at {sparsity:.0%}",
        height=380,
        legend_title_text=color,
    )
    fig.update_yaxes(range=[0, 1], title_text="fraction of the layer pruned")
    fig.update_xaxes(title_text="layer")
    return fig


# --- predicted against actual ----------------------------------------------------------------
def sensitivity_scatter(
    frame: pd.DataFrame,
    *,
    x: str = "predicted_delta_loss",
    y: str = "actual_delta_loss",
    color: str = "parameter",
    symbol: str | None = None,
    log: bool = True,
    title: str | None = "Predicted against actual loss increase",
) -> go.Figure:
    """Scatter of ``y`` against ``x`` (a :func:`~wfexplore.pruning.layer_sensitivity` frame),
    one colour per ``color`` value, with the line y = x.

    ``symbol`` (e.g. ``"method"`` for concatenated frames) gives each value a marker shape.
    On log axes (``log=True``) points with a value ≤ 0 cannot be drawn where they are: they
    are gathered in one trace named ``"≤ 0 (drawn at the floor)"``, placed at a tenth of the
    smallest positive value, with the true values in the hover text. Hover also shows the
    sparsity when the frame has one.
    """
    _require_columns(frame, [x, y], "frame")
    xs_all = frame[x].to_numpy(dtype=float)
    ys_all = frame[y].to_numpy(dtype=float)
    positive = np.concatenate([xs_all[xs_all > 0], ys_all[ys_all > 0]])
    floor = float(positive.min()) / 10 if positive.size else 1e-6
    fig = go.Figure()
    groups = list(dict.fromkeys(frame[color])) if color in frame.columns else [None]
    palette = group_colors(len(groups))
    shapes = list(dict.fromkeys(frame[symbol])) if symbol and symbol in frame.columns else [None]
    symbols = ("circle", "square", "diamond", "triangle-up", "cross", "x")
    hidden = []
    for k, group in enumerate(groups):
        for j, shape in enumerate(shapes):
            part = frame
            if group is not None:
                part = part[part[color] == group]
            if shape is not None:
                part = part[part[symbol] == shape]
            if not len(part):
                continue
            px, py = part[x].to_numpy(dtype=float), part[y].to_numpy(dtype=float)
            drawable = (px > 0) & (py > 0) if log else np.isfinite(px) & np.isfinite(py)
            if log:
                hidden.append(part[~drawable])
            part = part[drawable]
            name = str(group) if group is not None else "layers"
            if shape is not None:
                name = f"{name} · {method_label(shape)}"
            text = (
                [f"sparsity {s:.2g}" for s in part["sparsity"]]
                if "sparsity" in part.columns
                else None
            )
            color_value = method_color(group, k) if color == "method" else palette[k]
            fig.add_trace(
                go.Scatter(
                    x=part[x].to_numpy(dtype=float),
                    y=part[y].to_numpy(dtype=float),
                    mode="markers",
                    name=name,
                    text=text,
                    marker={"color": color_value, "symbol": symbols[j % len(symbols)], "size": 9},
                    hovertemplate=f"{x} %{{x:.3g}}<br>{y} %{{y:.3g}}<br>%{{text}}"
                    f"<extra>{name}</extra>",
                )
            )
    rest = pd.concat(hidden) if hidden else frame.iloc[:0]
    if len(rest):
        fig.add_trace(_floor_trace(rest, x, y, floor))
    finite = np.concatenate([xs_all, ys_all])
    finite = finite[np.isfinite(finite) & ((finite > 0) if log else True)]
    low = float(finite.min()) if finite.size else floor
    high = float(finite.max()) if finite.size else 1.0
    if log:
        low = min(low, floor)
    fig.add_trace(
        go.Scatter(
            x=[low, high],
            y=[low, high],
            mode="lines",
            name="y = x",
            line={"color": ink(), "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    axis = {"type": "log" if log else "linear", "exponentformat": "power"}
    fig.update_xaxes(title_text=x.replace("_", " "), **axis)
    fig.update_yaxes(title_text=y.replace("_", " "), **axis)
    fig.update_layout(title=title, height=440, legend_title_text=color)
    return fig


def group_colors(n: int) -> list[str]:
    """``n`` colours that stay apart: :data:`OTHER_COLORS` for up to six groups, else ``n``
    evenly spaced samples of :data:`DEPTH_COLORSCALE` (first to last in order, so that
    layers read by depth)."""
    if n <= len(OTHER_COLORS):
        return list(OTHER_COLORS[:n])
    return sample_colorscale(DEPTH_COLORSCALE, [k / (n - 1) for k in range(n)])


def _floor_trace(rest: pd.DataFrame, x: str, y: str, floor: float) -> go.Scatter:
    """The points a log axis cannot draw, at ``floor``, their true values in the hover."""
    rx, ry = rest[x].to_numpy(dtype=float), rest[y].to_numpy(dtype=float)
    return go.Scatter(
        x=np.where(rx > 0, rx, floor),
        y=np.where(ry > 0, ry, floor),
        mode="markers",
        name="≤ 0 (drawn at the floor)",
        marker={"color": "#555", "symbol": "triangle-down-open", "size": 9},
        customdata=np.stack([rx, ry], axis=1),
        hovertemplate=f"{x} %{{customdata[0]:.3g}}<br>{y} %{{customdata[1]:.3g}}"
        "<extra>not drawable on a log axis</extra>",
    )


# --- masks as pictures -----------------------------------------------------------------------
def mask_categories(
    keep: torch.Tensor | np.ndarray,
    before: torch.Tensor | np.ndarray | None = None,
    after: torch.Tensor | np.ndarray | None = None,
    *,
    min_change: float = 0.0,
    moved: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Per weight: 0 pruned, 1 kept, 2 compensated (kept and moved by the update).

    ``keep`` is a keep mask (True = kept, as in ``torch.nn.utils.prune``). A kept weight is
    compensated where ``moved`` is True (a sweep row's ``moved`` mask), or, given ``before``
    and ``after`` (the weights of the dense and the pruned model, same shape), where
    |after − before| > ``min_change``. Otherwise every kept weight counts as kept.
    """
    keep = _numpy(keep).astype(bool)
    out = np.where(keep, KEPT, PRUNED).astype(np.int8)
    if moved is not None:
        out[keep & _numpy(moved).astype(bool)] = COMPENSATED
    if before is not None and after is not None:
        b, a = _numpy(before).astype(float), _numpy(after).astype(float)
        if b.shape != keep.shape or a.shape != keep.shape:
            raise ValueError(
                f"keep, before and after must have one shape, got {keep.shape}, {b.shape}, "
                f"{a.shape}"
            )
        out[keep & (np.abs(a - b) > min_change)] = COMPENSATED
    return out


def result_categories(
    result: PruningResult, dense: torch.nn.Module, parameter: str, *, min_change: float = 0.0
) -> np.ndarray:
    """:func:`mask_categories` of one parameter of a :class:`PruningResult` against the dense
    model it was pruned from."""
    if parameter not in result.masks:
        raise KeyError(f"parameter {parameter!r} was not pruned; pruned: {list(result.masks)}")
    before = dict(dense.named_parameters())[parameter].detach()
    after = dict(result.model.named_parameters())[parameter].detach()
    return mask_categories(result.masks[parameter], before, after, min_change=min_change)


def mask_panels(points: Mapping[str, object], parameter: str) -> dict[str, np.ndarray]:
    """Method label → :func:`mask_categories` of ``parameter``, from method → point holding
    ``masks`` and ``moved`` maps (:class:`~wfexplore.experiments.PrunedPoint`)."""
    return {
        method_label(m): mask_categories(p.masks[parameter], moved=p.moved[parameter])
        for m, p in points.items()
    }


def mask_tiles(
    values: np.ndarray,
    *,
    image_shape: tuple[int, int] | None = None,
    columns: int | None = None,
    gap: int = 1,
) -> np.ndarray:
    """Arrange a weight-shaped array as a picture of tiles separated by NaN gaps.

    - a Linear weight (out, in) with ``image_shape`` (h, w), h·w = in: one h×w image per
      output unit (row), in a grid of ``columns`` tiles per row (default ⌈√out⌉) — the
      first layer of the digits MLP as 64 images of 8×8 pixels;
    - a convolution weight (out, in, kh, kw): one kh×kw tile per kernel, output channels
      down, input channels across (``columns`` = in), or, with one input channel, a grid of
      ``columns`` tiles;
    - any other 2-D array: returned as it is (as float).

    Tile (i, j) of unit/kernel n covers rows i·(h+gap) … and columns j·(w+gap) ….
    """
    a = np.asarray(values, dtype=float)
    if a.ndim == 4:
        out_ch, in_ch, kh, kw = a.shape
        if in_ch == 1:
            tiles = a[:, 0]
            cols = columns or math.ceil(math.sqrt(out_ch))
        else:
            tiles = a.reshape(out_ch * in_ch, kh, kw)
            cols = columns or in_ch
        return _grid(tiles, cols, gap)
    if a.ndim == 2 and image_shape is not None:
        h, w = image_shape
        if h * w != a.shape[1]:
            raise ValueError(
                f"image_shape {image_shape} has {h * w} pixels but the weight has {a.shape[1]} "
                "inputs per unit"
            )
        cols = columns or math.ceil(math.sqrt(a.shape[0]))
        return _grid(a.reshape(a.shape[0], h, w), cols, gap)
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        return a[None, :]
    raise ValueError(f"cannot draw a weight of shape {a.shape} as a picture")


def tile_position(
    index: int, shape: tuple[int, ...], *, image_shape=None, columns=None, gap: int = 1
) -> tuple[int, int]:
    """Row and column in :func:`mask_tiles`' picture of the weight at flat ``index``."""
    pos = np.unravel_index(index, shape)
    if len(shape) == 4:
        out_ch, in_ch, kh, kw = shape
        o, i, r, c = pos
        if in_ch == 1:
            n, cols = o, columns or math.ceil(math.sqrt(out_ch))
        else:
            n, cols = o * in_ch + i, columns or in_ch
        return (n // cols) * (kh + gap) + r, (n % cols) * (kw + gap) + c
    if len(shape) == 2 and image_shape is not None:
        h, w = image_shape
        unit, pixel = pos
        cols = columns or math.ceil(math.sqrt(shape[0]))
        r, c = divmod(int(pixel), w)
        return (unit // cols) * (h + gap) + r, (unit % cols) * (w + gap) + c
    return (0, int(pos[0])) if len(shape) == 1 else (int(pos[0]), int(pos[1]))


def _grid(tiles: np.ndarray, cols: int, gap: int) -> np.ndarray:
    n, h, w = tiles.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[k]
    return out


def category_colorscale() -> list:
    """A discrete colour scale for z ∈ {0, 1, 2} with zmin = −0.5, zmax = 2.5."""
    scale = []
    for k, color in enumerate(CATEGORY_COLORS):
        scale += [[k / 3, color], [(k + 1) / 3, color]]
    return scale


def mask_traces(
    panels: Mapping[str, np.ndarray],
    *,
    image_shape: tuple[int, int] | None = None,
    columns: int | None = None,
) -> list[dict]:
    """Heatmap properties of :func:`mask_figure` (one dict per panel), for in-place updates."""
    traces = []
    for k, (label, categories) in enumerate(panels.items()):
        picture = mask_tiles(categories, image_shape=image_shape, columns=columns)
        names = np.array([""] + list(CATEGORY_NAMES), dtype=object)
        text = names[np.nan_to_num(picture, nan=-1).astype(int) + 1]
        counts = {n: int((np.asarray(categories) == c).sum()) for c, n in enumerate(CATEGORY_NAMES)}
        traces.append(
            {
                # gaps as None, not NaN: NaN is not valid JSON for the widget messages (an
                # object array, which plotly validates without walking it element by element)
                "z": np.where(np.isnan(picture), None, picture),
                "text": text,
                "name": str(label),
                "zmin": -0.5,
                "zmax": 2.5,
                "colorscale": category_colorscale(),
                "showscale": k == 0,
                "xgap": 0,
                "ygap": 0,
                "hovertemplate": "row %{y}, column %{x}: %{text}<extra>" + str(label) + "</extra>",
                # horizontal, under the panels: the labels ("compensated") are never cut off
                "colorbar": {
                    "tickvals": [0, 1, 2],
                    "ticktext": list(CATEGORY_NAMES),
                    "title": {"text": "weight", "side": "top"},
                    "orientation": "h",
                    "x": 0.5,
                    "xanchor": "center",
                    "y": -0.04,
                    "yanchor": "top",
                    "len": 0.6,
                    "thickness": 14,
                },
                "meta": counts,
            }
        )
    return traces


def mask_panel_title(label: str, counts: Mapping[str, int]) -> str:
    """Subplot title of a mask panel: the label and the count of each category."""
    return (
        f"{label}<br><sub>{counts['pruned']} pruned · {counts['kept']} kept · "
        f"{counts['compensated']} compensated</sub>"
    )


def mask_figure(
    panels: Mapping[str, np.ndarray | torch.Tensor],
    *,
    image_shape: tuple[int, int] | None = None,
    columns: int | None = None,
    title: str | None = "Which weights go: pruned, kept, compensated",
    panel_size: int = 300,
) -> go.Figure:
    """Masks as pictures, one panel per label (e.g. method), side by side.

    ``panels`` maps a label to an array of categories shaped like the weight (see
    :func:`mask_categories`: 0 pruned, 1 kept, 2 compensated, in the colours
    :data:`CATEGORY_COLORS`); a boolean keep mask is taken as kept/pruned. The picture is
    :func:`mask_tiles`: with ``image_shape=(8, 8)`` the first Linear layer of the digits
    MLP becomes one 8×8 image per hidden unit; a convolution weight becomes kernel tiles.
    Subplot titles give the counts of each category.
    """
    if not panels:
        raise ValueError("panels: give at least one label → categories")
    arrays = {}
    for label, value in panels.items():
        a = _numpy(value)
        arrays[label] = a.astype(np.int8) if a.dtype != bool else np.where(a, KEPT, PRUNED)
    traces = mask_traces(arrays, image_shape=image_shape, columns=columns)
    titles = [mask_panel_title(label, t["meta"]) for label, t in zip(arrays, traces, strict=True)]
    n = len(arrays)
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.04)
    for col, trace in enumerate(traces, start=1):
        fig.add_trace(go.Heatmap(**trace), row=1, col=col)
        suffix = "" if col == 1 else str(col)
        fig.layout[f"yaxis{suffix}"].update(
            autorange="reversed",
            scaleanchor=f"x{suffix}",
            constrain="domain",
            showticklabels=False,
            showgrid=False,
            zeroline=False,
        )
        fig.layout[f"xaxis{suffix}"].update(
            constrain="domain", showticklabels=False, showgrid=False, zeroline=False
        )
    fig.update_layout(
        title=title,
        autosize=True,
        height=panel_size + 180,
        margin={"l": 20, "r": 20, "t": 110 if title else 70, "b": 90},
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig


# --- overlap ---------------------------------------------------------------------------------
def mask_overlap_bars(
    frame: pd.DataFrame,
    *,
    labels: tuple[str, str] = ("a", "b"),
    title: str | None = None,
) -> go.Figure:
    """Bars of the Jaccard overlap |P_a ∩ P_b| / |P_a ∪ P_b| of the pruned sets per layer.

    ``frame`` is a :func:`~wfexplore.pruning.mask_overlap` frame; with a ``pair`` column
    there is one bar series per pair. ``labels`` name a and b in the title and hover.
    """
    _require_columns(frame, ["parameter", "jaccard"], "frame")
    a, b = labels
    fig = go.Figure()
    pairs = list(dict.fromkeys(frame["pair"])) if "pair" in frame.columns else [None]
    for k, pair in enumerate(pairs):
        part = frame if pair is None else frame[frame["pair"] == pair]
        custom = None
        extra = ""
        if {"intersection", "union"} <= set(part.columns):
            custom = np.stack([part["intersection"].to_numpy(), part["union"].to_numpy()], axis=1)
            extra = "<br>%{customdata[0]} pruned by both of %{customdata[1]} by either"
        name = str(pair) if pair is not None else f"{a} vs {b}"
        fig.add_trace(
            go.Bar(
                x=part["parameter"].astype(str).tolist(),
                y=part["jaccard"].to_numpy(dtype=float),
                name=name,
                marker_color=OTHER_COLORS[k % len(OTHER_COLORS)],
                customdata=custom,
                hovertemplate="%{x}<br>Jaccard %{y:.3f}" + extra + f"<extra>{name}</extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title=title or f"Overlap of the pruned weights: {a} vs {b}",
        height=360,
        showlegend=len(pairs) > 1,
    )
    fig.update_yaxes(range=[0, 1], title_text="Jaccard |P_a ∩ P_b| / |P_a ∪ P_b|")
    fig.update_xaxes(title_text="layer")
    return fig


# --- helpers ---------------------------------------------------------------------------------
def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {list(frame.columns)}")
