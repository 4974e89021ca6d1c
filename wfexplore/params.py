"""The analysed parameters of a model and their block layout.

The analysed weights are concatenated, in model order, into one flat vector
``w ∈ R^d``. That vector is cut into blocks: chunks of ``B`` consecutive weights
inside each layer (the last chunk of a layer may be shorter), one block per
layer, or the whole vector as a single block. Curvature representations are
block-diagonal with respect to this layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

BlockSpec = int | str
"""``int`` B (blocks of B inside each layer), ``"layer"`` or ``"model"``."""

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class AnalysedParameter:
    """One analysed tensor: ``flat[offset : offset + numel]`` is ``param.flatten()``."""

    name: str
    module_name: str
    module_type: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class Block:
    """Block ``index`` covers ``flat[start:stop]``; ``layer`` indexes its first parameter."""

    index: int
    start: int
    stop: int
    layer: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def default_parameter_names(model: nn.Module) -> list[str]:
    """Names of the ``weight`` of every Conv and Linear module, in model order."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_MODULE_TYPES) and getattr(module, "weight", None) is not None
    ]


def select_parameter_names(
    model: nn.Module,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
) -> list[str]:
    """Resolve a parameter selection to parameter names, in model order.

    ``names`` may hold parameter names (``"fc1.weight"``) or module names (``"fc1"``,
    meaning that module's ``weight``); ``pattern`` is a regular expression searched in
    parameter names. With neither, every Conv/Linear weight is selected.
    """
    available = [n for n, _ in model.named_parameters()]
    modules = dict(model.named_modules())
    if names is None and pattern is None:
        chosen = set(default_parameter_names(model))
    else:
        chosen = set()
        if isinstance(names, str):
            raise TypeError(
                f"names must be a list of parameter or module names, got the string {names!r}; "
                f"write names=[{names!r}] or pattern={names!r}"
            )
        for name in names or ():
            if name in available:
                chosen.add(name)
            elif name in modules and f"{name}.weight" in available:
                chosen.add(f"{name}.weight")
            else:
                raise ValueError(
                    f"names: {name!r} is neither a parameter nor a module with a weight; "
                    f"available parameters: {available}"
                )
        if pattern is not None:
            regex = re.compile(pattern)
            chosen.update(n for n in available if regex.search(n))
    selected = [n for n in available if n in chosen]
    if not selected:
        raise ValueError(
            "the parameter selection is empty: "
            + (
                f"pattern {pattern!r} matches none of {available}"
                if pattern is not None
                else "the model has no Conv/Linear weight; pass names=[...] or pattern=..."
            )
        )
    return selected


