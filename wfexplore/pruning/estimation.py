"""Pruning methods as curvature settings, and the curvature each one prunes with.

=============  ======================================  ===============================
method         curvature C                             used hyper-parameters
=============  ======================================  ===============================
magnitude      I                                       none
obd            diag(F) + λ                             λ, m, b
woodfisher     blocks of F + λI (B weights each)       λ, m, b, B, representation
kfac           S ⊗ A + λI per layer                    λ, m, b
=============  ======================================  ===============================

F is the empirical (or true) Fisher from m gradient samples of b examples each. When some
weights are already pruned, their gradient columns are zeroed before F is formed, so that
C couples them to nothing (C_PR = 0, C_PP = λI): saliencies and updates of the remaining
weights then hold with the pruned ones fixed at zero, as in the published recomputation.
(K-FAC's Kronecker structure cannot express that mask; its factors are re-estimated on the
pruned model as they are.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore._checks import one_of, positive_float, positive_int
from wfexplore.curvature.base import DampedCurvature
from wfexplore.curvature.estimate import estimate_curvature
from wfexplore.examples import take_examples
from wfexplore.gradients import FISHER_KINDS, LossFn
from wfexplore.params import BlockSpec, ParameterLayout, check_block_size
from wfexplore.pruning.updates import resolved_update

METHODS = ("magnitude", "obd", "woodfisher", "kfac")
REPRESENTATIONS = ("auto", "dense", "woodbury", "lowrank")
METHOD_REPRESENTATION = {"magnitude": "identity", "obd": "diagonal", "kfac": "kfac"}
"""The representation of C each method prunes with (WoodFisher: ``settings.representation``)."""
DIAGONAL_METHODS = ("magnitude", "obd")
"""Methods whose C is diagonal: removing a weight moves no other, so every update is zeroing."""

_USES = {
    "magnitude": (),
    "obd": ("damping", "num_samples", "batch_size", "fisher", "relative_damping", "seed"),
    "woodfisher": (
        "damping",
        "num_samples",
        "batch_size",
        "fisher",
        "relative_damping",
        "seed",
        "block_size",
        "representation",
    ),
    "kfac": ("damping", "num_samples", "batch_size", "fisher", "relative_damping", "seed"),
}


@dataclass(frozen=True)
class PruningSettings:
    """A pruning method and the hyper-parameters of its curvature (see the module table).

    ``damping`` is λ (absolute, or relative to mean(diag F) with ``relative_damping``);
    ``num_samples`` is m, ``batch_size`` b (b > 1 shrinks F by about 1/b: re-tune λ),
    ``block_size`` B for WoodFisher (int, ``"layer"`` or ``"model"``), ``representation``
    how WoodFisher blocks are held (``"auto"``: dense blocks when they fit in
    ``AUTO_DENSE_LIMIT_GB`` of :mod:`wfexplore.curvature.estimate`, else low-rank).
    """

    method: str = "woodfisher"
    damping: float = 1e-5
    num_samples: int = 256
    block_size: BlockSpec = 128
    batch_size: int = 1
    fisher: str = "empirical"
    representation: str = "auto"
    relative_damping: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        one_of(self.method, "method", METHODS)
        positive_float(
            self.damping, "damping", "e.g. damping=1e-5 (the published codes used 1e-3…1e-7)"
        )
        positive_int(self.num_samples, "num_samples", "e.g. num_samples=256")
        positive_int(self.batch_size, "batch_size", "use 1 for per-example gradients")
        check_block_size(self.block_size)
        one_of(self.fisher, "fisher", FISHER_KINDS)
        one_of(self.representation, "representation", REPRESENTATIONS)

    @property
    def needs_data(self) -> bool:
        return self.method != "magnitude"

    @property
    def examples_needed(self) -> int:
        return self.num_samples * self.batch_size if self.needs_data else 0

    @property
    def curvature_representation(self) -> str:
        """How C is held: identity, diagonal, K-FAC, or WoodFisher's ``representation``."""
        return METHOD_REPRESENTATION.get(self.method, self.representation)

    @property
    def curvature_damping(self) -> float:
        """λ of C: ``damping``, except 0 for magnitude (C = I)."""
        return 0.0 if self.method == "magnitude" else self.damping

    @property
    def curvature_block_size(self) -> BlockSpec:
        """Blocks of C: B for WoodFisher, one per layer otherwise (diagonal C ignores blocks)."""
        return self.block_size if self.method == "woodfisher" else "layer"

    @property
    def gradient_key(self) -> tuple:
        """What the gradient samples depend on (shared by OBD and WoodFisher of any λ and B)."""
        return (self.num_samples, self.batch_size, self.fisher, self.seed)

    def describe(self) -> dict:
        """The method and only the hyper-parameters it uses (others are None)."""
        used = _USES[self.method]
        return {k: (v if k in used or k == "method" else None) for k, v in asdict(self).items()}

    def replace(self, **changes) -> PruningSettings:
        return replace(self, **changes)

    def layout(
        self,
        model: nn.Module,
        names: Iterable[str] | None = None,
        pattern: str | None = None,
    ) -> ParameterLayout:
        return model_layout(model, names, pattern, self.curvature_block_size)


