"""How the remaining weights move when a set Q of weights is removed.

- ``"none"``: δw = −w on Q, nothing else moves.
- ``"summed"``: the sum of the single-weight OBS updates, what the published WoodFisher
  code does: δw = −Σ_{q∈Q} (w_q / [C⁻¹]_qq) C⁻¹ e_q = −C⁻¹u with u_q = w_q / [C⁻¹]_qq on Q
  (one inverse-vector product); afterwards w_Q is set to exactly 0.
- ``"group"``: the exact OBS update for removing Q at once, per block B,
  δw_B = −C⁻¹ E_Qᵀ([C⁻¹]_QQ)⁻¹ w_Q, i.e. the minimiser of ½ δwᵀCδw subject to w_Q + δw_Q = 0,
  with cost ½ w_Qᵀ([C⁻¹]_QQ)⁻¹ w_Q. When more than half of a block goes, the same update is
  computed from C itself through the kept set R: δw_R = C_RR⁻¹ C_RQ w_Q (Schur complement),
  a system of size |R| instead of |Q|.

Every update reports the quadratic model's prediction of its own effect,
δL = ½ δwᵀ C δw (C block-diagonal), as per-weight contributions ½ δw ∘ (C δw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wfexplore._checks import one_of
from wfexplore.curvature.base import Curvature
from wfexplore.curvature.dense import DenseBlockCurvature
from wfexplore.curvature.diagonal import DiagonalCurvature
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.lowrank import LowRankCurvature

UPDATES = ("none", "summed", "group")
BATCHED_GROUP_LIMIT = 512
DEFAULT_MAX_MEMORY_GB = 4.0


@dataclass
class WeightUpdate:
    """New flat weights (pruned entries exactly 0), the change δw and ½ δw ∘ (C δw)."""

    weights: torch.Tensor
    delta: torch.Tensor
    contributions: torch.Tensor
    update: str

    @property
    def predicted_delta_loss(self) -> float:
        """½ δwᵀ C δw: the loss increase the quadratic model predicts for this change."""
        return float(self.contributions.sum())


def update_weights(
    weights: torch.Tensor,
    pruned: torch.Tensor,
    curvature: Curvature,
    update: str = "summed",
    *,
    inverse_diag: torch.Tensor | None = None,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> WeightUpdate:
    """Remove the weights in ``pruned`` (bool, length d) from ``weights`` with ``update``.

    Computation is in float64 on the device of ``weights``. ``inverse_diag`` (diag(C⁻¹))
    may be passed to skip recomputing it for the summed update.
    """
    one_of(update, "update", UPDATES)
    w = weights.detach().to(torch.float64)
    pruned = pruned.to(device=w.device, dtype=torch.bool)
    if w.shape != (curvature.dim,) or pruned.shape != w.shape:
        raise ValueError(
            f"weights and pruned must have shape ({curvature.dim},), got "
            f"{tuple(w.shape)} and {tuple(pruned.shape)}"
        )
    if update == "none" or isinstance(curvature, IdentityCurvature | DiagonalCurvature):
        delta = torch.where(pruned, -w, torch.zeros_like(w))  # a diagonal C moves nothing else
    elif update == "summed":
        if inverse_diag is None:
            inverse_diag = curvature.inverse_diag()
        inverse_diag = inverse_diag.to(w)
        u = torch.where(pruned, w / inverse_diag, torch.zeros_like(w))
        delta = -curvature.inverse_mv(u).to(w)
    else:
        delta = group_update(w, pruned, curvature, max_memory_gb=max_memory_gb)
    new = (w + delta).masked_fill(pruned, 0.0)
    delta = new - w
    contributions = 0.5 * delta * curvature_mv(curvature, delta).to(w)
    return WeightUpdate(new, delta, contributions, update)


# --- the exact group update ------------------------------------------------------------------
def group_update(
    weights: torch.Tensor,
    pruned: torch.Tensor,
    curvature: Curvature,
    *,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> torch.Tensor:
    """δw of the exact OBS group update, block by block (batched for small dense blocks)."""
    w = weights.to(torch.float64)
    delta = torch.zeros_like(w)
    layout = curvature.layout
    done: set[int] = set()
    if isinstance(curvature, DenseBlockCurvature):
        curvature.invert()
        for grp in curvature.groups:
            if grp.size <= BATCHED_GROUP_LIMIT:
                _dense_group_update(grp, w, pruned, delta)
                done.update(grp.blocks)
    for b in layout.blocks:
        if b.index in done:
            continue
        q_mask = pruned[b.start : b.stop]
        k = int(q_mask.sum())
        if k == 0:
            continue
        w_b = w[b.start : b.stop]
        if k == b.size:
            delta[b.start : b.stop] = -w_b
            continue
        positions = torch.arange(b.size, device=w.device)
        q, r = positions[q_mask], positions[~q_mask]
        small = min(k, b.size - k)
        needed = 8 * (b.size * small + small * small)
        if needed > max_memory_gb * 2**30:
            raise MemoryError(
                f"the group update of block {b.index} ({b.size} weights, {k} removed) needs an "
                f"estimated {needed / 2**30:.2f} GB, over max_memory_gb={max_memory_gb}; use "
                "smaller blocks (block_size), update='summed', or raise max_memory_gb"
            )
        d_b = torch.empty_like(w_b)
        if k <= b.size - k:  # inverse form: solve with [C⁻¹]_QQ (k × k)
            cols = curvature.inverse_columns(b.index, q).to(w)  # (size, k)
            z = _solve_symmetric(cols[q], w_b[q])
            d_b = -(cols @ z)
        else:  # complement form: solve with C_RR (|R| × |R|)
            cols = curvature_columns(curvature, b.index, r).to(w)  # C[:, R], (size, r)
            d_b[r] = _solve_symmetric(cols[r], cols[q].T @ w_b[q])
        d_b[q] = -w_b[q]
        delta[b.start : b.stop] = d_b
    return delta


def _dense_group_update(grp, w: torch.Tensor, pruned: torch.Tensor, delta: torch.Tensor) -> None:
    """All blocks of one size at once: solve M' z = w_Q with M' = P C⁻¹ P + (I − P), P = diag(q)."""
    index = grp.index.to(w.device)
    q = pruned[index]  # (n, s)
    active = q.any(dim=1)
    if not active.any():
        return
    index, q = index[active], q[active]
    inverse = grp.inverse[active.to(grp.inverse.device)].to(w)  # (n, s, s)
    qf = q.to(w.dtype)
    system = inverse * qf[:, :, None] * qf[:, None, :] + torch.diag_embed(1.0 - qf)
    z = _solve_symmetric(system, w[index] * qf)
    delta[index] = -(inverse @ z.unsqueeze(-1))[..., 0]


def _solve_symmetric(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve with (batched) symmetric ``matrix``: Cholesky, LU where it is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs.unsqueeze(-1), chol)[..., 0]
    return torch.linalg.solve(matrix, rhs.unsqueeze(-1))[..., 0]


# --- products with C itself -------------------------------------------------------------------
def curvature_mv(curvature: Curvature, vector: torch.Tensor) -> torch.Tensor:
    """C v for the block-diagonal C of any representation (the interface only has C⁻¹v)."""
    v = vector.to(torch.float64)
    if hasattr(curvature, "mv"):
        return curvature.mv(v).to(v)
    if isinstance(curvature, IdentityCurvature):
        return v.clone()
    if isinstance(curvature, DiagonalCurvature):
        return curvature.values.to(v) * v
    if isinstance(curvature, DenseBlockCurvature):
        out = torch.empty_like(v)
        for grp in curvature.groups:
            index = grp.index.to(v.device)
            out[index] = torch.bmm(grp.matrix.to(v), v[index].unsqueeze(-1))[..., 0]
        return out
    if isinstance(curvature, LowRankCurvature):
        out = curvature.damping * v
        m = curvature.num_samples
        for b in curvature.layout.blocks:
            g = curvature.gradients[:, b.start : b.stop].to(v)
            out[b.start : b.stop] += g.T @ (g @ v[b.start : b.stop]) / m
        return out
    out = torch.empty_like(v)
    for b in curvature.layout.blocks:
        out[b.start : b.stop] = curvature.block(b.index).to(v) @ v[b.start : b.stop]
    return out


def curvature_columns(
    curvature: Curvature, block: int, positions: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Columns ``positions`` (inside the block) of the block of C itself: (size, k)."""
    b = curvature.layout.blocks[block]
    if hasattr(curvature, "columns"):
        return curvature.columns(block, positions)
    if isinstance(curvature, IdentityCurvature | DiagonalCurvature):
        pos = torch.as_tensor(positions, dtype=torch.long)
        diag = curvature.diag()[b.start : b.stop]
        pos = pos.to(diag.device)
        cols = torch.zeros(b.size, len(pos), dtype=diag.dtype, device=diag.device)
        cols[pos, torch.arange(len(pos), device=diag.device)] = diag[pos]
        return cols
    if isinstance(curvature, LowRankCurvature):
        g = curvature.gradients[:, b.start : b.stop].to(curvature.dtype)
        pos = torch.as_tensor(positions, dtype=torch.long, device=g.device)
        cols = g.T @ g[:, pos] / curvature.num_samples
        cols[pos, torch.arange(len(pos), device=g.device)] += curvature.damping
        return cols
    block_matrix = curvature.block(block)
    return block_matrix[:, torch.as_tensor(positions, dtype=torch.long, device=block_matrix.device)]
