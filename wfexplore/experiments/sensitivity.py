r"""Layer sensitivity: saliencies of every weight and each layer pruned alone, per method.

For each method the curvature of the dense model, the saliencies ρ_q = w_q²/(2[C⁻¹]_qq) and,
for the methods with a curvature (OBD, WoodFisher, K-FAC), each layer pruned alone at each
sparsity: the loss increase the quadratic model predicts, ½ δwᵀCδw, against the one measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from wfexplore.curvature.base import AnyCurvature
from wfexplore.experiments.common import QUIET, MethodCurvatures, Progress, method_label
from wfexplore.pruning import Saliency

NO_PREDICTION = ("magnitude",)
"""Methods without a curvature: their ½‖δw‖² predicts no loss increase."""


@dataclass
class LayerSensitivity:
    """``saliencies`` and ``curvatures`` (method → object) and the tidy ``sensitivity`` frame
    (one row per method, layer and sparsity; a ``method`` column first)."""

    saliencies: dict[str, Saliency]
    curvatures: dict[str, AnyCurvature]
    sensitivity: pd.DataFrame


def sensitivity_steps(methods: Sequence[str]) -> int:
    """How many steps :func:`layer_sensitivities` reports to its ``reporter`` for ``methods``."""
    return len(methods) + sum(m not in NO_PREDICTION for m in methods)


def layer_sensitivities(
    study: MethodCurvatures,
    methods: Sequence[str],
    eval_data: Iterable,
    *,
    sparsities: Sequence[float],
    update: str | None = None,
    layers: Sequence[str] | None = None,
    reporter: Progress = QUIET,
) -> LayerSensitivity:
    """Saliencies of ``methods`` and, for those with a curvature, each layer (or each of
    ``layers``) pruned alone.

    ``update`` is the weight update of the sensitivity runs (default: the summed OBS update
    for WoodFisher and K-FAC; none for OBD). What ``study`` holds already is not recomputed.
    """
    frames = []
    count = len(layers) if layers is not None else len(study.layers)
    which = f"the {count} layers" if count > 1 else (layers or study.layers)[0]
    for method in methods:
        reporter.note(f"Estimating the curvature of {method_label(method)}…")
        study.saliency(method)
        reporter.step()
        if method in NO_PREDICTION:
            continue
        reporter.note(
            f"Pruning {'each of ' if count > 1 else ''}{which} alone with "
            f"{method_label(method)} at {len(sparsities)} sparsities…"
        )
        frames.append(study.sensitivity(method, eval_data, sparsities, update, layers))
        reporter.step()
    return LayerSensitivity(
        saliencies={m: study.saliencies[m] for m in methods},
        curvatures={m: study.curvatures[m] for m in methods},
        sensitivity=pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
    )
