"""Prune a copy of a model: saliencies, masks, weight update, recomputation steps, a report.

One step: estimate C on the current model, score ρ = w²/(2 diag(C⁻¹)), choose the pruned
set (:mod:`~wfexplore.pruning.masks`), move the weights (:mod:`~wfexplore.pruning.updates`).
With ``steps = k > 1`` the target is reached along the polynomial schedule
s_t = s_f + (s_0 − s_f)(1 − t/k)³ (Zhu & Gupta 2017), re-estimating C on the pruned model
before every step; k = 1 is one-shot pruning. The caller's model is never changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from tqdm.auto import tqdm

from wfexplore._checks import check_reusable, one_of, positive_float, positive_int
from wfexplore.copies import private_copy
from wfexplore.curvature.base import (
    AnyCurvature,
    as_damped,
    check_same_layout,
)
from wfexplore.curvature.gradient_files import check_gradient_store
from wfexplore.curvature.plan import Plan, default_budget_gb
from wfexplore.distributed import Ranks
from wfexplore.gradients import LossFn
from wfexplore.params import ParameterLayout
from wfexplore.pruning.estimation import (
    METHODS,
    PruningSettings,
    method_curvature,
    model_layout,
    take_examples,
    with_changes,
)
from wfexplore.pruning.evaluation import evaluate_model, recalibrate_batchnorm
from wfexplore.pruning.masks import (
    SCOPES,
    Sparsity,
    check_min_density,
    check_sparsity,
    keep_masks,
    layer_sparsities,
    select_pruned,
)
from wfexplore.pruning.plan import plan
from wfexplore.pruning.saliency import check_model_matches, obs_saliency
from wfexplore.pruning.updates import UPDATES, resolved_update, update_weights

PER_LAYER_AUTO_LIMIT = 24
"""Analysed layers up to which ``per_layer_actual=None`` measures each layer's loss change."""

# (step, model being pruned, keep mask or None) -> (C, diag(C⁻¹) or None)
CurvatureProvider = Callable[
    [int, nn.Module, "torch.Tensor | None"], tuple[AnyCurvature, "torch.Tensor | None"]
]


@dataclass(frozen=True)
class PruningSchedule:
    """Which weights go and how the others move.

    ``scope`` ``"global"`` (one threshold on ρ across layers) or ``"layerwise"``;
    ``update`` ``"none"``, ``"summed"`` or ``"group"`` (None: ``"summed"``, and ``"none"``
    for magnitude and OBD, where all three coincide); ``steps`` k (1 is one-shot; k > 1
    re-estimates C on the pruned model before each step along
    s_t = s_f + (s_0 − s_f)(1 − t/k)^p with p = ``schedule_power``); ``min_density``, the
    least fraction of weights every layer keeps.
    """

    scope: str = "global"
    update: str | None = None
    steps: int = 1
    schedule_power: float = 3.0
    min_density: float = 0.0

    def __post_init__(self) -> None:
        one_of(self.scope, "scope", SCOPES)
        if self.update is not None:
            one_of(self.update, "update", UPDATES)
        positive_int(self.steps, "steps", "steps=1 is one-shot pruning, k > 1 re-estimates C")
        positive_float(self.schedule_power, "schedule_power", "e.g. 3 for the cubic schedule")
        check_min_density(self.min_density)


