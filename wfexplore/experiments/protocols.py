r"""Pruning protocols compared at an equal training budget, cached like one-shot sweep points.

:func:`protocol_sweep` runs methods × sparsities × protocols (:data:`~wfexplore.pruning.PROTOCOLS`:
one-shot, one-shot + fine-tune, gradual) through :func:`~wfexplore.pruning.run_protocol` and
returns a :class:`ProtocolSweep`: one row per point (final accuracy and loss, wall seconds of
curvature, pruning and training), and every point's per-step and per-epoch measurements.
Each point is cached on disk, as a row of :func:`~wfexplore.pruning.sweep` is, under a SHA-256
of everything that changes it: the model, the training data (its first seeded pass), the
curvature's examples, the evaluation data, the loss, the method and its hyper-parameters,
scope, update, the protocol, epochs, spacing and schedule of the steps, the optimizer and
learning-rate factories, the seed, BatchNorm re-estimation, the device kind and the library
version. A rerun reads the cached points and computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

import wfexplore
from wfexplore.experiments.common import QUIET, Progress, check_methods, method_label
from wfexplore.pruning import (
    PROTOCOLS,
    PruningSchedule,
    PruningSettings,
    RunOptions,
    TrainingSettings,
    effective_update,
    pruning_plan,
    run_protocol,
)
from wfexplore.pruning.cache import (
    open_cache,
    prefix_hashes,
    read_cached,
    write_cached,
)
from wfexplore.pruning.estimation import take_examples, with_changes
from wfexplore.pruning.fingerprints import (
    data_fingerprint,
)
from wfexplore.pruning.masked_training import seeded
from wfexplore.pruning.masks import check_sparsity

CACHE_VERSION = "protocols-1"
DEFAULT_METHODS = ("magnitude", "obd", "woodfisher", "kfac")
DEFAULT_SPARSITIES = (0.8, 0.9, 0.95)
KEYS = ["method", "protocol", "sparsity"]
"""The columns that name a point in every frame of a :class:`ProtocolSweep`."""
PROTOCOL_LABELS = {
    "one_shot": "one-shot",
    "one_shot_finetune": "one-shot + fine-tune",
    "gradual": "gradual",
}


def protocol_label(protocol: str) -> str:
    """The display name of a protocol (``"one_shot_finetune"`` → ``"one-shot + fine-tune"``)."""
    return PROTOCOL_LABELS.get(str(protocol), str(protocol))


@dataclass
class ProtocolSweep:
    """What :func:`protocol_sweep` computed.

    ``points``: one row per (method, protocol, sparsity) — ``accuracy``, ``loss``,
    ``dense_accuracy``, ``worst_after_step`` (the lowest accuracy right after a step),
    ``curvature_s``, ``prune_s``, ``train_s``, ``seconds`` (their sum), ``cached`` and the
    settings; ``steps``: every point's step rows (see
    :class:`~wfexplore.pruning.GradualResult`); ``history``: every point's evaluations over
    training. Both carry the :data:`KEYS` columns first.
    """

    points: pd.DataFrame
    steps: pd.DataFrame
    history: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def table(self, value: str = "accuracy") -> pd.DataFrame:
        """Sparsity down; (protocol, method) across: ``value`` of every point."""
        table = self.points.pivot_table(
            index="sparsity", columns=["protocol", "method"], values=value, sort=False
        )
        return table.sort_index()

    def gaps(self, a: str = "woodfisher", b: str = "magnitude") -> pd.DataFrame:
        """Final accuracy of ``a`` minus ``b``: sparsity down, protocol across."""
        return protocol_gaps(self.points, a, b)

    def findings(self, a: str = "woodfisher", b: str = "magnitude") -> list[str]:
        """Sentences, computed from the points and steps, on where ``a``'s lead over ``b``
        closes with fine-tuning, where it does not, and what it costs."""
        return protocol_findings(self, a, b)


def protocol_sweep(
    model: nn.Module,
    train_data: Iterable,
    eval_data: Iterable,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    protocols: Sequence[str] = PROTOCOLS,
    epochs: int = 6,
    prune_every: int = 1,
    steps: int | None = None,
    schedule: str | float | Sequence[float] = "cubic",
    data: Iterable | None = None,
    base: PruningSettings | None = None,
    training: TrainingSettings | None = None,
    pruning: PruningSchedule | None = None,
    options: RunOptions | None = None,
    cache: bool | str | Path = True,
    cache_key: str | None = None,
    keep_masks: bool = False,
    reporter: Progress = QUIET,
    **changes,
) -> ProtocolSweep:
    """Every method × sparsity × protocol of ``model``, at an equal training budget.

    ``"one_shot_finetune"`` and ``"gradual"`` both train ``epochs`` epochs on ``train_data``;
    gradual prunes every ``prune_every`` epochs along ``schedule``, in ``steps`` steps
    (default: as many as fit; fewer leave a longer recovery after the last); ``"one_shot"``
    does not train. ``base`` holds the curvature hyper-parameters of every method (λ, m, B…),
    ``training``, ``pruning`` and ``options`` as in :func:`~wfexplore.pruning.gradual_prune`;
    keyword ``changes`` override fields of any of them (``damping=1e-4``, ``num_samples=128``,
    ``scope="layerwise"``, ``progress=False``; ``seed`` sets both the training seed and the
    true-Fisher seed). ``data`` (default ``train_data``) feeds the curvature. ``cache``: True
    for ``cache_dir()/sweeps``, a folder, or False; where the model, the loss or the
    optimizer factories cannot be fingerprinted (a lambda, a closure) nothing is cached, with
    a warning, unless ``cache_key`` names them. With ``keep_masks`` every point also holds
    ``masks`` (parameter → keep mask, True = kept), cached beside it, and ``moved`` (all
    False: training moves every kept weight), the columns of
    :func:`~wfexplore.experiments.sweep_points`. ``reporter`` hears of every point.
    """
    base, pruning, options, training = with_changes(
        changes,
        base or PruningSettings(),
        pruning or PruningSchedule(),
        options or RunOptions(),
        training or TrainingSettings(),
    )
    grid = _grid(methods, sparsities, protocols)
    run = _ProtocolRun(model, train_data, eval_data, data, base, pruning, options, training)
    run.keep_masks = keep_masks
    pruning_plan(epochs, prune_every, steps)  # bad budgets are refused before any work
    run.plan = {"epochs": epochs, "prune_every": prune_every, "steps": steps, "schedule": schedule}
    run.open_cache(cache, cache_key, [base.replace(method=m) for m in grid["methods"]])
    return run.sweep(grid, reporter)


def _grid(methods, sparsities, protocols) -> dict[str, list]:
    methods = check_methods(methods)
    sparsities = list(dict.fromkeys(check_sparsity(s, "sparsities") for s in sparsities))
    protocols = list(dict.fromkeys(protocols))
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocols: {p!r} is not one of {list(PROTOCOLS)}")
    if not sparsities or not protocols:
        raise ValueError("sparsities and protocols: give at least one of each")
    return {"methods": methods, "sparsities": sparsities, "protocols": protocols}


class _ProtocolRun:
    """One protocol sweep: the cache and the points."""

    def __init__(self, model, train_data, eval_data, data, base, pruning, options, training):
        self.model, self.train_data, self.eval_data = model, train_data, eval_data
        self.data = data if data is not None else train_data
        self.base, self.pruning, self.options, self.training = base, pruning, options, training
        self.plan: dict = {}
        self.keep_masks = False
        self.folder: Path | None = None
        self.key: dict = {}

    def open_cache(self, cache, cache_key, settings: list[PruningSettings]) -> None:
        opened = open_cache(
            cache,
            cache_key,
            "protocol sweep",
            self.model,
            loss_fn=self.options.loss_fn,
            optimizer=self.training.optimizer,
            lr_schedule=self.training.lr_schedule,
        )
        if opened is None:
            return
        self.folder, seen = opened
        self.key = {**self._base_key(settings), **seen}

    def _base_key(self, settings: list[PruningSettings]) -> dict:
        seed = self.training.seed
        needed = max(s.examples_needed for s in settings)
        examples = []
        if needed:
            with seeded(self.data, seed):
                examples = take_examples(self.data, needed, name="data")
        with seeded(self.train_data, seed):
            train = data_fingerprint(self.train_data)
        counts = {s.examples_needed for s in settings}
        return {
            "version": [wfexplore.__version__, CACHE_VERSION],
            "selection": self.options.layout(self.model, self.base).names,
            "eval": data_fingerprint(self.eval_data),
            "train": train,
            "examples": prefix_hashes(examples, counts),
            "seed": seed,
            "min_density": self.pruning.min_density,
            "recalibrate_bn": self.options.recalibrate_bn,
            "bn_batches": self.options.bn_batches,
            "device": next(self.model.parameters()).device.type,
        }

    def point_key(self, settings: PruningSettings, protocol: str, sparsity: float) -> str:
        trains = protocol != "one_shot"
        payload = {
            **{k: v for k, v in self.key.items() if trains or k not in ("optimizer", "train")},
            "examples": self.key["examples"][settings.examples_needed],
            "settings": settings.describe(),
            "scope": self.pruning.scope,
            "update": effective_update(settings.method, self.pruning.update),
            "protocol": protocol,
            "sparsity": sparsity,
            "plan": self.plan if trains else None,
        }
        if not trains:
            payload.pop("lr_schedule", None)
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def sweep(self, grid: dict, reporter: Progress) -> ProtocolSweep:
        points = list(itertools.product(grid["methods"], grid["protocols"], grid["sparsities"]))
        bar = tqdm(
            total=len(points), desc="protocols", unit="pt", disable=not self.options.progress
        )
        rows = []
        try:
            for method, protocol, sparsity in points:
                text = f"{protocol_label(protocol)}, {method_label(method)}, {sparsity:.0%}"
                reporter.note(f"Pruning {text}…")
                bar.set_postfix_str(text)
                rows.append(self.point(method, protocol, sparsity))
                reporter.step()
                bar.update(1)
        finally:
            bar.close()
        return _assemble(rows, {**grid, **self.plan, "scope": self.pruning.scope})

    def point(self, method: str, protocol: str, sparsity: float) -> dict:
        settings = self.base.replace(method=method)
        key = self.point_key(settings, protocol, sparsity) if self.folder is not None else None
        if key is not None:
            row = read_cached(self.folder, key, self.keep_masks)
            if row is not None:
                return {**row, "cached": True}
        result = run_protocol(
            self.model,
            protocol,
            settings,
            sparsity,
            train_data=self.train_data,
            eval_data=self.eval_data,
            data=self.data,
            training=self.training,
            pruning=self.pruning,
            options=replace(self.options, progress=False),
            **self.plan,
        )
        row = _point_row(settings, protocol, sparsity, result)
        masks = _masks(result) if self.keep_masks else {}
        if key is not None:
            write_cached(self.folder, key, row, masks)
        return {**row, **masks, "cached": False}


def _point_row(settings: PruningSettings, protocol: str, sparsity: float, result) -> dict:
    summary, steps = result.summary, result.steps
    described = settings.describe()
    row = {
        "method": settings.method,
        "protocol": protocol,
        "sparsity": sparsity,
        "update": summary["update"],
        "scope": summary["scope"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "prune_every": summary["prune_every"],
        **{k: described[k] for k in ("damping", "num_samples", "block_size", "batch_size")},
        "achieved_sparsity": summary["sparsity"],
        "accuracy": summary["accuracy"],
        "loss": summary["loss"],
        "delta_loss": summary["loss"] - summary["dense_loss"],
        "dense_accuracy": summary["dense_accuracy"],
        "dense_loss": summary["dense_loss"],
        "worst_after_step": float(steps["accuracy_after"].min()),
        **{k: summary[k] for k in ("curvature_s", "prune_s", "train_s", "eval_s", "seconds")},
    }
    row["step_rows"] = steps.to_dict("records")
    row["history_rows"] = result.history.to_dict("records")
    return row


def _masks(result) -> dict[str, dict[str, torch.Tensor]]:
    masks = {name: keep.cpu() for name, keep in result.masks.items()}
    return {"masks": masks, "moved": {n: torch.zeros_like(k) for n, k in masks.items()}}


def _achieved(row: dict) -> dict:
    """A step or history row with its own ``sparsity`` renamed ``achieved_sparsity`` (the
    point's target is the key)."""
    out = dict(row)
    out["achieved_sparsity"] = out.pop("sparsity")
    return out


def _assemble(rows: list[dict], settings: dict) -> ProtocolSweep:
    steps, history = [], []
    for row in rows:
        key = {k: row[k] for k in KEYS}
        steps += [{**key, **_achieved(r)} for r in row.pop("step_rows")]
        history += [{**key, **_achieved(r)} for r in row.pop("history_rows")]
    return ProtocolSweep(
        points=pd.DataFrame(rows),
        steps=pd.DataFrame(steps),
        history=pd.DataFrame(history),
        settings=settings,
    )


# --- findings --------------------------------------------------------------------------------
def protocol_gaps(
    points: pd.DataFrame, a: str = "woodfisher", b: str = "magnitude"
) -> pd.DataFrame:
    """Final accuracy of method ``a`` minus method ``b``: sparsity down, protocol across."""
    table = points.pivot_table(index="sparsity", columns=["protocol", "method"], values="accuracy")
    protocols = [p for p in PROTOCOLS if (p, a) in table.columns and (p, b) in table.columns]
    return pd.DataFrame({p: table[(p, a)] - table[(p, b)] for p in protocols}).sort_index()


def _points(values) -> str:
    return f"{100 * values:+.1f} points"


def protocol_findings(
    result: ProtocolSweep, a: str = "woodfisher", b: str = "magnitude", tolerance: float = 0.01
) -> list[str]:
    """Where ``a``'s lead over ``b`` closes after training (within ``tolerance``), where it
    does not, the widest gap right after a gradual step, and the wall time of each."""
    if not {a, b} <= set(result.points["method"]):
        return []
    la, lb = method_label(a), method_label(b)
    gaps = protocol_gaps(result.points, a, b)
    trained = [p for p in ("one_shot_finetune", "gradual") if p in gaps.columns]
    within = f"within {100 * tolerance:.1f} points"
    out = []
    for s in gaps.index:
        parts = ", ".join(f"{protocol_label(p)} {_points(gaps.loc[s, p])}" for p in gaps.columns)
        closed = [protocol_label(p) for p in trained if abs(gaps.loc[s, p]) <= tolerance]
        sentence = f"At {s:.0%}, {la} minus {lb} in final accuracy: {parts}"
        if closed:
            sentence += f" — the gap closes {within} after {' and '.join(closed)}"
        elif trained:
            sentence += f" — the gap stays wider than {tolerance * 100:.1f} points after training"
        out.append(sentence + ".")
    out += _after_step_findings(result.steps, a, b)
    out += _cost_findings(result.points, a, b)
    return out


def _after_step_findings(steps: pd.DataFrame, a: str, b: str) -> list[str]:
    """The step of the gradual runs where ``b`` falls furthest below ``a`` right after it."""
    if not len(steps) or "gradual" not in set(steps["protocol"]):
        return []
    gradual = steps[steps["protocol"] == "gradual"]
    after = gradual.pivot_table(
        index=["sparsity", "step"], columns="method", values="accuracy_after"
    )
    if a not in after or b not in after:
        return []
    gap = after[a] - after[b]
    s, step = gap.idxmax()
    target = gradual[(gradual["sparsity"] == s) & (gradual["step"] == step)]["target_sparsity"]
    target = float(target.iloc[0])
    where = (
        f"the last step, to {s:.0%}"
        if abs(target - s) < 1e-9
        else f"the step to {target:.0%} on the way to {s:.0%}"
    )
    recovered = gradual.pivot_table(
        index=["sparsity", "step"], columns="method", values="accuracy_recovered"
    ).loc[(s, step)]
    text = (
        f"Right after a gradual pruning step the gap is widest at {where}: {method_label(a)} "
        f"{after.loc[(s, step), a]:.3f} against {method_label(b)} {after.loc[(s, step), b]:.3f} "
        f"({_points(gap.max())})"
    )
    if recovered.notna().all():
        text += (
            f"; the training that follows brings them to {recovered[a]:.3f} and "
            f"{recovered[b]:.3f} ({_points(recovered[a] - recovered[b])})"
        )
    return [text + "."]


def _cost_findings(points: pd.DataFrame, a: str, b: str) -> list[str]:
    rows = points[points["protocol"] == "gradual"]
    if not len(rows):
        return []
    mean = rows.groupby("method")[["seconds", "curvature_s"]].mean()
    if a not in mean.index or b not in mean.index:
        return []
    share = mean.loc[a, "curvature_s"] / mean.loc[a, "seconds"]
    return [
        f"A gradual run takes {mean.loc[a, 'seconds']:.1f} s with {method_label(a)} "
        f"({share:.0%} of it estimating the curvature) against {mean.loc[b, 'seconds']:.1f} s "
        f"with {method_label(b)}."
    ]


__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SPARSITIES",
    "KEYS",
    "PROTOCOL_LABELS",
    "ProtocolSweep",
    "protocol_findings",
    "protocol_gaps",
    "protocol_label",
    "protocol_sweep",
]
