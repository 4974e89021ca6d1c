r"""Pruning comparison: methods × sparsities through one sweep that keeps what it pruned.

:func:`sweep_points` runs :func:`~wfexplore.pruning.sweep` with ``keep_masks=True``: every
point's accuracy and loss (a tidy frame) and its keep masks and moved weights
(:class:`PrunedPoint`), cached on disk with the row, so that nothing is pruned twice;
:func:`protocol_points` gives the same for pruning with training (one-shot + fine-tune,
gradual).
:func:`compare_pruning` adds, at one sparsity, per-layer sparsity, mask overlaps, the
saliencies of the dense model and each layer pruned alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from wfexplore.experiments.common import (
    MethodCurvatures,
    check_methods,
    effective_update,
    method_label,
    picture_defaults,
)
from wfexplore.experiments.protocols import protocol_sweep
from wfexplore.experiments.sensitivity import layer_sensitivities
from wfexplore.params import BlockSpec
from wfexplore.pruning import Saliency, mask_overlap, sweep

DEFAULT_METHODS = ("magnitude", "obd", "woodfisher")
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9)
PointKey = tuple[str, str, str, str, int | None, float]
"""(method, protocol, scope, effective update, steps, sparsity) of one pruned point; steps is
None for the training protocols, whose steps follow their training plan."""


@dataclass
class PrunedPoint:
    """What one sweep point pruned: ``masks`` (parameter → keep mask, True = kept), ``moved``
    (parameter → True where the update changed a kept weight) and its sweep ``row``."""

    masks: dict[str, torch.Tensor]
    moved: dict[str, torch.Tensor]
    row: dict = field(default_factory=dict)

    @property
    def layers(self) -> pd.DataFrame:
        """Per parameter: ``parameter``, ``numel``, ``pruned``, ``layer_sparsity``."""
        numel = [int(keep.numel()) for keep in self.masks.values()]
        pruned = [int((~keep).sum()) for keep in self.masks.values()]
        return pd.DataFrame(
            {
                "parameter": list(self.masks),
                "numel": numel,
                "pruned": pruned,
                "layer_sparsity": [p / n for p, n in zip(pruned, numel, strict=True)],
            }
        )


def point_key(
    method: str,
    scope: str,
    update: str,
    steps: int,
    sparsity: float,
    protocol: str = "one_shot",
) -> PointKey:
    """The key of one point: ``steps`` (recomputations of one-shot pruning) counts only for
    the ``"one_shot"`` protocol."""
    steps = int(steps) if protocol == "one_shot" else None
    return (method, protocol, scope, effective_update(method, update), steps, float(sparsity))


def sweep_points(
    model: nn.Module,
    data: Iterable,
    eval_data: Iterable,
    *,
    methods: Sequence[str],
    sparsities: Sequence[float],
    scope: str = "global",
    update: str = "summed",
    steps: int = 1,
    damping: float = 1e-4,
    num_samples: int = 256,
    block_size: BlockSpec = 64,
    cache: bool | str | Path = True,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[PointKey, PrunedPoint]]:
    """The sweep frame (without masks) and every point's masks, keyed by :func:`point_key`."""
    frame = sweep(
        model,
        data,
        methods=list(methods),
        sparsities=list(sparsities),
        scopes=(scope,),
        updates=(update,),
        steps=(steps,),
        dampings=(damping,),
        num_samples=(num_samples,),
        block_sizes=(block_size,),
        eval_data=eval_data,
        cache=cache,
        keep_masks=True,
        progress=progress,
    )
    frame.insert(1, "protocol", "one_shot")
    return _split_points(frame)


def _split_points(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[PointKey, PrunedPoint]]:
    """A frame with ``masks`` and ``moved`` columns → the frame without them, and the points."""
    points = {}
    for row in frame.to_dict("records"):
        masks, moved = row.pop("masks"), row.pop("moved")
        key = point_key(
            row["method"], row["scope"], row["update"], row["steps"], row["sparsity"],
            row["protocol"],
        )  # fmt: skip
        points[key] = PrunedPoint(masks, moved, row)
    return frame.drop(columns=["masks", "moved"]), points


