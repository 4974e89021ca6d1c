"""Which weights to remove: exact counts, layerwise or global scope, minimum density, ties.

A mask here is the boolean set of *pruned* weights over the flat vector (True = removed);
:func:`keep_masks` turns it into per-parameter keep masks (True = kept), the convention of
``torch.nn.utils.prune``.

- ``scope="layerwise"``: layer ℓ with n_ℓ weights loses exactly round(s_ℓ · n_ℓ) weights,
  the ones of lowest score in that layer (s_ℓ = ``sparsity``, or ``sparsity[name]``).
- ``scope="global"``: exactly round(s · d) weights go, the lowest scores across all layers
  (one threshold), except that each layer keeps at least ceil(min_density · n_ℓ) weights.

Already-pruned weights (``fixed``, e.g. weights that are exactly zero) are removed first and
count towards the target. Ties are broken by flat index: the earlier weight goes first.
Rounding is Python's ``round`` (half to even). A target that rounds to every weight (of the
model, or of a layer in layerwise scope) is refused; a positive one that rounds to no weight
gives a ``RuntimeWarning`` with the count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch

from wfexplore._checks import one_of
from wfexplore.params import ParameterLayout

SCOPES = ("global", "layerwise")

Sparsity = float | Mapping[str, float]


def check_sparsity(value, name: str = "sparsity") -> float:
    """A number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(
            f"{name} must be a number in [0, 1) (the fraction of weights removed), got {value!r}"
        )
    return float(value)


