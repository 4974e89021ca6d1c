r"""Fisher versus Hessian: exact Hessian blocks beside Fisher blocks, and how far apart they are.

:class:`FisherHessianCache` holds the expensive work for single layers, each piece computed
once: the exact Hessian of a (layer, block size) and the gradient samples of a (layer, b,
Fisher kind), the largest number of them the data allows, sliced for smaller m. A Fisher block
F_λ = (1/m) Σ_n g_n g_nᵀ + λI is then a matrix product away, so that moving λ, m or the block
costs no new gradients or Hessian-vector products.

:func:`compare_fisher_and_hessian` builds the empirical Fisher F_λ and H + λI of every
analysed layer on the same block layout; each block is summarised by its diagonal dominance
(undamped), the relative Frobenius error ‖F_λ − H_λ‖_F / ‖H_λ‖_F and the cosine between OBS
update directions, and the blocks are averaged per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from wfexplore.curvature import (
    DampedCurvature,
    DenseBlockCurvature,
    estimate_curvature,
    from_gradients,
    hessian_blocks,
)
from wfexplore.experiments.common import ImpossibleSetting
from wfexplore.gradients import FISHER_KINDS, gradient_samples
from wfexplore.params import BlockSpec, ParameterLayout
from wfexplore.statistics import compare_blocks, dominance_table

HESSIAN_BATCH = 256
"""Hessian columns computed per batched call; smaller blocks are cut from larger ones."""


def data_length(data: Iterable) -> int | None:
    """Number of examples in ``data``: a DataLoader's dataset, or a list of (x, y) batches."""
    dataset = getattr(data, "dataset", None)
    if dataset is not None:
        try:
            return len(dataset)
        except TypeError:
            return None
    if isinstance(data, (list, tuple)):
        return sum(int(batch[0].shape[0]) for batch in data)
    return None