@dataclass(frozen=True)
class RunOptions:
    """What is analysed and how the work runs and is measured.

    ``names`` / ``pattern`` select the analysed parameters (default: every Conv/Linear
    weight); ``loss_fn`` is the training loss (batch mean); ``max_memory_gb`` is the memory
    budget the plan is checked against before any gradient (default: a safe share of the
    free memory of the model's device); ``gradient_store`` is where low-rank blocks hold
    the m × d gradient samples: ``"auto"`` (in memory, or in a file on disk when the plan
    with them in memory is over ``max_memory_gb`` and with them on disk is not),
    ``"memory"``, ``"disk"`` (a file under ``cache_dir()/gradients``) or a folder path; the
    file is removed with the curvature (a sweep, which shares gradients between settings,
    holds them in memory); ``per_layer_actual`` measures each layer's own loss change (one
    pass over the evaluation data per layer; default None: only for models of at most
    ``PER_LAYER_AUTO_LIMIT`` analysed layers, a ResNet-50's 54 passes are asked for with
    True);
    ``recalibrate_bn`` re-estimates BatchNorm statistics on ``data`` after pruning (over
    ``bn_batches`` batches, default all). Under ``torch.distributed`` the work runs over the
    initialised process group (or ``process_group``; ``distributed=False`` opts out): each
    rank passes its own data shard and ends with the same masks and weights
    (:mod:`wfexplore.distributed`); every rank then holds all the gradients (in memory, or in
    its own gradient file with the disk store).
    """

    names: Sequence[str] | None = None
    pattern: str | None = None
    loss_fn: LossFn = F.cross_entropy
    max_memory_gb: float | None = None
    gradient_store: str | os.PathLike = "auto"
    per_layer_actual: bool | None = None
    recalibrate_bn: bool = False
    bn_batches: int | None = None
    progress: bool = True
    distributed: bool = True
    process_group: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            object.__setattr__(self, "names", (self.names,))
        if self.max_memory_gb is not None:
            positive_float(self.max_memory_gb, "max_memory_gb", "e.g. max_memory_gb=4")
        check_gradient_store(self.gradient_store)
        if self.bn_batches is not None:
            positive_int(self.bn_batches, "bn_batches", "or None for the whole loader")

    def layout(self, model: nn.Module, settings: PruningSettings) -> ParameterLayout:
        return settings.layout(model, self.names, self.pattern)

    def measures_layers(self, layout: ParameterLayout) -> bool:
        """Whether each layer's own loss change is measured (``per_layer_actual``)."""
        if self.per_layer_actual is None:
            return len(layout.parameters) <= PER_LAYER_AUTO_LIMIT
        return bool(self.per_layer_actual)

    def evaluations(self, layout: ParameterLayout, evaluated: bool) -> int:
        """Passes over the evaluation data after pruning: the dense and the pruned model, and
        one per layer when each layer's own loss change is measured."""
        if not evaluated:
            return 0
        return 2 + (len(layout.parameters) if self.measures_layers(layout) else 0)

    def ranks(self) -> Ranks | None:
        """The ranks taking part, or None for this process alone."""
        return Ranks.active(self.distributed, self.process_group)

    def share(self, settings: PruningSettings) -> int:
        """The examples this rank takes from its shard: m·b, or m·b / world_size."""
        ranks = self.ranks()
        if ranks is None:
            return settings.examples_needed
        return ranks.share(settings.num_samples) * settings.batch_size

    def with_budget(self, model: nn.Module) -> RunOptions:
        """These options with ``max_memory_gb`` set (the default budget of the model's device)."""
        if self.max_memory_gb is not None:
            return self
        return replace(self, max_memory_gb=default_budget_gb(next(model.parameters()).device))

    def curvature(
        self, model: nn.Module, examples, layout: ParameterLayout, settings: PruningSettings,
        keep: torch.Tensor | None = None, progress: bool | None = None,
    ) -> AnyCurvature:  # fmt: skip
        """C of ``settings`` on ``examples`` with these options (loss, memory, process group);
        the caller has checked the plan (:meth:`plan`), so it is not estimated again."""
        return method_curvature(
            model,
            examples,
            layout,
            settings,
            keep=keep,
            loss_fn=self.loss_fn,
            max_memory_gb=self.max_memory_gb,
            progress=self.progress if progress is None else progress,
            process_group=self.process_group,
            distributed=self.distributed,
            planned=True,
            gradient_store=self.gradient_store,
        )

    def checked(
        self, model: nn.Module, settings: PruningSettings, **kwargs
    ) -> tuple[PruningSettings, Plan]:
        """The plan of ``settings``, checked (refused over the budget), and ``settings`` with
        WoodFisher's ``representation="auto"`` replaced by the plan's choice, so that the
        curvature is built as planned."""
        planned = self.plan(model, settings, **kwargs).check()
        if settings.method == "woodfisher" and settings.representation == "auto":
            settings = replace(settings, representation=planned.representation)
        return settings, planned

    def plan(self, model: nn.Module, settings: PruningSettings, **kwargs) -> Plan:
        """The plan of ``settings`` on ``model`` with these options (callers check it): one
        rank's under ``torch.distributed``."""
        ranks = self.ranks()
        return plan(
            model,
            settings,
            layout=self.layout(model, settings),
            max_memory_gb=self.max_memory_gb,
            gradient_store=self.gradient_store,
            world_size=1 if ranks is None else ranks.size,
            **kwargs,
        )


