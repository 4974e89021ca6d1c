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

from dataclasses import dataclass

import torch

from wfexplore._checks import one_of
from wfexplore.curvature.base import AnyCurvature
from wfexplore.curvature.dense import DEFAULT_MAX_MEMORY_GB, BlockGroup, group_blocks

UPDATES = ("none", "summed", "group")
BATCHED_GROUP_LIMIT = 512


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


def resolved_update(update: str | None, *, diagonal: bool) -> str:
    """``"none"`` for a diagonal C (every update coincides), else ``update`` or ``"summed"``."""
    if update is not None:
        one_of(update, "update", UPDATES)
    return "none" if diagonal else (update or "summed")


def update_weights(
    weights: torch.Tensor,
    pruned: torch.Tensor,
    curvature: AnyCurvature,
    update: str = "summed",
    *,
    inverse_diag: torch.Tensor | None = None,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> WeightUpdate:
    """Remove the weights in ``pruned`` (bool, length d) from ``weights`` with ``update``.

    ``curvature`` is C (usually a damped view M + λI). Computation is in float64 on the
    device of ``weights``. ``inverse_diag`` (diag(C⁻¹)) may be passed to skip recomputing
    it for the summed update. With a diagonal C every update is zeroing.
    """
    update = resolved_update(update, diagonal=curvature.is_diagonal)
    w = weights.detach().to(torch.float64)
    pruned = pruned.to(device=w.device, dtype=torch.bool)
    if w.shape != (curvature.dim,) or pruned.shape != w.shape:
        raise ValueError(
            f"weights and pruned must have shape ({curvature.dim},), got "
            f"{tuple(w.shape)} and {tuple(pruned.shape)}"
        )
    if update == "none":
        delta = torch.where(pruned, -w, torch.zeros_like(w))
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
    contributions = 0.5 * delta * curvature.mv(delta).to(w)
    return WeightUpdate(new, delta, contributions, update)


# --- the exact group update ------------------------------------------------------------------
def group_update(
    weights: torch.Tensor,
    pruned: torch.Tensor,
    curvature: AnyCurvature,
    *,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> torch.Tensor:
    """δw of the exact OBS group update, block by block (batched for blocks of at most
    ``BATCHED_GROUP_LIMIT`` weights)."""
    w = weights.to(torch.float64)
    delta = torch.zeros_like(w)
    layout = curvature.layout
    done: set[int] = set()
    for grp in group_blocks(layout, w.device):
        if grp.size <= BATCHED_GROUP_LIMIT:
            _batched_group_update(curvature, grp, w, pruned, delta, max_memory_gb)
            done.update(grp.blocks)
    rest = [b for b in layout.blocks if b.index not in done]
    host = pruned.cpu() if rest else pruned  # counted on the host: no device sync per block
    for b in rest:
        q_mask = pruned[b.start : b.stop]
        k = int(host[b.start : b.stop].sum())
        if k == 0:
            continue
        w_b = w[b.start : b.stop]
        if k == b.size:
            delta[b.start : b.stop] = -w_b
            continue
        _check_group_memory(b, k, max_memory_gb)
        delta[b.start : b.stop] = _block_group_update(curvature, b.index, w_b, q_mask)
    return delta


def _check_group_memory(block, k: int, max_memory_gb: float) -> None:
    small = min(k, block.size - k)
    needed = 8 * (block.size * small + small * small)
    if needed > max_memory_gb * 2**30:
        raise MemoryError(
            f"the group update of block {block.index} ({block.size} weights, {k} removed) needs "
            f"an estimated {needed / 2**30:.2f} GB, over max_memory_gb={max_memory_gb}; use "
            "smaller blocks (block_size), update='summed', or raise max_memory_gb"
        )


def _block_group_update(
    curvature: AnyCurvature, block: int, w_b: torch.Tensor, q_mask: torch.Tensor
) -> torch.Tensor:
    """δw_B of one block: the inverse form with [C⁻¹]_QQ (|Q| ≤ |R|), else through C_RR."""
    positions = torch.arange(w_b.numel(), device=w_b.device)
    q, r = positions[q_mask], positions[~q_mask]
    d_b = torch.empty_like(w_b)
    if len(q) <= len(r):  # inverse form: solve with [C⁻¹]_QQ (k × k)
        cols = curvature.inverse_columns(block, q).to(w_b)  # (size, k)
        d_b = -(cols @ _solve_symmetric(cols[q], w_b[q]))
    else:  # complement form: solve with C_RR (|R| × |R|)
        cols = curvature.columns(block, r).to(w_b)  # C[:, R], (size, r)
        d_b[r] = _solve_symmetric(cols[r], cols[q].T @ w_b[q])
    d_b[q] = -w_b[q]
    return d_b


def _batched_group_update(
    curvature: AnyCurvature,
    grp: BlockGroup,
    w: torch.Tensor,
    pruned: torch.Tensor,
    delta: torch.Tensor,
    max_memory_gb: float,
) -> None:
    """All blocks of one size at once: solve M' z = w_Q with M' = P C⁻¹ P + (I − P), P = diag(q)."""
    q = pruned[grp.index]  # (n, s)
    active = q.any(dim=1)
    if not active.any():
        return
    index, q = grp.index[active], q[active]
    needed = 3 * 8 * q.numel() * grp.size
    if needed > max_memory_gb * 2**30:
        raise MemoryError(
            f"the group update of {q.shape[0]} blocks of {grp.size} weights needs an estimated "
            f"{needed / 2**30:.2f} GB, over max_memory_gb={max_memory_gb}; use smaller blocks "
            "(block_size), update='summed', or raise max_memory_gb"
        )
    blocks = [b for b, on in zip(grp.blocks, active.tolist(), strict=True) if on]
    inverse = curvature.inverse_blocks(blocks).to(w)  # (n, s, s)
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
