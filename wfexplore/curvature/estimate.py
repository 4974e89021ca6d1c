"""One entry point from a model and data to a curvature, in the representation asked for.

``representation`` says how M is held (nngeometry's ``representation=``): the identity,
the diagonal of the Fisher (OBD), dense Fisher blocks, the same blocks inverted by the
paper's Woodbury recursion, low-rank (Gram-side) blocks, or K-FAC. The result is the
undamped M; λ is given where the inverse is used (``inverse_diag(λ)``, ``damped(λ)``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore._checks import one_of, positive_int
from wfexplore.copies import private_copy
from wfexplore.curvature.base import Curvature
from wfexplore.curvature.dense import DEFAULT_MAX_MEMORY_GB, DenseAccumulator, dense_memory_bytes
from wfexplore.curvature.diagonal import DiagonalAccumulator
from wfexplore.curvature.gradient_files import check_gradient_store
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.curvature.lowrank import GradientStore
from wfexplore.curvature.plan import (
    AUTO_CHOICES,
    Plan,
    activation_bytes_of,
    auto_representation,
    cheapest_fitting,
    default_budget_gb,
    first_input,
    plan_curvature,
)
from wfexplore.curvature.woodbury import WoodburyAccumulator
from wfexplore.distributed import Ranks, model_signature
from wfexplore.gradients import LossFn, iter_gradient_chunks
from wfexplore.params import BlockSpec, ParameterLayout

_ACCUMULATORS = {
    "diagonal": DiagonalAccumulator,
    "dense": DenseAccumulator,
    "woodbury": WoodburyAccumulator,
    "lowrank": GradientStore,
}
REPRESENTATIONS = ("identity", *_ACCUMULATORS, "kfac")
AUTO_DENSE_LIMIT_GB = 1.0


def resolve_representation(
    representation: str,
    layout: ParameterLayout,
    num_samples: int | None = None,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
) -> str:
    """``"auto"``: dense or low-rank blocks, whichever needs fewer flops within
    ``max_memory_gb`` for m = ``num_samples`` (:func:`.plan.auto_representation`); with m
    unknown, dense blocks when they fit in ``AUTO_DENSE_LIMIT_GB``, else low-rank."""
    if representation != "auto":
        return one_of(representation, "representation", (*REPRESENTATIONS, "auto"))
    if num_samples is not None:
        return auto_representation(layout, num_samples, max_memory_gb * 2**30)
    fits = dense_memory_bytes(layout) <= AUTO_DENSE_LIMIT_GB * 2**30
    return "dense" if fits else "lowrank"


def from_gradients(
    gradients: torch.Tensor | Iterable[torch.Tensor],
    layout: ParameterLayout,
    representation: str = "dense",
    *,
    num_samples: int | None = None,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    ranks: Ranks | None = None,
    gradient_store="auto",
) -> Curvature:
    """M = (1/m) Σ_n g_n g_nᵀ (block-diagonal) from the ``(m, d)`` gradient matrix G or an
    iterable of its ``(c, d)`` row chunks, streamed once.

    ``representation``: ``"diagonal"``, ``"dense"``, ``"woodbury"``, ``"lowrank"`` or
    ``"auto"`` (see :func:`resolve_representation`). ``num_samples`` (m, when chunks are
    given) lets the representations that hold G write it in place. ``gradient_store`` is
    where low-rank blocks hold G: ``"memory"``, ``"disk"`` (a file under ``cache_dir()``),
    a folder path, or ``"auto"``: on disk when it would not fit ``max_memory_gb`` in memory
    but does on disk (:class:`~.lowrank.GradientStore`; the other representations stream G
    or, the recursion, hold it in memory). With ``ranks`` the gradients are this rank's
    share: sums are all-reduced, the recursion's rows all-gathered, and low-rank blocks
    shared out between the ranks (:meth:`.lowrank.GradientStore.combine`).
    """
    gradient_store = check_gradient_store(gradient_store)
    if isinstance(gradients, torch.Tensor):
        num_samples = gradients.shape[0]
    representation = resolve_representation(representation, layout, num_samples, max_memory_gb)
    if representation not in _ACCUMULATORS:
        raise ValueError(
            f"representation {representation!r} is not built from gradient samples; choose "
            f"one of {list(_ACCUMULATORS)} (or use estimate_curvature)"
        )
    chunks = [gradients] if isinstance(gradients, torch.Tensor) else gradients
    sink = _ACCUMULATORS[representation](
        layout,
        dtype=dtype,
        max_memory_gb=max_memory_gb,
        num_samples=num_samples,
        gradient_store=gradient_store,
        ranks=ranks,
    )

    def collect() -> int:
        m = 0
        for chunk in chunks:
            if chunk.ndim != 2 or chunk.shape[1] != layout.dim:
                raise ValueError(
                    f"gradients: expected rows of {layout.dim} entries, got a chunk of shape "
                    f"{tuple(chunk.shape)}"
                )
            if chunk.shape[0]:
                sink.add(chunk)
                m += chunk.shape[0]
        if m == 0:
            raise ValueError("gradients: no gradient samples were given")
        return m

    if ranks is None:
        return sink.finish(collect())
    m = ranks.together(collect, "gradient samples")  # a rank short of data stops every rank
    sink.combine(ranks)
    return sink.finish(int(ranks.sum_numbers(m)[0]))


def estimate_curvature(
    model: nn.Module,
    data: Iterable | None,
    *,
    representation: str = "dense",
    layout: ParameterLayout | None = None,
    block_size: BlockSpec | None = None,
    num_samples: int = 256,
    batch_size: int = 1,
    fisher: str = "empirical",
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    keep: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    max_memory_gb: float | None = None,
    progress: bool = True,
    process_group=None,
    distributed: bool = True,
    planned: bool = False,
    gradient_store="auto",
) -> Curvature:
    """The Fisher M = (1/m) Σ_n g_n g_nᵀ of ``model`` on ``data``, held as ``representation``.

    ``representation`` is ``"identity"`` (M = I, no data needed), ``"diagonal"`` (OBD),
    ``"dense"`` (blocks, batched Cholesky), ``"woodbury"`` (blocks, the paper's recursion),
    ``"lowrank"`` (Gram-side Woodbury, any block size), ``"auto"`` (dense or low-rank by
    memory) or ``"kfac"`` (S ⊗ A per Conv/Linear layer; needs ``block_size="layer"``).
    ``layout`` defaults to every Conv/Linear weight cut into blocks of ``block_size``
    (default 128, and ``"layer"`` for ``"kfac"``). Gradient samples are per-example
    (``batch_size=1``) or mini-batch means over the first ``num_samples × batch_size``
    examples (mean gradients of b examples shrink F by about 1/b: re-tune λ when b
    changes); ``fisher="true"`` draws labels from the model's predictive distribution.
    ``keep`` (bool, length d) zeroes the gradient columns of pruned weights, so that M
    couples them to nothing (not for K-FAC, whose Kronecker structure cannot hold a mask).
    The result is undamped: pass λ to its inverse operations, or use ``.damped(λ)``.
    Before any gradient is computed, the plan of the work (:mod:`.plan`) is checked against
    ``max_memory_gb`` (default: a safe share of the free memory of the model's device);
    ``planned=True`` says the caller has checked it already. ``gradient_store`` places the
    G of low-rank blocks: ``"memory"``, ``"disk"`` (a file under ``cache_dir()``, removed
    with the curvature or by its ``close()``), a folder path, or ``"auto"``: on disk where the
    plan with G in memory is over the budget and with G on disk is not.

    Under ``torch.distributed`` (an initialised process group, or ``process_group``; opt out
    with ``distributed=False``) each rank passes its own shard of the data and takes
    ``num_samples / world_size`` samples from it; the result, the same on every rank, is
    that of one process given the ranks' samples concatenated in rank order
    (:mod:`wfexplore.distributed`). ``fisher="true"`` then draws labels with seed + rank.
    Low-rank blocks are then shared out: each rank holds every rank's rows in the columns of
    its own blocks (:class:`~.lowrank.LowRankCurvature`), and the operations are collective.
    """
    one_of(representation, "representation", (*REPRESENTATIONS, "auto"))
    if layout is None:
        if block_size is None:
            block_size = "layer" if representation == "kfac" else 128
        layout = ParameterLayout.from_model(model, block_size=block_size)
    if representation == "identity":
        return IdentityCurvature(layout, dtype, next(model.parameters()).device)
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    first = next(model.parameters())
    if max_memory_gb is None:
        max_memory_gb = default_budget_gb(first.device)
    ranks = Ranks.active(distributed, process_group)
    gradient_store = check_gradient_store(gradient_store)
    representation, gradient_store = _planned_choice(
        model, data, layout, representation, num_samples, batch_size, max_memory_gb,
        gradient_store, planned, 1 if ranks is None else ranks.size,
    )  # fmt: skip
    local = num_samples
    if ranks is not None:
        ranks.agree(
            "estimate_curvature",
            representation=representation,
            layout=layout.signature,
            num_samples=num_samples,
            batch_size=batch_size,
            fisher=fisher,
            model=model_signature(model),
        )
        local = ranks.share(num_samples)
        seed = seed + ranks.rank
    common = {
        "batch_size": batch_size,
        "loss_fn": loss_fn,
        "fisher": fisher,
        "seed": seed,
        "progress": progress,
    }
    if representation == "kfac":
        return KFACCurvature.from_model(
            model, data, layout, local, dtype=dtype, ranks=ranks, **common
        )
    chunks = iter_gradient_chunks(model, data, layout, local, **common)
    if keep is not None:
        chunks = (chunk * keep.to(chunk) for chunk in chunks)
    return from_gradients(
        chunks,
        layout,
        representation,
        num_samples=local,
        dtype=dtype,
        max_memory_gb=max_memory_gb,
        ranks=ranks,
        gradient_store=gradient_store,
    )


def _planned_choice(
    model, data, layout, representation, num_samples, batch_size, budget_gb, store, planned,
    world_size,
) -> tuple[str, str]:  # fmt: skip
    """The representation (``"auto"``: the cheaper of dense and low-rank blocks among those
    whose whole peak fits, as :func:`wfexplore.plan` judges) and where G goes; the plan is
    checked here unless the caller ``planned`` the work already."""
    plans: dict[str, Plan] = {}
    activations = []  # one example's activation bytes, measured when a plan needs them

    def planned_as(representation: str) -> Plan:
        if representation not in plans:
            if not activations:
                activations.append(_activations(model, data))
            plans[representation] = _plan(model, layout, representation, num_samples,
                                          batch_size, budget_gb, store, activations[0],
                                          world_size)  # fmt: skip
        return plans[representation]

    if representation == "auto":
        representation = cheapest_fitting({r: planned_as(r) for r in AUTO_CHOICES})
    representation = resolve_representation(representation, layout, num_samples, budget_gb)
    if not planned or (representation == "lowrank" and store == "auto"):
        work = planned_as(representation)
        store = work.gradient_store if planned else work.check().gradient_store
    return representation, store


def _plan(
    model, layout, representation, num_samples, batch_size, budget_gb, store, activations,
    world_size,
):  # fmt: skip
    """The plan of the work on one of ``world_size`` ranks, made before any gradient (its G
    placed by ``store``; one example's ``activations`` bytes)."""
    first = next(model.parameters())
    return plan_curvature(
        layout,
        representation,
        num_samples,
        itemsize=first.element_size(),
        model_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        budget_gb=budget_gb,
        activation_bytes=activations,
        batch_size=batch_size,
        gradient_store=store,
        world_size=world_size,
    )


def _activations(model: nn.Module, data) -> int:
    first = first_input(data)
    return 0 if first is None else activation_bytes_of(private_copy(model), first)
