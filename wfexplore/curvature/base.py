"""The interface every curvature representation answers.

A curvature C is a symmetric d×d matrix, block-diagonal with respect to a
:class:`~wfexplore.params.ParameterLayout`, usually dampened: C = M + λI. Every
representation (identity, diagonal, dense blocks, low-rank, Hessian) answers the same
questions, which is all that saliency and pruning need:

- ``diag()``: diag(C);
- ``inverse_diag()``: diag(C⁻¹), the [C⁻¹]_qq of the OBS saliency w_q² / (2[C⁻¹]_qq);
- ``inverse_mv(v)``: C⁻¹v;
- ``inverse_columns(block, positions)``: columns of the block inverse, for OBS updates;
- ``block(i)`` / ``inverse_block(i)``: dense blocks for display;
- ``memory_bytes()``: what the representation holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from wfexplore._checks import positive_float
from wfexplore.params import ParameterLayout


class Curvature(ABC):
    """A block-diagonal curvature matrix C over the analysed weights of ``layout``."""

    #: short name shown in tables and plots
    kind: str = "curvature"

    def __init__(self, layout: ParameterLayout, damping: float):
        self.layout = layout
        self.damping = float(damping)

    @property
    def dim(self) -> int:
        return self.layout.dim

    @abstractmethod
    def diag(self) -> torch.Tensor:
        """diag(C) as a length-d vector."""

    @abstractmethod
    def inverse_diag(self) -> torch.Tensor:
        """diag(C⁻¹) as a length-d vector."""

    @abstractmethod
    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        """C⁻¹ v for a length-d vector v."""

    @abstractmethod
    def inverse_columns(self, block: int, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Columns ``positions`` (indices inside the block) of the block's inverse: (size, k)."""

    @abstractmethod
    def block(self, index: int) -> torch.Tensor:
        """Dense block ``index`` of C."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of tensors the representation holds."""

    def inverse_block(self, index: int) -> torch.Tensor:
        """Dense block ``index`` of C⁻¹."""
        return self.inverse_columns(index, torch.arange(self.layout.blocks[index].size))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(d={self.dim}, blocks={self.layout.num_blocks}, "
            f"damping={self.damping:.3g}, memory={self.memory_bytes() / 2**20:.1f} MiB)"
        )


def resolve_damping(damping: float, relative: bool, mean_diagonal: float) -> float:
    """Absolute λ: ``damping`` itself, or ``damping × mean(diag F)`` when ``relative``."""
    positive_float(damping, "damping", "e.g. damping=1e-5")
    if not relative:
        return float(damping)
    value = damping * mean_diagonal
    if not value > 0:
        raise ValueError(
            f"relative damping needs a positive mean diagonal, got {mean_diagonal!r}; "
            "pass an absolute damping instead (relative_damping=False)"
        )
    return value


def check_same_layout(curvature: Curvature, layout: ParameterLayout) -> None:
    """Refuse a curvature built for another parameter selection or block layout."""
    if curvature.layout.signature != layout.signature:
        raise ValueError(
            f"the curvature was built for {curvature.layout!r}, not for {layout!r}; "
            "estimate the curvature with the same layout"
        )
