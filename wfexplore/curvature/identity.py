"""Identity curvature C = I: the OBS frame with it is magnitude pruning (ρ_q = w_q² / 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfexplore.curvature.base import Curvature
from wfexplore.params import ParameterLayout


class IdentityCurvature(Curvature):
    """C = I."""

    kind = "identity"

    def __init__(self, layout: ParameterLayout, dtype: torch.dtype = torch.float64):
        super().__init__(layout, damping=0.0)
        self.dtype = dtype

    def diag(self) -> torch.Tensor:
        return torch.ones(self.dim, dtype=self.dtype)

    def inverse_diag(self) -> torch.Tensor:
        return self.diag()

    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.to(self.dtype).clone()

    def inverse_columns(self, block: int, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.layout.blocks[block].size, dtype=self.dtype)
        return eye[:, torch.as_tensor(positions, dtype=torch.long)]

    def block(self, index: int) -> torch.Tensor:
        return torch.eye(self.layout.blocks[index].size, dtype=self.dtype)

    def memory_bytes(self) -> int:
        return 0
