"""Fisher versus Hessian, layer by layer: one call from a model to tidy tables.

For every analysed layer, the empirical Fisher F_λ and the exact Hessian H (+λI) are
built on the same block layout; each block is summarised by its diagonal dominance
(undamped), the relative Frobenius error ‖F_λ − H_λ‖_F / ‖H_λ‖_F and the cosine between
OBS update directions, and the blocks are averaged per layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from torch import nn

from wfexplore.curvature import Curvature, estimate_fisher, hessian_blocks
from wfexplore.params import BlockSpec, ParameterLayout
from wfexplore.statistics import compare_blocks, dominance_table


@dataclass
class FisherHessianComparison:
    """The two curvatures on one layout and their per-block and per-layer statistics."""

    fisher: Curvature
    hessian: Curvature
    blocks: pd.DataFrame
    layers: pd.DataFrame


def compare_fisher_and_hessian(
    model: nn.Module,
    data: Iterable,
    *,
    layout: ParameterLayout | None = None,
    block_size: BlockSpec = 64,
    num_samples: int = 256,
    batch_size: int = 1,
    damping: float = 1e-4,
    fisher: str = "empirical",
    hessian_examples: int | None = None,
    progress: bool = True,
) -> FisherHessianComparison:
    """Build F_λ (dense blocks) and H + λI (exact) and compare them block by block.

    ``layers`` has one row per analysed parameter: its size and number of blocks, the
    median-over-blocks share of diagonally dominant rows and diagonal Frobenius share of
    F and of H (undamped), the median relative Frobenius error of F_λ against H_λ and the
    median cosine of OBS update directions.
    """
    if layout is None:
        layout = ParameterLayout.from_model(model, block_size=block_size)
    f = estimate_fisher(
        model, data, method="dense", layout=layout, num_samples=num_samples,
        batch_size=batch_size, damping=damping, fisher=fisher, progress=progress,
    )  # fmt: skip
    h = hessian_blocks(
        model, data, layout, num_examples=hessian_examples, damping=f.damping, progress=progress
    )
    dominance = pd.concat([dominance_table(f), dominance_table(h)])
    wide = dominance.pivot_table(
        index=["block", "layer", "parameter", "size"],
        columns="kind",
        values=["dominant_row_share", "diagonal_frobenius_share"],
    )
    wide.columns = [f"{kind}_{stat}" for stat, kind in wide.columns]
    blocks = wide.reset_index().merge(
        compare_blocks(f, h).drop(columns=["kind_approx", "kind_reference"]),
        on=["block", "layer", "parameter", "size"],
    )
    layers = (
        blocks.groupby(["layer", "parameter"])
        .agg(
            numel=("size", "sum"),
            blocks=("block", "count"),
            fisher_dominant_rows=(f"{f.kind}_dominant_row_share", "median"),
            hessian_dominant_rows=(f"{h.kind}_dominant_row_share", "median"),
            fisher_diag_share=(f"{f.kind}_diagonal_frobenius_share", "median"),
            hessian_diag_share=(f"{h.kind}_diagonal_frobenius_share", "median"),
            fisher_vs_hessian_error=("relative_frobenius_error", "median"),
            obs_update_cosine=("obs_update_cosine_median", "median"),
        )
        .reset_index()
    )
    return FisherHessianComparison(f, h, blocks, layers)
