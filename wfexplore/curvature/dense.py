"""Dense blocks: C = blockdiag(C_1, …, C_K), each block held as a matrix.

Blocks of equal size are stacked into one ``(n, s, s)`` tensor so that building and
inverting them is a handful of batched matrix products and one batched Cholesky
factorisation (LU for blocks that are not positive definite, e.g. indefinite
Hessian blocks). For the empirical Fisher the blocks are streamed from gradient
chunks, F_B = (1/m) Σ_n g_nB g_nBᵀ = G_Bᵀ G_B / m, never holding all of G.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from wfexplore.curvature.base import Curvature, resolve_damping
from wfexplore.params import ParameterLayout

DEFAULT_MAX_MEMORY_GB = 4.0
GRAM_BUFFER_BYTES = 64 * 2**20


@dataclass
class BlockGroup:
    """Blocks of one size s: ``index[k]`` holds the flat indices of block ``blocks[k]``."""

    blocks: list[int]
    index: torch.Tensor  # (n, s) long
    matrix: torch.Tensor | None = None  # (n, s, s)
    inverse: torch.Tensor | None = None  # (n, s, s)

    @property
    def size(self) -> int:
        return self.index.shape[1]

    def runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs ``(k0, k1, start)``: blocks k0…k1−1 lie contiguously from ``start``."""
        starts = self.index[:, 0].tolist()
        runs, k0 = [], 0
        for k in range(1, len(starts) + 1):
            if k == len(starts) or starts[k] != starts[k - 1] + self.size:
                runs.append((k0, k, starts[k0]))
                k0 = k
        return runs


def group_blocks(layout: ParameterLayout, device: torch.device | str = "cpu") -> list[BlockGroup]:
    """Blocks of the layout grouped by size, in order of first appearance."""
    by_size: dict[int, list[int]] = {}
    for b in layout.blocks:
        by_size.setdefault(b.size, []).append(b.index)
    groups = []
    for size, blocks in by_size.items():
        starts = torch.tensor([layout.blocks[i].start for i in blocks], device=device)
        index = starts[:, None] + torch.arange(size, device=device)[None, :]
        groups.append(BlockGroup(blocks, index))
    return groups


def dense_memory_bytes(layout: ParameterLayout, itemsize: int = 8, copies: int = 2) -> int:
    """Bytes of ``copies`` dense block sets (matrix and inverse) for ``layout``."""
    return copies * itemsize * sum(b.size**2 for b in layout.blocks)


def check_dense_memory(layout: ParameterLayout, max_memory_gb: float, itemsize: int = 8) -> None:
    """Refuse dense blocks whose estimated memory exceeds ``max_memory_gb``."""
    needed = dense_memory_bytes(layout, itemsize)
    if needed > max_memory_gb * 2**30:
        largest = max(b.size for b in layout.blocks)
        raise MemoryError(
            f"dense blocks for {layout!r} need an estimated {needed / 2**30:.2f} GB "
            f"(largest block {largest}×{largest}, matrix and inverse in float64), over "
            f"max_memory_gb={max_memory_gb}; use a smaller block_size, the low-rank "
            "representation, or raise max_memory_gb"
        )


