"""Sweeps: methods × sparsities × scope × update × steps × (λ, m, B) → one tidy DataFrame.

Work is shared where the result allows it: gradient samples are computed once per
(m, b, fisher, seed) and reused by OBD and WoodFisher at every λ and B; K-FAC factors once
per (m, b, fisher, seed) and re-damped per λ; each curvature and its diag(C⁻¹) once per
setting and reused at every sparsity, scope and update (recomputation steps after the
first re-estimate on the pruned model, as they must). All settings see the same first
m·b examples of ``data``.

Each point (row) is cached on disk as a small JSON file named by a SHA-256 of everything
that changes it: the model (architecture and every tensor of its state), the examples
used, the evaluation data, the loss function, the selection, the method and its
hyper-parameters, scope, update, steps, schedule, minimum density, BatchNorm
re-estimation, the device kind and the library version. A rerun reads the cached rows
and computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

import wfexplore
from wfexplore._checks import check_reusable, one_of, positive_float, positive_int
from wfexplore.copies import private_copy
from wfexplore.curvature.base import Curvature, DampedCurvature
from wfexplore.curvature.estimate import estimate_curvature, from_gradients
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.gradients import gradient_samples
from wfexplore.params import BlockSpec
from wfexplore.pruning.cache import (
    open_cache,
    prefix_hashes,
    read_cached,
    write_cached,
)
from wfexplore.pruning.estimation import (
    METHODS,
    PruningSettings,
    effective_update,
    model_layout,
    take_examples,
    with_changes,
)
from wfexplore.pruning.evaluation import evaluate_model
from wfexplore.pruning.fingerprints import (
    data_fingerprint,
)
from wfexplore.pruning.masks import SCOPES, check_sparsity
from wfexplore.pruning.prune import PruningSchedule, RunOptions, run_pruning
from wfexplore.pruning.updates import UPDATES

CACHE_VERSION = 2
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep varies; every point of the product is pruned once.

    λ (``dampings``) and m (``num_samples``) apply to OBD, WoodFisher and K-FAC, B
    (``block_sizes``) to WoodFisher only, ``updates`` to WoodFisher and K-FAC (magnitude and
    OBD have a diagonal C, where every update is zeroing: their rows carry ``"none"``).
    """

    methods: Sequence[str] = METHODS
    sparsities: Sequence[float] = DEFAULT_SPARSITIES
    scopes: Sequence[str] = ("global",)
    updates: Sequence[str] = ("summed",)
    dampings: Sequence[float] = (1e-5,)
    num_samples: Sequence[int] = (256,)
    block_sizes: Sequence[BlockSpec] = (128,)
    steps: Sequence[int] = (1,)

    def __post_init__(self) -> None:
        checks = {
            "methods": lambda v: one_of(v, "methods", METHODS),
            "sparsities": lambda v: check_sparsity(v, "sparsities"),
            "scopes": lambda v: one_of(v, "scopes", SCOPES),
            "updates": lambda v: one_of(v, "updates", UPDATES),
            "dampings": lambda v: positive_float(v, "dampings", "e.g. dampings=(1e-3, 1e-5)"),
            "num_samples": lambda v: positive_int(v, "num_samples", "e.g. num_samples=(256,)"),
            "block_sizes": lambda v: v,
            "steps": lambda v: positive_int(v, "steps", "steps=1 is one-shot pruning"),
        }
        for name, check in checks.items():
            values = getattr(self, name)
            if isinstance(values, str | int | float) or values is None:
                values = [values]
            values = list(dict.fromkeys(check(v) for v in values))
            if not values:
                raise ValueError(f"{name}: give at least one value")
            object.__setattr__(self, name, tuple(values))

    def settings(self, base: PruningSettings) -> list[PruningSettings]:
        """One :class:`PruningSettings` per (method, λ, m, B) that changes the curvature."""
        out = []
        for method in self.methods:
            if method == "magnitude":
                out.append(base.replace(method="magnitude"))
                continue
            blocks = self.block_sizes if method == "woodfisher" else [base.block_size]
            for lam, m, b in itertools.product(self.dampings, self.num_samples, blocks):
                out.append(base.replace(method=method, damping=lam, num_samples=m, block_size=b))
        return list(dict.fromkeys(out))

    def points(self, method: str) -> list[tuple]:
        """(scope, update, steps, sparsity) of one method's rows."""
        updates = dict.fromkeys(effective_update(method, u) for u in self.updates)
        return list(itertools.product(self.scopes, updates, self.steps, self.sparsities))