def check_min_density(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(
            f"min_density must be a number in [0, 1) (the least fraction of weights each layer "
            f"keeps), got {value!r}"
        )
    return float(value)


def layer_sparsities(layout: ParameterLayout, sparsity: Sparsity) -> list[float]:
    """The sparsity of each analysed parameter: one number for all, or a name → sparsity map.

    Names may be parameter names (``"fc1.weight"``) or module names (``"fc1"``); parameters
    missing from the map get 0.
    """
    if not isinstance(sparsity, Mapping):
        s = check_sparsity(sparsity)
        return [s] * len(layout.parameters)
    by_module: dict[str, list[str]] = {}
    for p in layout.parameters:
        by_module.setdefault(p.module_name, []).append(p.name)
    out = dict.fromkeys(layout.names, 0.0)
    for key, value in sparsity.items():
        targets = [key] if key in out else by_module.get(key, [])
        if not targets:
            raise ValueError(
                f"sparsity: {key!r} is not an analysed parameter or module; "
                f"analysed: {layout.names}"
            )
        for t in targets:
            out[t] = check_sparsity(value, f"sparsity[{key!r}]")
    return [out[n] for n in layout.names]


def layer_index(layout: ParameterLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """Parameter (layer) number of every flat index."""
    sizes = torch.tensor([p.numel for p in layout.parameters], device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)


def select_pruned(
    scores: torch.Tensor,
    layout: ParameterLayout,
    sparsity: Sparsity,
    *,
    scope: str = "global",
    min_density: float = 0.0,
    fixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pruned set (bool, length d) of lowest ``scores`` at the requested sparsity.

    ``fixed`` (bool, length d) marks weights already removed: they stay removed, are taken
    first and count towards the target. See the module docstring for the exact counts.
    """
    one_of(scope, "scope", SCOPES)
    min_density = check_min_density(min_density)
    if scores.shape != (layout.dim,):
        raise ValueError(f"scores: expected shape ({layout.dim},), got {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores: NaN saliencies; check the curvature (damping) and the weights")
    device = scores.device
    if fixed is None:
        fixed = torch.zeros(layout.dim, dtype=torch.bool, device=device)
    fixed = fixed.to(device=device, dtype=torch.bool)
    sizes = torch.tensor([p.numel for p in layout.parameters], device=device)
    layer = layer_index(layout, device)
    fixed_per_layer = torch.zeros_like(sizes).scatter_add_(0, layer, fixed.long())
    keep_at_least = [math.ceil(min_density * p.numel) for p in layout.parameters]
    caps = torch.tensor(
        [p.numel - k for p, k in zip(layout.parameters, keep_at_least, strict=True)], device=device
    )
    caps = torch.maximum(caps, fixed_per_layer)

    key = scores.to(torch.float64).masked_fill(fixed, -math.inf)
    order = torch.sort(key, stable=True).indices  # ties: lower flat index first
    rank = _rank_within_layer(layer[order], sizes)  # rank of order[j] inside its layer

    if scope == "layerwise":
        counts = _layerwise_counts(layout, sparsity, caps.tolist(), min_density)
        target = torch.maximum(torch.tensor(counts, device=device), fixed_per_layer)
        chosen = order[rank < target[layer[order]]]
    else:
        count = _global_count(layout, sparsity, int(caps.sum()), int(fixed.sum()), min_density)
        eligible = rank < caps[layer[order]]
        chosen = order[eligible][:count]
    pruned = torch.zeros(layout.dim, dtype=torch.bool, device=device)
    pruned[chosen] = True
    return pruned


def _layerwise_counts(layout, sparsity, caps: list[int], min_density: float) -> list[int]:
    """round(s_ℓ · n_ℓ) per layer; all of a layer is refused, none of a layer is a warning."""
    counts, empty = [], []
    per_layer = layer_sparsities(layout, sparsity)
    for p, s, cap in zip(layout.parameters, per_layer, caps, strict=True):
        count = round(s * p.numel)
        _refuse_everything(s, count, p.numel, f"the {p.numel} weights of {p.name}")
        if s > 0 and count == 0:
            empty.append(f"{p.name} ({s} of {p.numel} weights)")
        if count > cap and count > 0:
            raise ValueError(
                f"min_density={min_density} keeps at least {p.numel - cap} of the {p.numel} "
                f"weights of {p.name}, but sparsity {s} asks to remove {count}; lower the "
                "sparsity or min_density"
            )
        counts.append(count)
    if empty:
        warnings.warn(
            f"sparsity rounds to 0 weights in {len(empty)} layer(s): {', '.join(empty)}; "
            "nothing is pruned there (raise the sparsity to at least 1/numel)",
            RuntimeWarning,
            stacklevel=3,
        )
    return counts


def _global_count(layout, sparsity, room: int, fixed: int, min_density: float) -> int:
    """round(s · d), at least the ``fixed`` weights; all is refused, none is a warning."""
    if isinstance(sparsity, Mapping):
        raise ValueError(
            "sparsity: a per-layer map needs scope='layerwise'; global scope takes one number"
        )
    count = round(check_sparsity(sparsity) * layout.dim)
    _refuse_everything(sparsity, count, layout.dim, f"all {layout.dim} analysed weights")
    if sparsity > 0 and count == 0:
        warnings.warn(
            f"sparsity {sparsity} of {layout.dim} analysed weights rounds to 0 weights: "
            f"nothing is pruned; the smallest sparsity that prunes one is 1/{layout.dim} = "
            f"{1 / layout.dim:.6g}",
            RuntimeWarning,
            stacklevel=3,
        )
    if count > room:
        raise ValueError(
            f"min_density={min_density} lets at most {room} of {layout.dim} weights go, but "
            f"sparsity {sparsity} asks to remove {count}; lower the sparsity or min_density"
        )
    if fixed > count:
        warnings.warn(
            f"{fixed} weights are already pruned (or zero), more than the {count} that "
            f"sparsity {sparsity} asks for; they all stay pruned",
            RuntimeWarning,
            stacklevel=3,
        )
    return max(count, fixed)


def _refuse_everything(sparsity: float, count: int, numel: int, what: str) -> None:
    """A target of round(s · n) = n removes every weight: refuse it, naming the largest
    sparsity (n − 1)/n that keeps one."""
    if numel > 0 and count >= numel:
        largest = f"{numel - 1}/{numel} = {(numel - 1) / numel:.6g}" if numel > 1 else "0"
        raise ValueError(
            f"sparsity {sparsity} rounds to {count} weights, {what}: nothing would be left; "
            f"the largest sparsity that keeps at least one weight is {largest}"
        )


def _rank_within_layer(layer_sorted: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """For a sequence of layer ids, the running count of earlier entries of the same layer."""
    by_layer = torch.sort(layer_sorted, stable=True).indices
    starts = torch.cumsum(sizes, 0) - sizes
    ranks = torch.empty_like(layer_sorted)
    ranks[by_layer] = (
        torch.arange(len(layer_sorted), device=layer_sorted.device) - starts[layer_sorted[by_layer]]
    )
    return ranks


def keep_masks(pruned: torch.Tensor, layout: ParameterLayout) -> dict[str, torch.Tensor]:
    """Per-parameter keep masks (True = kept), shaped like the parameters."""
    return {p.name: ~pruned[p.offset : p.stop].reshape(p.shape).clone() for p in layout.parameters}


def pruned_from_masks(
    masks: Mapping[str, torch.Tensor], layout: ParameterLayout | None = None
) -> torch.Tensor:
    """Flat pruned set from per-parameter keep masks (in ``layout`` order, or the map's order)."""
    names = layout.names if layout is not None else list(masks)
    return torch.cat([~masks[n].reshape(-1).bool() for n in names])
