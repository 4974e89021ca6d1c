r"""One self-contained HTML report: model and data, Fisher versus Hessian, pruning comparison.

:func:`write_report` composes results of the experiments it is given
(:func:`~wfexplore.experiments.compare_fisher_and_hessian`,
:func:`~wfexplore.experiments.compare_pruning`) into one HTML file with plotly.js inlined
once, every figure inline and no request to the network, so that it opens offline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from torch import nn

import wfexplore
from wfexplore.experiments import FisherHessianComparison, PruningComparison
from wfexplore.figures import curvature as curvature_figures
from wfexplore.figures import pruning as pruning_figures
from wfexplore.figures.theme import LIGHT_TEMPLATE, register_templates

DOMINANCE_SENTENCE = (
    "An all-zero row of a block (a weight whose input is always zero: a blank pixel, a dead "
    "ReLU unit) satisfies |M_ii| ≥ Σ|M_ij| only as 0 ≥ 0. The headline is therefore the share "
    "of dominant rows among the non-zero rows, with the share of all-zero rows beside it: where "
    'the first is low, "Hessians tend to be diagonally dominant" does not hold for this '
    "network, however many dead rows make the plain count look high, and dropping the "
    "off-diagonal entries (as OBD does) loses most of each live row."
)
HEATMAP_SCALE_NOTE = (
    "Heatmaps use the signed log-magnitude colour scale sign(x)·log₁₀(1 + |x|/ε), shared by "
    "the panels and ticked in the original units: on a linear scale the Fisher, whose entries "
    "are often much smaller than the Hessian's, would look blank."
)
MAGNITUDE_PREDICTION_NOTE = (
    "Magnitude pruning predicts no loss: its score ½w² is the OBS formula with the identity "
    "in place of the curvature, so its predicted δL is left blank (–)."
)
TABLE_COLUMNS = 9
"""Tables with more columns show a readable subset; the full frame is a CSV download."""
READABLE_COLUMNS = {
    "method": "method",
    "scope": "scope",
    "update": "update",
    "steps": "steps",
    "sparsity": "sparsity",
    "accuracy": "accuracy",
    "loss": "loss",
    "delta_loss": "δL (actual)",
    "predicted_delta_loss": "δL (predicted)",
    "achieved_sparsity": "achieved sparsity",
    "damping": "λ",
    "num_samples": "m",
    "block_size": "B",
    "curvature_s": "curvature time (s)",
    "prune_s": "pruning time (s)",
}
"""Sweep columns a reader wants first (the first :data:`TABLE_COLUMNS` present are shown),
with their headings."""


# --- figures of the report -------------------------------------------------------------------
def fisher_hessian_figures(comparison: FisherHessianComparison) -> dict[str, go.Figure]:
    """Per-layer dominance, per-block dominance histograms and one typical block's heatmaps."""
    figures = {
        "Diagonal dominance per layer": curvature_figures.dominance_by_layer(
            comparison.layers,
            title="Diagonal dominance per layer (median over blocks; non-zero rows first)",
        )
    }
    long = _dominance_long(comparison)
    if long is not None:
        figures["Diagonal dominance per block"] = curvature_figures.dominance_histograms(long)
    blocks = comparison.blocks
    if "relative_frobenius_error" in blocks.columns and len(blocks):
        errors = blocks["relative_frobenius_error"].to_numpy(dtype=float)
        typical = int(blocks["block"].iloc[int(np.argsort(errors)[len(errors) // 2])])
        row = blocks[blocks["block"] == typical].iloc[0]
        layer_blocks = sorted(
            int(b) for b in blocks.loc[blocks["parameter"] == row["parameter"], "block"]
        )
        position = layer_blocks.index(typical)
        figures["One block: Hessian, Fisher and their difference"] = (
            curvature_figures.block_heatmaps(
                {"exact Hessian": comparison.hessian, "empirical Fisher": comparison.fisher},
                typical,
                log_magnitude=True,
                title=f"Block {position + 1} of {len(layer_blocks)} in {row['parameter']} "
                f"(the median Fisher error, {row['relative_frobenius_error']:.2f}), "
                "damping removed, log-magnitude colours",
                panel_size=260,
            )
        )
    return figures


def _dominance_long(comparison: FisherHessianComparison) -> pd.DataFrame | None:
    """The per-block wide frame of compare_fisher_and_hessian as one row per (block, kind)."""
    kinds = {comparison.fisher.kind: "Fisher", comparison.hessian.kind: "Hessian"}
    rows = []
    for kind, label in kinds.items():
        columns = {
            f"{kind}_dominant_row_share": "dominant_row_share",
            f"{kind}_diagonal_frobenius_share": "diagonal_frobenius_share",
        }
        if not set(columns) <= set(comparison.blocks.columns):
            return None
        for stat in ("dominant_nonzero_row_share", "zero_row_share"):
            if f"{kind}_{stat}" in comparison.blocks.columns:
                columns[f"{kind}_{stat}"] = stat
        part = comparison.blocks[["block", "parameter", *columns]].rename(columns=columns)
        part["kind"] = label
        rows.append(part)
    return pd.concat(rows, ignore_index=True)


def pruning_figures_for(pruning: PruningComparison) -> dict[str, go.Figure]:
    """Accuracy and loss against sparsity, per-layer sparsity, masks, overlap, saliencies and
    predicted against actual δL."""
    s = pruning.sparsity
    figures = {
        "Accuracy and loss against sparsity": pruning_figures.accuracy_vs_sparsity(
            pruning.sweep,
            ["accuracy", "loss"],
            marker_at=s,
            title="Test accuracy and loss after one-shot pruning",
        ),
        "Per-layer sparsity": pruning_figures.layer_sparsity_bars(
            pruning.allocation,
            sparsity=s,
            title=f"Sparsity of each layer ({pruning.settings.get('scope', 'global')} pruning)",
        ),
        "Masks": pruning_figures.mask_figure(
            pruning_figures.mask_panels(pruning.points, pruning.picture_layer),
            image_shape=pruning.image_shape,
            title=f"{pruning.picture_layer} at {s:.0%} sparsity"
            + (" (one 8×8 image per hidden unit)" if pruning.image_shape == (8, 8) else ""),
        ),
    }
    if len(pruning.overlap):
        figures["Mask overlap"] = pruning_figures.mask_overlap_bars(
            pruning.overlap, title=f"Overlap of the pruned weights at {s:.0%} (Jaccard)"
        )
    figures["Saliency distributions"] = pruning_figures.saliency_distributions(
        {pruning_figures.method_label(m): v for m, v in pruning.saliencies.items()}
    )
    if len(pruning.sensitivity):
        figures["Predicted against actual δL"] = pruning_figures.sensitivity_scatter(
            pruning.sensitivity,
            symbol="method" if pruning.sensitivity["method"].nunique() > 1 else None,
            title="Each layer pruned alone: predicted ½ δwᵀCδw against actual loss increase",
        )
    return figures


# --- HTML ------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table.wfx-table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1.5em; }
table.wfx-table th, table.wfx-table td { border: 1px solid #ddd; padding: 3px 8px;
       text-align: right; }
table.wfx-table th { background: #f3f3f3; }
.wfx-figure { margin: 1em 0 2em; overflow-x: auto; }
.wfx-table-box { max-width: 100%; overflow-x: auto; }
.wfx-note { color: #555; font-size: 14px; }
a.wfx-csv { font-size: 14px; }
"""


def _table_html(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    return frame.to_html(
        index=False,
        classes="wfx-table",
        border=0,
        float_format=lambda v: float_format.format(v),
        na_rep="–",
    )


def readable_table(frame: pd.DataFrame, max_columns: int = TABLE_COLUMNS) -> pd.DataFrame:
    """The columns a reader wants first, with readable headings.

    A frame of at most ``max_columns`` columns keeps them all; a wider one keeps those of
    :data:`READABLE_COLUMNS` it has (in that order), or its first ``max_columns``.
    Magnitude pruning's ``predicted_delta_loss`` (½w², no loss prediction) is blanked.
    """
    shown = frame.copy()
    if "predicted_delta_loss" in shown.columns and "method" in shown.columns:
        magnitude = shown["method"].astype(str) == "magnitude"
        shown["predicted_delta_loss"] = shown["predicted_delta_loss"].where(~magnitude)
    if len(shown.columns) > max_columns:
        known = [c for c in READABLE_COLUMNS if c in shown.columns][:max_columns]
        shown = shown[known] if len(known) >= 2 else shown.iloc[:, :max_columns]
    return shown.rename(columns={c: READABLE_COLUMNS.get(c, c) for c in shown.columns})


def csv_link(frame: pd.DataFrame, name: str) -> str:
    """A link that downloads ``frame`` as ``name``.csv, the data inside the page (data: URI)."""
    payload = base64.b64encode(frame.to_csv(index=False).encode("utf-8")).decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "table"
    return (
        f'<p><a class="wfx-csv" download="{stem}.csv" '
        f'href="data:text/csv;base64,{payload}">Download the full table as CSV '
        f"({len(frame)} rows, {len(frame.columns)} columns)</a></p>"
    )


def _frame_section(heading: str, frame: pd.DataFrame) -> list[str]:
    shown = readable_table(frame)
    parts = [f'<div class="wfx-table-box">{_table_html(shown)}</div>']
    if "method" in frame.columns and "predicted_delta_loss" in frame.columns:
        if (frame["method"].astype(str) == "magnitude").any():
            parts.append(f'<p class="wfx-note">{html.escape(MAGNITUDE_PREDICTION_NOTE)}</p>')
    parts.append(csv_link(frame, heading))
    return parts


def _figure_html(fig: go.Figure, div_id: str) -> str:
    register_templates()
    fig = go.Figure(fig).update_layout(template=LIGHT_TEMPLATE)  # the page is light
    body = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="wfx-figure">{body}</div>'


def model_table(
    model: nn.Module,
    name: str,
    *,
    train_examples: int | None = None,
    test_examples: int | None = None,
    accuracy: float | None = None,
    analysed: int | None = None,
) -> pd.DataFrame:
    """A two-column description of the model and data for :func:`write_report`."""
    rows = [
        ("model", name),
        ("parameters", f"{sum(p.numel() for p in model.parameters()):,}"),
    ]
    if analysed is not None:
        rows.append(("analysed (Conv/Linear) weights", f"{analysed:,}"))
    if train_examples is not None:
        rows.append(("training examples", f"{train_examples:,}"))
    if test_examples is not None:
        rows.append(("test examples", f"{test_examples:,}"))
    if accuracy is not None:
        rows.append(("test accuracy", f"{accuracy:.3f}"))
    return pd.DataFrame(rows, columns=["", "value"])


_LAYER_HEADINGS = {
    "layer": "layer",
    "parameter": "parameter",
    "numel": "weights",
    "blocks": "blocks",
    "fisher_dominant_nonzero_rows": "F: dominant non-zero rows",
    "hessian_dominant_nonzero_rows": "H: dominant non-zero rows",
    "fisher_zero_rows": "F: all-zero rows",
    "hessian_zero_rows": "H: all-zero rows",
    "fisher_diag_share": "F: ‖diag‖²/‖M‖²",
    "hessian_diag_share": "H: ‖diag‖²/‖M‖²",
    "fisher_vs_hessian_error": "‖F_λ − H_λ‖/‖H_λ‖",
    "obs_update_cosine": "OBS update cosine",
}


def _fisher_hessian_text(comparison: FisherHessianComparison) -> list[str]:
    f = comparison.fisher
    layers = comparison.layers
    shown = layers[[c for c in _LAYER_HEADINGS if c in layers.columns]]
    shown = shown.rename(columns=_LAYER_HEADINGS)
    return [
        "<h2>Fisher versus Hessian, layer by layer</h2>",
        '<p class="wfx-note">Empirical Fisher F (dense blocks of '
        f"{html.escape(str(f.layout.block_size))} weights, λ = {f.damping:.3g}) against the "
        "exact Hessian H of the same blocks. Dominance statistics are of the undamped "
        "matrices; the error is ‖F_λ − H_λ‖_F / ‖H_λ‖_F, the cosine that of the OBS update "
        "directions. Medians over each layer's blocks.</p>",
        f'<p class="wfx-note">{html.escape(DOMINANCE_SENTENCE)}</p>',
        f'<p class="wfx-note">{html.escape(HEATMAP_SCALE_NOTE)}</p>',
        f'<div class="wfx-table-box">{_table_html(shown, "{:.3f}")}</div>',
        csv_link(layers, "fisher-hessian-layers"),
    ]


def _pruning_text(pruning: PruningComparison) -> list[str]:
    st = pruning.settings
    return [
        "<h2>Pruning comparison</h2>",
        '<p class="wfx-note">One-shot '
        f"{html.escape(str(st.get('scope', '')))} pruning of the analysed weights; "
        f"OBD and WoodFisher use the empirical Fisher of m = {st.get('num_samples')} "
        f"gradients with λ = {st.get('damping', float('nan')):.3g}; WoodFisher blocks of "
        f"{html.escape(str(st.get('block_size')))} weights with the "
        f"{html.escape(str(st.get('update')))} OBS update. Accuracy and loss on the test "
        "split.</p>",
        "<h3>Test accuracy</h3>",
        _table_html(pruning.summary("accuracy"), "{:.3f}"),
        *(f'<p class="wfx-note">{html.escape(sentence)}</p>' for sentence in pruning.findings()),
    ]


def write_report(
    path: str | Path,
    *,
    title: str = "wfexplore report",
    model_info: pd.DataFrame | Mapping[str, object] | None = None,
    fisher_hessian: FisherHessianComparison | None = None,
    pruning: PruningComparison | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    figures: Mapping[str, go.Figure] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML report and return its path.

    Sections, each present when its input is given: model and data (``model_info``, a
    frame or a name → value map), Fisher versus Hessian per layer (``fisher_hessian``, from
    :func:`~wfexplore.experiments.compare_fisher_and_hessian`), pruning comparison
    (``pruning``, from :func:`~wfexplore.experiments.compare_pruning`), extra ``figures`` and
    summary ``tables``.
    plotly.js is inlined once in the head; every figure is a div drawn by it; no file or
    network resource is referenced, so the report opens offline.
    """
    path = Path(path).expanduser()
    sections: list[str] = []
    counter = itertools.count()

    def add_figures(figs: Mapping[str, go.Figure]) -> None:
        for heading, fig in figs.items():
            sections.append(f"<h3>{html.escape(heading)}</h3>")
            sections.append(_figure_html(fig, f"wfx-figure-{next(counter)}"))

    if model_info is not None:
        frame = (
            model_info
            if isinstance(model_info, pd.DataFrame)
            else pd.DataFrame(list(model_info.items()), columns=["", "value"])
        )
        sections.append("<h2>Model and data</h2>")
        sections.append(_table_html(frame))
    if fisher_hessian is not None:
        sections += _fisher_hessian_text(fisher_hessian)
        add_figures(fisher_hessian_figures(fisher_hessian))
    if pruning is not None:
        sections += _pruning_text(pruning)
        add_figures(pruning_figures_for(pruning))
    if figures:
        sections.append("<h2>More figures</h2>")
        add_figures(figures)
    if tables:
        sections.append("<h2>Tables</h2>")
        for heading, frame in tables.items():
            sections.append(f"<h3>{html.escape(heading)}</h3>")
            sections += _frame_section(heading, frame)
    for note in notes:
        sections.append(f'<p class="wfx-note">{html.escape(note)}</p>')
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    document = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="wfx-note">wfexplore {wfexplore.__version__}, {stamp}. '
            "Self-contained: opens offline.</p>",
            *sections,
            "</body></html>",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


__all__ = [
    "fisher_hessian_figures",
    "model_table",
    "csv_link",
    "pruning_figures_for",
    "readable_table",
    "write_report",
]
