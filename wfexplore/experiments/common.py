"""What every experiment shares: the settings → examples → curvature → saliency → sensitivity
chain of pruning methods on one model, method names, the weight-update rule and progress."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import pandas as pd
from torch import nn

from wfexplore._checks import ImpossibleSetting  # noqa: F401 - part of this module's interface
from wfexplore.curvature.base import AnyCurvature
from wfexplore.params import BlockSpec
from wfexplore.pruning import (
    METHODS,
    PruningSettings,
    Saliency,
    compute_saliency,
    effective_update,
    layer_sensitivity,
    method_curvature,
    take_examples,
)

METHOD_LABELS = {
    "magnitude": "magnitude",
    "obd": "OBD",
    "woodfisher": "WoodFisher",
    "kfac": "K-FAC",
}


class Progress(Protocol):
    """Where an experiment reports its progress: what it does next, and each step done."""

    def note(self, text: str) -> None: ...

    def step(self) -> None: ...


class _Quiet:
    def note(self, text: str) -> None:
        pass

    def step(self) -> None:
        pass


QUIET: Progress = _Quiet()


def method_label(method: str) -> str:
    """The display name of a method (``"woodfisher"`` → ``"WoodFisher"``)."""
    return METHOD_LABELS.get(str(method), str(method))


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods without repeats; an unknown or empty list is a clear error."""
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: {m!r} is not one of {list(METHODS)}")
    if not methods:
        raise ValueError("methods: give at least one pruning method")
    return methods


def picture_defaults(
    model: nn.Module,
    layer: str | None,
    image_shape: tuple[int, int] | None,
    names: Sequence[str] | None = None,
) -> tuple[str, tuple[int, int] | None]:
    """The layer whose masks are drawn (default: the first analysed) and its picture shape
    (default: 8×8 images for a layer of 64 inputs, the digits)."""
    analysed = PruningSettings("magnitude").layout(model, names).names
    layer = layer or analysed[0]
    if layer not in analysed:
        raise ValueError(f"picture_layer {layer!r} is not analysed: {analysed}")
    shape = dict(model.named_parameters())[layer].shape
    if image_shape is None and len(shape) == 2 and shape[1] == 64:
        image_shape = (8, 8)
    return layer, image_shape


class MethodCurvatures:
    """Curvatures and saliencies of pruning methods on one model, each computed once.

    Every method uses λ = ``damping`` and m = ``num_samples`` gradients of the first examples
    of ``data`` (taken once, shared by all methods); WoodFisher blocks of ``block_size``.
    ``names`` selects the analysed parameters (default: every Conv/Linear weight).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        *,
        damping: float,
        num_samples: int,
        block_size: BlockSpec,
        names: Sequence[str] | None = None,
        progress: bool = False,
    ):
        self.model = model
        self.data = data
        self.base = PruningSettings(
            "woodfisher", damping=damping, num_samples=num_samples, block_size=block_size
        )
        self.names = list(names) if names is not None else None
        self.progress = progress
        self.curvatures: dict[str, AnyCurvature] = {}
        self.saliencies: dict[str, Saliency] = {}
        self._examples: list | None = None

    def settings(self, method: str) -> PruningSettings:
        return self.base.replace(method=method)

    @property
    def layers(self) -> list[str]:
        """Names of the analysed parameters."""
        return self.settings("magnitude").layout(self.model, self.names).names

    def curvature(self, method: str) -> AnyCurvature:
        if method not in self.curvatures:
            settings = self.settings(method)
            if settings.needs_data and self._examples is None:
                self._examples = take_examples(self.data, settings.examples_needed)
            layout = settings.layout(self.model, self.names)
            self.curvatures[method] = method_curvature(
                self.model, self._examples, layout, settings, progress=self.progress
            )
        return self.curvatures[method]

    def saliency(self, method: str) -> Saliency:
        if method not in self.saliencies:
            self.saliencies[method] = compute_saliency(self.model, self.curvature(method))
        return self.saliencies[method]

    def sensitivity(
        self,
        method: str,
        eval_data: Iterable,
        sparsities: Sequence[float],
        update: str | None = None,
        layers: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Each layer (or each of ``layers``) pruned alone at each sparsity
        (:func:`~wfexplore.pruning.layer_sensitivity`), with a ``method`` column first."""
        table = layer_sensitivity(
            self.model,
            self.curvature(method),
            eval_data=eval_data,
            sparsities=sparsities,
            update=effective_update(method, update),
            layers=layers,
            progress=self.progress,
        )
        table.insert(0, "method", method)
        return table