def protocol_points(
    model: nn.Module,
    train_data: Iterable,
    eval_data: Iterable,
    *,
    protocol: str,
    methods: Sequence[str],
    sparsities: Sequence[float],
    scope: str = "global",
    update: str = "summed",
    damping: float = 1e-4,
    num_samples: int = 256,
    block_size: BlockSpec = 64,
    data: Iterable | None = None,
    cache: bool | str | Path = True,
    **plan,
) -> tuple[pd.DataFrame, dict[PointKey, PrunedPoint]]:
    """:func:`sweep_points` for one training ``protocol`` (``"one_shot_finetune"`` or
    ``"gradual"``) through :func:`~wfexplore.experiments.protocol_sweep`: the final accuracy
    and loss of every method × sparsity after training on ``train_data``, and the final masks
    (``moved`` all False: training moves every kept weight). ``plan``: ``epochs``,
    ``prune_every``, ``steps``, ``schedule``, ``training`` as there."""
    result = protocol_sweep(
        model, train_data, eval_data, methods=list(methods), sparsities=list(sparsities),
        protocols=(protocol,), data=data, scope=scope, update=update, damping=damping,
        num_samples=num_samples, block_size=block_size, cache=cache, keep_masks=True,
        progress=False, **plan,
    )  # fmt: skip
    return _split_points(result.points)


def allocation_frame(points: Mapping[str, PrunedPoint]) -> pd.DataFrame:
    """Per-layer sparsity of method → point: ``method``, ``parameter``, ``numel``, ``pruned``,
    ``layer_sparsity``, ``sparsity`` (overall target), ``scope``, ``update``."""
    if not points:
        raise ValueError("points: give at least one method → PrunedPoint")
    frames = []
    for method, point in points.items():
        frame = point.layers
        frame.insert(0, "method", method)
        for column in ("sparsity", "scope", "update"):
            frame[column] = point.row.get(column)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def overlap_frame(points: Mapping[str, PrunedPoint]) -> pd.DataFrame:
    """Jaccard overlap of the pruned sets per layer, for every pair of methods (``pair``)."""
    tables = []
    for a, b in itertools.combinations(points, 2):
        table = mask_overlap(points[a].masks, points[b].masks)
        table.insert(0, "pair", f"{method_label(a)} vs {method_label(b)}")
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


@dataclass
class PruningComparison:
    """What :func:`compare_pruning` computed; every field is a tidy frame or a core object.

    ``sweep``: accuracy and loss per method and sparsity; ``points``: method →
    :class:`PrunedPoint` at ``sparsity``; ``allocation``: per-layer sparsity of those points;
    ``picture_layer`` and ``image_shape``: which masks to draw, and how; ``overlap``: Jaccard
    overlap of the pruned sets per layer and pair of methods; ``saliencies``: method →
    saliencies of the dense model; ``sensitivity``: each layer pruned alone (``method``).
    """

    sweep: pd.DataFrame
    sparsity: float
    points: dict[str, PrunedPoint] = field(repr=False)
    allocation: pd.DataFrame
    picture_layer: str
    image_shape: tuple[int, int] | None
    overlap: pd.DataFrame
    saliencies: dict[str, Saliency] = field(repr=False)
    sensitivity: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def summary(self, value: str = "accuracy") -> pd.DataFrame:
        """Sparsity down, method across: ``value`` of the sweep, plus the unpruned value."""
        table = self.sweep.pivot_table(
            index="sparsity", columns="method", values=value, sort=False
        ).sort_index()
        order = self.settings.get("methods") or list(dict.fromkeys(self.sweep["method"]))
        table = table[[m for m in order if m in table.columns]]
        table.columns = [method_label(m) for m in table.columns]
        dense = f"dense_{value}"
        if dense in self.sweep.columns:
            table.insert(0, "unpruned", float(self.sweep[dense].iloc[0]))
        return table.reset_index()

    def findings(self, a: str = "woodfisher", b: str = "magnitude") -> list[str]:
        """Sentences, computed from the sweep, on where ``a`` beats ``b`` and where not."""
        return compare_methods_sentences(self.sweep, a, b)


def _listing(values) -> str:
    return ", ".join(f"{s:.0%}" for s in values)


