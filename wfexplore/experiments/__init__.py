"""Experiments: one function per question, from a model and data to tidy frames and masks.

Below the presentation (figures, dashboards, report, command line), above the core: each
experiment runs the settings → examples → curvature → saliency → sensitivity chain once
(:class:`MethodCurvatures`) and returns what the figures draw.

- :mod:`~wfexplore.experiments.fisher_hessian`: the exact Hessian beside the Fisher, block by
  block (:class:`FisherHessianCache` for one layer at a time, live;
  :func:`compare_fisher_and_hessian` for every layer at once);
- :mod:`~wfexplore.experiments.pruning_comparison`: methods × sparsities from one sweep that
  keeps its masks (:func:`sweep_points`, :func:`compare_pruning`);
- :mod:`~wfexplore.experiments.sensitivity`: saliencies and each layer pruned alone
  (:func:`layer_sensitivities`);
- :mod:`~wfexplore.experiments.protocols`: one-shot, one-shot + fine-tune and gradual pruning
  at an equal training budget, cached point by point (:func:`protocol_sweep`).
"""

from wfexplore.experiments.common import (
    METHOD_LABELS,
    QUIET,
    ImpossibleSetting,
    MethodCurvatures,
    Progress,
    effective_update,
    method_label,
)
from wfexplore.experiments.fisher_hessian import (
    FisherHessianCache,
    FisherHessianComparison,
    compare_fisher_and_hessian,
)
from wfexplore.experiments.protocols import (
    PROTOCOL_LABELS,
    ProtocolSweep,
    protocol_findings,
    protocol_gaps,
    protocol_label,
    protocol_sweep,
)
from wfexplore.experiments.pruning_comparison import (
    PrunedPoint,
    PruningComparison,
    allocation_frame,
    compare_methods_sentences,
    compare_pruning,
    overlap_frame,
    point_key,
    protocol_points,
    sweep_points,
)
from wfexplore.experiments.sensitivity import LayerSensitivity, layer_sensitivities

__all__ = [
    "METHOD_LABELS",
    "QUIET",
    "FisherHessianCache",
    "FisherHessianComparison",
    "ImpossibleSetting",
    "LayerSensitivity",
    "MethodCurvatures",
    "PrunedPoint",
    "PruningComparison",
    "Progress",
    "allocation_frame",
    "compare_fisher_and_hessian",
    "compare_methods_sentences",
    "compare_pruning",
    "effective_update",
    "layer_sensitivities",
    "method_label",
    "overlap_frame",
    "point_key",
    "protocol_points",
    "sweep_points",
    "PROTOCOL_LABELS",
    "ProtocolSweep",
    "protocol_findings",
    "protocol_gaps",
    "protocol_label",
    "protocol_sweep",
]
