"""Low-rank Fisher blocks through the Gram side of the Woodbury identity (the M-FAC idea).

For a block B with gradient columns G_B ∈ R^{m×|B|}, M_B = G_BᵀG_B/m and
K_B = mλI + G_B G_Bᵀ (m×m):

    (λI + G_BᵀG_B/m)⁻¹ = λ⁻¹[I − G_Bᵀ K_B⁻¹ G_B],
    [F_λ⁻¹]_qq = λ⁻¹(1 − ‖L_B⁻¹ g_q‖²)  with K_B = L_B L_Bᵀ and g_q column q of G_B.

Only G (m×d, kept in the gradients' dtype) and, for the last λ asked for, one m×m
Cholesky factor per block are held, so blocks can be whole layers or the whole model:
O(m·d) memory, never |B|².
Products with G_B run in ``dtype`` (float64 by default) over column chunks. The two
O(m²d) products, G_B G_Bᵀ and L_B⁻¹ G_B, skip the blocks of rows that symmetry or
triangularity make redundant, about 5/8 of the work of plain matrix products.
"""

from __future__ import annotations

import torch

from wfexplore.curvature.base import (
    COLUMN_CHUNK_BYTES,
    DISPLAY_BLOCK_LIMIT,
    Curvature,
    Positions,
)
from wfexplore.params import ParameterLayout