def sweep(
    model: nn.Module,
    data: Iterable,
    *,
    eval_data: Iterable | Mapping[str, Iterable] | None = None,
    grid: SweepGrid | None = None,
    base: PruningSettings | None = None,
    schedule: PruningSchedule | None = None,
    options: RunOptions | None = None,
    cache: bool | str | Path = True,
    cache_key: str | None = None,
    keep_masks: bool = False,
    **changes,
) -> pd.DataFrame:
    """Prune ``model`` at every point of ``grid`` (:class:`SweepGrid`); one row per point.

    ``base`` holds what the grid does not vary (b, the Fisher kind, the representation,
    relative damping, the seed), ``schedule`` the schedule power and minimum density (scope,
    update and steps are in the grid), ``options`` as in :func:`~wfexplore.pruning.prune_model`.
    Keyword ``changes`` override fields of any of them (``sparsities=[0.5]``,
    ``batch_size=4``, ``min_density=0.1``, ``progress=False``). Inapplicable settings are
    left empty (NaN/None) rather than repeated. ``eval_data`` is a loader or a name →
    loader map (columns ``<name>_loss``…); default ``data``. ``cache``: True for
    ``cache_dir()/sweeps``, a folder, or False. The cache key covers the model's tensors
    and plain attributes and the loss function's settings; where those cannot be seen (a
    lambda, a closure, an attribute of unknown state) the sweep does not cache, with a
    warning, unless ``cache_key`` (a string naming what they are) is given. With
    ``keep_masks`` every row also holds what was pruned, so that nothing needs pruning
    twice: ``masks`` (parameter → keep mask, True = kept) and ``moved`` (parameter → True
    where a kept weight was changed by the update), both cached beside the row.

    The curvature examples are the first m·b of one pass over ``data``: a shuffling
    ``DataLoader`` gives other examples on every call (and so misses the cache); pass a
    fixed list, e.g. ``take_examples(loader, m)``, to compare and cache across calls.
    """
    grid_changes = {k: changes.pop(k) for k in [f.name for f in fields(SweepGrid)] if k in changes}
    grid = replace(grid or SweepGrid(), **grid_changes)
    base, schedule, options = with_changes(
        changes, base or PruningSettings(), schedule or PruningSchedule(), options or RunOptions()
    )
    if (schedule.scope, schedule.update, schedule.steps) != ("global", None, 1):
        raise ValueError(
            "schedule: a sweep takes scope, update and steps from the grid; pass scopes=, "
            "updates= and steps= instead"
        )
    if options.recalibrate_bn and data is None:
        raise ValueError("recalibrate_bn=True needs data=<loader>")
    options = options.with_budget(model)
    planned = [  # before any gradient: G is shared, so it is held
        options.checked(model, settings, hold_gradients=True, example=data)[0]
        for settings in grid.settings(base)
    ]
    if data is not None:
        check_reusable(data, "data")  # fingerprinted, then read for the curvature
    run = _SweepRun(model, data, eval_data, grid, base, planned, schedule, options, keep_masks)
    run.open_cache(cache, cache_key)
    return run.rows()


