r"""The interface every curvature representation answers.

A curvature M is a symmetric d×d matrix, block-diagonal with respect to a
:class:`~wfexplore.params.ParameterLayout` — the Fisher F, a diagonal, Kronecker factors,
the exact Hessian H — held *without* damping. Pruning uses the dampened C = M + λI, and λ
is an argument of every inverse operation (one M serves every λ of a sweep):

- forward, of M: ``diag()``, ``mv(v)`` = M v, ``columns(block, positions)``, ``block(i)``;
- inverse, of C = M + λI: ``inverse_diag(λ)`` = diag(C⁻¹) (the [C⁻¹]_qq of the OBS saliency
  w_q² / (2[C⁻¹]_qq)), ``inverse_mv(v, λ)`` = C⁻¹v, ``inverse_columns(block, positions, λ)``,
  ``inverse_block(i, λ)``;
- ``memory_bytes()``: what the representation holds.

:meth:`Curvature.damped` gives the view C = M + λI (:class:`DampedCurvature`) that answers
the same questions without the λ argument; it is what saliencies and weight updates take.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from wfexplore._checks import non_negative_float, positive_float
from wfexplore.params import ParameterLayout

Positions = Sequence[int] | torch.Tensor

DISPLAY_BLOCK_LIMIT = 8192
"""Largest block (weights) of which a representation without dense blocks makes a dense copy."""
COLUMN_CHUNK_BYTES = 64 * 2**20
"""Bytes of the column chunks that products with large blocks are computed in."""


class Curvature(ABC):
    """A block-diagonal curvature matrix M over the analysed weights of ``layout``."""

    #: short name shown in tables and plots
    kind: str = "curvature"
    #: True when M is diagonal: removing a weight then moves no other weight (OBS = OBD)
    is_diagonal: bool = False
    #: True when M may be singular, so that inverses need λ > 0 (an estimated Fisher)
    requires_damping: bool = False

    def __init__(self, layout: ParameterLayout):
        self.layout = layout

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def damping(self) -> float:
        """λ of this matrix: 0 for the undamped M (see :class:`DampedCurvature`)."""
        return 0.0

    @property
    def device(self) -> torch.device:
        """Where the representation's tensors are (and its results are made)."""
        return torch.device("cpu")

    @property
    def undamped(self) -> Curvature:
        """The matrix M itself."""
        return self

    # --- forward, of M -------------------------------------------------------------------------
    @abstractmethod
    def diag(self) -> torch.Tensor:
        """diag(M) as a length-d vector."""

    @abstractmethod
    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        """M v for a length-d vector v."""

    @abstractmethod
    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        """Columns ``positions`` (indices inside the block) of the block of M: (size, k)."""

    def block(self, index: int) -> torch.Tensor:
        """Dense block ``index`` of M."""
        return self.columns(index, torch.arange(self.layout.blocks[index].size, device=self.device))

    # --- inverse, of C = M + λI ----------------------------------------------------------------
    def inverse_diag(self, damping: float) -> torch.Tensor:
        """diag((M + λI)⁻¹) as a length-d vector."""
        return self._inverse_diag(self.absolute_damping(damping))

    def inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        """(M + λI)⁻¹ v for a length-d vector v."""
        return self._inverse_mv(vector, self.absolute_damping(damping))

    def inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        """Columns ``positions`` of the block of (M + λI)⁻¹: (size, k)."""
        return self._inverse_columns(block, positions, self.absolute_damping(damping))

    def inverse_block(self, index: int, damping: float) -> torch.Tensor:
        """Dense block ``index`` of (M + λI)⁻¹."""
        return self._inverse_block(index, self.absolute_damping(damping))

    def inverse_blocks(self, blocks: Sequence[int], damping: float) -> torch.Tensor:
        """Dense blocks of (M + λI)⁻¹ stacked, (n, s, s), for ``blocks`` of one size s."""
        return self._inverse_blocks(blocks, self.absolute_damping(damping))

    @abstractmethod
    def _inverse_diag(self, damping: float) -> torch.Tensor: ...

    @abstractmethod
    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor: ...

    @abstractmethod
    def _inverse_columns(
        self, block: int, positions: Positions, damping: float
    ) -> torch.Tensor: ...

    def _inverse_block(self, index: int, damping: float) -> torch.Tensor:
        size = self.layout.blocks[index].size
        return self._inverse_columns(index, torch.arange(size, device=self.device), damping)

    def _inverse_blocks(self, blocks: Sequence[int], damping: float) -> torch.Tensor:
        return torch.stack([self._inverse_block(i, damping) for i in blocks])

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of tensors the representation holds."""

    # --- damping -----------------------------------------------------------------------------
    def mean_diagonal(self) -> float:
        """mean(diag M), the scale of relative damping."""
        return float(self.diag().mean())

    def absolute_damping(self, damping: float, relative: bool = False) -> float:
        """λ itself, or λ · mean(diag M) when ``relative``.

        λ must be finite and ≥ 0, and > 0 where M may be singular (``requires_damping``).
        """
        if self.requires_damping:
            value = positive_float(damping, "damping", "e.g. damping=1e-5")
        else:
            value = non_negative_float(damping, "damping", "e.g. damping=1e-5, or 0")
        if not relative:
            return value
        mean = self.mean_diagonal()
        if not mean > 0:
            raise ValueError(
                f"relative damping needs a positive mean diagonal, got {mean!r}; pass an "
                "absolute damping instead (relative_damping=False)"
            )
        return value * mean

    def damped(self, damping: float, *, relative: bool = False) -> DampedCurvature:
        """The view C = M + λI (λ = ``damping``, or ``damping`` · mean(diag M) if ``relative``)."""
        return DampedCurvature(self, self.absolute_damping(damping, relative))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, d={self.dim}, "
            f"blocks={self.layout.num_blocks}, memory={self.memory_bytes() / 2**20:.1f} MiB)"
        )


class DampedCurvature:
    """C = M + λI for a curvature M and a fixed λ: the same questions, without λ arguments."""

    def __init__(self, base: Curvature, damping: float):
        if isinstance(base, DampedCurvature):
            raise TypeError("base: damp the undamped curvature (curvature.undamped.damped(λ))")
        self.base = base
        self._damping = float(damping)

    def __getattr__(self, name: str):
        """Anything else (factors, gradients, groups) is the undamped curvature's."""
        if name.startswith("__") or name in ("base", "_damping"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def layout(self) -> ParameterLayout:
        return self.base.layout

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def is_diagonal(self) -> bool:
        return self.base.is_diagonal

    @property
    def damping(self) -> float:
        return self._damping

    @property
    def undamped(self) -> Curvature:
        return self.base

    def diag(self) -> torch.Tensor:
        return self.base.diag() + self._damping

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        out = self.base.mv(vector)
        return out + self._damping * vector.to(out)

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        cols = self.base.columns(block, positions).clone()
        pos = torch.as_tensor(positions, dtype=torch.long, device=cols.device)
        cols[pos, torch.arange(len(pos), device=cols.device)] += self._damping
        return cols

    def block(self, index: int) -> torch.Tensor:
        out = self.base.block(index).clone()
        out.diagonal().add_(self._damping)
        return out

    def inverse_diag(self) -> torch.Tensor:
        return self.base.inverse_diag(self._damping)

    def inverse_mv(self, vector: torch.Tensor) -> torch.Tensor:
        return self.base.inverse_mv(vector, self._damping)

    def inverse_columns(self, block: int, positions: Positions) -> torch.Tensor:
        return self.base.inverse_columns(block, positions, self._damping)

    def inverse_block(self, index: int) -> torch.Tensor:
        return self.base.inverse_block(index, self._damping)

    def inverse_blocks(self, blocks: Sequence[int]) -> torch.Tensor:
        return self.base.inverse_blocks(blocks, self._damping)

    def memory_bytes(self) -> int:
        return self.base.memory_bytes()

    def __repr__(self) -> str:
        return f"{self.base!r} + λI (λ={self._damping:.3g})"


AnyCurvature = Curvature | DampedCurvature


def as_damped(curvature: AnyCurvature) -> DampedCurvature:
    """C itself for a damped view; M + 0·I for an M that may be inverted without damping."""
    if isinstance(curvature, DampedCurvature):
        return curvature
    if not isinstance(curvature, Curvature):
        raise TypeError(f"curvature: expected a Curvature, got {type(curvature).__name__}")
    if curvature.requires_damping:
        raise ValueError(
            f"curvature: the {curvature.kind} matrix M is singular without damping; pass "
            "curvature.damped(λ), e.g. curvature.damped(1e-5)"
        )
    return curvature.damped(0.0)


def check_same_layout(curvature: AnyCurvature, layout: ParameterLayout) -> None:
    """Refuse a curvature built for another parameter selection or block layout."""
    if curvature.layout.signature != layout.signature:
        raise ValueError(
            f"the curvature was built for {curvature.layout!r}, not for {layout!r}; "
            "estimate the curvature with the same layout"
        )
