"""Statistics of curvature blocks: diagonal dominance, spectra and approximation error.

Every table is a tidy :class:`pandas.DataFrame` with one row per block (or per block and
eigenvalue rank), carrying ``block``, ``layer``, ``parameter`` and ``size`` so that it can
be grouped, merged with other tables and plotted directly.

- :func:`diagonal_dominance`: how much of one square block lies on its diagonal;
- :func:`dominance_table`: the same for every block of a curvature — of the matrix M
  itself when given an undamped curvature (what ``estimate_curvature`` and
  ``hessian_blocks`` return), so that "Hessians tend to be diagonally dominant" is checked
  on the matrix rather than on its damping; of C = M + λI when given ``M.damped(λ)``;
- :func:`spectra`: eigenvalues of each block, largest first;
- :func:`compare_blocks`: how well one curvature stands in for another (e.g. the empirical
  Fisher for the exact Hessian): Frobenius error and agreement of the OBS update directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from wfexplore._checks import positive_int
from wfexplore.curvature.base import AnyCurvature, as_damped, check_same_layout
from wfexplore.params import Block, ParameterLayout

DEFAULT_MAX_BLOCK_SIZE = 4096
"""Blocks larger than this are skipped when ``blocks`` is not given: a dense copy of a
whole-layer low-rank block would take |B|² memory and O(|B|³) for eigenvalues."""

DOMINANCE_COLUMNS = (
    "dominant_row_share",
    "median_row_ratio",
    "diagonal_frobenius_share",
    "dominant_nonzero_row_share",
    "zero_row_share",
)


def diagonal_dominance(matrix: torch.Tensor) -> dict[str, float]:
    r"""Diagonal dominance of one square matrix M (n×n).

    Per row, r_i = |M_ii| / \sum_{j≠i} |M_ij|, with r_i = ∞ when the off-diagonal row sum
    is 0 (so an all-zero row counts as dominant: 0 ≥ 0, weak dominance). Returns

    - ``dominant_row_share``: (1/n) #{i : r_i ≥ 1};
    - ``median_row_ratio``: median of the r_i (mean of the two middle values for even n);
    - ``diagonal_frobenius_share``: \sum_i M_ii² / ‖M‖_F² (NaN for the zero matrix);
    - ``dominant_nonzero_row_share``: the share of dominant rows among the rows that are
      not all zero (NaN when every row is zero) — the number to read: an all-zero row
      (a weight whose input is always zero, e.g. a dead ReLU unit) is dominant only in the
      trivial sense 0 ≥ 0;
    - ``zero_row_share``: (1/n) #{i : M_ij = 0 for all j}, the rows left out above.

    Computed in float64; the matrix is not modified.
    """
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"matrix must be a square 2-D tensor, got shape {tuple(matrix.shape)}; "
            "pass one block, e.g. curvature.block(0)"
        )
    if matrix.shape[0] == 0:
        raise ValueError("matrix is empty (0×0); diagonal dominance needs at least one row")
    m = matrix.detach().to(torch.float64)
    if not torch.isfinite(m).all():
        raise ValueError("matrix contains NaN or infinite entries")
    absolute = m.abs()
    diagonal = absolute.diagonal()
    eye = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    off_diagonal = absolute.masked_fill(eye, 0.0).sum(dim=1)
    ratio = torch.where(
        off_diagonal > 0, diagonal / off_diagonal.clamp_min(torch.finfo(m.dtype).tiny), torch.inf
    )
    ratio_np = ratio.cpu().numpy()
    total = float(m.pow(2).sum())
    zero = (absolute.sum(dim=1) == 0).cpu().numpy()
    nonzero_dominant = (ratio_np >= 1.0)[~zero]
    return {
        "dominant_row_share": float((ratio_np >= 1.0).mean()),
        "median_row_ratio": float(np.median(ratio_np)),
        "diagonal_frobenius_share": float(diagonal.pow(2).sum()) / total if total > 0 else np.nan,
        "dominant_nonzero_row_share": (
            float(nonzero_dominant.mean()) if nonzero_dominant.size else np.nan
        ),
        "zero_row_share": float(zero.mean()),
    }


def dominance_table(
    curvature: AnyCurvature,
    blocks: Sequence[int] | None = None,
    *,
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
) -> pd.DataFrame:
    """:func:`diagonal_dominance` of each block of the matrix given: one row per block.

    An undamped curvature M (the Fisher F, the Hessian H) is measured as it is; pass
    ``.undamped`` of a damped view to measure M rather than M + λI (a large λ makes any
    matrix look diagonally dominant).

    ``blocks`` are block indices; by default every block of the layout with at most
    ``max_block_size`` weights, larger ones skipped. Columns: ``kind``, ``block``,
    ``layer``, ``parameter``, ``size``, ``dominant_row_share``, ``median_row_ratio``,
    ``diagonal_frobenius_share``, ``dominant_nonzero_row_share``, ``zero_row_share``.
    """
    chosen = _select_blocks(curvature.layout, blocks, max_block_size)
    rows = []
    for b in chosen:
        matrix = curvature.block(b.index)
        rows.append(
            {
                "kind": curvature.kind,
                **_block_info(curvature.layout, b),
                **diagonal_dominance(matrix),
            }
        )
    return pd.DataFrame(rows, columns=["kind", *_INFO_COLUMNS, *DOMINANCE_COLUMNS])


def spectra(
    curvature: AnyCurvature,
    blocks: Sequence[int] | None = None,
    *,
    top_k: int | None = None,
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
) -> pd.DataFrame:
    """Eigenvalues of each block of the matrix given, largest first: one row per (block, rank).

    λ_1 ≥ λ_2 ≥ … ≥ λ_k are the eigenvalues of the symmetric block (``torch.linalg.eigvalsh``
    in float64); ``rank`` counts from 1 for the largest. ``top_k`` keeps the k largest
    (default: all). For a damped view M + λI every eigenvalue is that of M plus λ.
    Block selection as in :func:`dominance_table`. Columns: ``kind``, ``block``, ``layer``,
    ``parameter``, ``size``, ``rank``, ``eigenvalue``.
    """
    if top_k is not None:
        positive_int(top_k, "top_k", "or None for every eigenvalue")
    chosen = _select_blocks(curvature.layout, blocks, max_block_size)
    rows = []
    for b in chosen:
        values = torch.linalg.eigvalsh(_symmetric(curvature.block(b.index)))
        values = values.flip(0)[:top_k].cpu().numpy()
        info = {"kind": curvature.kind, **_block_info(curvature.layout, b)}
        rows.extend(
            {**info, "rank": rank, "eigenvalue": float(value)}
            for rank, value in enumerate(values, start=1)
        )
    return pd.DataFrame(rows, columns=["kind", *_INFO_COLUMNS, "rank", "eigenvalue"])


def compare_blocks(
    approx: AnyCurvature,
    reference: AnyCurvature,
    blocks: Sequence[int] | None = None,
    *,
    damping: float | None = None,
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
) -> pd.DataFrame:
    """How well ``approx`` (A) stands in for ``reference`` (R), block by block.

    Both must share the layout. They are compared as pruning uses them, dampened: with
    ``damping`` λ, A = M_A + λI and R = M_R + λI of the undamped matrices; without it,
    the damped views given (``M.damped(λ)``). Per block:

    - ``relative_frobenius_error`` = ‖A − R‖_F / ‖R‖_F;
    - ``obs_update_cosine_median`` / ``obs_update_cosine_min``: removing weight q moves
      the others along δw ∝ −C⁻¹e_q, column q of the block inverse; the cosine
      ⟨A⁻¹e_q, R⁻¹e_q⟩ / (‖A⁻¹e_q‖ ‖R⁻¹e_q‖) is taken for every q in the block and its
      median and minimum reported (1 = same update direction).

    Block selection as in :func:`dominance_table`. Columns: ``kind_approx``,
    ``kind_reference``, ``block``, ``layer``, ``parameter``, ``size``,
    ``relative_frobenius_error``, ``obs_update_cosine_median``, ``obs_update_cosine_min``.
    For eigenvalues, concatenate the :func:`spectra` of both.
    """
    check_same_layout(approx, reference.layout)
    if damping is not None:
        approx, reference = approx.undamped.damped(damping), reference.undamped.damped(damping)
    approx, reference = as_damped(approx), as_damped(reference)
    chosen = _select_blocks(reference.layout, blocks, max_block_size)
    rows = []
    for b in chosen:
        r = reference.block(b.index).to(torch.float64)
        a = approx.block(b.index).to(device=r.device, dtype=torch.float64)
        r_inv = reference.inverse_block(b.index).to(device=r.device, dtype=torch.float64)
        a_inv = approx.inverse_block(b.index).to(device=r.device, dtype=torch.float64)
        cosines = (a_inv * r_inv).sum(0) / (a_inv.norm(dim=0) * r_inv.norm(dim=0))
        cosines = cosines.cpu().numpy()
        rows.append(
            {
                "kind_approx": approx.kind,
                "kind_reference": reference.kind,
                **_block_info(reference.layout, b),
                "relative_frobenius_error": float(
                    torch.linalg.matrix_norm(a - r) / torch.linalg.matrix_norm(r)
                ),
                "obs_update_cosine_median": float(np.median(cosines)),
                "obs_update_cosine_min": float(cosines.min()),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "kind_approx",
            "kind_reference",
            *_INFO_COLUMNS,
            "relative_frobenius_error",
            "obs_update_cosine_median",
            "obs_update_cosine_min",
        ],
    )


# --- helpers -------------------------------------------------------------------------------
_INFO_COLUMNS = ("block", "layer", "parameter", "size")


def _select_blocks(
    layout: ParameterLayout, blocks: Sequence[int] | None, max_block_size: int
) -> list[Block]:
    """The requested blocks, or every block with at most ``max_block_size`` weights."""
    positive_int(max_block_size, "max_block_size", "e.g. max_block_size=4096")
    if blocks is None:
        chosen = [b for b in layout.blocks if b.size <= max_block_size]
        if not chosen:
            smallest = min(b.size for b in layout.blocks)
            raise ValueError(
                f"every block of {layout!r} has more than max_block_size={max_block_size} "
                f"weights (the smallest has {smallest}); use a layout with a smaller "
                "block_size, pass blocks=[...], or raise max_block_size"
            )
        return chosen
    if isinstance(blocks, (int, str)):
        raise TypeError(f"blocks must be a list of block indices, got {blocks!r}; e.g. blocks=[0]")
    chosen = []
    for i in blocks:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"blocks: {i!r} is not a block index (an int)")
        if not 0 <= i < layout.num_blocks:
            raise IndexError(f"blocks: {i} is outside [0, {layout.num_blocks}) for {layout!r}")
        chosen.append(layout.blocks[int(i)])
    return chosen


def _block_info(layout: ParameterLayout, block: Block) -> dict:
    """``block``, ``layer``, ``parameter`` (names joined by '+' if it spans several), ``size``."""
    names = [p.name for p in layout.parameters if p.offset < block.stop and p.stop > block.start]
    return {
        "block": block.index,
        "layer": block.layer,
        "parameter": "+".join(names),
        "size": block.size,
    }


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    m = matrix.to(torch.float64)
    return (m + m.T) / 2