class DenseBlockCurvature(Curvature):
    """Block-diagonal C held as dense blocks; inverses by batched exact factorisation."""

    def __init__(
        self,
        layout: ParameterLayout,
        groups: list[BlockGroup],
        damping: float,
        kind: str = "dense",
    ):
        super().__init__(layout, damping)
        self.groups = groups
        self.kind = kind
        self._where = {b: (g, k) for g, grp in enumerate(groups) for k, b in enumerate(grp.blocks)}

    @classmethod
    def from_gradients(
        cls,
        gradients: torch.Tensor | Iterable[torch.Tensor],
        layout: ParameterLayout,
        damping: float,
        *,
        relative_damping: bool = False,
        dtype: torch.dtype = torch.float64,
        max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    ) -> DenseBlockCurvature:
        """F_λ = (1/m) Σ g gᵀ + λI per block, accumulated as G_Bᵀ G_B over gradient chunks."""
        check_dense_memory(layout, max_memory_gb)
        chunks = [gradients] if isinstance(gradients, torch.Tensor) else gradients
        groups, m = None, 0
        for chunk in chunks:
            if groups is None:
                groups = group_blocks(layout, chunk.device)
                for grp in groups:
                    n, s = grp.index.shape
                    grp.matrix = torch.zeros(n, s, s, dtype=dtype, device=chunk.device)
            for grp in groups:
                _accumulate_gram(grp, chunk, dtype)
            m += chunk.shape[0]
        if m == 0:
            raise ValueError("gradients: no gradient samples were given")
        mean_diag = sum(float(grp.matrix.diagonal(dim1=1, dim2=2).sum()) for grp in groups)
        lam = resolve_damping(damping, relative_damping, mean_diag / (m * layout.dim))
        for grp in groups:
            grp.matrix /= m
            grp.matrix.diagonal(dim1=1, dim2=2).add_(lam)
        return cls(layout, groups, lam, kind="dense")

    # --- the interface -----------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        return self._scatter(lambda grp: grp.matrix.diagonal(dim1=1, dim2=2))

    def inverse_diag(self) -> torch.Tensor:
        self.invert()
        return self._scatter(lambda grp: grp.inverse.diagonal(dim1=1, dim2=2))

    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        self.invert()
        vector = vector.to(self.groups[0].inverse)
        return self._scatter(lambda grp: torch.einsum("nst,nt->ns", grp.inverse, vector[grp.index]))

    def inverse_columns(self, block: int, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return self.inverse_block(block)[:, torch.as_tensor(positions, dtype=torch.long)]

    def block(self, index: int) -> torch.Tensor:
        g, k = self._where[index]
        return self.groups[g].matrix[k]

    def inverse_block(self, index: int) -> torch.Tensor:
        self.invert()
        g, k = self._where[index]
        return self.groups[g].inverse[k]

    def memory_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for grp in self.groups
            for t in (grp.matrix, grp.inverse)
            if t is not None
        )

    # --- inversion -----------------------------------------------------------------------
    def invert(self) -> None:
        """Compute every block inverse once (batched Cholesky; LU where not positive definite)."""
        for grp in self.groups:
            if grp.inverse is None:
                grp.inverse = batched_symmetric_inverse(grp.matrix)

    def _scatter(self, per_group) -> torch.Tensor:
        first = self.groups[0].matrix
        out = torch.empty(self.dim, dtype=first.dtype, device=first.device)
        for grp in self.groups:
            out[grp.index] = per_group(grp)
        return out


def batched_symmetric_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of each symmetric matrix in a ``(n, s, s)`` batch.

    Cholesky (A = LLᵀ, A⁻¹ = L⁻ᵀL⁻¹) for positive-definite blocks; LU for the rest.
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    inverse = torch.cholesky_inverse(chol)
    failed = info != 0
    if failed.any():
        lu_inverse = torch.linalg.inv(matrix[failed])
        inverse[failed] = (lu_inverse + lu_inverse.transpose(1, 2)) / 2
    return inverse


def _accumulate_gram(grp: BlockGroup, chunk: torch.Tensor, dtype: torch.dtype) -> None:
    """grp.matrix[k] += G_Bᵀ G_B for every block, reading contiguous runs of blocks as views.

    Blocks are converted to ``dtype`` a few at a time through one reused buffer, so the
    chunk is never copied whole.
    """
    c, s = chunk.shape[0], grp.size
    per_pass = max(1, GRAM_BUFFER_BYTES // (c * s * torch.finfo(dtype).bits // 8))
    buffer = torch.empty(min(per_pass, len(grp.blocks)), c, s, dtype=dtype, device=chunk.device)
    for k0, k1, start in grp.runs():
        run = chunk[:, start : start + (k1 - k0) * s].unflatten(1, (k1 - k0, s))  # (c, n, s)
        for a in range(0, k1 - k0, per_pass):
            part = run[:, a : a + per_pass].permute(1, 0, 2)  # (nb, c, s)
            g = buffer[: part.shape[0]]
            g.copy_(part)
            grp.matrix[k0 + a : k0 + a + g.shape[0]].baddbmm_(g.transpose(1, 2), g)
