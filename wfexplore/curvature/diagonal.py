"""Diagonal curvature M = diag(F): the OBS frame with it is OBD (ρ_q = ½ C_qq w_q²)."""

from __future__ import annotations

import torch

from wfexplore.curvature.base import Curvature, Positions
from wfexplore.params import ParameterLayout


class DiagonalCurvature(Curvature):
    """M = diag(values), e.g. values = diag(F) with F_qq = (1/m) Σ_n g_nq²."""

    kind = "diagonal"
    is_diagonal = True

    def __init__(self, layout: ParameterLayout, values: torch.Tensor):
        super().__init__(layout)
        if values.shape != (layout.dim,):
            raise ValueError(f"values: expected shape ({layout.dim},), got {tuple(values.shape)}")
        self.values = values
        #: a zero (or negative) entry makes M singular: inverses then need λ > 0
        self.requires_damping = not bool((values > 0).all())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def diag(self) -> torch.Tensor:
        return self.values

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        return self.values * vector.to(self.values)

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        return torch.diag_embed(self._block_values(block))[:, self._positions(positions)]

    def _inverse_diag(self, damping: float) -> torch.Tensor:
        return 1.0 / (self.values + damping)

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        return vector.to(self.values) / (self.values + damping)

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        inverse = 1.0 / (self._block_values(block) + damping)
        return torch.diag_embed(inverse)[:, self._positions(positions)]

    def memory_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def _positions(self, positions) -> torch.Tensor:
        return torch.as_tensor(positions, dtype=torch.long, device=self.values.device)

    def _block_values(self, index: int) -> torch.Tensor:
        b = self.layout.blocks[index]
        return self.values[b.start : b.stop]


class DiagonalAccumulator:
    """Streams gradient chunks into diag(F) = (1/m) Σ_n g_n ∘ g_n."""

    def __init__(self, layout: ParameterLayout, dtype: torch.dtype, **_):
        self.layout, self.dtype, self.total = layout, dtype, None

    def add(self, chunk: torch.Tensor) -> None:
        chunk = chunk.to(self.dtype)
        if self.total is None:
            self.total = torch.zeros(self.layout.dim, dtype=self.dtype, device=chunk.device)
        self.total += (chunk * chunk).sum(0)

    def combine(self, ranks) -> None:
        """Σ over the ranks of the process group."""
        ranks.sum_(self.total)

    def finish(self, num_samples: int) -> DiagonalCurvature:
        return DiagonalCurvature(self.layout, self.total / num_samples)
