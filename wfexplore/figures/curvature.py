r"""Figures of curvature blocks: Fisher versus Hessian heatmaps, dominance, spectra, sweeps.

Every function takes curvature objects, dense matrices or the tidy frames of
:mod:`wfexplore.statistics` / :mod:`wfexplore.experiments` and returns a plotly figure; none
computes a curvature.

- :func:`block_heatmaps`: one block of several matrices side by side (e.g. the exact Hessian,
  the empirical and the true Fisher) and their difference, on one shared symmetric colour
  scale, optionally on a signed log-magnitude scale;
- :func:`dominance_histograms` / :func:`dominance_by_layer`: diagonal dominance per block
  and per layer, Fisher and Hessian overlaid;
- :func:`spectrum_figure`: eigenvalues of blocks, largest first, on a log axis;
- :func:`effect_figure`: how a statistic moves with m, λ and b (a tidy sweep frame).

Damping is taken off curvature blocks by default (``undamped=True``), as in
:func:`wfexplore.statistics.dominance_table`: the heatmap shows the matrix M of C = M + λI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from wfexplore.curvature.base import AnyCurvature
from wfexplore.figures.theme import panel_chars, wrap_text

MatrixSource = AnyCurvature | torch.Tensor | np.ndarray
"""A panel of :func:`block_heatmaps`: a curvature (one of its blocks is shown) or a matrix."""

DIVERGING_COLORSCALE = "RdBu_r"
KIND_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

STATISTIC_LABELS = {
    "dominant_row_share": "share of dominant rows (all-zero rows counted as dominant)",
    "dominant_nonzero_row_share": "share of dominant rows among the non-zero rows",
    "zero_row_share": "share of all-zero rows (dead units)",
    "median_row_ratio": "median |M_ii| / Σ_j≠i |M_ij|",
    "diagonal_frobenius_share": "share of ‖M‖²_F on the diagonal",
    "relative_frobenius_error": "‖F_λ − H_λ‖_F / ‖H_λ‖_F",
    "obs_update_cosine": "cosine of OBS update directions",
    "obs_update_cosine_median": "cosine of OBS update directions (median)",
}

DOMINANCE_STATISTICS = (
    "dominant_nonzero_row_share",
    "zero_row_share",
    "diagonal_frobenius_share",
)
"""What the dominance figures show by default: dominance among the rows that are not all zero
(the headline), the share of all-zero rows beside it, and the diagonal's share of ‖M‖²_F.

