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
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore._checks import one_of, positive_float, positive_int
from wfexplore.curvature.base import Curvature, resolve_damping
from wfexplore.curvature.dense import DenseBlockCurvature, dense_memory_bytes
from wfexplore.curvature.diagonal import DiagonalCurvature
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.curvature.lowrank import LowRankCurvature
from wfexplore.curvature.woodbury import woodbury_fisher
from wfexplore.gradients import FISHER_KINDS, LossFn, gradient_samples
from wfexplore.params import BlockSpec, ParameterLayout, _check_block_size

METHODS = ("magnitude", "obd", "woodfisher", "kfac")
REPRESENTATIONS = ("auto", "dense", "woodbury", "lowrank")
AUTO_DENSE_LIMIT_GB = 1.0

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
    ``AUTO_DENSE_LIMIT_GB``, else low-rank).
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
        _check_block_size(self.block_size)
        one_of(self.fisher, "fisher", FISHER_KINDS)
        one_of(self.representation, "representation", REPRESENTATIONS)

    @property
    def needs_data(self) -> bool:
        return self.method != "magnitude"

    @property
    def examples_needed(self) -> int:
        return self.num_samples * self.batch_size if self.needs_data else 0

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
        return PruningSettings(**{**asdict(self), **changes})

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


# --- data ------------------------------------------------------------------------------------
def take_examples(data: Iterable, count: int, name: str = "data") -> list[tuple]:
    """The first ``count`` examples of ``data`` as a list of ``(x, y)`` batches (held fixed)."""
    if data is None:
        raise ValueError(f"{name}: a data loader is needed here; pass {name}=<DataLoader>")
    batches, held = [], 0
    for batch in data:
        if not (isinstance(batch, tuple | list) and len(batch) >= 2):
            raise TypeError(f"{name} must yield (inputs, targets) batches, like a DataLoader")
        x, y = batch[0], batch[1]
        take = min(x.shape[0], count - held)
        batches.append((x[:take], y[:take]))
        held += take
        if held >= count:
            break
    if held == 0:
        raise ValueError(f"{name}: the loader yielded no examples; pass a loader with data")
    if held < count:
        raise ValueError(
            f"{name} holds only {held} examples but {count} are needed (num_samples × "
            "batch_size); lower num_samples or batch_size"
        )
    return batches


# --- curvature -------------------------------------------------------------------------------
def curvature_from_gradients(
    settings: PruningSettings,
    layout: ParameterLayout,
    gradients: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float = 4.0,
) -> Curvature:
    """OBD or WoodFisher curvature from an (m, d) gradient matrix (already masked)."""
    lam, rel = settings.damping, settings.relative_damping
    if settings.method == "obd":
        return DiagonalCurvature.from_gradients(
            gradients, layout, lam, relative_damping=rel, dtype=dtype
        )
    if settings.method != "woodfisher":
        raise ValueError(f"method {settings.method!r} is not built from gradient samples")
    representation = resolve_representation(settings.representation, layout)
    if representation == "dense":
        return DenseBlockCurvature.from_gradients(
            gradients, layout, lam, relative_damping=rel, dtype=dtype, max_memory_gb=max_memory_gb
        )
    if representation == "lowrank":
        return LowRankCurvature.from_gradients(
            gradients, layout, lam, relative_damping=rel, dtype=dtype
        )
    if rel:
        lam = resolve_damping(lam, True, float(gradients.to(dtype).pow(2).mean()))
    return woodbury_fisher(gradients, layout, lam, dtype=dtype, max_memory_gb=max_memory_gb)


def resolve_representation(representation: str, layout: ParameterLayout) -> str:
    if representation != "auto":
        return representation
    fits = dense_memory_bytes(layout) <= AUTO_DENSE_LIMIT_GB * 2**30
    return "dense" if fits else "lowrank"


def estimate_curvature(
    model: nn.Module,
    examples: Iterable,
    layout: ParameterLayout,
    settings: PruningSettings,
    *,
    keep: torch.Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float = 4.0,
    progress: bool = False,
) -> Curvature:
    """The curvature of ``settings.method`` for ``model`` on ``examples``.

    ``keep`` (bool, length d) zeroes the gradient columns of pruned weights (not for K-FAC).
    ``layout`` must have the blocks of ``settings.curvature_block_size``.
    """
    if settings.method == "magnitude":
        return IdentityCurvature(layout, dtype)
    common = {
        "batch_size": settings.batch_size,
        "loss_fn": loss_fn,
        "fisher": settings.fisher,
        "seed": settings.seed,
        "progress": progress,
    }
    if settings.method == "kfac":
        return KFACCurvature.from_model(
            model,
            examples,
            layout,
            settings.num_samples,
            settings.damping,
            relative_damping=settings.relative_damping,
            dtype=dtype,
            **common,
        )
    gradients = gradient_samples(model, examples, layout, settings.num_samples, **common)
    if keep is not None:
        gradients = gradients * keep.to(gradients)
    return curvature_from_gradients(
        settings, layout, gradients, dtype=dtype, max_memory_gb=max_memory_gb
    )