def model_layout(
    model: nn.Module,
    names: Iterable[str] | None,
    pattern: str | None,
    block_size: BlockSpec,
) -> ParameterLayout:
    """The layout of the parameters to prune; an empty selection is a clear error."""
    try:
        return ParameterLayout.from_model(
            model,
            names=list(names) if names is not None else None,
            pattern=pattern,
            block_size=block_size,
        )
    except ValueError as err:
        if "selection is empty" in str(err):
            raise ValueError(f"model: nothing to prune — {err}") from None
        raise


def effective_update(method: str, update: str | None) -> str:
    """The weight update ``method`` makes when ``update`` is asked for (None: the default).

    Magnitude and OBD have a diagonal C: removing a weight moves no other, so every update
    is plain zeroing, ``"none"``; the others default to the published ``"summed"``.
    """
    return resolved_update(update, diagonal=one_of(method, "method", METHODS) in DIAGONAL_METHODS)


def with_changes(changes: dict, *settings):
    """Each settings object with the ``changes`` that name one of its fields applied.

    A keyword that no object has is refused with the list of valid ones.
    """
    valid = [{f.name for f in fields(s)} for s in settings]
    unknown = set(changes) - set().union(*valid)
    if unknown:
        names = sorted(set().union(*valid))
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; valid: {names}")
    return tuple(
        replace(s, **{k: v for k, v in changes.items() if k in names})
        for s, names in zip(settings, valid, strict=True)
    )


def method_curvature(
    model: nn.Module,
    examples: Iterable | None,
    layout: ParameterLayout,
    settings: PruningSettings,
    *,
    keep: torch.Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float | None = None,
    progress: bool = False,
    process_group=None,
    distributed: bool = True,
    planned: bool = False,
    gradient_store="auto",
) -> DampedCurvature:
    """C = M + λI of ``settings.method`` for ``model`` on ``examples``.

    ``keep`` (bool, length d) zeroes the gradient columns of pruned weights (not for K-FAC).
    ``layout`` must have the blocks of ``settings.curvature_block_size``. ``gradient_store``
    places the G of low-rank blocks (see :func:`~wfexplore.curvature.estimate_curvature`).
    """
    curvature = estimate_curvature(
        model,
        examples,
        representation=settings.curvature_representation,
        layout=layout,
        num_samples=settings.num_samples,
        batch_size=settings.batch_size,
        fisher=settings.fisher,
        loss_fn=loss_fn,
        seed=settings.seed,
        keep=None if settings.method == "kfac" else keep,
        dtype=dtype,
        max_memory_gb=max_memory_gb,
        progress=progress,
        process_group=process_group,
        distributed=distributed,
        planned=planned,
        gradient_store=gradient_store,
    )
    return curvature.damped(settings.curvature_damping, relative=settings.relative_damping)


__all__ = [
    "METHODS",
    "REPRESENTATIONS",
    "PruningSettings",
    "effective_update",
    "method_curvature",
    "model_layout",
    "take_examples",
    "with_changes",
]
