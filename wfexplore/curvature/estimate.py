"""One call from a model and data to a curvature representation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore._checks import one_of, positive_int
from wfexplore.curvature.base import Curvature
from wfexplore.curvature.dense import DEFAULT_MAX_MEMORY_GB, DenseBlockCurvature
from wfexplore.curvature.diagonal import DiagonalCurvature
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.curvature.lowrank import LowRankCurvature
from wfexplore.curvature.woodbury import woodbury_fisher
from wfexplore.gradients import LossFn, iter_gradient_chunks
from wfexplore.params import BlockSpec, ParameterLayout

FISHER_METHODS = ("identity", "diagonal", "dense", "woodbury", "lowrank", "kfac")


def estimate_fisher(
    model: nn.Module,
    data: Iterable,
    *,
    method: str = "dense",
    layout: ParameterLayout | None = None,
    block_size: BlockSpec | None = None,
    num_samples: int = 256,
    batch_size: int = 1,
    damping: float = 1e-5,
    relative_damping: bool = False,
    fisher: str = "empirical",
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    progress: bool = True,
) -> Curvature:
    """The dampened Fisher F_λ = (1/m) Σ_n g_n g_nᵀ + λI of ``model`` on ``data``.

    ``method`` picks the representation: ``"identity"`` (C = I, no gradients),
    ``"diagonal"`` (OBD), ``"dense"`` (blocks, batched Cholesky), ``"woodbury"`` (blocks,
    the paper's recursion), ``"lowrank"`` (Gram-side Woodbury, any block size), ``"kfac"``
    (S ⊗ A + λI per Conv/Linear layer; needs ``block_size="layer"``).
    ``layout`` defaults to every Conv/Linear weight cut into blocks of ``block_size``
    (default 128, and ``"layer"`` for ``"kfac"``).
    ``damping`` is λ, or λ / mean(diag F) with ``relative_damping``. Gradient samples are
    per-example (``batch_size=1``) or mini-batch means; note that mean gradients of b
    examples shrink F by about 1/b, so λ must be re-tuned when b changes.
    """
    one_of(method, "method", FISHER_METHODS)
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    if layout is None:
        if block_size is None:
            block_size = "layer" if method == "kfac" else 128
        layout = ParameterLayout.from_model(model, block_size=block_size)
    if method == "identity":
        return IdentityCurvature(layout, dtype)
    if method == "kfac":
        return KFACCurvature.from_model(
            model,
            data,
            layout,
            num_samples,
            damping,
            batch_size=batch_size,
            loss_fn=loss_fn,
            fisher=fisher,
            relative_damping=relative_damping,
            seed=seed,
            dtype=dtype,
            progress=progress,
        )
    chunks = iter_gradient_chunks(
        model,
        data,
        layout,
        num_samples,
        batch_size=batch_size,
        loss_fn=loss_fn,
        fisher=fisher,
        seed=seed,
        progress=progress,
    )
    common = {"relative_damping": relative_damping, "dtype": dtype}
    if method == "diagonal":
        return DiagonalCurvature.from_gradients(chunks, layout, damping, **common)
    if method == "dense":
        return DenseBlockCurvature.from_gradients(
            chunks, layout, damping, max_memory_gb=max_memory_gb, **common
        )
    if method == "lowrank":
        return LowRankCurvature.from_gradients(chunks, layout, damping, **common)
    if relative_damping:
        gradients = torch.cat(list(chunks))
        mean_diag = float(gradients.to(dtype).pow(2).sum()) / gradients.numel()
        damping, chunks = damping * mean_diag, gradients
    return woodbury_fisher(
        chunks, layout, damping, num_samples, dtype=dtype, max_memory_gb=max_memory_gb
    )
