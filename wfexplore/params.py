"""The analysed parameters of a model and their block layout.

The analysed weights are concatenated, in model order, into one flat vector
``w ∈ R^d``. That vector is cut into blocks: chunks of ``B`` consecutive weights
inside each layer (the last chunk of a layer may be shorter), one block per
layer, or the whole vector as a single block. Curvature representations are
block-diagonal with respect to this layout.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

BlockSpec = int | str
"""``int`` B (blocks of B inside each layer), ``"layer"`` or ``"model"``."""

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class AnalysedParameter:
    """One analysed tensor: ``flat[offset : offset + numel]`` is ``param.flatten()``.

    ``mask`` is the buffer name of a ``torch.nn.utils.prune`` keep mask when the parameter
    is a pruned ``weight_orig`` (the layer computes with ``weight_orig * weight_mask``).
    """

    name: str
    module_name: str
    module_type: str
    shape: tuple[int, ...]
    offset: int
    mask: str | None = None

    @property
    def tensor_name(self) -> str:
        """The name the module computes with: ``"fc1.weight"`` for a pruned ``fc1.weight_orig``."""
        if self.mask is not None and self.name.endswith("_orig"):
            return self.name[: -len("_orig")]
        return self.name

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


@dataclass(frozen=True)
class SkippedLayer:
    """A Conv/Linear layer the default selection leaves out, and why."""

    module_name: str
    module_type: str
    shape: tuple[int, ...]
    reason: str

    @property
    def name(self) -> str:
        return f"{self.module_name}.weight" if self.module_name else "weight"


def _join(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def _pruned_tensors(module: nn.Module) -> list[str]:
    """Tensors of ``module`` computed by a ``torch.nn.utils.prune`` mask (``"weight"``, ...)."""
    return [
        hook._tensor_name
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, torch_prune.BasePruningMethod)
        and f"{hook._tensor_name}_orig" in module._parameters
        and f"{hook._tensor_name}_mask" in module._buffers
    ]


def prune_masks_of(model: nn.Module) -> dict[str, str]:
    """``{"fc1.weight_orig": "fc1.weight_mask", ...}`` for every ``torch.nn.utils.prune`` mask."""
    out = {}
    for prefix, module in model.named_modules():
        for attr in _pruned_tensors(module):
            out[_join(prefix, f"{attr}_orig")] = _join(prefix, f"{attr}_mask")
    return out


def reparametrisation(module: nn.Module, attr: str = "weight") -> str | None:
    """Why ``module.<attr>`` is not a plain parameter, or None when it is one (or is pruned
    with ``torch.nn.utils.prune``, which the layout supports)."""
    if attr in module._parameters or attr in _pruned_tensors(module):
        return None
    if parametrize.is_parametrized(module, attr):
        kinds = ", ".join(type(p).__name__ for p in module.parametrizations[attr])
        originals = [n for n, _ in module.parametrizations[attr].named_parameters()]
        return (
            f"{attr} is computed by torch.nn.utils.parametrize ({kinds}) from "
            f"parametrizations.{attr}.{{{', '.join(originals)}}}"
        )
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == attr:
            legacy = "the legacy torch.nn.utils.weight_norm"
            return f"{attr} is computed by {legacy} from {attr}_g, {attr}_v"
        if isinstance(hook, SpectralNorm) and hook.name == attr:
            return f"{attr} is computed by torch.nn.utils.spectral_norm from {attr}_orig"
    if isinstance(getattr(module, attr, None), torch.Tensor):
        return f"{attr} is not a parameter of the module (it is computed in a hook or forward)"
    return None


def _default_selection(model: nn.Module) -> tuple[list[str], list[SkippedLayer]]:
    chosen, skipped = [], []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_MODULE_TYPES) or getattr(module, "weight", None) is None:
            continue
        if "weight" in module._parameters:
            chosen.append(_join(name, "weight"))
        elif "weight" in _pruned_tensors(module):
            chosen.append(_join(name, "weight_orig"))
        else:
            reason = reparametrisation(module, "weight") or "weight is not a parameter"
            shape = tuple(module.weight.shape)
            skipped.append(SkippedLayer(name, type(module).__name__, shape, reason))
    return chosen, skipped


_REMOVE_HINT = (
    "remove the reparametrisation first (torch.nn.utils.parametrize.remove_parametrizations, "
    "torch.nn.utils.remove_weight_norm, torch.nn.utils.remove_spectral_norm)"
)


def default_parameter_names(model: nn.Module) -> list[str]:
    """Names of the ``weight`` of every Conv and Linear module, in model order (``weight_orig``
    for a layer pruned with ``torch.nn.utils.prune``; reparametrised layers are left out)."""
    return _default_selection(model)[0]


def select_parameter_names(
    model: nn.Module,
    names: Sequence[str] | str | None = None,
    pattern: str | None = None,
) -> list[str]:
    """Resolve a parameter selection to parameter names, in model order.

    ``names`` may hold parameter names (``"fc1.weight"``) or module names (``"fc1"``,
    meaning that module's ``weight``); one string is one name. ``pattern`` is a regular
    expression searched in parameter names. With neither, every Conv/Linear weight is
    selected. A weight pruned with ``torch.nn.utils.prune`` resolves to its ``weight_orig``.
    """
    return _select(model, names, pattern)[0]


def _select(model, names, pattern) -> tuple[list[str], list[SkippedLayer]]:
    available = [n for n, _ in model.named_parameters()]
    skipped: list[SkippedLayer] = []
    if names is None and pattern is None:
        default, skipped = _default_selection(model)
        chosen = set(default)
    else:
        aliases = {orig[: -len("_orig")]: orig for orig in prune_masks_of(model)}
        chosen = _named(model, names, available, aliases)
        if pattern is not None:
            regex = re.compile(pattern)
            chosen.update(n for n in available if regex.search(n))
            chosen.update(orig for alias, orig in aliases.items() if regex.search(alias))
    selected = [n for n in available if n in chosen]
    if not selected:
        raise ValueError("the parameter selection is empty: " + _empty(pattern, available, skipped))
    return selected, skipped


def _named(model, names, available: list[str], aliases: dict[str, str]) -> set[str]:
    """The parameters ``names`` refer to: parameter names, module names (their weight), and
    the names of weights under ``torch.nn.utils.prune`` (their ``_orig``)."""
    modules = dict(model.named_modules())
    chosen = set()
    for name in [names] if isinstance(names, str) else names or ():
        if not isinstance(name, str):
            raise TypeError(f"names: expected parameter or module names, got {name!r}")
        weight = _join(name, "weight") if name in modules else None
        found = None
        for candidate in (name, weight):
            if candidate in available or candidate in aliases:
                found = candidate if candidate in available else aliases[candidate]
                break
        if found is None:
            _refuse_name(name, modules, available)
        chosen.add(found)
    return chosen


def _refuse_name(name: str, modules: dict, available: list[str]) -> None:
    module_name, _, attr = (name, "", "weight") if name in modules else name.rpartition(".")
    module = modules.get(module_name)
    why = reparametrisation(module, attr) if module is not None else None
    if why is not None:
        raise ValueError(
            f"names: {name!r} is reparametrised ({why}); name its underlying parameters "
            f"instead, or {_REMOVE_HINT}"
        )
    raise ValueError(
        f"names: {name!r} is neither a parameter nor a module with a weight; available "
        f"parameters: {available}"
    )


def _empty(pattern, available: list[str], skipped: list[SkippedLayer]) -> str:
    """Why nothing is selected."""
    if pattern is not None:
        return f"pattern {pattern!r} matches none of {available}"
    if skipped:
        listed = "; ".join(f"{s.module_name or '(model)'}: {s.reason}" for s in skipped)
        return (
            f"every Conv/Linear layer of the model is reparametrised ({listed}); pass "
            f"names=[...] with the parameters to analyse, or {_REMOVE_HINT}"
        )
    return "the model has no Conv/Linear weight; pass names=[...] or pattern=..."


class ParameterLayout:
    """Analysed parameters of a model, their place in the flat vector and its blocks.

    Build it with :meth:`from_model`. ``layout.dim`` is d, ``layout.blocks`` the blocks,
    ``layout.flatten`` / ``layout.unflatten`` convert between tensors and the flat vector,
    ``layout.locate`` maps a flat index to ``(parameter name, position)``.
    """

    def __init__(
        self,
        parameters: Sequence[AnalysedParameter],
        block_size: BlockSpec = "layer",
        skipped: Sequence[SkippedLayer] = (),
    ):
        if not parameters:
            raise ValueError("parameters: the layout needs at least one analysed parameter")
        self.parameters: tuple[AnalysedParameter, ...] = tuple(parameters)
        self.skipped: tuple[SkippedLayer, ...] = tuple(skipped)
        self.block_size: BlockSpec = check_block_size(block_size)
        self.blocks: tuple[Block, ...] = tuple(self._make_blocks())
        self._by_name = {p.name: i for i, p in enumerate(self.parameters)}

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        names: Sequence[str] | str | None = None,
        pattern: str | None = None,
        block_size: BlockSpec = "layer",
    ) -> ParameterLayout:
        """Layout of the selected parameters of ``model`` (see :func:`select_parameter_names`).

        Conv/Linear layers that the default selection skips because their weight is
        reparametrised are named in a warning and listed in :meth:`table`.
        """
        selected, skipped = _select(model, names, pattern)
        if skipped:
            listed = "; ".join(f"{s.module_name or '(model)'}: {s.reason}" for s in skipped)
            warnings.warn(
                f"{len(skipped)} Conv/Linear layer(s) are not analysed because their weight is "
                f"reparametrised ({listed}); pass names=[...] to analyse their parameters, "
                f"or {_REMOVE_HINT}",
                UserWarning,
                stacklevel=2,
            )
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        masks = prune_masks_of(model)
        entries, offset = [], 0
        for name in selected:
            module_name = name.rpartition(".")[0]
            entry = AnalysedParameter(
                name=name,
                module_name=module_name,
                module_type=type(modules[module_name]).__name__,
                shape=tuple(params[name].shape),
                offset=offset,
                mask=masks.get(name),
            )
            entries.append(entry)
            offset = entry.stop
        return cls(entries, block_size, skipped)

    def with_block_size(self, block_size: BlockSpec) -> ParameterLayout:
        """The same parameters cut into different blocks."""
        return ParameterLayout(self.parameters, block_size, self.skipped)

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
    @property
    def masked(self) -> list[str]:
        """Analysed parameters that carry a ``torch.nn.utils.prune`` mask."""
        return [p.name for p in self.parameters if p.mask is not None]

    def flatten(self, tensors: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Concatenate the analysed tensors (a model or a name → tensor mapping) into w.

        From a model, a masked parameter gives its effective weight ``weight_orig * mask``,
        so that the entries its ``torch.nn.utils.prune`` mask removes are exactly zero.
        """
        if isinstance(tensors, nn.Module):
            buffers = dict(tensors.named_buffers())
            params = dict(tensors.named_parameters())
            parts = []
            for p in self.parameters:
                value = params[p.name].detach()
                if p.mask is not None:
                    value = value * buffers[p.mask].to(value.dtype)
                parts.append(value.reshape(-1))
            return torch.cat(parts)
        return torch.cat([tensors[p.name].detach().reshape(-1) for p in self.parameters])

    def masked_out(self, model: nn.Module) -> torch.Tensor:
        """Flat bool vector, True where a ``torch.nn.utils.prune`` mask of ``model`` removes
        the weight (the mask buffers recorded in the layout, read from ``model``)."""
        buffers = dict(model.named_buffers())
        parts = []
        for p in self.parameters:
            if p.mask is None:
                parts.append(torch.zeros(p.numel, dtype=torch.bool))
            else:
                parts.append(buffers[p.mask].detach().reshape(-1).cpu() == 0)
        return torch.cat(parts)

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
        """One row per analysed parameter: module, shape, size, offset and blocks; then one
        row per skipped layer (``analysed`` False). ``note`` says how a parameter is analysed
        (e.g. with its prune mask) or why a layer is not."""
        rows = []
        for i, p in enumerate(self.parameters):
            blocks = self.blocks_of(p.name)
            note = "" if p.mask is None else f"torch.nn.utils.prune mask {p.mask} kept"
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
                    "analysed": True,
                    "note": note,
                }
            )
        for s in self.skipped:
            rows.append(
                {
                    "layer": None,
                    "parameter": s.name,
                    "module": s.module_type,
                    "shape": "×".join(map(str, s.shape)),
                    "numel": _numel(s.shape),
                    "offset": None,
                    "blocks": 0,
                    "largest_block": None,
                    "analysed": False,
                    "note": f"not analysed: {s.reason}",
                }
            )
        table = pd.DataFrame(rows)
        if self.skipped:
            for column in ("layer", "offset", "largest_block"):
                table[column] = table[column].astype("Int64")
        return table

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


def check_block_size(block_size: BlockSpec) -> BlockSpec:
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


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    position = []
    for s in reversed(shape):
        position.append(flat % s)
        flat //= s
    return tuple(reversed(position))
