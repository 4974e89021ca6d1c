"""Second-order pruning in one frame: magnitude, OBD, WoodFisher (OBS) and K-FAC.

Saliency ρ_q = w_q² / (2[C⁻¹]_qq) for a curvature C (identity, diagonal, Fisher blocks,
Kronecker factors), masks at an exact count (layerwise or global), weight updates (none,
summed single-weight OBS, exact group OBS), recomputation steps, sweeps and sensitivity;
training-aware pruning (gradual pruning, one-shot + fine-tuning) with the masks held.
"""

from wfexplore.pruning.estimation import (
    DIAGONAL_METHODS,
    METHODS,
    REPRESENTATIONS,
    PruningSettings,
    effective_update,
    method_curvature,
    take_examples,
)
from wfexplore.pruning.evaluation import evaluate_model, recalibrate_batchnorm
from wfexplore.pruning.gradual import (
    PROTOCOLS,
    GradualResult,
    gradual_prune,
    one_shot,
    one_shot_then_finetune,
    pruning_plan,
    run_protocol,
)
from wfexplore.pruning.masked_training import MaskHolder, TrainingSettings, train_epochs
from wfexplore.pruning.masks import SCOPES, keep_masks, select_pruned
from wfexplore.pruning.prune import (
    PruningResult,
    PruningSchedule,
    RunOptions,
    polynomial_schedule,
    prune_model,
)
from wfexplore.pruning.saliency import Saliency, compute_saliency, obs_saliency
from wfexplore.pruning.sensitivity import global_allocation, layer_sensitivity, mask_overlap
from wfexplore.pruning.sweeps import SweepGrid, sweep
from wfexplore.pruning.updates import UPDATES, WeightUpdate, group_update, update_weights

__all__ = [
    "DIAGONAL_METHODS",
    "METHODS",
    "REPRESENTATIONS",
    "SCOPES",
    "UPDATES",
    "PruningResult",
    "PruningSchedule",
    "PruningSettings",
    "RunOptions",
    "Saliency",
    "SweepGrid",
    "WeightUpdate",
    "compute_saliency",
    "effective_update",
    "evaluate_model",
    "global_allocation",
    "group_update",
    "keep_masks",
    "layer_sensitivity",
    "mask_overlap",
    "method_curvature",
    "obs_saliency",
    "polynomial_schedule",
    "prune_model",
    "recalibrate_batchnorm",
    "select_pruned",
    "sweep",
    "take_examples",
    "update_weights",
    "MaskHolder",
    "TrainingSettings",
    "train_epochs",
    "PROTOCOLS",
    "GradualResult",
    "gradual_prune",
    "one_shot",
    "one_shot_then_finetune",
    "pruning_plan",
    "run_protocol",
]