class _SweepRun:
    """One sweep: the shared work, the cache and the rows."""

    def __init__(self, model, data, eval_data, grid, base, settings, schedule, options, keep_masks):
        self.model, self.data, self.grid = model, data, grid
        self.schedule, self.options, self.keep_masks = schedule, options, keep_masks
        self.settings = settings
        self.evals = _eval_sets(eval_data if eval_data is not None else data)
        self.ranks = options.ranks()
        if self.ranks is not None:
            self.ranks.agree("sweep", grid=grid, base=base, schedule=schedule,
                             names=options.names, pattern=options.pattern)  # fmt: skip
        needed = max(options.share(s) if s.needs_data else 0 for s in self.settings)
        self.examples = take_examples(data, needed) if needed else []
        self.base_layout = model_layout(model, options.names, options.pattern, "layer")
        self.folder = None
        self.store = _SharedWork(model, self.examples, self.base_layout, options)

    def open_cache(self, cache, cache_key: str | None) -> None:
        """The cache folder and the key of everything the rows depend on (or no caching)."""
        opened = open_cache(cache, cache_key, "sweep", self.model, loss_fn=self.options.loss_fn)
        if opened is None:
            return
        self.folder, seen = opened
        self.base_key = {**self._base_key(), **seen}
        counts = {s.examples_needed for s in self.settings}
        self.prefix_hash = prefix_hashes(self.examples, counts)

    def _base_key(self) -> dict:
        recalibrate = self.options.recalibrate_bn
        return {
            "version": [wfexplore.__version__, CACHE_VERSION],
            "selection": self.base_layout.names,
            "eval": {name: data_fingerprint(loader) for name, loader in self.evals.items()},
            "bn_data": data_fingerprint(self.data) if recalibrate else None,
            "bn_batches": self.options.bn_batches,
            "min_density": self.schedule.min_density,
            "schedule_power": self.schedule.schedule_power,
            "device": next(self.model.parameters()).device.type,
        }

    def rows(self) -> pd.DataFrame:
        dense_copy = private_copy(self.model)
        loss_fn = self.options.loss_fn
        self.dense = {
            name: evaluate_model(
                dense_copy, loader, loss_fn=loss_fn, name="eval_data", ranks=self.ranks
            )
            for name, loader in self.evals.items()
        }
        del dense_copy
        plan = [(s, self.grid.points(s.method)) for s in self.settings]
        total = sum(len(points) for _, points in plan)
        rows: list[dict] = []
        self.bar = tqdm(total=total, desc="sweep", unit="pt", disable=not self.options.progress)
        try:
            for settings, points in sorted(plan, key=lambda sp: sp[0].gradient_key):
                rows += self._setting_rows(settings, points)
                self.store.release(settings, self.settings)
        finally:
            self.bar.close()
        return pd.DataFrame(rows)

    def _setting_rows(self, settings: PruningSettings, points: list[tuple]) -> list[dict]:
        """The rows of one curvature setting: cached ones read, the others pruned."""
        rows, pending = [], []
        for point in points:
            key = None
            if self.folder is not None:
                prefix = self.prefix_hash[settings.examples_needed]
                key = _point_key(self.base_key, prefix, settings, point, self.options)
                row = read_cached(self.folder, key, self.keep_masks)
                if row is not None:
                    rows.append({**row, "cached": True})
                    self.bar.update(1)
                    continue
            pending.append((point, key))
        if not pending:
            return rows
        layout = self.options.layout(self.model, settings)
        start = time.perf_counter()
        curvature = self.store.curvature(settings, layout)
        inverse_diag = curvature.inverse_diag()
        curvature_s = time.perf_counter() - start
        examples, options = self.examples, self.options

        def provider(step, work, keep):
            if step == 1:
                return curvature, inverse_diag
            return options.curvature(work, examples, layout, settings, keep, progress=False), None

        for point, key in pending:
            rows.append(self._point_row(settings, layout, provider, point, key, curvature_s))
        return rows

    def _point_row(self, settings, layout, provider, point, key, curvature_s) -> dict:
        scope, update, steps, sparsity = point
        self.bar.set_postfix_str(f"{settings.method} s={sparsity:g}")
        t0 = time.perf_counter()
        result = run_pruning(
            self.model,
            layout,
            provider,
            sparsity,
            schedule=replace(self.schedule, scope=scope, update=update, steps=steps),
            options=replace(self.options, progress=False),
            bn_data=self.data,
        )
        prune_s = time.perf_counter() - t0
        row = _row(settings, scope, update, steps, sparsity, result.summary)
        row["curvature"] = result.steps["curvature"].iloc[0]
        for name, loader in self.evals.items():
            after = evaluate_model(
                result.model, loader, loss_fn=self.options.loss_fn, name="eval_data",
                ranks=self.ranks,
            )  # fmt: skip
            row.update(_metrics(name, after, self.dense[name], len(self.evals) > 1))
        row.update(curvature_s=curvature_s, prune_s=prune_s)
        masks = _pruned_masks(self.model, result) if self.keep_masks else {}
        if self.folder is not None:
            write_cached(self.folder, key, row, masks)
        self.bar.update(1)
        return {**row, **masks, "cached": False}


# --- the grid --------------------------------------------------------------------------------
def _eval_sets(eval_data) -> dict[str, Iterable]:
    if eval_data is None:
        raise ValueError("eval_data: pass a loader (or a name → loader map) to evaluate on")
    if isinstance(eval_data, Mapping):
        if not eval_data:
            raise ValueError("eval_data: the map of loaders is empty")
        return dict(eval_data)
    return {"": eval_data}


def _metrics(name: str, after: dict, dense: dict, prefixed: bool) -> dict:
    p = f"{name}_" if prefixed else ""
    return {
        f"{p}loss": after["loss"],
        f"{p}accuracy": after["accuracy"],
        f"{p}delta_loss": after["loss"] - dense["loss"],
        f"dense_{p}loss": dense["loss"],
        f"dense_{p}accuracy": dense["accuracy"],
    }


