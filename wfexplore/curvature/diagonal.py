"""Diagonal curvature C = diag(F) + λI: the OBS frame with it is OBD (ρ_q = ½ C_qq w_q²)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from wfexplore.curvature.base import Curvature, resolve_damping
from wfexplore.params import ParameterLayout


class DiagonalCurvature(Curvature):
    """C = diag(values) with values = diag(M) + λ."""

    kind = "diagonal"

    def __init__(self, layout: ParameterLayout, values: torch.Tensor, damping: float):
        super().__init__(layout, damping)
        if values.shape != (layout.dim,):
            raise ValueError(f"values: expected shape ({layout.dim},), got {tuple(values.shape)}")
        self.values = values

    @classmethod
    def from_gradients(
        cls,
        gradients: torch.Tensor | Iterable[torch.Tensor],
        layout: ParameterLayout,
        damping: float,
        *,
        relative_damping: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> DiagonalCurvature:
        """diag(F) + λ with F_qq = (1/m) Σ_n g_nq², streamed over ``(c, d)`` gradient chunks."""
        chunks = [gradients] if isinstance(gradients, torch.Tensor) else gradients
        total, m = torch.zeros(layout.dim, dtype=dtype), 0
        for chunk in chunks:
            chunk = chunk.to(dtype)
            total = total.to(chunk.device)
            total += (chunk * chunk).sum(0)
            m += chunk.shape[0]
        if m == 0:
            raise ValueError("gradients: no gradient samples were given")
        fisher_diag = total / m
        lam = resolve_damping(damping, relative_damping, float(fisher_diag.mean()))
        return cls(layout, fisher_diag + lam, lam)

    def diag(self) -> torch.Tensor:
        return self.values

    def inverse_diag(self) -> torch.Tensor:
        return 1.0 / self.values

    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.to(self.values) / self.values

    def inverse_columns(self, block: int, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(1.0 / self._block_values(block))[:, torch.as_tensor(positions)]

    def block(self, index: int) -> torch.Tensor:
        return torch.diag_embed(self._block_values(index))

    def memory_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def _block_values(self, index: int) -> torch.Tensor:
        b = self.layout.blocks[index]
        return self.values[b.start : b.stop]