class FisherHessianCache:
    """Exact Hessian blocks and gradient samples of single layers, each computed once.

    ``hessian(layer, block_size)`` runs :func:`~wfexplore.curvature.hessian_blocks` on the
    layout ``ParameterLayout.from_model(model, names=[layer], block_size=B)``, over the
    first ``hessian_examples`` examples (default: all), with B the largest multiple of
    ``block_size`` up to :data:`HESSIAN_BATCH` (the same Hessian-vector products, one per
    weight), and cuts the requested blocks from it; any finer block size whose blocks lie
    inside blocks already computed is cut without new work.
    ``gradients(layer, batch_size, fisher)`` holds ``available_samples(batch_size)`` gradient
    samples (at most ``max_samples``); ``fisher(...)`` uses the first m of them.
    ``hessian_computations`` and ``gradient_computations`` count the expensive calls.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        *,
        names: Sequence[str] | None = None,
        pattern: str | None = None,
        max_samples: int = 256,
        hessian_examples: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.model = model
        self.data = data
        self.analysed = ParameterLayout.from_model(model, names=names, pattern=pattern)
        self.num_examples = data_length(data)
        self.max_samples = max_samples
        self.hessian_examples = hessian_examples
        self.seed = seed
        self.progress = progress
        self.hessian_computations = 0
        self.gradient_computations = 0
        self._hessians: dict[tuple[str, int], DenseBlockCurvature] = {}
        self._gradients: dict[tuple[str, int, str], torch.Tensor] = {}

    # --- what can be asked ---------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Names of the analysed parameters."""
        return self.analysed.names

    def layer_size(self, layer: str) -> int:
        if layer not in self.layers:
            raise ImpossibleSetting(f"layer {layer!r} is not analysed; choose one of {self.layers}")
        return self.analysed.parameter(layer).numel

    def layout(self, layer: str, block_size: int) -> ParameterLayout:
        """The layout of one layer cut into blocks of ``block_size``."""
        size = self.layer_size(layer)
        if block_size > size:
            raise ImpossibleSetting(
                f"block size {block_size} is larger than layer {layer} ({size} weights); "
                f"choose a block size of at most {size}, or another layer"
            )
        return ParameterLayout.from_model(self.model, names=[layer], block_size=block_size)

    def available_samples(self, batch_size: int) -> int:
        """The most gradient samples of ``batch_size`` examples: min(max_samples, N // b)."""
        if self.num_examples is None:
            return self.max_samples
        return min(self.max_samples, self.num_examples // batch_size)

    def has_hessian(self, layer: str, block_size: int) -> bool:
        return (layer, block_size) in self._hessians or self._cut_hessian(layer, block_size)

    def has_gradients(self, layer: str, batch_size: int, fisher: str) -> bool:
        return (layer, batch_size, fisher) in self._gradients

    def pending(
        self, layer: str, block_size: int, batch_size: int, fisher: str
    ) -> list[tuple[str, Callable[[], object]]]:
        """What a setting still lacks, in order: (a sentence saying what runs, the job)."""
        jobs = []
        if not self.has_hessian(layer, block_size):
            examples = self.hessian_examples or self.num_examples or "all"
            jobs.append(
                (
                    f"Computing the exact Hessian of {layer} in blocks of {block_size}: "
                    f"{self.layer_size(layer)} Hessian-vector products over {examples} examples…",
                    lambda: self.hessian(layer, block_size),
                )
            )
        if not self.has_gradients(layer, batch_size, fisher):
            jobs.append(
                (
                    f"Computing {self.available_samples(batch_size)} {fisher}-Fisher gradient "
                    f"samples of {layer} (b = {batch_size})…",
                    lambda: self.gradients(layer, batch_size, fisher),
                )
            )
        return jobs

    # --- the expensive parts, once -------------------------------------------------------
    def hessian(self, layer: str, block_size: int, damping: float = 0.0) -> DampedCurvature:
        """Exact Hessian blocks of ``layer`` (+ ``damping``·I), computed once per block size."""
        key = (layer, block_size)
        if key not in self._hessians and not self._cut_hessian(layer, block_size):
            # A coarser block costs the same Hessian-vector products (one per weight) and
            # lets every finer block size inside it be cut later without new work.
            coarse = block_size * max(1, HESSIAN_BATCH // block_size)
            coarse = min(coarse, self.layer_size(layer))
            self._hessians[(layer, coarse)] = hessian_blocks(
                self.model,
                self.data,
                self.layout(layer, coarse),
                num_examples=self.hessian_examples,
                basis_chunk=min(coarse, HESSIAN_BATCH),
                progress=self.progress,
            )
            self.hessian_computations += 1
            if key not in self._hessians:
                self._cut_hessian(layer, block_size)
        return self._hessians[key].damped(damping)

    def gradients(self, layer: str, batch_size: int = 1, fisher: str = "empirical") -> torch.Tensor:
        """``(available_samples(b), numel)`` gradient samples of ``layer``, computed once."""
        if fisher not in FISHER_KINDS:
            raise ImpossibleSetting(f"fisher must be one of {list(FISHER_KINDS)}, got {fisher!r}")
        key = (layer, batch_size, fisher)
        if key not in self._gradients:
            count = self.check_samples(1, batch_size)
            layout = ParameterLayout.from_model(self.model, names=[layer], block_size="layer")
            self._gradients[key] = gradient_samples(
                self.model,
                self.data,
                layout,
                count,
                batch_size=batch_size,
                fisher=fisher,
                seed=self.seed,
                progress=self.progress,
            )
            self.gradient_computations += 1
        return self._gradients[key]

    # --- cheap, from the cache -----------------------------------------------------------
    def fisher(
        self,
        layer: str,
        block_size: int,
        num_samples: int,
        damping: float,
        batch_size: int = 1,
        fisher: str = "empirical",
    ) -> DampedCurvature:
        """F_λ from the first ``num_samples`` cached gradient samples (dense blocks)."""
        self.check_samples(num_samples, batch_size)
        layout = self.layout(layer, block_size)
        g = self.gradients(layer, batch_size, fisher)[:num_samples]
        curvature = from_gradients(g, layout, "dense")
        curvature.kind = f"{fisher} Fisher"
        return curvature.damped(damping)

    def compare(
        self,
        layer: str,
        block_size: int,
        num_samples: int,
        damping: float,
        batch_size: int = 1,
        fisher: str = "empirical",
        blocks: Sequence[int] | None = None,
    ) -> pd.DataFrame:
        """Per block: dominance of F and H (undamped), ‖F_λ − H_λ‖/‖H_λ‖, OBS-update cosines.

        Columns ``block``, ``layer``, ``parameter``, ``size``, ``fisher_*`` and ``hessian_*``
        for ``dominant_row_share``, ``median_row_ratio``, ``diagonal_frobenius_share``,
        ``dominant_nonzero_row_share``, ``zero_row_share`` and
        ``mean_diagonal`` (of the undamped block), ``relative_frobenius_error``,
        ``obs_update_cosine_median``, ``obs_update_cosine_min``.
        """
        f = self.fisher(layer, block_size, num_samples, damping, batch_size, fisher)
        h = self.hessian(layer, block_size, damping)
        keys = ["block", "layer", "parameter", "size"]
        out = None
        for name, curvature in (("fisher", f), ("hessian", h)):
            matrix = curvature.undamped
            table = dominance_table(matrix, blocks).drop(columns="kind")
            table["mean_diagonal"] = [
                float(matrix.block(i).diagonal().mean()) for i in table["block"]
            ]
            table = table.rename(columns={c: f"{name}_{c}" for c in table if c not in keys})
            out = table if out is None else out.merge(table, on=keys)
        errors = compare_blocks(f, h, blocks).drop(columns=["kind_approx", "kind_reference"])
        return out.merge(errors, on=keys)

    def sweep(
        self,
        layer: str,
        block_size: int,
        *,
        base: Mapping[str, float],
        num_samples: Sequence[int] = (),
        dampings: Sequence[float] = (),
        batch_sizes: Sequence[int] = (),
        fishers: Sequence[str] = ("empirical",),
    ) -> pd.DataFrame:
        """Tidy frame of one-at-a-time sweeps of m, λ and b around ``base``.

        ``base`` holds ``num_samples``, ``damping`` and ``batch_size``. One row per
        (varied parameter, value, Fisher kind) with the medians over the layer's blocks of
        :meth:`compare`: columns ``varied``, ``num_samples``, ``damping``, ``batch_size``,
        ``fisher``, ``relative_frobenius_error``, ``obs_update_cosine``,
        ``fisher_dominant_row_share``, ``fisher_dominant_nonzero_row_share``,
        ``fisher_zero_row_share``, ``fisher_mean_diagonal``, ``hessian_mean_diagonal``.
        Ready for :func:`wfexplore.figures.curvature.effect_figure`.
        """
        settings = {"num_samples": num_samples, "damping": dampings, "batch_size": batch_sizes}
        rows = []
        for varied, values in settings.items():
            for value in values:
                setting = {**base, varied: value}
                for kind in fishers:
                    table = self.compare(
                        layer,
                        block_size,
                        int(setting["num_samples"]),
                        float(setting["damping"]),
                        int(setting["batch_size"]),
                        kind,
                    )
                    rows.append(
                        {
                            "varied": varied,
                            "num_samples": int(setting["num_samples"]),
                            "damping": float(setting["damping"]),
                            "batch_size": int(setting["batch_size"]),
                            "fisher": kind,
                            "relative_frobenius_error": table["relative_frobenius_error"].median(),
                            "obs_update_cosine": table["obs_update_cosine_median"].median(),
                            "fisher_dominant_row_share": table[
                                "fisher_dominant_row_share"
                            ].median(),
                            "fisher_dominant_nonzero_row_share": table[
                                "fisher_dominant_nonzero_row_share"
                            ].median(),
                            "fisher_zero_row_share": table["fisher_zero_row_share"].median(),
                            "fisher_mean_diagonal": table["fisher_mean_diagonal"].mean(),
                            "hessian_mean_diagonal": table["hessian_mean_diagonal"].mean(),
                        }
                    )
        return pd.DataFrame(rows)

    # --- checks and helpers ----------------------------------------------------------------
    def check_samples(self, num_samples: int, batch_size: int) -> int:
        """The samples available for ``batch_size``; too few for ``num_samples`` is impossible."""
        available = self.available_samples(batch_size)
        if available < 1:
            raise ImpossibleSetting(
                f"b = {batch_size} examples per gradient is more than the {self.num_examples} "
                "examples the data holds; choose a smaller b"
            )
        if num_samples > available:
            total = "" if self.num_examples is None else f" of the {self.num_examples} examples"
            raise ImpossibleSetting(
                f"m = {num_samples} gradient samples of b = {batch_size} examples need "
                f"{num_samples * batch_size} examples; at most {available} samples are "
                f"available{total} (max_samples = {self.max_samples}); lower m or b"
            )
        return available

    def _cut_hessian(self, layer: str, block_size: int) -> bool:
        """Cut the blocks of (layer, block_size) from a cached coarser Hessian, if one fits."""
        for (name, size), big in self._hessians.items():
            if name != layer or size < block_size:
                continue
            layout = self.layout(layer, block_size)
            inside = [big.layout.block_of(b.start) for b in layout.blocks]
            if all(b.stop <= outer.stop for b, outer in zip(layout.blocks, inside, strict=True)):
                self._hessians[(layer, block_size)] = big.restricted(layout)
                return True
        return False


@dataclass
class FisherHessianComparison:
    """The two curvatures on one layout and their per-block and per-layer statistics."""

    fisher: DampedCurvature
    hessian: DampedCurvature
    blocks: pd.DataFrame
    layers: pd.DataFrame


def compare_fisher_and_hessian(
    model: nn.Module,
    data: Iterable,
    *,
    layout: ParameterLayout | None = None,
    block_size: BlockSpec = 64,
    num_samples: int = 256,
    batch_size: int = 1,
    damping: float = 1e-4,
    fisher: str = "empirical",
    hessian_examples: int | None = None,
    progress: bool = True,
) -> FisherHessianComparison:
    """Build F_λ (dense blocks) and H + λI (exact) and compare them block by block.

    ``layers`` has one row per analysed parameter: its size and number of blocks, the
    median-over-blocks share of diagonally dominant rows (``*_dominant_rows``, all-zero rows
    counted as dominant), of dominant rows among the non-zero rows
    (``*_dominant_nonzero_rows``, the honest measure), of all-zero rows (``*_zero_rows``)
    and the diagonal Frobenius share of F and of H (undamped), the median relative Frobenius
    error of F_λ against H_λ and the median cosine of OBS update directions.
    """
    if layout is None:
        layout = ParameterLayout.from_model(model, block_size=block_size)
    f = estimate_curvature(
        model, data, representation="dense", layout=layout, num_samples=num_samples,
        batch_size=batch_size, fisher=fisher, progress=progress,
    ).damped(damping)  # fmt: skip
    h = hessian_blocks(
        model, data, layout, num_examples=hessian_examples, progress=progress
    ).damped(f.damping)
    dominance = pd.concat([dominance_table(f.undamped), dominance_table(h.undamped)])
    wide = dominance.pivot_table(
        index=["block", "layer", "parameter", "size"],
        columns="kind",
        values=[
            "dominant_row_share",
            "dominant_nonzero_row_share",
            "zero_row_share",
            "diagonal_frobenius_share",
        ],
        dropna=False,
    )
    wide.columns = [f"{kind}_{stat}" for stat, kind in wide.columns]
    blocks = wide.reset_index().merge(
        compare_blocks(f, h).drop(columns=["kind_approx", "kind_reference"]),
        on=["block", "layer", "parameter", "size"],
    )
    layers = (
        blocks.groupby(["layer", "parameter"])
        .agg(
            numel=("size", "sum"),
            blocks=("block", "count"),
            fisher_dominant_rows=(f"{f.kind}_dominant_row_share", "median"),
            hessian_dominant_rows=(f"{h.kind}_dominant_row_share", "median"),
            fisher_dominant_nonzero_rows=(f"{f.kind}_dominant_nonzero_row_share", "median"),
            hessian_dominant_nonzero_rows=(f"{h.kind}_dominant_nonzero_row_share", "median"),
            fisher_zero_rows=(f"{f.kind}_zero_row_share", "median"),
            hessian_zero_rows=(f"{h.kind}_zero_row_share", "median"),
            fisher_diag_share=(f"{f.kind}_diagonal_frobenius_share", "median"),
            hessian_diag_share=(f"{h.kind}_diagonal_frobenius_share", "median"),
            fisher_vs_hessian_error=("relative_frobenius_error", "median"),
            obs_update_cosine=("obs_update_cosine_median", "median"),
        )
        .reset_index()
    )
    return FisherHessianComparison(f, h, blocks, layers)