def _row(settings: PruningSettings, scope, update, steps, sparsity, summary) -> dict:
    described = settings.describe()
    return {
        "method": settings.method,
        "update": update,
        "scope": scope,
        "steps": steps,
        "sparsity": sparsity,
        "damping": described["damping"],
        "num_samples": described["num_samples"],
        "block_size": described["block_size"],
        "batch_size": described["batch_size"],
        "fisher": described["fisher"],
        "representation": described["representation"],
        "achieved_sparsity": summary["sparsity"],
        "predicted_delta_loss": summary["predicted_delta_loss"],
        "sum_of_saliencies": summary["sum_of_saliencies"],
    }


# --- shared work -----------------------------------------------------------------------------
class _SharedWork:
    """Gradient samples, K-FAC factors and undamped curvatures of the dense model, kept while
    settings need them: one M serves every λ."""

    def __init__(self, model, examples, layout, options: RunOptions):
        self.model, self.examples, self.layout, self.options = model, examples, layout, options
        self.gradients: dict[tuple, torch.Tensor] = {}
        self.curvatures: dict[tuple, Curvature] = {}

    def curvature(self, settings: PruningSettings, layout) -> DampedCurvature:
        """C = M + λI of ``settings``, M built once per (gradients, representation, blocks)."""
        representation = settings.curvature_representation
        key = (settings.gradient_key, representation, layout.signature)
        if key not in self.curvatures:
            self.curvatures[key] = self._undamped(settings, layout)
        return self.curvatures[key].damped(
            settings.curvature_damping, relative=settings.relative_damping
        )

    def _undamped(self, settings: PruningSettings, layout) -> Curvature:
        representation = settings.curvature_representation
        if representation == "identity":
            return IdentityCurvature(layout, device=next(self.model.parameters()).device)
        common = {
            "batch_size": settings.batch_size,
            "loss_fn": self.options.loss_fn,
            "fisher": settings.fisher,
            "seed": settings.seed,
            "progress": False,
        }
        if representation == "kfac":
            return estimate_curvature(
                self.model,
                self.examples,
                representation="kfac",
                layout=layout,
                num_samples=settings.num_samples,
                process_group=self.options.process_group,
                distributed=self.options.distributed,
                planned=True,  # checked for every setting before the sweep began
                **common,
            )
        key = settings.gradient_key
        if key not in self.gradients:
            ranks = self.options.ranks()
            local = ranks.share(settings.num_samples) if ranks else settings.num_samples
            if ranks is not None:
                common["seed"] = settings.seed + ranks.rank
            self.gradients[key] = gradient_samples(
                self.model, self.examples, self.layout, local, **common
            )
        return from_gradients(
            self.gradients[key],  # this rank's rows
            layout,
            representation,
            max_memory_gb=self.options.max_memory_gb,
            ranks=self.options.ranks(),
        )

    def release(self, done: PruningSettings, all_settings: list[PruningSettings]) -> None:
        """Drop shared work that no later setting uses (settings run sorted by gradient key)."""
        later = {s.gradient_key for s in all_settings if s.gradient_key > done.gradient_key}
        later.add(done.gradient_key)
        for key in [k for k in self.gradients if k not in later]:
            del self.gradients[key]
        for key in [k for k in self.curvatures if k[0] not in later]:
            del self.curvatures[key]


# --- the cache --------------------------------------------------------------------------------
def _point_key(base, examples_hash, settings, point, options: RunOptions) -> str:
    scope, update, steps, sparsity = point
    payload = {
        **base,
        "examples": examples_hash,
        "settings": settings.describe(),
        "scope": scope,
        "update": update,
        "steps": steps,
        "sparsity": sparsity,
        "recalibrate_bn": options.recalibrate_bn,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _pruned_masks(model: nn.Module, result) -> dict[str, dict[str, torch.Tensor]]:
    """``masks`` (keep masks) and ``moved`` (kept weights changed by the update) of a point."""
    before = dict(model.named_parameters())
    after = dict(result.model.named_parameters())
    masks = {name: keep.cpu() for name, keep in result.masks.items()}
    moved = {
        name: keep & (after[name].detach() != before[name].detach()).cpu()
        for name, keep in masks.items()
    }
    return {"masks": masks, "moved": moved}


__all__ = ["SweepGrid", "sweep"]
