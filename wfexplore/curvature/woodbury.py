"""The WoodFisher paper's inverse: one Woodbury (Sherman–Morrison) step per gradient.

F_0⁻¹ = λ⁻¹I,  F_k⁻¹ = F_{k-1}⁻¹ − (F_{k-1}⁻¹ g_k)(F_{k-1}⁻¹ g_k)ᵀ / (m + g_kᵀ F_{k-1}⁻¹ g_k).

After m steps F_m⁻¹ = (λI + (1/m) Σ g gᵀ)⁻¹ exactly (in exact arithmetic). Kept as the
faithful reference for the dense blocks (:class:`~wfexplore.curvature.dense.DenseBlockCurvature`),
which reach the same inverse with matrix products and one factorisation. The recursion is
run once per λ asked for, vectorised over blocks and sequential over gradients, so the
gradients are held.
"""

from __future__ import annotations

import torch

from wfexplore.curvature.dense import (
    BlockGroup,
    DenseAccumulator,
    DenseBlockCurvature,
)
from wfexplore.curvature.lowrank import GradientStore
from wfexplore.params import ParameterLayout


class WoodburyCurvature(DenseBlockCurvature):
    """Dense Fisher blocks whose inverses come from the Woodbury recursion over G."""

    def __init__(self, layout: ParameterLayout, groups: list[BlockGroup], gradients: torch.Tensor):
        super().__init__(layout, groups, kind="woodbury")
        self.gradients = gradients

    def memory_bytes(self) -> int:
        return super().memory_bytes() + self.gradients.numel() * self.gradients.element_size()

    def _invert(self, damping: float) -> list[torch.Tensor]:
        m = self.gradients.shape[0]
        out = []
        for grp in self.groups:
            n, s = grp.index.shape
            dtype, device = grp.matrix.dtype, grp.matrix.device
            inverse = torch.eye(s, dtype=dtype, device=device).repeat(n, 1, 1) / damping
            for chunk in self.gradients.split(256):
                for g in chunk[:, grp.index].to(dtype):  # (n, s) per gradient
                    u = torch.bmm(inverse, g.unsqueeze(-1))  # (n, s, 1)
                    denom = m + (g.unsqueeze(1) @ u)  # (n, 1, 1)
                    inverse.baddbmm_(u, (u / denom).transpose(1, 2), alpha=-1.0)
            out.append(inverse)
        return out


class WoodburyAccumulator(DenseAccumulator):
    """Dense blocks F_B = G_Bᵀ G_B / m, holding G for the recursion."""

    def __init__(
        self,
        layout: ParameterLayout,
        dtype: torch.dtype,
        max_memory_gb: float,
        num_samples: int | None = None,
        **_,
    ):
        super().__init__(layout, dtype, max_memory_gb)
        self.store = GradientStore(layout, dtype, num_samples)

    def add(self, chunk: torch.Tensor) -> None:
        super().add(chunk)
        self.store.add(chunk)

    def combine(self, ranks) -> None:
        super().combine(ranks)
        self.store.gather(ranks)

    def finish(self, num_samples: int) -> WoodburyCurvature:
        dense = super().finish(num_samples)
        return WoodburyCurvature(self.layout, dense.groups, self.store.matrix(num_samples))
