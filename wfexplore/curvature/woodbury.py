"""The WoodFisher paper's inverse: one Woodbury (Sherman–Morrison) step per gradient.

F_0⁻¹ = λ⁻¹I,  F_k⁻¹ = F_{k-1}⁻¹ − (F_{k-1}⁻¹ g_k)(F_{k-1}⁻¹ g_k)ᵀ / (m + g_kᵀ F_{k-1}⁻¹ g_k).

After m steps F_m⁻¹ = (λI + (1/m) Σ g gᵀ)⁻¹ exactly (in exact arithmetic). Kept as the
faithful reference for :meth:`DenseBlockCurvature.from_gradients`, which reaches the
same inverse with matrix products and one factorisation; the recursion is vectorised
over blocks, sequential over gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from wfexplore._checks import positive_float, positive_int
from wfexplore.curvature.dense import (
    DEFAULT_MAX_MEMORY_GB,
    DenseBlockCurvature,
    check_dense_memory,
    group_blocks,
)
from wfexplore.params import ParameterLayout


def woodbury_fisher(
    gradients: torch.Tensor | Iterable[torch.Tensor],
    layout: ParameterLayout,
    damping: float,
    num_samples: int | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> DenseBlockCurvature:
    """Dense blocks of F_λ whose inverses come from the Woodbury recursion.

    ``gradients`` is the ``(m, d)`` matrix or an iterable of ``(c, d)`` chunks, in which
    case ``num_samples`` (m, needed by every step) must be given. λ is absolute.
    """
    lam = positive_float(damping, "damping", "e.g. damping=1e-5")
    if isinstance(gradients, torch.Tensor):
        num_samples = gradients.shape[0] if num_samples is None else num_samples
        gradients = [gradients]
    elif num_samples is None:
        raise ValueError("num_samples: the recursion needs m up front when gradients are chunks")
    m = positive_int(num_samples, "num_samples", "pass the number of gradient samples")
    check_dense_memory(layout, max_memory_gb)
    groups, seen = None, 0
    for chunk in gradients:
        if groups is None:
            groups = group_blocks(layout, chunk.device)
            for grp in groups:
                n, s = grp.index.shape
                eye = torch.eye(s, dtype=dtype, device=chunk.device).repeat(n, 1, 1)
                grp.inverse = eye / lam
                grp.matrix = eye * lam
        for grp in groups:
            g_all = chunk[:, grp.index].to(dtype)  # (c, n, s)
            grp.matrix.baddbmm_(g_all.permute(1, 2, 0), g_all.transpose(0, 1), alpha=1.0 / m)
            for g in g_all:
                u = torch.bmm(grp.inverse, g.unsqueeze(-1))  # (n, s, 1)
                denom = m + (g.unsqueeze(1) @ u)  # (n, 1, 1)
                grp.inverse.baddbmm_(u, (u / denom).transpose(1, 2), alpha=-1.0)
        seen += chunk.shape[0]
    if seen != m:
        raise ValueError(f"num_samples={m} but the gradients held {seen} samples")
    return DenseBlockCurvature(layout, groups, lam, kind="woodbury")
