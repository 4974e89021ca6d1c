"""Training-aware pruning: gradual pruning with fine-tuning, and one-shot pruning + fine-tuning.

Gradual pruning (Zhu & Gupta 2017) reaches the target s_f in n steps along
s_t = s_f + (s_0 − s_f)(1 − t/n)^p (p = 3, "cubic") with s_0 the model's sparsity; step t
happens at the start of epoch (t − 1)·``prune_every``, the last step is followed by the
recovery training up to ``epochs``. Before every step the curvature is re-estimated on the
current (pruned, fine-tuned) model, in eval mode, as the published WoodFisher gradual runs
do; between steps the model trains in train mode with the masks held
(:mod:`~wfexplore.pruning.masked_training`). Any method of the one-shot frame prunes a step
(magnitude, OBD, WoodFisher, K-FAC; global or layerwise; any update).

The three protocols of :data:`PROTOCOLS` compare at an equal training budget:

- ``"one_shot"``: prune once, no training (what :func:`~wfexplore.pruning.prune_model` does);
- ``"one_shot_finetune"``: prune once at epoch 0, then train ``epochs`` epochs
  (:func:`one_shot_then_finetune`);
- ``"gradual"``: prune in steps while training ``epochs`` epochs (:func:`gradual_prune`).

Each step is measured right before, right after (where the published gradual runs found
second-order information to matter most) and after the recovery training that follows it.
The caller's model is never changed: everything happens on a private copy.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from wfexplore._checks import check_reusable, one_of, positive_float, positive_int
from wfexplore.copies import private_copy
from wfexplore.examples import take_examples
from wfexplore.params import ParameterLayout
from wfexplore.pruning.estimation import PruningSettings, with_changes
from wfexplore.pruning.evaluation import evaluate_model
from wfexplore.pruning.masked_training import MaskHolder, TrainingSettings, seeded, train_epochs
from wfexplore.pruning.masks import Sparsity, layer_sparsities, select_pruned
from wfexplore.pruning.prune import (
    PruningResult,
    PruningSchedule,
    RunOptions,
    check_sparsity_argument,
    polynomial_schedule,
    resolve_method,
    run_pruning,
)

PROTOCOLS = ("one_shot", "one_shot_finetune", "gradual")
SCHEDULES = {"cubic": 3.0, "linear": 1.0}
"""Named sparsity schedules and their power p."""

ScheduleSpec = str | float | Sequence[float]


@dataclass
class GradualResult(PruningResult):
    """A pruned, fine-tuned copy of the model and what happened to it.

    As :class:`~wfexplore.pruning.PruningResult` (``model``, ``masks``, ``layers``,
    ``summary``), with ``steps`` one row per pruning step — ``epoch``, ``step``,
    ``target_sparsity``, ``sparsity``, ``accuracy_before``/``loss_before`` (right before the
    step), ``accuracy_after``/``loss_after`` (right after it), ``accuracy_recovered``/
    ``loss_recovered`` (after the training that follows it; NaN without training),
    ``recovery_epochs``, ``curvature_s``, ``prune_s``, ``train_s`` (wall seconds) — and
    ``history``, the evaluations in order: ``epoch`` (epochs trained so far), ``step`` (steps
    done), ``event`` (``"before_step"``, ``"after_step"`` or ``"epoch"``), ``sparsity``,
    ``accuracy``, ``loss``, ``train_loss`` (mean over the epoch, ``"epoch"`` rows).
    ``layers`` sums each layer's predicted loss change over the steps; its
    ``actual_delta_loss`` is NaN (training moves every weight).
    """

    history: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class _Plan:
    """Pruning steps: the epoch each happens at, the training epochs in all, the spacing."""

    epochs: int
    step_epochs: tuple[int, ...]
    prune_every: int

    def recovery(self, t: int) -> int:
        """Epochs of training after step ``t`` (0-based) before the next one (or the end)."""
        nxt = self.step_epochs[t + 1] if t + 1 < len(self.step_epochs) else self.epochs
        return nxt - self.step_epochs[t]


def pruning_plan(epochs: int, prune_every: int, steps: int | None = None) -> list[int]:
    """The epochs at which the pruning steps happen: 0, p, 2p, … (p = ``prune_every``).

    By default as many steps as fit before the end of training (ceil(epochs / p)); ``steps``
    takes fewer, leaving a longer recovery after the last. Refuses epochs ≤ 0, p ≤ 0, p
    longer than the training and more steps than fit.
    """
    positive_int(epochs, "epochs", "the number of training epochs, e.g. epochs=6")
    positive_int(prune_every, "prune_every", "epochs between pruning steps, e.g. prune_every=1")
    if prune_every > epochs:
        raise ValueError(
            f"prune_every={prune_every} is longer than the training (epochs={epochs}): the "
            "steps would not fit; lower prune_every (prune_every=epochs prunes once, at epoch 0)"
        )
    fit = math.ceil(epochs / prune_every)
    if steps is None:
        steps = fit
    positive_int(steps, "steps", "the number of pruning steps, or None for as many as fit")
    if steps > fit:
        raise ValueError(
            f"steps={steps} with prune_every={prune_every} cannot reach the target within "
            f"epochs={epochs}: the last step would come at epoch {(steps - 1) * prune_every}, "
            f"with no training after it; at most {fit} steps fit (or raise epochs)"
        )
    return [t * prune_every for t in range(steps)]


def _power(schedule) -> float | None:
    """The power p of a named or numeric schedule; None for an explicit sequence."""
    if isinstance(schedule, str):
        return SCHEDULES[one_of(schedule, "schedule", tuple(SCHEDULES))]
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        return positive_float(schedule, "schedule", "the power p of s_t, e.g. 3 (cubic)")
    if isinstance(schedule, Sequence):
        return None
    raise TypeError(
        f"schedule must be 'cubic', 'linear', a power p > 0 or a sequence of sparsities, "
        f"got {type(schedule).__name__}"
    )


def step_targets(
    layout: ParameterLayout,
    start: torch.Tensor,
    sparsity: Sparsity,
    steps: int,
    schedule: ScheduleSpec = "cubic",
) -> list[Sparsity]:
    """The target of every step, from the pruned set ``start`` (bool, length d) to ``sparsity``.

    A named or numeric schedule gives s_t = s_f + (s_0 − s_f)(1 − t/n)^p per layer for a
    per-layer map; a sequence gives the targets themselves (one number each, rising, ending
    at ``sparsity``). Refuses a schedule that cannot reach the target: a target below the
    sparsity the model already has, a sequence of the wrong length, falling or not ending
    at the target.
    """
    power = _power(schedule)
    if isinstance(sparsity, Mapping):
        if power is None:
            raise ValueError("schedule: a sequence of sparsities needs one target number")
        ends = layer_sparsities(layout, sparsity)
        per_layer = []
        for p, end in zip(layout.parameters, ends, strict=True):
            begin = float(start[p.offset : p.stop].double().mean())
            _check_reachable(begin, end, f"{p.name}: ")
            per_layer.append(polynomial_schedule(begin, end, steps, power))
        return [
            {p.name: s[t] for p, s in zip(layout.parameters, per_layer, strict=True)}
            for t in range(steps)
        ]
    begin = float(start.double().mean())
    _check_reachable(begin, float(sparsity), "")
    if power is not None:
        return polynomial_schedule(begin, float(sparsity), steps, power)
    return _sequence_targets(list(schedule), begin, float(sparsity), steps)


def _check_reachable(begin: float, end: float, where: str) -> None:
    if begin > end:
        raise ValueError(
            f"sparsity: {where}the model already has {begin:.4g} of its analysed weights at "
            f"zero, more than the target {end:.4g}; pruning cannot reach the target (zeros stay "
            "pruned): raise the target"
        )


def _sequence_targets(values: list, begin: float, end: float, steps: int) -> list[float]:
    if len(values) != steps:
        raise ValueError(
            f"schedule: {len(values)} sparsities given for {steps} pruning steps; give one per "
            "step (see pruning_plan), the last being the target"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            raise ValueError(f"schedule: every sparsity must be a number in [0, 1), got {v!r}")
    if any(b < a for a, b in zip([begin, *values], values, strict=False)):
        raise ValueError(
            f"schedule: the sparsities must rise from the model's {begin:.4g}, got {values}"
        )
    if not math.isclose(values[-1], end, rel_tol=0, abs_tol=1e-12):
        raise ValueError(
            f"schedule: the last step reaches {values[-1]}, not the target sparsity {end}; the "
            "schedule cannot reach the target"
        )
    return [float(v) for v in values]


def _check_final_target(layout, start, target, pruning: PruningSchedule) -> None:
    """Refuse now what the last step would refuse (min_density, every weight pruned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        select_pruned(
            torch.zeros(layout.dim, dtype=torch.float64),
            layout,
            target,
            scope=pruning.scope,
            min_density=pruning.min_density,
            fixed=start,
        )


def gradual_prune(
    model: nn.Module,
    method: str | PruningSettings,
    sparsity: Sparsity,
    *,
    train_data: Iterable,
    eval_data: Iterable,
    epochs: int,
    prune_every: int,
    schedule: ScheduleSpec = "cubic",
    steps: int | None = None,
    progress: bool | None = None,
    data: Iterable | None = None,
    training: TrainingSettings | None = None,
    pruning: PruningSchedule | None = None,
    options: RunOptions | None = None,
    **changes,
) -> GradualResult:
    """Prune a copy of ``model`` to ``sparsity`` in steps while training it ``epochs`` epochs.

    Step t (of ``steps``, default ceil(epochs / ``prune_every``)) happens at the start of
    epoch (t − 1)·``prune_every``: the curvature of ``method`` (a name or
    :class:`~wfexplore.pruning.PruningSettings`) is estimated on the current model in eval
    mode from the first m·b examples of ``data`` (default ``train_data``, taken once with the
    training seed), the step's target sparsity is pruned with the update, and training on
    ``train_data`` follows with the masks held. ``schedule``: ``"cubic"`` (Zhu & Gupta),
    ``"linear"``, a power p, or one sparsity per step. ``training``
    (:class:`~wfexplore.pruning.TrainingSettings`: optimizer factory, default SGD with
    momentum; learning-rate schedule; seed), ``pruning`` (:class:`PruningSchedule`: scope,
    update, min_density; its ``steps`` must stay 1) and ``options`` (:class:`RunOptions`:
    selection, loss, memory, BatchNorm re-estimation after each step) may be built once;
    keyword ``changes`` override their fields (``scope="layerwise"``, ``update="group"``,
    ``seed=1``). ``eval_data`` is evaluated before and after every step and after every
    epoch. ``progress`` (default ``options.progress``, True) shows a bar advancing per epoch.
    Bad input is refused before any training; a loader's own shuffling ``generator`` is
    seeded for the call and restored.
    """
    plan = _Plan(epochs, tuple(pruning_plan(epochs, prune_every, steps)), prune_every)
    return _prepare(
        _Inputs("gradual", model, method, sparsity, plan, train_data, eval_data, data),
        schedule=schedule,
        training=training,
        pruning=pruning,
        options=options,
        progress=progress,
        **changes,
    ).execute()


def one_shot_then_finetune(
    model: nn.Module,
    method: str | PruningSettings,
    sparsity: Sparsity,
    *,
    train_data: Iterable,
    eval_data: Iterable,
    epochs: int,
    data: Iterable | None = None,
    **kwargs,
) -> GradualResult:
    """Prune a copy of ``model`` to ``sparsity`` once, then train it ``epochs`` epochs.

    The equal-budget partner of :func:`gradual_prune`, with its other keywords (``progress``,
    ``training``, ``pruning``, ``options``, field changes) and its frames (one step row).
    """
    plan = _Plan(epochs, tuple(pruning_plan(epochs, epochs, 1)), epochs)
    inputs = _Inputs(
        "one_shot_finetune", model, method, sparsity, plan, train_data, eval_data, data
    )
    return _prepare(inputs, **kwargs).execute()


def one_shot(
    model: nn.Module,
    method: str | PruningSettings,
    sparsity: Sparsity,
    *,
    eval_data: Iterable,
    data: Iterable | None = None,
    **kwargs,
) -> GradualResult:
    """Prune a copy of ``model`` once, without training: the ``"one_shot"`` protocol in the
    frames of the other two (``data`` feeds the curvature; ``progress``, ``pruning``,
    ``options`` and field changes as in :func:`gradual_prune`)."""
    kwargs.pop("training", None)
    inputs = _Inputs("one_shot", model, method, sparsity, _Plan(0, (0,), 0), None, eval_data, data)
    return _prepare(inputs, **kwargs).execute()


def run_protocol(
    model: nn.Module,
    protocol: str,
    method: str | PruningSettings,
    sparsity: Sparsity,
    *,
    train_data: Iterable | None,
    eval_data: Iterable,
    epochs: int,
    prune_every: int = 1,
    **kwargs,
) -> GradualResult:
    """One point of a protocol comparison: ``protocol`` (one of :data:`PROTOCOLS`) run by
    :func:`one_shot`, :func:`one_shot_then_finetune` or :func:`gradual_prune`; ``epochs``
    and ``prune_every`` apply where they mean something, ``schedule`` and ``steps`` only to
    ``"gradual"``; ``data`` defaults to ``train_data`` for all three."""
    one_of(protocol, "protocol", PROTOCOLS)
    common = {"train_data": train_data, "eval_data": eval_data, "epochs": epochs}
    if protocol == "gradual":
        return gradual_prune(model, method, sparsity, prune_every=prune_every, **common, **kwargs)
    for name in ("schedule", "steps"):
        kwargs.pop(name, None)
    if protocol == "one_shot_finetune":
        return one_shot_then_finetune(model, method, sparsity, **common, **kwargs)
    if kwargs.get("data") is None:
        kwargs["data"] = train_data
    return one_shot(model, method, sparsity, eval_data=eval_data, **kwargs)


@dataclass
class _Inputs:
    """What a run is given, before the checks."""

    protocol: str
    model: nn.Module
    method: object
    sparsity: Sparsity
    plan: _Plan
    train_data: Iterable | None
    eval_data: Iterable
    data: Iterable | None


def _prepare(
    inputs: _Inputs,
    *,
    schedule: ScheduleSpec = "cubic",
    training: TrainingSettings | None = None,
    pruning: PruningSchedule | None = None,
    options: RunOptions | None = None,
    progress: bool | None = None,
    **changes,
) -> _Run:
    """Every check before any work: settings, data, the schedule and the final target."""
    if not isinstance(inputs.model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(inputs.model).__name__}")
    if progress is not None:
        changes["progress"] = progress
    pruning, options, training = with_changes(
        changes,
        pruning or PruningSchedule(),
        options or RunOptions(),
        training or TrainingSettings(),
    )
    if pruning.steps != 1:
        raise ValueError(
            f"pruning.steps={pruning.steps}: the steps of training-aware pruning come from "
            "epochs, prune_every and steps=; leave PruningSchedule.steps at 1"
        )
    settings = resolve_method(inputs.method)
    if not isinstance(settings, PruningSettings):
        raise TypeError(
            "method: a ready curvature cannot be re-estimated on the model as it trains; pass "
            "the method name or PruningSettings"
        )
    check_sparsity_argument(inputs.sparsity, pruning.scope)
    if inputs.data is None:
        inputs.data = inputs.train_data
    _check_data(inputs, settings, options)
    options = options.with_budget(inputs.model)
    settings, _ = options.checked(inputs.model, settings, example=inputs.data)
    layout = options.layout(inputs.model, settings)
    start = (layout.flatten(inputs.model).detach() == 0).cpu()
    steps = len(inputs.plan.step_epochs)
    targets = step_targets(layout, start, inputs.sparsity, steps, schedule)
    _check_final_target(layout, start, targets[-1], pruning)
    if inputs.protocol != "gradual":
        schedule = "one step"
    return _Run(inputs, settings, layout, targets, schedule, (pruning, options, training))


def _check_data(inputs: _Inputs, settings: PruningSettings, options: RunOptions) -> None:
    if inputs.plan.epochs > 0:
        if inputs.train_data is None:
            raise ValueError("train_data: a loader of training batches is needed to train")
        check_reusable(inputs.train_data, "train_data")
    check_reusable(inputs.eval_data, "eval_data")
    if settings.needs_data and inputs.data is None:
        raise ValueError(f"data: {settings.method} estimates a curvature; pass data=<loader>")
    if options.recalibrate_bn and inputs.data is None:
        raise ValueError("recalibrate_bn=True needs data=<loader> to re-estimate BatchNorm with")


class _Run:
    """One training-aware pruning run on a private copy: steps, training, measurements."""

    def __init__(self, inputs: _Inputs, settings, layout, targets, schedule, how):
        self.inputs, self.settings, self.layout = inputs, settings, layout
        self.targets, self.schedule, self.plan = targets, schedule, inputs.plan
        self.pruning, self.options, self.training = how
        self.work = private_copy(inputs.model)
        self.device = next(self.work.parameters()).device
        self.optimizer, self.scheduler = (
            self.training.build(self.work) if self.plan.epochs > 0 else (None, None)
        )
        self.holder = MaskHolder(self.work)
        self.history: list[dict] = []
        self.results: list[PruningResult] = []
        self.seconds = {"curvature": 0.0, "prune": 0.0, "train": 0.0, "eval": 0.0}

    def evaluate(self, epoch: float, step: int, event: str, train_loss=math.nan) -> dict:
        start = time.perf_counter()
        measured = evaluate_model(self.work, self.inputs.eval_data, loss_fn=self.options.loss_fn)
        self.seconds["eval"] += time.perf_counter() - start
        zeros = self.layout.flatten(self.work).detach() == 0
        row = {
            "epoch": epoch,
            "step": step,
            "event": event,
            "sparsity": float(zeros.double().mean()),
        }
        self.history.append({**row, **measured, "train_loss": train_loss})
        return measured

    def examples(self) -> list | None:
        """The curvature's examples, taken once (with the training seed) for every step."""
        if not self.settings.needs_data:
            return None
        data = self.inputs.data
        with seeded(data, self.training.seed, self.device):
            return take_examples(data, self.settings.examples_needed, name="data")

    def prune_step(self, target, examples) -> tuple[PruningResult, float, float]:
        """Re-estimate C on the current model, prune to ``target``, hold the new masks;
        the result and the seconds of curvature and of the rest of the step."""
        timing = {"curvature": 0.0}
        settings, options, layout = self.settings, self.options, self.layout

        def provider(step, model, keep):
            start = time.perf_counter()
            curvature = options.curvature(model, examples, layout, settings, keep, progress=False)
            inverse_diag = curvature.inverse_diag()
            timing["curvature"] += time.perf_counter() - start
            return curvature, inverse_diag

        self.work.zero_grad(set_to_none=True)
        start = time.perf_counter()
        result = run_pruning(
            self.work,
            layout,
            provider,
            target,
            schedule=self.pruning,
            options=replace(options, progress=False, per_layer_actual=False),
            bn_data=self.inputs.data,
        )
        with torch.no_grad():
            self.work.load_state_dict(result.model.state_dict())
        self.holder.set_masks(result.masks, self.optimizer)
        return result, timing["curvature"], time.perf_counter() - start - timing["curvature"]

    def train(self, epochs: int, first_epoch: int, step: int, bar) -> float:
        """Train ``epochs`` epochs, evaluating after each; the seconds spent training."""
        done = [first_epoch]

        def after_epoch(loss: float) -> None:
            done[0] += 1
            accuracy = self.evaluate(float(done[0]), step, "epoch", loss)["accuracy"]
            bar.update(1)
            bar.set_postfix(step=step, accuracy=f"{accuracy:.3f}")

        start, eval_before = time.perf_counter(), self.seconds["eval"]
        train_epochs(
            self.work,
            self.inputs.train_data,
            epochs,
            self.optimizer,
            self.holder,
            scheduler=self.scheduler,
            loss_fn=self.options.loss_fn,
            after_epoch=after_epoch,
        )
        return time.perf_counter() - start - (self.seconds["eval"] - eval_before)

    def execute(self) -> GradualResult:
        examples = self.examples()
        label = f"{self.inputs.protocol} {self.settings.method}"
        bar = tqdm(
            total=self.plan.epochs, desc=label, unit="epoch", disable=not self.options.progress
        )
        rows = []
        try:
            with seeded(self.inputs.train_data, self.training.seed, self.device):
                self.evaluate(0.0, 0, "before_step")
                for t, target in enumerate(self.targets):
                    rows.append(self._step(t, target, examples, bar))
        finally:
            bar.close()
        return self._result(pd.DataFrame(rows))

    def _step(self, t: int, target, examples, bar) -> dict:
        """Step t + 1: measured before, pruned, measured after, trained until the next one."""
        before = self.history[-1]
        if t > 0:
            self.history.append({**before, "event": "before_step"})
        epoch = self.plan.step_epochs[t]
        result, curvature_s, prune_s = self.prune_step(target, examples)
        self.results.append(result)
        after = self.evaluate(float(epoch), t + 1, "after_step")
        recovery = self.plan.recovery(t)
        train_s = self.train(recovery, epoch, t + 1, bar) if recovery else 0.0
        recovered = self.history[-1] if recovery else {"accuracy": math.nan, "loss": math.nan}
        for key, value in (("curvature", curvature_s), ("prune", prune_s), ("train", train_s)):
            self.seconds[key] += value
        pruned = result.steps.iloc[0]
        return {
            "epoch": epoch,
            "step": t + 1,
            **{k: pruned[k] for k in ("target_sparsity", "sparsity", "newly_pruned")},
            "accuracy_before": before["accuracy"],
            "loss_before": before["loss"],
            "accuracy_after": after["accuracy"],
            "loss_after": after["loss"],
            "accuracy_recovered": recovered["accuracy"],
            "loss_recovered": recovered["loss"],
            "recovery_epochs": recovery,
            **{k: pruned[k] for k in ("predicted_delta_loss", "curvature", "damping")},
            "curvature_s": curvature_s,
            "prune_s": prune_s,
            "train_s": train_s,
        }

    def _result(self, steps: pd.DataFrame) -> GradualResult:
        self.holder.check()
        last = self.results[-1]
        layers = last.layers.copy()
        for column in ("newly_pruned", "predicted_delta_loss"):
            layers[column] = sum(r.layers[column] for r in self.results)
        dense, final = self.history[0], self.history[-1]
        schedule = self.schedule
        kept = ("update", "target_sparsity", "sparsity", "pruned", "damping", "recalibrated_bn")
        summary = {
            **self.settings.describe(),
            "protocol": self.inputs.protocol,
            "scope": self.pruning.scope,
            "steps": len(steps),
            "epochs": self.plan.epochs,
            "prune_every": self.plan.prune_every,
            "schedule": schedule if isinstance(schedule, str | int | float) else list(schedule),
            **{k: last.summary[k] for k in kept},
            "analysed": self.layout.dim,
            "predicted_delta_loss": float(steps["predicted_delta_loss"].sum()),
            "dense_loss": dense["loss"],
            "dense_accuracy": dense["accuracy"],
            "loss": final["loss"],
            "accuracy": final["accuracy"],
            **{f"{k}_s": v for k, v in self.seconds.items()},
            "seconds": self.seconds["curvature"] + self.seconds["prune"] + self.seconds["train"],
        }
        return GradualResult(
            model=self.work,
            masks=last.masks,
            layers=layers,
            steps=steps,
            summary=summary,
            layout=self.layout,
            history=pd.DataFrame(self.history),
        )


__all__ = [
    "PROTOCOLS",
    "SCHEDULES",
    "GradualResult",
    "gradual_prune",
    "one_shot",
    "one_shot_then_finetune",
    "pruning_plan",
    "run_protocol",
    "step_targets",
]