class ParameterLayout:
    """Analysed parameters of a model, their place in the flat vector and its blocks.

    Build it with :meth:`from_model`. ``layout.dim`` is d, ``layout.blocks`` the blocks,
    ``layout.flatten`` / ``layout.unflatten`` convert between tensors and the flat vector,
    ``layout.locate`` maps a flat index to ``(parameter name, position)``.
    """

    def __init__(self, parameters: Sequence[AnalysedParameter], block_size: BlockSpec = "layer"):
        if not parameters:
            raise ValueError("parameters: the layout needs at least one analysed parameter")
        self.parameters: tuple[AnalysedParameter, ...] = tuple(parameters)
        self.block_size: BlockSpec = _check_block_size(block_size)
        self.blocks: tuple[Block, ...] = tuple(self._make_blocks())
        self._by_name = {p.name: i for i, p in enumerate(self.parameters)}

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        names: Sequence[str] | None = None,
        pattern: str | None = None,
        block_size: BlockSpec = "layer",
    ) -> ParameterLayout:
        """Layout of the selected parameters of ``model`` (see :func:`select_parameter_names`)."""
        selected = select_parameter_names(model, names, pattern)
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        entries, offset = [], 0
        for name in selected:
            module_name = name.rpartition(".")[0]
            entry = AnalysedParameter(
                name=name,
                module_name=module_name,
                module_type=type(modules[module_name]).__name__,
                shape=tuple(params[name].shape),
                offset=offset,
            )
            entries.append(entry)
            offset = entry.stop
        return cls(entries, block_size)

    def with_block_size(self, block_size: BlockSpec) -> ParameterLayout:
        """The same parameters cut into different blocks."""
        return ParameterLayout(self.parameters, block_size)

    # --- sizes -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.parameters[-1].stop

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def signature(self) -> tuple:
        """Hashable identity of the layout: parameter names, shapes and blocks."""
        return (
            tuple((p.name, p.shape) for p in self.parameters),
            tuple((b.start, b.stop) for b in self.blocks),
        )

    def parameter(self, name: str) -> AnalysedParameter:
        if name not in self._by_name:
            raise KeyError(f"{name!r} is not analysed; analysed parameters: {self.names}")
        return self.parameters[self._by_name[name]]

    def blocks_of(self, name: str) -> list[Block]:
        """Blocks that lie (at least partly) in parameter ``name``."""
        p = self.parameter(name)
        return [b for b in self.blocks if b.start < p.stop and b.stop > p.offset]

    # --- flat vector ---------------------------------------------------------------------
    def flatten(self, tensors: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Concatenate the analysed tensors (a model or a name → tensor mapping) into w."""
        if isinstance(tensors, nn.Module):
            tensors = dict(tensors.named_parameters())
        return torch.cat([tensors[p.name].detach().reshape(-1) for p in self.parameters])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector (or a ``(..., d)`` batch of them) into named tensors."""
        if flat.shape[-1] != self.dim:
            raise ValueError(
                f"flat: last dimension is {flat.shape[-1]}, the layout has d={self.dim}"
            )
        lead = flat.shape[:-1]
        return {
            p.name: flat[..., p.offset : p.stop].reshape(*lead, *p.shape) for p in self.parameters
        }

    def locate(self, index: int) -> tuple[str, tuple[int, ...]]:
        """``(parameter name, position in that tensor)`` of flat index ``index``."""
        if not 0 <= index < self.dim:
            raise IndexError(f"index {index} is outside [0, {self.dim})")
        for p in self.parameters:
            if index < p.stop:
                return p.name, _unravel(index - p.offset, p.shape)
        raise AssertionError("unreachable")

    def flat_index(self, name: str, position: Sequence[int]) -> int:
        """Inverse of :meth:`locate`."""
        p = self.parameter(name)
        flat = 0
        for i, s in zip(position, p.shape, strict=True):
            if not 0 <= i < s:
                raise IndexError(f"position {tuple(position)} is outside shape {p.shape} of {name}")
            flat = flat * s + i
        return p.offset + flat

    def block_of(self, index: int) -> Block:
        """The block holding flat index ``index``."""
        starts = torch.tensor([b.start for b in self.blocks])
        return self.blocks[int(torch.searchsorted(starts, index, right=True)) - 1]

    # --- presentation ----------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per analysed parameter: module, shape, size, offset and blocks."""
        rows = []
        for i, p in enumerate(self.parameters):
            blocks = self.blocks_of(p.name)
            rows.append(
                {
                    "layer": i,
                    "parameter": p.name,
                    "module": p.module_type,
                    "shape": "×".join(map(str, p.shape)),
                    "numel": p.numel,
                    "offset": p.offset,
                    "blocks": len(blocks),
                    "largest_block": max(b.size for b in blocks),
                }
            )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (
            f"ParameterLayout({len(self.parameters)} parameters, d={self.dim}, "
            f"{self.num_blocks} blocks, block_size={self.block_size!r})"
        )

    def _make_blocks(self) -> list[Block]:
        if self.block_size == "model":
            return [Block(0, 0, self.dim, 0)]
        blocks: list[Block] = []
        for layer, p in enumerate(self.parameters):
            step = p.numel if self.block_size == "layer" else int(self.block_size)
            for start in range(p.offset, p.stop, step):
                blocks.append(Block(len(blocks), start, min(start + step, p.stop), layer))
        return blocks


def _check_block_size(block_size: BlockSpec) -> BlockSpec:
    if isinstance(block_size, str):
        if block_size not in ("layer", "model"):
            raise ValueError(
                f"block_size must be a positive int, 'layer' or 'model', got {block_size!r}"
            )
        return block_size
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(
            f"block_size must be a positive int, 'layer' or 'model', got {block_size!r}; "
            "e.g. block_size=100"
        )
    return block_size


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    position = []
    for s in reversed(shape):
        position.append(flat % s)
        flat //= s
    return tuple(reversed(position))