def compare_methods_sentences(
    frame: pd.DataFrame, a: str = "woodfisher", b: str = "magnitude", value: str = "accuracy"
) -> list[str]:
    """Per sparsity of a sweep frame: does method ``a`` reach a higher ``value`` than ``b``?"""
    if not {a, b} <= set(frame["method"]):
        return []
    table = frame.pivot_table(index="sparsity", columns="method", values=value).sort_index()
    la, lb = method_label(a), method_label(b)
    better = [s for s in table.index if table.loc[s, a] > table.loc[s, b]]
    worse = [s for s in table.index if table.loc[s, a] < table.loc[s, b]]
    tied = [s for s in table.index if table.loc[s, a] == table.loc[s, b]]
    out = []
    if better:
        gaps = [table.loc[s, a] - table.loc[s, b] for s in better]
        s_best = better[int(np.argmax(gaps))]
        out.append(
            f"{la} keeps a higher {value} than {lb} at sparsity {_listing(better)}; the largest "
            f"gap is at {s_best:.0%}: {table.loc[s_best, a]:.3f} against "
            f"{table.loc[s_best, b]:.3f}."
        )
    if worse:
        out.append(
            f"{lb} is more accurate than {la} at {_listing(worse)} ("
            + "; ".join(f"{s:.0%}: {table.loc[s, b]:.3f} vs {table.loc[s, a]:.3f}" for s in worse)
            + ")."
        )
    if tied:
        out.append(f"{la} and {lb} reach the same {value} at {_listing(tied)}.")
    return out


def compare_pruning(
    model: nn.Module,
    data: Iterable,
    eval_data: Iterable,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    sparsity: float | None = None,
    damping: float = 1e-4,
    num_samples: int = 256,
    block_size: BlockSpec = 64,
    scope: str = "global",
    update: str = "summed",
    sensitivity_methods: Sequence[str] = ("obd", "woodfisher"),
    sensitivity_sparsities: Sequence[float] = (0.3, 0.6, 0.9),
    picture_layer: str | None = None,
    image_shape: tuple[int, int] | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> PruningComparison:
    """One-shot pruning of ``model`` by each method, from one sweep that keeps its masks.

    The sweep (``methods`` × ``sparsities``, one ``scope`` and ``update``) measures accuracy
    and loss on ``eval_data`` and keeps every point's masks; those at ``sparsity`` (default:
    the middle of ``sparsities``; swept too when it is not among them) give the per-layer
    sparsity, the pictures and the overlaps. Each method's curvature, estimated once on
    ``data``, gives the saliencies and the per-layer sensitivity. ``data`` should yield its
    examples in a fixed order (the sweep's on-disk cache is keyed by them).
    ``picture_layer`` defaults to the first analysed layer, ``image_shape`` to 8×8 for 64
    inputs. ``progress`` shows the core's progress bars.
    """
    methods = check_methods(methods)
    sparsities = [float(s) for s in sparsities]
    if sparsity is None:
        sparsity = sorted(sparsities)[len(sparsities) // 2]
    sparsity = float(sparsity)
    picture_layer, image_shape = picture_defaults(model, picture_layer, image_shape)
    curvature = {"damping": damping, "num_samples": num_samples, "block_size": block_size}
    frame, points = sweep_points(
        model, data, eval_data, methods=methods, scope=scope, update=update, cache=cache,
        sparsities=sparsities + ([sparsity] if sparsity not in sparsities else []),
        progress=progress, **curvature,
    )  # fmt: skip
    frame = frame[frame["sparsity"].isin(sparsities)].reset_index(drop=True)
    at = {m: points[point_key(m, scope, update, 1, sparsity)] for m in methods}
    study = MethodCurvatures(model, data, progress=progress, **curvature)
    sensitivity = layer_sensitivities(
        study,
        [m for m in methods if m in sensitivity_methods],
        eval_data,
        sparsities=sensitivity_sparsities,
        update=update,
    ).sensitivity
    return PruningComparison(
        sweep=frame,
        sparsity=sparsity,
        points=at,
        allocation=allocation_frame(at),
        picture_layer=picture_layer,
        image_shape=image_shape,
        overlap=overlap_frame(at),
        saliencies={m: study.saliency(m) for m in methods},
        sensitivity=sensitivity,
        settings={
            "methods": methods,
            "sparsities": sparsities,
            "damping": damping,
            "num_samples": num_samples,
            "block_size": block_size,
            "scope": scope,
            "update": update,
        },
    )
