"""A plan before the work: what pruning a model will hold in memory and compute, per layer.

:func:`plan` estimates, for each analysed parameter, the bytes of its gradient samples
(held in memory or in a file on disk, or streamed one chunk at a time), of its curvature in
the representation the method uses, and the floating-point operations (see
:mod:`wfexplore.curvature.plan` for the cost model), and adds what every run holds besides:
the model's private copies, one chunk of per-example gradients and the d-long float64
vectors of saliencies and updates. The peak is compared with the memory budget before
anything large is allocated; a plan that does not fit is refused with settings that would
(:meth:`~wfexplore.curvature.plan.Plan.check`).
"""

from __future__ import annotations

from torch import nn

from wfexplore.copies import private_copy
from wfexplore.curvature.estimate import resolve_representation
from wfexplore.curvature.plan import (
    AUTO_CHOICES,
    Plan,
    activation_bytes_of,
    cheapest_fitting,
    default_budget_gb,
    first_input,
    plan_curvature,
)
from wfexplore.params import ParameterLayout
from wfexplore.pruning.estimation import PruningSettings


def plan(
    model: nn.Module,
    settings: PruningSettings | str = "woodfisher",
    *,
    names=None,
    pattern=None,
    layout: ParameterLayout | None = None,
    max_memory_gb: float | None = None,
    hold_gradients: bool = False,
    example=None,
    gradient_store="auto",
    evaluations: int = 0,
    world_size: int = 1,
) -> Plan:
    """The plan of pruning ``model`` with ``settings`` (a method name or PruningSettings).

    ``max_memory_gb`` defaults to a safe share of the free memory of the model's device
    (:func:`~wfexplore.curvature.plan.default_budget_gb`); ``layout`` (default: the
    settings' layout of ``names``/``pattern``) fixes the analysed weights and blocks.
    ``example`` (an input batch, or a loader whose first batch is used) sizes the
    activations of the per-example backward passes. ``gradient_store`` (``"auto"``,
    ``"memory"``, ``"disk"`` or a folder) places the gradients that low-rank blocks hold: the
    plan's ``strategy`` column and ``disk_bytes`` say where they go. ``evaluations``: the
    passes over the evaluation data that follow (shown in the summary). ``world_size``: the
    plan is one rank's of that many under ``torch.distributed`` (its share of the gradients
    and of the low-rank work).
    """
    if isinstance(settings, str):
        settings = PruningSettings(settings)
    first = next(model.parameters())
    budget_gb = default_budget_gb(first.device) if max_memory_gb is None else max_memory_gb
    layout = layout if layout is not None else settings.layout(model, names, pattern)
    m = settings.num_samples if settings.needs_data else 0
    representation = settings.curvature_representation
    activations = _activations(model, example) if m else 0

    def planned(representation: str) -> Plan:
        return plan_curvature(
            layout,
            representation,
            m,
            itemsize=first.element_size(),
            model_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
            budget_gb=budget_gb,
            method=settings.method,
            hold_gradients=hold_gradients and settings.method in ("obd", "woodfisher"),
            activation_bytes=activations,
            batch_size=settings.batch_size,
            gradient_store=gradient_store,
            evaluations=evaluations,
            world_size=world_size,
        )

    if settings.method == "woodfisher" and representation == "auto" and m:
        plans = {r: planned(r) for r in AUTO_CHOICES}
        return plans[cheapest_fitting(plans)]
    if settings.method == "woodfisher":
        representation = resolve_representation(representation, layout, m, budget_gb)
    return planned(representation)


def _activations(model: nn.Module, example) -> int:
    """Activation bytes of one example of ``example`` (a tensor, or the first batch of a
    loader that can be read again); 0 when there is none to look at."""
    first = first_input(example)
    return 0 if first is None else activation_bytes_of(private_copy(model), first)
