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

import copy
import hashlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import wfexplore
from wfexplore._checks import one_of, positive_float, positive_int
from wfexplore.curvature.base import Curvature, resolve_damping
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.gradients import LossFn, gradient_samples
from wfexplore.params import BlockSpec
from wfexplore.pruning.estimation import (
    METHODS,
    PruningSettings,
    curvature_from_gradients,
    estimate_curvature,
    model_layout,
    take_examples,
)
from wfexplore.pruning.evaluation import evaluate_model
from wfexplore.pruning.masks import SCOPES, check_min_density, check_sparsity
from wfexplore.pruning.prune import run_pruning
from wfexplore.pruning.updates import DEFAULT_MAX_MEMORY_GB, UPDATES
from wfexplore.training import cache_dir

CACHE_VERSION = 1
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def sweep(
    model: nn.Module,
    data: Iterable,
    *,
    methods: Sequence[str] = METHODS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    scopes: Sequence[str] = ("global",),
    updates: Sequence[str] = ("summed",),
    dampings: Sequence[float] = (1e-5,),
    num_samples: Sequence[int] = (256,),
    block_sizes: Sequence[BlockSpec] = (128,),
    steps: Sequence[int] = (1,),
    eval_data: Iterable | Mapping[str, Iterable] | None = None,
    batch_size: int = 1,
    fisher: str = "empirical",
    representation: str = "auto",
    relative_damping: bool = False,
    seed: int = 0,
    min_density: float = 0.0,
    schedule_power: float = 3.0,
    recalibrate_bn: bool = False,
    bn_batches: int | None = None,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
    loss_fn: LossFn = F.cross_entropy,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    cache: bool | str | Path = True,
    keep_masks: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Prune ``model`` at every point of the grid; one row per point.

    ``methods`` ⊆ ("magnitude", "obd", "woodfisher", "kfac"); λ (``dampings``) and m
    (``num_samples``) apply to OBD, WoodFisher and K-FAC, B (``block_sizes``) to WoodFisher
    only, ``updates`` to WoodFisher and K-FAC (magnitude and OBD rows carry
    ``update="none"``: with a diagonal C every update is just zeroing). Inapplicable
    settings are left empty (NaN/None) rather than repeated. ``eval_data`` is a loader or a
    name → loader map (columns ``<name>_loss``…); default ``data``. ``cache``: True for
    ``cache_dir()/sweeps``, a folder, or False. With ``keep_masks`` every row also holds
    what was pruned, so that nothing needs pruning twice: ``masks`` (parameter → keep
    mask, True = kept) and ``moved`` (parameter → True where a kept weight was changed by
    the update), both cached beside the row.

    The curvature examples are the first m·b of one pass over ``data``: a shuffling
    ``DataLoader`` gives other examples on every call (and so misses the cache); pass a
    fixed list, e.g. ``take_examples(loader, m)``, to compare and cache across calls.
    """
    grid = _check_grid(
        methods, sparsities, scopes, updates, dampings, num_samples, block_sizes, steps
    )
    check_min_density(min_density)
    positive_float(schedule_power, "schedule_power", "e.g. 3 for the cubic schedule")
    if recalibrate_bn and data is None:
        raise ValueError("recalibrate_bn=True needs data=<loader>")
    common = {
        "batch_size": batch_size,
        "fisher": fisher,
        "representation": representation,
        "relative_damping": relative_damping,
        "seed": seed,
    }
    settings_list = _settings_grid(grid, common)
    evals = _eval_sets(eval_data if eval_data is not None else data)
    needed = max(s.examples_needed for s in settings_list)
    examples = take_examples(data, needed) if needed else []
    base_layout = model_layout(model, names, pattern, "layer")
    folder = _cache_folder(cache)

    base_key = None
    if folder is not None:
        base_key = {
            "version": [wfexplore.__version__, CACHE_VERSION],
            "model": model_fingerprint(model),
            "selection": base_layout.names,
            "loss_fn": _callable_name(loss_fn),
            "eval": {name: data_fingerprint(loader) for name, loader in evals.items()},
            "bn_data": data_fingerprint(data) if recalibrate_bn else None,
            "bn_batches": bn_batches,
            "min_density": min_density,
            "schedule_power": schedule_power,
            "device": next(model.parameters()).device.type,
        }
        prefix_hash = _prefix_hashes(examples, {s.examples_needed for s in settings_list})

    dense_copy = copy.deepcopy(model)
    dense = {
        name: evaluate_model(dense_copy, loader, loss_fn=loss_fn, name="eval_data")
        for name, loader in evals.items()
    }
    del dense_copy
    plan = []
    for settings in settings_list:
        method_updates = ("none",) if settings.method in ("magnitude", "obd") else grid["updates"]
        points = list(
            itertools.product(grid["scopes"], method_updates, grid["steps"], grid["sparsities"])
        )
        plan.append((settings, points))
    total = sum(len(p) for _, p in plan)
    rows: list[dict] = []
    bar = tqdm(total=total, desc="sweep", unit="pt", disable=not progress)
    store = _SharedWork(model, examples, base_layout, loss_fn)
    try:
        for settings, points in sorted(plan, key=lambda sp: sp[0].gradient_key):
            layout = settings.layout(model, names, pattern)
            pending = []
            for point in points:
                key = None
                if folder is not None:
                    key = _point_key(
                        base_key,
                        prefix_hash[settings.examples_needed],
                        settings,
                        point,
                        recalibrate_bn,
                    )
                    row = _read_cached(folder, key, keep_masks)
                    if row is not None:
                        rows.append({**row, "cached": True})
                        bar.update(1)
                        continue
                pending.append((point, key))
            if not pending:
                continue
            start = time.perf_counter()
            curvature = store.curvature(settings, layout, max_memory_gb)
            inverse_diag = curvature.inverse_diag()
            curvature_s = time.perf_counter() - start

            def provider(
                step,
                work,
                keep,
                curvature=curvature,
                inverse_diag=inverse_diag,
                settings=settings,
                layout=layout,
            ):
                if step == 1:
                    return curvature, inverse_diag
                return estimate_curvature(
                    work,
                    examples,
                    layout,
                    settings,
                    keep=keep,
                    loss_fn=loss_fn,
                    max_memory_gb=max_memory_gb,
                ), None

            for (scope, update, k, sparsity), key in pending:
                bar.set_postfix_str(f"{settings.method} s={sparsity:g}")
                t0 = time.perf_counter()
                result = run_pruning(
                    model,
                    layout,
                    provider,
                    sparsity,
                    scope=scope,
                    update=update,
                    steps=k,
                    schedule_power=schedule_power,
                    min_density=min_density,
                    eval_data=None,
                    bn_data=data if recalibrate_bn else None,
                    bn_batches=bn_batches,
                    loss_fn=loss_fn,
                    max_memory_gb=max_memory_gb,
                    progress=False,
                )
                prune_s = time.perf_counter() - t0
                row = _row(settings, scope, update, k, sparsity, result.summary)
                row["curvature"] = curvature.kind
                for name, loader in evals.items():
                    after = evaluate_model(result.model, loader, loss_fn=loss_fn, name="eval_data")
                    row.update(_metrics(name, after, dense[name], len(evals) > 1))
                row.update(curvature_s=curvature_s, prune_s=prune_s)
                masks = _pruned_masks(model, result) if keep_masks else {}
                if folder is not None:
                    _write_cached(folder, key, row, masks)
                rows.append({**row, **masks, "cached": False})
                bar.update(1)
            store.release(settings, [s for s, _ in plan])
    finally:
        bar.close()
    return pd.DataFrame(rows)


# --- the grid --------------------------------------------------------------------------------
def _check_grid(methods, sparsities, scopes, updates, dampings, num_samples, block_sizes, steps):
    def as_list(values, name):
        if isinstance(values, str | int | float) or values is None:
            values = [values]
        values = list(values)
        if not values:
            raise ValueError(f"{name}: give at least one value")
        return values

    grid = {
        "methods": [one_of(m, "methods", METHODS) for m in as_list(methods, "methods")],
        "sparsities": [check_sparsity(s, "sparsities") for s in as_list(sparsities, "sparsities")],
        "scopes": [one_of(s, "scopes", SCOPES) for s in as_list(scopes, "scopes")],
        "updates": [one_of(u, "updates", UPDATES) for u in as_list(updates, "updates")],
        "dampings": [
            positive_float(x, "dampings", "e.g. dampings=(1e-3, 1e-5)")
            for x in as_list(dampings, "dampings")
        ],
        "num_samples": [
            positive_int(m, "num_samples", "e.g. num_samples=(256,)")
            for m in as_list(num_samples, "num_samples")
        ],
        "block_sizes": as_list(block_sizes, "block_sizes"),
        "steps": [
            positive_int(k, "steps", "steps=1 is one-shot pruning") for k in as_list(steps, "steps")
        ],
    }
    return {k: list(dict.fromkeys(v)) for k, v in grid.items()}


def _settings_grid(grid, common) -> list[PruningSettings]:
    out = []
    for method in grid["methods"]:
        if method == "magnitude":
            out.append(PruningSettings("magnitude", **common))
            continue
        blocks = grid["block_sizes"] if method == "woodfisher" else [128]
        for lam, m, b in itertools.product(grid["dampings"], grid["num_samples"], blocks):
            out.append(PruningSettings(method, damping=lam, num_samples=m, block_size=b, **common))
    return list(dict.fromkeys(out))


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
    """Gradient samples and K-FAC factors of the dense model, kept while settings need them."""

    def __init__(self, model, examples, layout, loss_fn):
        self.model, self.examples, self.layout, self.loss_fn = model, examples, layout, loss_fn
        self.gradients: dict[tuple, torch.Tensor] = {}
        self.kfac: dict[tuple, tuple[KFACCurvature, float]] = {}

    def curvature(self, settings: PruningSettings, layout, max_memory_gb: float) -> Curvature:
        if settings.method == "magnitude":
            return IdentityCurvature(layout)
        key = settings.gradient_key
        common = {
            "batch_size": settings.batch_size,
            "loss_fn": self.loss_fn,
            "fisher": settings.fisher,
            "seed": settings.seed,
            "progress": False,
        }
        if settings.method == "kfac":
            if key not in self.kfac:
                base = KFACCurvature.from_model(
                    self.model, self.examples, layout, settings.num_samples, 1.0, **common
                )
                self.kfac[key] = (base, float((base.diag() - base.damping).mean()))
            base, mean_diag = self.kfac[key]
            return base.with_damping(
                resolve_damping(settings.damping, settings.relative_damping, mean_diag)
            )
        if key not in self.gradients:
            self.gradients[key] = gradient_samples(
                self.model, self.examples, self.layout, settings.num_samples, **common
            )
        return curvature_from_gradients(
            settings, layout, self.gradients[key], max_memory_gb=max_memory_gb
        )

    def release(self, done: PruningSettings, all_settings: list[PruningSettings]) -> None:
        """Drop shared work that no later setting uses (settings run sorted by gradient key)."""
        later = {s.gradient_key for s in all_settings if s.gradient_key > done.gradient_key}
        for store in (self.gradients, self.kfac):
            for key in [k for k in store if k not in later and k != done.gradient_key]:
                del store[key]


# --- fingerprints and the cache ----------------------------------------------------------------
def _update_with_tensor(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the architecture (class and repr) and every tensor of the state dict."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        _update_with_tensor(h, tensor)
    return h.hexdigest()


def data_fingerprint(data: Iterable) -> str:
    """SHA-256 of every (inputs, targets) batch a loader yields (one pass)."""
    h = hashlib.sha256()
    for batch in data:
        _update_with_tensor(h, batch[0])
        _update_with_tensor(h, batch[1])
    return h.hexdigest()


def _prefix_hashes(examples: list[tuple], counts: set[int]) -> dict[int, str]:
    xs = torch.cat([x for x, _ in examples]) if examples else torch.zeros(0)
    ys = torch.cat([y for _, y in examples]) if examples else torch.zeros(0)
    out = {}
    for n in counts:
        h = hashlib.sha256()
        _update_with_tensor(h, xs[:n])
        _update_with_tensor(h, ys[:n])
        out[n] = h.hexdigest()
    return out


def _callable_name(fn) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def _point_key(base, examples_hash, settings, point, recalibrate_bn) -> str:
    scope, update, steps, sparsity = point
    payload = {
        **base,
        "examples": examples_hash,
        "settings": settings.describe(),
        "scope": scope,
        "update": update,
        "steps": steps,
        "sparsity": sparsity,
        "recalibrate_bn": recalibrate_bn,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_folder(cache) -> Path | None:
    if cache is False or cache is None:
        return None
    folder = cache_dir() / "sweeps" if cache is True else Path(cache).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


def _read_cached(folder: Path, key: str, keep_masks: bool = False) -> dict | None:
    path = folder / f"{key}.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") != key:
            return None
        row = stored["row"]
        if keep_masks:
            if not stored.get("masks"):
                return None
            row.update(_read_masks(folder / f"{key}.npz", stored["masks"]))
        return row
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable entry (or one without its masks) is recomputed


def _write_cached(folder: Path, key: str, row: dict, masks: dict | None = None) -> None:
    shapes = None
    if masks:
        shapes = {name: list(keep.shape) for name, keep in masks["masks"].items()}
        packed = {
            f"{kind}/{name}": np.packbits(tensor.numpy().reshape(-1))
            for kind, by_name in masks.items()
            for name, tensor in by_name.items()
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **packed)
        os.replace(tmp, folder / f"{key}.npz")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"key": key, "row": row, "masks": shapes}, f, default=str)
    os.replace(tmp, folder / f"{key}.json")


def _read_masks(path: Path, shapes: dict[str, list[int]]) -> dict[str, dict[str, torch.Tensor]]:
    """The ``masks`` and ``moved`` maps of a cached point (bits packed by :func:`_write_cached`)."""
    out: dict[str, dict[str, torch.Tensor]] = {"masks": {}, "moved": {}}
    with np.load(path, allow_pickle=False) as stored:
        for kind in out:
            for name, shape in shapes.items():
                count = int(np.prod(shape))
                bits = np.unpackbits(stored[f"{kind}/{name}"], count=count).astype(bool)
                out[kind][name] = torch.from_numpy(bits).reshape(shape)
    return out


__all__ = ["data_fingerprint", "model_fingerprint", "sweep"]
