r"""One self-contained HTML report: model and data, Fisher versus Hessian, pruning comparison.

:func:`write_report` composes results of the experiments it is given
(:func:`~wfexplore.experiments.compare_fisher_and_hessian`,
:func:`~wfexplore.experiments.compare_pruning`) into one HTML file with plotly.js inlined
once, every figure inline and no request to the network, so that it opens offline.
"""

from __future__ import annotations

import datetime as _dt
import html
import itertools
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


# --- figures of the report -------------------------------------------------------------------
def fisher_hessian_figures(comparison: FisherHessianComparison) -> dict[str, go.Figure]:
    """Per-layer dominance, per-block dominance histograms and one typical block's heatmaps."""
    figures = {
        "Diagonal dominance per layer": curvature_figures.dominance_by_layer(comparison.layers)
    }
    long = _dominance_long(comparison)
    if long is not None:
        figures["Diagonal dominance per block"] = curvature_figures.dominance_histograms(long)
    blocks = comparison.blocks
    if "relative_frobenius_error" in blocks.columns and len(blocks):
        errors = blocks["relative_frobenius_error"].to_numpy(dtype=float)
        typical = int(blocks["block"].iloc[int(np.argsort(errors)[len(errors) // 2])])
        row = blocks[blocks["block"] == typical].iloc[0]
        figures["One block: Hessian, Fisher and their difference"] = (
            curvature_figures.block_heatmaps(
                {"exact Hessian": comparison.hessian, "empirical Fisher": comparison.fisher},
                typical,
                title=f"Block {typical} of {row['parameter']} (the median Fisher error, "
                f"{row['relative_frobenius_error']:.2f}), damping removed",
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
            pruning.sweep, ["accuracy", "loss"], marker_at=s, title=None
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
.wfx-note { color: #555; font-size: 14px; }
"""


def _table_html(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    return frame.to_html(
        index=False,
        classes="wfx-table",
        border=0,
        float_format=lambda v: float_format.format(v),
        na_rep="–",
    )


def _figure_html(fig: go.Figure, div_id: str) -> str:
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


def _fisher_hessian_text(comparison: FisherHessianComparison) -> list[str]:
    f = comparison.fisher
    return [
        "<h2>Fisher versus Hessian, layer by layer</h2>",
        '<p class="wfx-note">Empirical Fisher F (dense blocks of '
        f"{html.escape(str(f.layout.block_size))} weights, λ = {f.damping:.3g}) against the "
        "exact Hessian H of the same blocks. Dominance statistics are of the undamped "
        "matrices; the error is ‖F_λ − H_λ‖_F / ‖H_λ‖_F, the cosine that of the OBS update "
        "directions. Medians over each layer's blocks.</p>",
        _table_html(comparison.layers, "{:.3f}"),
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
            sections.append(_table_html(frame))
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
    "pruning_figures_for",
    "write_report",
]