An all-zero row (a weight whose input is always zero: a blank pixel, a dead ReLU unit) is
dominant only in the trivial sense 0 ≥ 0; counted with the others it makes a block look
diagonally dominant when none of its live rows is."""

LEGACY_DOMINANCE_STATISTICS = ("dominant_row_share", "diagonal_frobenius_share")
"""The default for frames without the non-zero-row columns (made before they existed)."""

SUBPLOT_TITLE_SIZE = 13

EFFECT_PARAMETERS = {
    "num_samples": "number of gradients m",
    "damping": "damping λ",
    "batch_size": "examples per gradient b",
}
"""Columns of a sweep frame that :func:`effect_figure` can put on the x axis."""

# compare_fisher_and_hessian(...).layers column → (statistic, kind)
_LAYER_COLUMNS = {
    "fisher_dominant_rows": ("dominant_row_share", "Fisher"),
    "hessian_dominant_rows": ("dominant_row_share", "Hessian"),
    "fisher_diag_share": ("diagonal_frobenius_share", "Fisher"),
    "hessian_diag_share": ("diagonal_frobenius_share", "Hessian"),
}
_OPTIONAL_LAYER_COLUMNS = {
    "fisher_dominant_nonzero_rows": ("dominant_nonzero_row_share", "Fisher"),
    "hessian_dominant_nonzero_rows": ("dominant_nonzero_row_share", "Hessian"),
    "fisher_zero_rows": ("zero_row_share", "Fisher"),
    "hessian_zero_rows": ("zero_row_share", "Hessian"),
}


# --- heatmaps ------------------------------------------------------------------------------
def block_matrix(source: MatrixSource, block: int | None = None, *, undamped: bool = True):
    """A dense block as a float64 numpy array.

    For a curvature, its block ``block``: of the matrix M of C = M + λI when ``undamped``,
    else of the curvature as given; a tensor or array is taken as it is.
    """
    if hasattr(source, "undamped"):  # a curvature (or a damped view of one)
        if block is None:
            raise ValueError("block: give the block index to show for curvature panels")
        if not 0 <= block < source.layout.num_blocks:
            raise IndexError(f"block {block} is outside [0, {source.layout.num_blocks})")
        shown = source.undamped if undamped else source
        return shown.block(block).detach().to(torch.float64).cpu().numpy().copy()
    if isinstance(source, torch.Tensor):
        matrix = source.detach().to(torch.float64).cpu().numpy().copy()
    else:
        matrix = np.array(source, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a panel must be a square matrix, got shape {matrix.shape}")
    return matrix


def signed_log(values: np.ndarray, epsilon: float) -> np.ndarray:
    r"""The log-magnitude map x ↦ sign(x)·log₁₀(1 + |x|/ε).

    Monotone and odd: entries much smaller than ε map almost linearly to (x/ε)/ln 10 ≈ 0,
    entries much larger than ε to ±(log₁₀|x| − log₁₀ε), so that several decades of magnitude
    share one colour scale while the sign stays visible.
    """
    return np.sign(values) * np.log10(1.0 + np.abs(values) / epsilon)


def heatmap_panels(
    panels: Mapping[str, MatrixSource],
    block: int | None = None,
    *,
    undamped: bool = True,
    difference: tuple[str, str] | str | None = "auto",
) -> dict[str, np.ndarray]:
    """The matrices :func:`block_heatmaps` draws, label → array, difference panel last.

    ``difference="auto"`` adds ``second − first`` when there are at least two panels
    (with panels Hessian, empirical Fisher, …: "empirical Fisher − Hessian"); a pair
    ``(a, b)`` adds ``a − b``; ``None`` adds nothing.
    """
    if not panels:
        raise ValueError("panels: give at least one label → matrix or curvature")
    matrices = {label: block_matrix(src, block, undamped=undamped) for label, src in panels.items()}
    labels = list(matrices)
    if difference == "auto":
        difference = (labels[1], labels[0]) if len(labels) >= 2 else None
    if difference is not None:
        if isinstance(difference, str) or len(difference) != 2:
            raise ValueError(
                f"difference must be 'auto', None or a pair of labels, got {difference!r}"
            )
        a, b = difference
        for label in (a, b):
            if label not in matrices:
                raise KeyError(f"difference: {label!r} is not a panel; panels: {labels}")
        if matrices[a].shape != matrices[b].shape:
            raise ValueError(
                f"difference: {a!r} is {matrices[a].shape} and {b!r} is {matrices[b].shape}"
            )
        matrices[f"{a} − {b}"] = matrices[a] - matrices[b]
    return matrices


def block_heatmaps(
    panels: Mapping[str, MatrixSource],
    block: int | None = None,
    *,
    undamped: bool = True,
    difference: tuple[str, str] | str | None = "auto",
    log_magnitude: bool = False,
    epsilon: float | None = None,
    colorscale: str = DIVERGING_COLORSCALE,
    colorbar_title: str = "entry",
    title: str | None = None,
    panel_size: int = 300,
    axis_title: str = "weight index in the block",
) -> go.Figure:
    r"""Heatmaps of one block of several matrices side by side, plus their difference.

    ``panels`` maps a label to a :class:`~wfexplore.curvature.Curvature` (its block
    ``block`` is shown, minus its damping when ``undamped``) or to a square matrix (shown as
    given). ``difference`` as in :func:`heatmap_panels`. All panels share one colour axis,
    symmetric about 0: [−M, M] with M the largest |entry| over all panels, on a diverging
    colour scale (red positive, blue negative).

    With ``log_magnitude=True`` each entry x is drawn as sign(x)·log₁₀(1 + |x|/ε)
    (:func:`signed_log`); ε defaults to 10⁻³·M, so three decades below the largest entry
    stay distinguishable. The colour bar is labelled with the transform and ticked in the
    original units; hovering shows the original value. Row i is drawn at the top; both axes
    are titled ``axis_title``.

    The figure sizes to its container (no fixed width; ``panel_size`` sets the height) and
    the panel titles are wrapped to fit above their panels at 1,000 px.
    """
    matrices = heatmap_panels(panels, block, undamped=undamped, difference=difference)
    traces, coloraxis = heatmap_traces(
        matrices,
        log_magnitude=log_magnitude,
        epsilon=epsilon,
        colorscale=colorscale,
        colorbar_title=colorbar_title,
    )
    n = len(matrices)
    spacing = 0.25 / max(n, 1)
    chars = panel_chars(n, SUBPLOT_TITLE_SIZE, spacing=spacing)
    fig = make_subplots(
        rows=1,
        cols=n,
        subplot_titles=[wrap_text(label, chars) for label in matrices],
        horizontal_spacing=spacing,
    )
    for col, trace in enumerate(traces, start=1):
        fig.add_trace(go.Heatmap(**trace), row=1, col=col)
        suffix = "" if col == 1 else str(col)
        fig.layout[f"yaxis{suffix}"].update(
            autorange="reversed",
            scaleanchor=f"x{suffix}",
            constrain="domain",
            title={"text": axis_title if col == 1 else None},
        )
        fig.layout[f"xaxis{suffix}"].update(constrain="domain", title={"text": axis_title})
    fig.update_annotations(font_size=SUBPLOT_TITLE_SIZE)
    fig.update_layout(
        coloraxis=coloraxis,
        autosize=True,
        height=panel_size + 160,
        margin={"l": 60, "r": 40, "t": 100 if title else 70, "b": 60},
        title=title,
    )
    return fig


def heatmap_traces(
    matrices: Mapping[str, np.ndarray],
    *,
    log_magnitude: bool = False,
    epsilon: float | None = None,
    colorscale: str = DIVERGING_COLORSCALE,
    colorbar_title: str = "entry",
) -> tuple[list[dict], dict]:
    """Heatmap trace properties (one dict per matrix) and the shared colour axis.

    What :func:`block_heatmaps` draws, without building a figure: a dashboard updates the
    traces of its ``go.FigureWidget`` with these dicts in place.
    """
    largest = max((float(np.abs(m).max()) if m.size else 0.0) for m in matrices.values())
    largest = largest if np.isfinite(largest) and largest > 0 else 1.0
    if log_magnitude:
        if epsilon is None:
            epsilon = 1e-3 * largest
        elif not (np.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite positive number, got {epsilon!r}")
        limit = float(signed_log(np.array(largest), epsilon))
        colorbar = _log_colorbar(largest, epsilon, colorbar_title)
    else:
        limit = largest
        colorbar = {
            "title": {"text": colorbar_title},
            "tickvals": None,
            "ticktext": None,
            "tickformat": ".2~g",
        }
    traces = []
    for label, matrix in matrices.items():
        trace = {"name": label, "coloraxis": "coloraxis"}
        if log_magnitude:
            trace["z"] = signed_log(matrix, epsilon)
            trace["customdata"] = matrix
            value = "%{customdata:.4g}"
        else:
            trace["z"] = matrix
            trace["customdata"] = None
            value = "%{z:.4g}"
        trace["hovertemplate"] = f"row %{{y}}<br>column %{{x}}<br>{value}<extra>{label}</extra>"
        traces.append(trace)
    coloraxis = {"colorscale": colorscale, "cmin": -limit, "cmax": limit, "colorbar": colorbar}
    return traces, coloraxis


def _log_colorbar(largest: float, epsilon: float, title: str) -> dict:
    """Colour bar for the log-magnitude scale: ticks at ±10^k in original units."""
    low, high = int(np.ceil(np.log10(epsilon))), int(np.floor(np.log10(largest)))
    decades = list(range(low, high + 1))
    if len(decades) > 6:
        step = int(np.ceil(len(decades) / 6))
        decades = decades[::-1][::step][::-1]
    values = [0.0] + [s * 10.0**k for k in decades for s in (1, -1)]
    return {
        "title": {"text": f"{title}<br>sign·log₁₀(1+|x|/ε)<br>ε = {epsilon:.2g}"},
        "tickformat": None,
        "tickvals": [float(signed_log(np.array(v), epsilon)) for v in values],
        "ticktext": ["0"] + [f"{v:.0e}" for v in values[1:]],
    }


# --- diagonal dominance --------------------------------------------------------------------
def dominance_histograms(
    table: pd.DataFrame,
    statistics: Sequence[str] | None = None,
    *,
    color: str = "kind",
    bins: int = 20,
    title: str | None = "Diagonal dominance per block",
) -> go.Figure:
    """Histograms of per-block dominance statistics, one colour per ``color`` value overlaid.

    ``table`` is a :func:`~wfexplore.statistics.dominance_table` frame, or several
    concatenated (e.g. of the Fisher and of the Hessian; relabel ``kind`` as you like).
    One panel per statistic; the statistics lie in [0, 1], cut into ``bins`` bins. By
    default :data:`DOMINANCE_STATISTICS` (dominance among non-zero rows first).
    """
    statistics = _default_statistics(table, statistics)
    _require_columns(table, [color, *statistics], "table")
    kinds = list(dict.fromkeys(table[color]))
    fig = _panels(statistics)
    for col, stat in enumerate(statistics, start=1):
        for k, kind in enumerate(kinds):
            values = table.loc[table[color] == kind, stat].to_numpy(dtype=float)
            fig.add_trace(
                go.Histogram(
                    x=values,
                    name=str(kind),
                    legendgroup=str(kind),
                    showlegend=col == 1,
                    marker_color=KIND_COLORS[k % len(KIND_COLORS)],
                    opacity=0.6,
                    xbins={"start": 0.0, "end": 1.0 + 1e-9, "size": 1.0 / bins},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(range=[0, 1], row=1, col=col)
        fig.update_yaxes(title_text="blocks" if col == 1 else None, row=1, col=col)
    fig.update_layout(
        barmode="overlay", title=title, height=420, autosize=True, legend_title_text=color
    )
    return fig


def _panels(statistics: Sequence[str]) -> go.Figure:
    """One row of panels, one per statistic, titled with its label wrapped to fit."""
    spacing = 0.08
    chars = panel_chars(len(statistics), SUBPLOT_TITLE_SIZE, spacing=spacing, margin=200)
    fig = make_subplots(
        rows=1,
        cols=len(statistics),
        subplot_titles=[wrap_text(_label(s), chars) for s in statistics],
        horizontal_spacing=spacing,
    )
    fig.update_annotations(font_size=SUBPLOT_TITLE_SIZE)
    fig.update_layout(margin={"t": 110})
    return fig


def _default_statistics(frame: pd.DataFrame, statistics: Sequence[str] | None) -> list[str]:
    if statistics is not None:
        return list(statistics)
    if set(DOMINANCE_STATISTICS) <= set(frame.columns):
        return list(DOMINANCE_STATISTICS)
    return list(LEGACY_DOMINANCE_STATISTICS)


def dominance_long(frame: pd.DataFrame, *, color: str = "kind") -> pd.DataFrame:
    """Per-layer dominance in long form: ``layer``, ``parameter``, ``kind``, statistic columns.

    Accepts a :func:`~wfexplore.statistics.dominance_table` frame (each numeric column, also
    any added to it, is summarised by its median over blocks per parameter and kind) or the
    ``layers`` frame of :func:`~wfexplore.experiments.compare_fisher_and_hessian` (its
    ``fisher_*`` / ``hessian_*`` columns, already medians over blocks).
    """
    if set(_LAYER_COLUMNS) <= set(frame.columns):
        columns = {**_LAYER_COLUMNS, **_OPTIONAL_LAYER_COLUMNS}
        rows = []
        for _, row in frame.iterrows():
            for kind in ("Fisher", "Hessian"):
                entry = {"layer": row["layer"], "parameter": row["parameter"], color: kind}
                for column, (stat, k) in columns.items():
                    if k == kind and column in frame.columns:
                        entry[stat] = row[column]
                rows.append(entry)
        return pd.DataFrame(rows)
    _require_columns(frame, ["layer", "parameter", color], "frame")
    stats = [
        c
        for c in frame.columns
        if c not in ("layer", "parameter", color, "block", "size")
        and pd.api.types.is_numeric_dtype(frame[c])
    ]
    return frame.groupby(["layer", "parameter", color], sort=False)[stats].median().reset_index()


def dominance_by_layer(
    frame: pd.DataFrame,
    statistics: Sequence[str] | None = None,
    *,
    color: str = "kind",
    title: str | None = "Diagonal dominance per layer (median over blocks)",
) -> go.Figure:
    """Grouped bars per layer, one bar per kind (e.g. Fisher and Hessian), one panel per statistic.

    ``frame`` is a dominance table or a ``compare_fisher_and_hessian(...).layers`` frame;
    see :func:`dominance_long`. By default :data:`DOMINANCE_STATISTICS` (dominance among
    non-zero rows first, the share of all-zero rows beside it) when the frame has them.
    """
    long = dominance_long(frame, color=color)
    statistics = _default_statistics(long, statistics)
    _require_columns(long, list(statistics), "frame")
    kinds = list(dict.fromkeys(long[color]))
    fig = _panels(statistics)
    for col, stat in enumerate(statistics, start=1):
        for k, kind in enumerate(kinds):
            part = long[long[color] == kind]
            fig.add_trace(
                go.Bar(
                    x=part["parameter"].astype(str).tolist(),
                    y=part[stat].to_numpy(dtype=float),
                    name=str(kind),
                    legendgroup=str(kind),
                    showlegend=col == 1,
                    marker_color=KIND_COLORS[k % len(KIND_COLORS)],
                    hovertemplate=f"%{{x}}<br>{stat} %{{y:.3f}}<extra>{kind}</extra>",
                ),
                row=1,
                col=col,
            )
        if stat != "median_row_ratio":
            fig.update_yaxes(range=[0, 1], row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(
        barmode="group", title=title, height=420, autosize=True, legend_title_text=color
    )
    return fig


# --- spectra -------------------------------------------------------------------------------
def spectrum_figure(
    frame: pd.DataFrame,
    *,
    color: str = "kind",
    relative_floor: float = 1e-10,
    title: str | None = "Eigenvalues per block, largest first",
) -> go.Figure:
    """Eigenvalues against their rank on a log axis, one line per (kind, block).

    ``frame`` is a :func:`~wfexplore.statistics.spectra` frame (several concatenated).
    The axis shows |λ|: negative eigenvalues (indefinite Hessians) are marked with an
    ``x`` at their magnitude. Eigenvalues with |λ| below ``relative_floor`` times the
    block's largest |λ| are numerically zero (e.g. beyond the rank m of a Fisher) and are
    left out, as exact zeros must be on a log axis.
    """
    _require_columns(frame, [color, "block", "rank", "eigenvalue"], "frame")
    fig = go.Figure()
    kinds = list(dict.fromkeys(frame[color]))
    for k, kind in enumerate(kinds):
        shade = KIND_COLORS[k % len(KIND_COLORS)]
        part = frame[frame[color] == kind]
        for i, (block, rows) in enumerate(part.groupby("block", sort=True)):
            rows = rows.sort_values("rank")
            values = rows["eigenvalue"].to_numpy(dtype=float)
            floor = relative_floor * np.abs(values).max() if len(values) else 0.0
            visible = (np.abs(values) > floor) & (values != 0)
            magnitude = np.where(visible, np.abs(values), np.nan)
            fig.add_trace(
                go.Scatter(
                    x=rows["rank"].to_numpy(),
                    y=magnitude,
                    mode="lines",
                    line={"color": shade, "width": 1.5},
                    name=str(kind),
                    legendgroup=str(kind),
                    showlegend=i == 0,
                    customdata=values,
                    hovertemplate=f"block {block}<br>rank %{{x}}<br>λ %{{customdata:.4g}}"
                    f"<extra>{kind}</extra>",
                )
            )
            negative = visible & (values < 0)
            if negative.any():
                fig.add_trace(
                    go.Scatter(
                        x=rows["rank"].to_numpy()[negative],
                        y=-values[negative],
                        mode="markers",
                        marker={"symbol": "x", "color": shade, "size": 6},
                        name=f"{kind}: negative λ (|λ| shown)",
                        legendgroup=f"{kind}-negative",
                        showlegend=not any(t.legendgroup == f"{kind}-negative" for t in fig.data),
                        hovertemplate=f"block {block}<br>rank %{{x}}<br>λ = −%{{y:.4g}}"
                        "<extra></extra>",
                    )
                )
    fig.update_yaxes(type="log", title_text="|eigenvalue|", exponentformat="power")
    fig.update_xaxes(title_text="rank (1 = largest)")
    fig.update_layout(title=title, height=400, legend_title_text=color)
    return fig


# --- sweeps --------------------------------------------------------------------------------
def effect_figure(
    frame: pd.DataFrame,
    y: str | Sequence[str] = "relative_frobenius_error",
    *,
    parameters: Sequence[str] | None = None,
    color: str | None = "fisher",
    log_y: bool = False,
    title: str | None = "Effect of m, λ and b",
) -> go.Figure:
    r"""Lines of one or more statistics against each swept parameter.

    ``frame`` is tidy, one row per setting, with the columns

    - ``varied``: the parameter this row's sweep moves (``"num_samples"``, ``"damping"``
      or ``"batch_size"``; the others stay at their base values);
    - ``num_samples`` (m), ``damping`` (λ), ``batch_size`` (b): the setting;
    - optionally ``color`` (e.g. ``fisher`` = "empirical" / "true"): one line per value;
    - the statistics named in ``y`` (e.g. ``relative_frobenius_error``,
      ``obs_update_cosine``).

    One column of panels per parameter present in ``varied`` (or ``parameters``), one row
    per statistic; x axes are logarithmic.
    """
    ys = [y] if isinstance(y, str) else list(y)
    _require_columns(frame, ["varied", *ys], "frame")
    if color is not None and color not in frame.columns:
        color = None
    if parameters is None:
        parameters = [p for p in EFFECT_PARAMETERS if p in set(frame["varied"])]
        parameters += [p for p in dict.fromkeys(frame["varied"]) if p not in parameters]
    _require_columns(frame, list(parameters), "frame")
    groups = list(dict.fromkeys(frame[color])) if color is not None else [None]
    fig = make_subplots(
        rows=len(ys),
        cols=len(parameters),
        subplot_titles=[EFFECT_PARAMETERS.get(p, p) for p in parameters]
        + [""] * (len(parameters) * (len(ys) - 1)),
        shared_yaxes="rows",
        horizontal_spacing=0.06,
        vertical_spacing=0.12,
    )
    for r, stat in enumerate(ys, start=1):
        for c, param in enumerate(parameters, start=1):
            sweep = frame[frame["varied"] == param]
            for k, group in enumerate(groups):
                part = sweep if group is None else sweep[sweep[color] == group]
                part = part.sort_values(param)
                name = str(group) if group is not None else stat
                fig.add_trace(
                    go.Scatter(
                        x=part[param].to_numpy(),
                        y=part[stat].to_numpy(dtype=float),
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=r == 1 and c == 1,
                        line={"color": KIND_COLORS[k % len(KIND_COLORS)]},
                        hovertemplate=f"{param} %{{x:.3g}}<br>{stat} %{{y:.4g}}"
                        f"<extra>{name}</extra>",
                    ),
                    row=r,
                    col=c,
                )
            axis_title = EFFECT_PARAMETERS.get(param, param) if r == len(ys) else None
            ticks = sorted(set(sweep[param]))
            fig.update_xaxes(
                type="log",
                title_text=axis_title,
                tickvals=ticks if len(ticks) <= 8 else None,
                ticktext=[f"{t:g}" for t in ticks] if len(ticks) <= 8 else None,
                row=r,
                col=c,
            )
        fig.update_yaxes(title_text=_label(stat), row=r, col=1)
        if log_y:
            fig.update_yaxes(type="log", row=r)
    fig.update_layout(
        title=title,
        height=320 * len(ys) + 60,
        legend_title_text=color or "",
    )
    return fig


# --- helpers -------------------------------------------------------------------------------
def _label(statistic: str) -> str:
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {list(frame.columns)}")
