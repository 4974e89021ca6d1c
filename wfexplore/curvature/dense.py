"""Dense blocks: M = blockdiag(M_1, …, M_K), each block held as a matrix.

Blocks of equal size are stacked into one ``(n, s, s)`` tensor so that building and
inverting them is a handful of batched matrix products and one batched Cholesky
factorisation of M + λI per λ (LU for blocks that are not positive definite, e.g.
indefinite Hessian blocks). For the empirical Fisher the blocks are streamed from gradient
chunks, F_B = (1/m) Σ_n g_nB g_nBᵀ = G_Bᵀ G_B / m, never holding all of G.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wfexplore.curvature.base import Curvature, Positions
from wfexplore.params import ParameterLayout

DEFAULT_MAX_MEMORY_GB = 4.0
GRAM_BUFFER_BYTES = 64 * 2**20
KEPT_INVERSES = 1
"""Block inverses are kept for this many values of λ (the most recent ones)."""


@dataclass
class BlockGroup:
    """Blocks of one size s: ``index[k]`` holds the flat indices of block ``blocks[k]``, which
    start at ``starts[k]`` (kept on the host, so that no device sync is needed to read them)."""

    blocks: list[int]
    index: torch.Tensor  # (n, s) long
    starts: list[int]
    matrix: torch.Tensor | None = None  # (n, s, s)

    @property
    def size(self) -> int:
        return self.index.shape[1]

    def runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs ``(k0, k1, start)``: blocks k0…k1−1 lie contiguously from ``start``."""
        starts = self.starts
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
        starts = [layout.blocks[i].start for i in blocks]
        first = torch.tensor(starts, device=device)
        index = first[:, None] + torch.arange(size, device=device)[None, :]
        groups.append(BlockGroup(blocks, index, starts))
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
    """Block-diagonal M held as dense blocks; inverses of M + λI by batched factorisation."""

    def __init__(
        self,
        layout: ParameterLayout,
        groups: list[BlockGroup],
        *,
        kind: str = "dense",
        requires_damping: bool = True,
    ):
        super().__init__(layout)
        self.groups = groups
        self.kind = kind
        self.requires_damping = requires_damping
        self._where = {b: (g, k) for g, grp in enumerate(groups) for k, b in enumerate(grp.blocks)}
        self._inverses: dict[float, list[torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.groups[0].matrix.device

    # --- forward ---------------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        return self._scatter([grp.matrix.diagonal(dim1=1, dim2=2) for grp in self.groups])

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        return self._blockwise_mv([grp.matrix for grp in self.groups], vector)

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        matrix = self.block(block)
        return matrix[:, torch.as_tensor(positions, dtype=torch.long, device=matrix.device)]

    def block(self, index: int) -> torch.Tensor:
        g, k = self._where[index]
        return self.groups[g].matrix[k]

    # --- inverse ---------------------------------------------------------------------------
    def _inverse_diag(self, damping: float) -> torch.Tensor:
        return self._scatter([inv.diagonal(dim1=1, dim2=2) for inv in self.inverses(damping)])

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        return self._blockwise_mv(self.inverses(damping), vector)

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        inverse = self._inverse_block(block, damping)
        return inverse[:, torch.as_tensor(positions, dtype=torch.long, device=inverse.device)]

    def _inverse_block(self, index: int, damping: float) -> torch.Tensor:
        g, k = self._where[index]
        return self.inverses(damping)[g][k]

    def _inverse_blocks(self, blocks: Sequence[int], damping: float) -> torch.Tensor:
        inverses = self.inverses(damping)
        where = [self._where[b] for b in blocks]
        if len({g for g, _ in where}) == 1:
            g = where[0][0]
            return inverses[g][torch.tensor([k for _, k in where], device=inverses[g].device)]
        return torch.stack([inverses[g][k] for g, k in where])

    def memory_bytes(self) -> int:
        held = [grp.matrix for grp in self.groups]
        held += [inv for per_group in self._inverses.values() for inv in per_group]
        return sum(t.numel() * t.element_size() for t in held)

    def inverses(self, damping: float) -> list[torch.Tensor]:
        """(M_g + λI)⁻¹ of every group of blocks, computed once per λ (the last few kept)."""
        lam = self.absolute_damping(damping)
        if lam not in self._inverses:
            if len(self._inverses) >= KEPT_INVERSES:
                self._inverses.pop(next(iter(self._inverses)))
            self._inverses[lam] = self._invert(lam)
        return self._inverses[lam]

    def _invert(self, damping: float) -> list[torch.Tensor]:
        out = []
        for grp in self.groups:
            matrix = grp.matrix.clone()
            matrix.diagonal(dim1=1, dim2=2).add_(damping)
            out.append(batched_symmetric_inverse(matrix))
        return out

    # --- helpers ---------------------------------------------------------------------------
    def _scatter(self, per_group: list[torch.Tensor]) -> torch.Tensor:
        first = self.groups[0].matrix
        out = torch.empty(self.dim, dtype=first.dtype, device=first.device)
        for grp, values in zip(self.groups, per_group, strict=True):
            out[grp.index] = values
        return out

    def _blockwise_mv(self, matrices: list[torch.Tensor], vector: torch.Tensor) -> torch.Tensor:
        vector = vector.to(matrices[0])
        products = [
            torch.einsum("nst,nt->ns", matrix, vector[grp.index])
            for grp, matrix in zip(self.groups, matrices, strict=True)
        ]
        return self._scatter(products)

    def restricted(self, layout: ParameterLayout) -> DenseBlockCurvature:
        """The same matrix on a finer ``layout`` whose blocks lie inside this one's blocks."""
        inner = []
        for b in layout.blocks:
            outer = self.layout.block_of(b.start)
            if b.stop > outer.stop:
                raise ValueError(
                    f"block {b.index} of {layout!r} crosses a block boundary of {self.layout!r}"
                )
            a = b.start - outer.start
            inner.append(self.block(outer.index)[a : a + b.size, a : a + b.size])
        groups = group_blocks(layout, self.groups[0].matrix.device)
        for grp in groups:
            grp.matrix = torch.stack([inner[i] for i in grp.blocks])
        return DenseBlockCurvature(
            layout, groups, kind=self.kind, requires_damping=self.requires_damping
        )


class DenseAccumulator:
    """Streams gradient chunks into dense Fisher blocks F_B = G_Bᵀ G_B / m."""

    def __init__(self, layout: ParameterLayout, dtype: torch.dtype, max_memory_gb: float, **_):
        check_dense_memory(layout, max_memory_gb)
        self.layout, self.dtype, self.groups = layout, dtype, None

    def add(self, chunk: torch.Tensor) -> None:
        if self.groups is None:
            self.groups = group_blocks(self.layout, chunk.device)
            for grp in self.groups:
                n, s = grp.index.shape
                grp.matrix = torch.zeros(n, s, s, dtype=self.dtype, device=chunk.device)
        for grp in self.groups:
            _accumulate_gram(grp, chunk, self.dtype)

    def combine(self, ranks) -> None:
        """Σ over the ranks of the process group of every block's GᵀG."""
        for grp in self.groups:
            ranks.sum_(grp.matrix)

    def finish(self, num_samples: int) -> DenseBlockCurvature:
        for grp in self.groups:
            grp.matrix /= num_samples
        return DenseBlockCurvature(self.layout, self.groups)


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