@dataclass
class PruningResult:
    """A pruned copy of the model and what happened to it.

    ``masks`` maps each pruned parameter to its keep mask (True = kept, the convention of
    ``torch.nn.utils.prune``); ``layers`` has one row per parameter (sparsity, predicted
    and actual loss change); ``steps`` one row per recomputation step; ``summary`` the totals,
    with the wall seconds of each phase (``curvature_s``: gradients, curvature and diag C⁻¹;
    ``prune_s``: selection and update; ``eval_s``: evaluation); ``plan`` what was estimated
    before the work (:func:`~wfexplore.pruning.plan.plan`).
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    layers: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    layout: ParameterLayout = field(repr=False)
    plan: Plan | None = field(default=None, repr=False)

    @property
    def sparsity(self) -> float:
        """Fraction of the analysed weights that are pruned."""
        return self.summary["sparsity"]

    def apply_torch_prune(self, model: nn.Module | None = None) -> nn.Module:
        """Attach the masks with ``torch.nn.utils.prune.custom_from_mask`` and return the model.

        Default: a fresh copy of the pruned model (so ``weight_orig`` holds the updated
        weights and ``prune.remove`` gives them back). A model passed in is changed in place;
        on the original dense model the masks prune without the OBS weight update.
        """
        target = private_copy(self.model) if model is None else model
        modules = dict(target.named_modules())
        for p in self.layout.parameters:
            module_name, _, attr = p.tensor_name.rpartition(".")
            module = modules.get(module_name)
            tensor = getattr(module, attr, None) if module is not None else None
            if tensor is None or tuple(tensor.shape) != p.shape:
                raise ValueError(
                    f"model: it has no parameter {p.name!r} of shape {p.shape}; pass a model of "
                    "the same architecture"
                )
            torch_prune.custom_from_mask(module, attr, self.masks[p.name].to(tensor.device))
        return target

    def masks_state_dict(self) -> dict[str, torch.Tensor]:
        """The masks under the keys ``torch.nn.utils.prune`` uses (``"<module>.<param>_mask"``)."""
        params = dict(self.model.named_parameters())
        return {
            f"{p.tensor_name}_mask": self.masks[p.name].to(dtype=params[p.name].dtype).clone()
            for p in self.layout.parameters
        }


def prune_model(
    model: nn.Module,
    method: str | PruningSettings | AnyCurvature,
    sparsity: Sparsity,
    *,
    data: Iterable | None = None,
    eval_data: Iterable | None = None,
    schedule: PruningSchedule | None = None,
    options: RunOptions | None = None,
    **changes,
) -> PruningResult:
    """Prune a copy of ``model`` to ``sparsity`` and report what changed.

    ``method`` is a method name (``"magnitude"``, ``"obd"``, ``"woodfisher"``, ``"kfac"``,
    with default :class:`PruningSettings`), a :class:`PruningSettings`, or a ready curvature
    C (one-shot only; a :class:`~wfexplore.curvature.Curvature` M is used undamped, a
    ``curvature.damped(λ)`` with its λ; its layout fixes the pruned parameters and must
    match ``names``/``pattern`` if given). ``sparsity`` is a fraction in [0, 1) of the
    analysed weights, or a name → fraction map with ``scope="layerwise"``. ``schedule``
    (:class:`PruningSchedule`: scope, update, steps…) and ``options`` (:class:`RunOptions`:
    selection, loss, memory, evaluation, progress) may be built once and passed around;
    keyword ``changes`` override their fields (``scope="layerwise"``, ``progress=False``).
    ``data`` feeds the curvature (its first m·b examples, held fixed across steps) and
    BatchNorm re-estimation; ``eval_data`` (default ``data``) measures the actual loss change.
    """
    schedule, options = with_changes(
        changes, schedule or PruningSchedule(), options or RunOptions()
    )
    if data is not None and (eval_data is None or options.recalibrate_bn):
        check_reusable(data, "data")  # read for the curvature, then again
    options = options.with_budget(model)
    how = resolve_method(method)
    check_sparsity_argument(sparsity, schedule.scope)
    ranks = options.ranks()
    if ranks is not None:
        ranks.agree(
            "prune_model",
            method=how.describe() if isinstance(how, PruningSettings) else how.kind,
            sparsity=sparsity,
            schedule=schedule,
            names=options.names,
            pattern=options.pattern,
        )
    checked = None
    if isinstance(how, PruningSettings):
        layout = options.layout(model, how)
        evaluations = options.evaluations(layout, eval_data is not None or data is not None)
        settings, checked = options.checked(model, how, example=data, evaluations=evaluations)
        examples = take_examples(data, options.share(how)) if how.needs_data else None

        def provider(step, work, keep):
            return options.curvature(work, examples, layout, settings, keep=keep), None

        description = settings.describe()
    else:
        layout = ready_curvature_layout(model, how, options)
        if schedule.steps > 1:
            raise ValueError(
                f"steps={schedule.steps} re-estimates the curvature between steps, which a "
                "ready curvature cannot do; pass the method name or PruningSettings instead"
            )

        def provider(step, work, keep):
            return how, None

        description = {"method": how.kind, "damping": how.damping}
    if options.recalibrate_bn and data is None:
        raise ValueError("recalibrate_bn=True needs data=<loader> to re-estimate BatchNorm with")
    result = run_pruning(
        model,
        layout,
        provider,
        sparsity,
        schedule=schedule,
        options=options,
        eval_data=eval_data if eval_data is not None else data,
        bn_data=data,
        description=description,
    )
    result.plan = checked
    return result


def ready_curvature_layout(model: nn.Module, curvature: AnyCurvature, options: RunOptions):
    """The layout of a curvature given ready: checked against the selection and the model."""
    layout = curvature.layout
    if options.names is not None or options.pattern is not None:
        check_same_layout(
            curvature, model_layout(model, options.names, options.pattern, layout.block_size)
        )
    check_model_matches(model, layout)
    return layout


def resolve_method(method) -> PruningSettings | AnyCurvature:
    """A method name or PruningSettings as settings; a curvature as its damped view C."""
    if isinstance(method, PruningSettings):
        return method
    if isinstance(method, str):
        one_of(method, "method", METHODS)
        return PruningSettings(method=method)
    try:
        return as_damped(method)
    except TypeError:
        raise TypeError(
            f"method must be one of {list(METHODS)}, a PruningSettings or a Curvature, "
            f"got {type(method).__name__}"
        ) from None


def polynomial_schedule(start: float, end: float, steps: int, power: float = 3.0) -> list[float]:
    """s_t = s_f + (s_0 − s_f)(1 − t/k)^p for t = 1…k; the last is always s_f."""
    return [end + (start - end) * (1 - t / steps) ** power for t in range(1, steps + 1)]


def check_sparsity_argument(sparsity: Sparsity, scope: str) -> None:
    """One fraction, or a per-layer map with ``scope="layerwise"``; each in [0, 1)."""
    if isinstance(sparsity, Mapping):
        if scope != "layerwise":
            raise ValueError(
                "sparsity: a per-layer map needs scope='layerwise'; global scope takes one number"
            )
        for key, value in sparsity.items():
            check_sparsity(value, f"sparsity[{key!r}]")
    else:
        check_sparsity(sparsity)


def run_pruning(
    model: nn.Module,
    layout: ParameterLayout,
    provider: CurvatureProvider,
    sparsity: Sparsity,
    *,
    schedule: PruningSchedule | None = None,
    options: RunOptions | None = None,
    eval_data: Iterable | None = None,
    bn_data: Iterable | None = None,
    description: dict | None = None,
) -> PruningResult:
    """The pruning loop behind :func:`prune_model`, with C from ``provider``.

    ``bn_data`` re-estimates BatchNorm when ``options.recalibrate_bn``; without
    ``eval_data`` nothing is evaluated.
    """
    schedule, options = schedule or PruningSchedule(), (options or RunOptions()).with_budget(model)
    check_sparsity_argument(sparsity, schedule.scope)
    steps = schedule.steps
    work = private_copy(model)
    params = dict(work.named_parameters())
    w_dense = layout.flatten(work).to(torch.float64)
    pruned = w_dense == 0
    initially = pruned.clone()
    targets = _targets(layout, pruned, sparsity, steps, schedule.schedule_power)
    contributions = torch.zeros_like(w_dense)
    step_rows, used_update, damping = [], None, None
    show = options.progress and steps > 1
    bar = tqdm(targets, desc="pruning steps", disable=not show, leave=False)
    seconds = {"curvature_s": 0.0, "prune_s": 0.0}
    for t, target in enumerate(bar, start=1):
        start = time.perf_counter()
        keep = ~pruned if bool(pruned.any()) else None
        curvature, inverse_diag = provider(t, work, keep)
        used_update = resolved_update(schedule.update, diagonal=curvature.is_diagonal)
        damping = curvature.damping
        w = layout.flatten(work).to(torch.float64)
        if inverse_diag is None:
            inverse_diag = curvature.inverse_diag()
        seconds["curvature_s"] += time.perf_counter() - start
        start = time.perf_counter()
        scores = obs_saliency(w, inverse_diag)
        new_pruned = select_pruned(
            scores,
            layout,
            target,
            scope=schedule.scope,
            min_density=schedule.min_density,
            fixed=pruned,
        )
        change = update_weights(
            w,
            new_pruned,
            curvature,
            used_update,
            inverse_diag=inverse_diag,
            max_memory_gb=options.max_memory_gb,
        )
        write_weights(params, layout, change.weights)
        contributions += change.contributions
        seconds["prune_s"] += time.perf_counter() - start
        fresh = new_pruned & ~pruned
        step_rows.append(
            {
                "step": t,
                "target_sparsity": _mean_target(layout, target),
                "sparsity": float(new_pruned.double().mean()),
                "newly_pruned": int(fresh.sum()),
                "predicted_delta_loss": change.predicted_delta_loss,
                "sum_of_saliencies": float(scores[fresh].sum()),
                "curvature": curvature.kind,
                "damping": curvature.damping,
            }
        )
        pruned = new_pruned
    recalibrated = options.recalibrate_bn and bn_data is not None
    if recalibrated:
        recalibrate_batchnorm(work, bn_data, num_batches=options.bn_batches)

    layers = _layer_table(layout, pruned, initially, contributions)
    summary = {
        **(description or {}),
        "update": used_update,
        "scope": schedule.scope,
        "steps": steps,
        "target_sparsity": _mean_target(layout, targets[-1]),
        "sparsity": float(pruned.double().mean()),
        "pruned": int(pruned.sum()),
        "analysed": layout.dim,
        "predicted_delta_loss": float(contributions.sum()),
        "sum_of_saliencies": float(sum(r["sum_of_saliencies"] for r in step_rows)),
        "damping": damping,
        "recalibrated_bn": recalibrated,
        **seconds,
    }
    if eval_data is not None:
        start = time.perf_counter()
        _evaluate(model, work, layout, eval_data, options, summary, layers)
        summary["eval_s"] = time.perf_counter() - start
    return PruningResult(
        model=work,
        masks=keep_masks(pruned, layout),
        layers=layers,
        steps=pd.DataFrame(step_rows),
        summary=summary,
        layout=layout,
    )


def _evaluate(model, work, layout, eval_data, options: RunOptions, summary, layers) -> None:
    """Loss and accuracy before and after into ``summary``; each layer's own loss change."""
    loss_fn, ranks = options.loss_fn, options.ranks()
    dense = evaluate_model(private_copy(model), eval_data, loss_fn=loss_fn, ranks=ranks)
    after = evaluate_model(work, eval_data, loss_fn=loss_fn, ranks=ranks)
    summary.update(
        dense_loss=dense["loss"],
        dense_accuracy=dense["accuracy"],
        loss=after["loss"],
        accuracy=after["accuracy"],
        actual_delta_loss=after["loss"] - dense["loss"],
    )
    if options.measures_layers(layout):
        layers["actual_delta_loss"] = _per_layer_actual(
            model, work, layout, eval_data, loss_fn, dense["loss"], ranks
        )


