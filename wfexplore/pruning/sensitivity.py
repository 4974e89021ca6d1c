"""Per-layer sensitivity: prune one layer alone, the sparsity each layer gets under global
pruning, and how much two methods agree on which weights to remove (Jaccard overlap).

All three use one curvature of the dense model (estimated once, or given), so the numbers
for different layers and sparsities are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from wfexplore._checks import check_reusable
from wfexplore.copies import private_copy
from wfexplore.curvature.base import AnyCurvature
from wfexplore.params import ParameterLayout
from wfexplore.pruning.estimation import (
    PruningSettings,
    take_examples,
    with_changes,
)
from wfexplore.pruning.evaluation import evaluate_model
from wfexplore.pruning.masks import check_min_density, check_sparsity, select_pruned
from wfexplore.pruning.prune import (
    PruningResult,
    RunOptions,
    ready_curvature_layout,
    resolve_method,
    write_weights,
)
from wfexplore.pruning.saliency import obs_saliency
from wfexplore.pruning.updates import resolved_update, update_weights

DEFAULT_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


def curvature_for(
    model: nn.Module,
    method: str | PruningSettings | AnyCurvature,
    data: Iterable | None,
    options: RunOptions,
) -> tuple[AnyCurvature, ParameterLayout]:
    """C of ``method`` on the dense model (estimated on ``data``, or given) and its layout."""
    how = resolve_method(method)
    if not isinstance(how, PruningSettings):
        return how, ready_curvature_layout(model, how, options)
    how, _ = options.checked(model, how, example=data)
    layout = options.layout(model, how)
    examples = take_examples(data, options.share(how)) if how.needs_data else None
    return options.curvature(model, examples, layout, how), layout


def _grid(sparsities) -> list[float]:
    if isinstance(sparsities, (int, float)):
        raise TypeError(
            f"sparsities must be a list of fractions, got {sparsities!r}; e.g. sparsities=[0.5]"
        )
    return [check_sparsity(s, "sparsities") for s in sparsities]


def layer_sensitivity(
    model: nn.Module,
    method: str | PruningSettings | AnyCurvature,
    data: Iterable | None = None,
    *,
    sparsities: Sequence[float] = DEFAULT_GRID,
    update: str | None = None,
    eval_data: Iterable | None = None,
    layers: Sequence[str] | None = None,
    options: RunOptions | None = None,
    **changes,
) -> pd.DataFrame:
    """Prune each layer alone at each sparsity; predicted (½ δwᵀCδw) vs actual loss increase.

    One row per (layer, sparsity): ``pruned``, ``predicted_delta_loss``,
    ``sum_of_saliencies`` (Σ ρ_q of the removed weights), ``actual_delta_loss``, ``loss``
    and ``accuracy`` on ``eval_data`` (default ``data``). ``layers`` (parameter names)
    prunes only those, in the layout's order (default: every analysed layer). ``options``
    (and keyword ``changes`` of its fields) as in :func:`~wfexplore.pruning.prune_model`.
    The caller's model is not changed.
    """
    (options,) = with_changes(changes, options or RunOptions())
    options = options.with_budget(model)
    grid = _grid(sparsities)
    resolved_update(update, diagonal=False)  # a bad update is refused before any work
    if eval_data is None and data is not None:
        check_reusable(data, "data")  # read for the curvature, then for every evaluation
    eval_data = eval_data if eval_data is not None else data
    if eval_data is None:
        raise ValueError("eval_data: pass a loader to measure the actual loss change on")
    curvature, layout = curvature_for(model, method, data, options)
    update = resolved_update(update, diagonal=curvature.is_diagonal)
    chosen = _chosen_layers(layout, layers)
    probe = private_copy(model)
    params = dict(probe.named_parameters())
    w = layout.flatten(probe).to(torch.float64)
    inverse_diag = curvature.inverse_diag()
    scores = obs_saliency(w, inverse_diag)
    fixed = w == 0
    ranks = options.ranks()
    dense = evaluate_model(probe, eval_data, loss_fn=options.loss_fn, ranks=ranks)
    rows = []
    bar = tqdm(total=len(chosen) * len(grid), desc="sensitivity", disable=not options.progress)
    for i, p in enumerate(layout.parameters):
        if p.name not in chosen:
            continue
        for s in grid:
            pruned = select_pruned(scores, layout, {p.name: s}, scope="layerwise", fixed=fixed)
            change = update_weights(
                w,
                pruned,
                curvature,
                update,
                inverse_diag=inverse_diag,
                max_memory_gb=options.max_memory_gb,
            )
            write_weights(params, layout, change.weights)
            after = evaluate_model(probe, eval_data, loss_fn=options.loss_fn, ranks=ranks)
            fresh = pruned & ~fixed
            rows.append(
                {
                    "layer": i,
                    "parameter": p.name,
                    "numel": p.numel,
                    "sparsity": s,
                    "pruned": int(pruned[p.offset : p.stop].sum()),
                    "predicted_delta_loss": change.predicted_delta_loss,
                    "sum_of_saliencies": float(scores[fresh].sum()),
                    "actual_delta_loss": after["loss"] - dense["loss"],
                    "loss": after["loss"],
                    "accuracy": after["accuracy"],
                    "curvature": curvature.kind,
                    "update": update,
                }
            )
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def _chosen_layers(layout, layers: Sequence[str] | None) -> set[str]:
    names = [p.name for p in layout.parameters]
    if layers is None:
        return set(names)
    unknown = [name for name in layers if name not in names]
    if unknown or not layers:
        raise ValueError(f"layers: {unknown or 'none'} given; choose among {names}")
    return set(layers)


def global_allocation(
    model: nn.Module,
    method: str | PruningSettings | AnyCurvature,
    sparsities: Sequence[float],
    data: Iterable | None = None,
    *,
    min_density: float = 0.0,
    options: RunOptions | None = None,
    **changes,
) -> pd.DataFrame:
    """The sparsity each layer receives when one global threshold on ρ sets the overall one.

    One row per (global sparsity, layer): ``numel``, ``pruned``, ``layer_sparsity``.
    """
    (options,) = with_changes(changes, options or RunOptions())
    options = options.with_budget(model)
    grid = _grid(sparsities)
    check_min_density(min_density)
    curvature, layout = curvature_for(model, method, data, options)
    w = layout.flatten(model).to(torch.float64)
    scores = obs_saliency(w, curvature.inverse_diag())
    rows = []
    for s in grid:
        pruned = select_pruned(
            scores, layout, s, scope="global", min_density=min_density, fixed=w == 0
        )
        for i, p in enumerate(layout.parameters):
            part = pruned[p.offset : p.stop]
            rows.append(
                {
                    "sparsity": s,
                    "layer": i,
                    "parameter": p.name,
                    "numel": p.numel,
                    "pruned": int(part.sum()),
                    "layer_sparsity": float(part.double().mean()),
                    "curvature": curvature.kind,
                }
            )
    return pd.DataFrame(rows)


def mask_overlap(
    a: PruningResult | Mapping[str, torch.Tensor],
    b: PruningResult | Mapping[str, torch.Tensor],
) -> pd.DataFrame:
    """Per layer, the Jaccard overlap |P_a ∩ P_b| / |P_a ∪ P_b| of the *pruned* sets.

    Takes two :class:`PruningResult` or two name → keep-mask maps over the same parameters.
    ``jaccard`` is NaN for a layer where neither prunes anything.
    """
    masks_a = a.masks if isinstance(a, PruningResult) else a
    masks_b = b.masks if isinstance(b, PruningResult) else b
    if list(masks_a) != list(masks_b):
        raise ValueError(f"a and b prune different parameters: {list(masks_a)} vs {list(masks_b)}")
    rows = []
    for name in masks_a:
        pa, pb = ~masks_a[name].bool(), ~masks_b[name].bool().to(masks_a[name].device)
        if pa.shape != pb.shape:
            raise ValueError(
                f"a and b: masks of {name} have shapes {tuple(pa.shape)}, {tuple(pb.shape)}"
            )
        inter, union = int((pa & pb).sum()), int((pa | pb).sum())
        rows.append(
            {
                "parameter": name,
                "numel": pa.numel(),
                "pruned_a": int(pa.sum()),
                "pruned_b": int(pb.sum()),
                "intersection": inter,
                "union": union,
                "jaccard": inter / union if union else float("nan"),
            }
        )
    return pd.DataFrame(rows)
