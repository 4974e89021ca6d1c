"""Low-rank Fisher blocks through the Gram side of the Woodbury identity (the M-FAC idea).

For a block B with gradient columns G_B ∈ R^{m×|B|} and K_B = mλI + G_B G_Bᵀ (m×m):

    (λI + G_BᵀG_B/m)⁻¹ = λ⁻¹[I − G_Bᵀ K_B⁻¹ G_B],
    [F_λ⁻¹]_qq = λ⁻¹(1 − ‖L_B⁻¹ g_q‖²)  with K_B = L_B L_Bᵀ and g_q column q of G_B.

Only G (m×d, kept in the gradients' dtype) and one m×m Cholesky factor per block are
held, so blocks can be whole layers or the whole model: O(m·d) memory, never |B|².
Products with G_B run in ``dtype`` (float64 by default) over column chunks. The two
O(m²d) products, G_B G_Bᵀ and L_B⁻¹ G_B, skip the blocks of rows that symmetry or
triangularity make redundant, about 5/8 of the work of plain matrix products.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from wfexplore.curvature.base import Curvature, resolve_damping
from wfexplore.params import ParameterLayout

COLUMN_CHUNK_BYTES = 64 * 2**20
DISPLAY_BLOCK_LIMIT = 8192


class LowRankCurvature(Curvature):
    """F_λ = λI + GᵀG/m per block, represented by G and the factors of K_B = mλI + G_B G_Bᵀ."""

    kind = "lowrank"

    def __init__(
        self,
        layout: ParameterLayout,
        gradients: torch.Tensor,
        damping: float,
        *,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(layout, damping)
        if gradients.ndim != 2 or gradients.shape[1] != layout.dim:
            raise ValueError(
                f"gradients: expected shape (m, {layout.dim}), got {tuple(gradients.shape)}"
            )
        self.gradients = gradients
        self.num_samples = gradients.shape[0]
        self.dtype = dtype
        self._columns = max(1, COLUMN_CHUNK_BYTES // (8 * self.num_samples))
        self._buffers = [
            torch.empty(self.num_samples, self._columns, dtype=dtype, device=gradients.device)
            for _ in range(2)
        ]
        self.factors = [self._factor(b.start, b.stop) for b in layout.blocks]

    @classmethod
    def from_gradients(
        cls,
        gradients: torch.Tensor | Iterable[torch.Tensor],
        layout: ParameterLayout,
        damping: float,
        *,
        relative_damping: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> LowRankCurvature:
        """Build from the ``(m, d)`` gradient matrix or an iterable of its row chunks."""
        g = gradients if isinstance(gradients, torch.Tensor) else torch.cat(list(gradients))
        if g.shape[0] == 0:
            raise ValueError("gradients: no gradient samples were given")
        mean_diag = (
            sum(float(part.to(dtype).square().sum()) for part in g.split(4096, dim=1)) / g.numel()
            if relative_damping
            else float("nan")
        )
        return cls(layout, g, resolve_damping(damping, relative_damping, mean_diag), dtype=dtype)

    # --- the interface -----------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        out = torch.empty(self.dim, dtype=self.dtype, device=self.gradients.device)
        for start, stop in self._column_chunks(0, self.dim):
            g = self._cols(start, stop)
            out[start:stop] = self.damping + g.pow(2).sum(0) / self.num_samples
        return out

    def inverse_diag(self) -> torch.Tensor:
        out = torch.empty(self.dim, dtype=self.dtype, device=self.gradients.device)
        for b, chol in zip(self.layout.blocks, self.factors, strict=True):
            eye = torch.eye(self.num_samples, dtype=self.dtype, device=chol.device)
            chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
            for start, stop in self._column_chunks(b.start, b.stop):
                w = _lower_times(chol_inv, self._cols(start, stop), self._buffers[1])
                out[start:stop] = (1.0 - w.square_().sum(0)) / self.damping
        return out

    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        vector = vector.to(dtype=self.dtype, device=self.gradients.device)
        out = torch.empty_like(vector)
        for b, chol in zip(self.layout.blocks, self.factors, strict=True):
            gv = torch.zeros(self.num_samples, 1, dtype=self.dtype, device=vector.device)
            for start, stop in self._column_chunks(b.start, b.stop):
                gv += self._cols(start, stop) @ vector[start:stop, None]
            s = torch.cholesky_solve(gv, chol)
            for start, stop in self._column_chunks(b.start, b.stop):
                gts = (self._cols(start, stop).T @ s)[:, 0]
                out[start:stop] = (vector[start:stop] - gts) / self.damping
        return out

    def inverse_columns(self, block: int, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        b = self.layout.blocks[block]
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.gradients.device)
        chosen = self.gradients[:, b.start + positions].to(self.dtype)  # (m, k)
        s = torch.cholesky_solve(chosen, self.factors[block])
        cols = torch.empty(b.size, len(positions), dtype=self.dtype, device=chosen.device)
        for start, stop in self._column_chunks(b.start, b.stop):
            cols[start - b.start : stop - b.start] = -(self._cols(start, stop).T @ s)
        cols[positions, torch.arange(len(positions), device=cols.device)] += 1.0
        return cols / self.damping

    def block(self, index: int) -> torch.Tensor:
        b = self.layout.blocks[index]
        if b.size > DISPLAY_BLOCK_LIMIT:
            raise ValueError(
                f"block {index} has {b.size} weights; a dense copy is only made for blocks of at "
                f"most {DISPLAY_BLOCK_LIMIT}; use a layout with a smaller block_size for display"
            )
        g = self.gradients[:, b.start : b.stop].to(self.dtype)
        dense = g.T @ g / self.num_samples
        dense.diagonal().add_(self.damping)
        return dense

    def memory_bytes(self) -> int:
        held = self.gradients.numel() * self.gradients.element_size()
        return held + sum(f.numel() * f.element_size() for f in self.factors)

    # --- helpers -------------------------------------------------------------------------
    def _factor(self, start: int, stop: int) -> torch.Tensor:
        m = self.num_samples
        gram = torch.zeros(m, m, dtype=self.dtype, device=self.gradients.device)
        for a, z in self._column_chunks(start, stop):
            gram += _gram(self._cols(a, z))
        gram.diagonal().add_(m * self.damping)
        return torch.linalg.cholesky(gram)

    def _cols(self, start: int, stop: int) -> torch.Tensor:
        """G[:, start:stop] in ``dtype``, in a reused buffer (valid until the next call)."""
        cols = self._buffers[0][:, : stop - start]
        cols.copy_(self.gradients[:, start:stop])
        return cols

    def _column_chunks(self, start: int, stop: int):
        for a in range(start, stop, self._columns):
            yield a, min(a + self._columns, stop)


ROW_PARTS = 4


def _row_edges(m: int) -> list[int]:
    return [m * i // ROW_PARTS for i in range(ROW_PARTS + 1)]


def _gram(g: torch.Tensor) -> torch.Tensor:
    """G Gᵀ for a (m, c) matrix, computing only the blocks on and below the diagonal."""
    m = g.shape[0]
    out = torch.empty(m, m, dtype=g.dtype, device=g.device)
    e = _row_edges(m)
    for a, z in zip(e[:-1], e[1:], strict=True):
        rows = g[a:z] @ g[:z].T
        out[a:z, :z] = rows
        out[:z, a:z] = rows.T
    return out


def _lower_times(lower: torch.Tensor, g: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """L G for a lower-triangular (m, m) L and a (m, c) G, skipping the zero upper blocks."""
    out = buffer[:, : g.shape[1]]
    e = _row_edges(g.shape[0])
    for a, z in zip(e[:-1], e[1:], strict=True):
        torch.matmul(lower[a:z, :z], g[:z], out=out[a:z])
    return out
