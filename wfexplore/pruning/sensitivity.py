"""Per-layer sensitivity: prune one layer alone, the sparsity each layer gets under global
pruning, and how much two methods agree on which weights to remove (Jaccard overlap).

All three use one curvature of the dense model (estimated once, or given), so the numbers
for different layers and sparsities are comparable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wfexplore._checks import one_of
from wfexplore.curvature.base import Curvature, check_same_layout
from wfexplore.gradients import LossFn
from wfexplore.params import ParameterLayout
from wfexplore.pruning.estimation import (
    PruningSettings,
    estimate_curvature,
    model_layout,
    take_examples,
)
from wfexplore.pruning.evaluation import evaluate_model
from wfexplore.pruning.masks import check_min_density, check_sparsity, select_pruned
from wfexplore.pruning.prune import PruningResult, _resolve_method, _write, default_update
from wfexplore.pruning.saliency import check_model_matches, obs_saliency
from wfexplore.pruning.updates import DEFAULT_MAX_MEMORY_GB, UPDATES, update_weights

DEFAULT_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


def _curvature_for(
    model, method, data, names, pattern, loss_fn, max_memory_gb, progress
) -> tuple[Curvature, ParameterLayout]:
    how = _resolve_method(method)
    if isinstance(how, Curvature):
        if names is not None or pattern is not None:
            check_same_layout(how, model_layout(model, names, pattern, how.layout.block_size))
        check_model_matches(model, how.layout)
        return how, how.layout
    layout = how.layout(model, names, pattern)
    examples = take_examples(data, how.examples_needed) if how.needs_data else None
    curvature = estimate_curvature(
        model,
        examples,
        layout,
        how,
        loss_fn=loss_fn,
        max_memory_gb=max_memory_gb,
        progress=progress,
    )
    return curvature, layout


def layer_sensitivity(
    model: nn.Module,
    method: str | PruningSettings | Curvature,
    data: Iterable | None = None,
    *,
    sparsities: Sequence[float] = DEFAULT_GRID,
    update: str | None = None,
    eval_data: Iterable | None = None,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
    loss_fn: LossFn = F.cross_entropy,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    progress: bool = True,
) -> pd.DataFrame:
    """Prune each layer alone at each sparsity; predicted (½ δwᵀCδw) vs actual loss increase.

    One row per (layer, sparsity): ``pruned``, ``predicted_delta_loss``,
    ``sum_of_saliencies`` (Σ ρ_q of the removed weights), ``actual_delta_loss``, ``loss``
    and ``accuracy`` on ``eval_data`` (default ``data``). The caller's model is not changed.
    """
    grid = [check_sparsity(s, "sparsities") for s in sparsities]
    if update is not None:
        one_of(update, "update", UPDATES)
    eval_data = eval_data if eval_data is not None else data
    if eval_data is None:
        raise ValueError("eval_data: pass a loader to measure the actual loss change on")
    curvature, layout = _curvature_for(
        model, method, data, names, pattern, loss_fn, max_memory_gb, progress
    )
    update = update or default_update(curvature)
    probe = copy.deepcopy(model)
    params = dict(probe.named_parameters())
    w = layout.flatten(probe).to(torch.float64)
    inverse_diag = curvature.inverse_diag()
    scores = obs_saliency(w, inverse_diag)
    fixed = w == 0
    dense = evaluate_model(probe, eval_data, loss_fn=loss_fn)
    rows = []
    bar = tqdm(total=len(layout.parameters) * len(grid), desc="sensitivity", disable=not progress)
    for i, p in enumerate(layout.parameters):
        for s in grid:
            pruned = select_pruned(scores, layout, {p.name: s}, scope="layerwise", fixed=fixed)
            change = update_weights(
                w, pruned, curvature, update, inverse_diag=inverse_diag, max_memory_gb=max_memory_gb
            )
            _write(params, layout, change.weights)
            after = evaluate_model(probe, eval_data, loss_fn=loss_fn)
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


def global_allocation(
    model: nn.Module,
    method: str | PruningSettings | Curvature,
    sparsities: Sequence[float],
    data: Iterable | None = None,
    *,
    min_density: float = 0.0,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
    loss_fn: LossFn = F.cross_entropy,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    progress: bool = True,
) -> pd.DataFrame:
    """The sparsity each layer receives when one global threshold on ρ sets the overall one.

    One row per (global sparsity, layer): ``numel``, ``pruned``, ``layer_sparsity``.
    """
    grid = [check_sparsity(s, "sparsities") for s in sparsities]
    check_min_density(min_density)
    curvature, layout = _curvature_for(
        model, method, data, names, pattern, loss_fn, max_memory_gb, progress
    )
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
