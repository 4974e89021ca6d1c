"""Identity curvature M = I: the OBS frame with it is magnitude pruning (ρ_q = w_q² / 2)."""

from __future__ import annotations

import torch

from wfexplore.curvature.base import Curvature, Positions
from wfexplore.params import ParameterLayout


class IdentityCurvature(Curvature):
    """M = I, so C = (1 + λ)I."""

    kind = "identity"
    is_diagonal = True

    def __init__(
        self,
        layout: ParameterLayout,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ):
        super().__init__(layout)
        self.dtype = dtype
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def diag(self) -> torch.Tensor:
        return torch.ones(self.dim, dtype=self.dtype, device=self._device)

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.to(dtype=self.dtype, device=self._device).clone()

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        eye = torch.eye(self.layout.blocks[block].size, dtype=self.dtype, device=self._device)
        return eye[:, torch.as_tensor(positions, dtype=torch.long, device=self._device)]

    def _inverse_diag(self, damping: float) -> torch.Tensor:
        return torch.full((self.dim,), 1.0 / (1.0 + damping), dtype=self.dtype, device=self._device)

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        return vector.to(dtype=self.dtype, device=self._device) / (1.0 + damping)

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        return self.columns(block, positions) / (1.0 + damping)

    def memory_bytes(self) -> int:
        return 0