class LowRankCurvature(Curvature):
    """M = GᵀG/m per block, represented by G; (M + λI)⁻¹ through K_B = mλI + G_B G_Bᵀ."""

    kind = "lowrank"
    requires_damping = True

    def __init__(
        self,
        layout: ParameterLayout,
        gradients: torch.Tensor,
        *,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(layout)
        if gradients.ndim != 2 or gradients.shape[1] != layout.dim:
            raise ValueError(
                f"gradients: expected shape (m, {layout.dim}), got {tuple(gradients.shape)}"
            )
        self.gradients = gradients
        self.num_samples = gradients.shape[0]
        self.dtype = dtype
        largest = max(b.size for b in layout.blocks)
        self._columns = max(1, min(COLUMN_CHUNK_BYTES // (8 * self.num_samples), largest))
        self._buffers = [
            torch.empty(self.num_samples, self._columns, dtype=dtype, device=gradients.device)
            for _ in range(2)
        ]
        self._factors: dict[float, list[torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.gradients.device

    # --- forward ---------------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        out = torch.empty(self.dim, dtype=self.dtype, device=self.gradients.device)
        for start, stop in self._column_chunks(0, self.dim):
            out[start:stop] = self._cols(start, stop).pow(2).sum(0) / self.num_samples
        return out

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        vector = vector.to(dtype=self.dtype, device=self.gradients.device)
        out = torch.empty_like(vector)
        for b in self.layout.blocks:
            gv = self._times(b.start, b.stop, vector[b.start : b.stop, None])
            part = out[b.start : b.stop].unsqueeze(1)  # a view: written in place
            self._transpose_times(b.start, b.stop, gv / self.num_samples, part)
        return out

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        b = self.layout.blocks[block]
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.gradients.device)
        chosen = self.gradients[:, b.start + positions].to(self.dtype)  # (m, k)
        cols = torch.empty(b.size, len(positions), dtype=self.dtype, device=chosen.device)
        self._transpose_times(b.start, b.stop, chosen / self.num_samples, cols)
        return cols

    def block(self, index: int) -> torch.Tensor:
        b = self.layout.blocks[index]
        if b.size > DISPLAY_BLOCK_LIMIT:
            raise ValueError(
                f"block {index} has {b.size} weights; a dense copy is only made for blocks of at "
                f"most {DISPLAY_BLOCK_LIMIT}; use a layout with a smaller block_size for display"
            )
        g = self.gradients[:, b.start : b.stop].to(self.dtype)
        return g.T @ g / self.num_samples

    # --- inverse ---------------------------------------------------------------------------
    def _inverse_diag(self, damping: float) -> torch.Tensor:
        out = torch.empty(self.dim, dtype=self.dtype, device=self.gradients.device)
        for b, chol in zip(self.layout.blocks, self.factors(damping), strict=True):
            eye = torch.eye(self.num_samples, dtype=self.dtype, device=chol.device)
            chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
            for start, stop in self._column_chunks(b.start, b.stop):
                w = _lower_times(chol_inv, self._cols(start, stop), self._buffers[1])
                out[start:stop] = (1.0 - w.square_().sum(0)) / damping
        return out

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        vector = vector.to(dtype=self.dtype, device=self.gradients.device)
        out = torch.empty_like(vector)
        for b, chol in zip(self.layout.blocks, self.factors(damping), strict=True):
            v = vector[b.start : b.stop]
            s = torch.cholesky_solve(self._times(b.start, b.stop, v[:, None]), chol)
            gts = torch.empty(b.size, 1, dtype=self.dtype, device=vector.device)
            self._transpose_times(b.start, b.stop, s, gts)
            out[b.start : b.stop] = (v - gts[:, 0]) / damping
        return out

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        b = self.layout.blocks[block]
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.gradients.device)
        chosen = self.gradients[:, b.start + positions].to(self.dtype)  # (m, k)
        s = torch.cholesky_solve(chosen, self.factors(damping)[block])
        cols = torch.empty(b.size, len(positions), dtype=self.dtype, device=chosen.device)
        self._transpose_times(b.start, b.stop, -s, cols)
        cols[positions, torch.arange(len(positions), device=cols.device)] += 1.0
        return cols / damping

    def memory_bytes(self) -> int:
        held = [self.gradients]
        held += [f for per_block in self._factors.values() for f in per_block]
        return sum(t.numel() * t.element_size() for t in held)

    def factors(self, damping: float) -> list[torch.Tensor]:
        """Cholesky factors L_B of K_B = mλI + G_B G_Bᵀ, kept for the last λ asked for."""
        lam = self.absolute_damping(damping)
        if lam not in self._factors:
            self._factors.clear()  # one λ at a time: the factors are as large as the Grams
            factors = []
            for b in self.layout.blocks:
                gram = self._gram(b.start, b.stop)
                gram.diagonal().add_(self.num_samples * lam)
                factors.append(torch.linalg.cholesky(gram))
            self._factors[lam] = factors
        return self._factors[lam]

    # --- helpers -------------------------------------------------------------------------
    def _gram(self, start: int, stop: int) -> torch.Tensor:
        m = self.num_samples
        gram = torch.zeros(m, m, dtype=self.dtype, device=self.gradients.device)
        for a, z in self._column_chunks(start, stop):
            gram += _gram(self._cols(a, z))
        return gram

    def _times(self, start: int, stop: int, v: torch.Tensor) -> torch.Tensor:
        """G[:, start:stop] v for a (stop − start, k) matrix v: (m, k)."""
        out = torch.zeros(self.num_samples, v.shape[1], dtype=self.dtype, device=v.device)
        for a, z in self._column_chunks(start, stop):
            out += self._cols(a, z) @ v[a - start : z - start]
        return out

    def _transpose_times(self, start: int, stop: int, s: torch.Tensor, out: torch.Tensor) -> None:
        """out = G[:, start:stop]ᵀ s for a (m, k) matrix s, written into ``out``."""
        for a, z in self._column_chunks(start, stop):
            out[a - start : z - start] = self._cols(a, z).T @ s

    def _cols(self, start: int, stop: int) -> torch.Tensor:
        """G[:, start:stop] in ``dtype``, in a reused buffer (valid until the next call)."""
        cols = self._buffers[0][:, : stop - start]
        cols.copy_(self.gradients[:, start:stop])
        return cols

    def _column_chunks(self, start: int, stop: int):
        for a in range(start, stop, self._columns):
            yield a, min(a + self._columns, stop)


class GradientStore:
    """Collects gradient chunks into the (m, d) matrix G, written in place when m is known
    (allocated once, never copied)."""

    def __init__(
        self, layout: ParameterLayout, dtype: torch.dtype, num_samples: int | None = None, **_
    ):
        self.layout, self.dtype, self.num_samples = layout, dtype, num_samples
        self.chunks: list[torch.Tensor] = []
        self.rows: torch.Tensor | None = None
        self.filled = 0

    def add(self, chunk: torch.Tensor) -> None:
        if self.num_samples is None:
            self.chunks.append(chunk)
            return
        if self.rows is None and chunk.shape[0] == self.num_samples:
            self.rows, self.filled = chunk, chunk.shape[0]  # G given whole: held, not copied
            return
        if self.rows is None:
            shape = (self.num_samples, chunk.shape[1])
            self.rows = torch.empty(shape, dtype=chunk.dtype, device=chunk.device)
        stop = self.filled + chunk.shape[0]
        if stop > self.num_samples:
            raise ValueError(f"gradients: more than num_samples={self.num_samples} rows")
        self.rows[self.filled : stop] = chunk
        self.filled = stop

    def matrix(self, num_samples: int | None) -> torch.Tensor:
        if self.rows is None:
            return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)
        if self.filled != self.num_samples:
            raise ValueError(
                f"gradients: {self.filled} rows given but num_samples={self.num_samples}"
            )
        return self.rows

    def combine(self, ranks) -> None:
        """The ranks' rows, gathered in rank order (every rank then holds all of G)."""
        local = self.matrix(None)
        self.chunks, self.rows, self.num_samples = [ranks.gather_rows(local)], None, None

    def finish(self, num_samples: int) -> LowRankCurvature:
        return LowRankCurvature(self.layout, self.matrix(num_samples), dtype=self.dtype)


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