def _targets(layout, pruned, sparsity, steps, power) -> list:
    if not isinstance(sparsity, Mapping):
        start = float(pruned.double().mean())
        return polynomial_schedule(start, float(sparsity), steps, power)
    ends = layer_sparsities(layout, sparsity)
    per_layer = []
    for p, end in zip(layout.parameters, ends, strict=True):
        start = float(pruned[p.offset : p.stop].double().mean())
        per_layer.append(polynomial_schedule(start, end, steps, power))
    return [
        {p.name: sched[t] for p, sched in zip(layout.parameters, per_layer, strict=True)}
        for t in range(steps)
    ]


def _mean_target(layout: ParameterLayout, target) -> float:
    if not isinstance(target, Mapping):
        return float(target)
    return sum(target[p.name] * p.numel for p in layout.parameters) / layout.dim


@torch.no_grad()
def write_weights(
    params: dict[str, nn.Parameter], layout: ParameterLayout, flat: torch.Tensor
) -> None:
    for p in layout.parameters:
        param = params[p.name]
        param.copy_(flat[p.offset : p.stop].reshape(p.shape).to(param.dtype))


def _layer_table(layout, pruned, initially, contributions) -> pd.DataFrame:
    rows = []
    for i, p in enumerate(layout.parameters):
        part = slice(p.offset, p.stop)
        rows.append(
            {
                "layer": i,
                "parameter": p.name,
                "module": p.module_type,
                "shape": "×".join(map(str, p.shape)),
                "numel": p.numel,
                "pruned": int(pruned[part].sum()),
                "sparsity": float(pruned[part].double().mean()),
                "newly_pruned": int((pruned[part] & ~initially[part]).sum()),
                "predicted_delta_loss": float(contributions[part].sum()),
                "actual_delta_loss": float("nan"),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def _per_layer_actual(model, work, layout, data, loss_fn, dense_loss, ranks=None) -> list[float]:
    """Loss change when only one layer's final weights replace the dense ones."""
    probe = private_copy(model)
    probe_params = dict(probe.named_parameters())
    final = dict(work.named_parameters())
    out = []
    for p in layout.parameters:
        original = probe_params[p.name].detach().clone()
        probe_params[p.name].copy_(final[p.name])
        out.append(evaluate_model(probe, data, loss_fn=loss_fn, ranks=ranks)["loss"] - dense_loss)
        probe_params[p.name].copy_(original)
    return out
