r"""Fisher versus Hessian explorer: one block of the exact Hessian beside a Fisher, live.

:class:`FisherHessianCache` holds the expensive work, each piece computed once: the exact
Hessian of a (layer, block size) and the gradient samples of a (layer, b, Fisher kind), the
largest number of them the data allows, sliced for smaller m. A Fisher block
F_λ = (1/m) Σ_n g_n g_nᵀ + λI is then a matrix product away, so moving λ, m or the block
only redraws.

:class:`FisherHessianExplorer` is the dashboard: layer, block size, block, m, λ, b,
empirical or true Fisher; heatmaps of H + λI, F + λI and their difference (or of their
inverses, which the OBS saliency and update use), and a statistics table.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from wfexplore.curvature import DenseBlockCurvature, hessian_blocks
from wfexplore.curvature.dense import BlockGroup, group_blocks
from wfexplore.figures.curvature import block_heatmaps, heatmap_traces
from wfexplore.gradients import FISHER_KINDS, gradient_samples
from wfexplore.params import ParameterLayout
from wfexplore.statistics import compare_blocks, dominance_table

DEFAULT_BLOCK_SIZES = (4, 8, 16, 32, 64, 128, 256)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
VIEWS = ("curvature", "inverse")
HESSIAN_BATCH = 256
"""Hessian columns computed per batched call; smaller blocks are cut from larger ones."""


class ImpossibleSetting(ValueError):
    """A combination of settings that cannot be computed (the message says why and what to do)."""


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
        self._damped: dict[tuple[str, int, float], DenseBlockCurvature] = {}

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

    # --- the expensive parts, once -------------------------------------------------------
    def hessian(self, layer: str, block_size: int, damping: float = 0.0) -> DenseBlockCurvature:
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
        if damping == 0.0:
            return self._hessians[key]
        dkey = (layer, block_size, float(damping))
        if dkey not in self._damped:
            if len(self._damped) >= 8:
                self._damped.pop(next(iter(self._damped)))
            self._damped[dkey] = _with_damping(self._hessians[key], damping)
        return self._damped[dkey]

    def gradients(self, layer: str, batch_size: int = 1, fisher: str = "empirical") -> torch.Tensor:
        """``(available_samples(b), numel)`` gradient samples of ``layer``, computed once."""
        if fisher not in FISHER_KINDS:
            raise ImpossibleSetting(f"fisher must be one of {list(FISHER_KINDS)}, got {fisher!r}")
        key = (layer, batch_size, fisher)
        if key not in self._gradients:
            count = self._check_samples(1, batch_size)
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
    ) -> DenseBlockCurvature:
        """F_λ from the first ``num_samples`` cached gradient samples (dense blocks)."""
        self._check_samples(num_samples, batch_size)
        layout = self.layout(layer, block_size)
        g = self.gradients(layer, batch_size, fisher)[:num_samples]
        curvature = DenseBlockCurvature.from_gradients(g, layout, damping)
        curvature.kind = f"{fisher} Fisher"
        return curvature

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
        for ``dominant_row_share``, ``median_row_ratio``, ``diagonal_frobenius_share`` and
        ``mean_diagonal`` (of the undamped block), ``relative_frobenius_error``,
        ``obs_update_cosine_median``, ``obs_update_cosine_min``.
        """
        f = self.fisher(layer, block_size, num_samples, damping, batch_size, fisher)
        h = self.hessian(layer, block_size, damping)
        keys = ["block", "layer", "parameter", "size"]
        out = None
        for name, curvature in (("fisher", f), ("hessian", h)):
            table = dominance_table(curvature, blocks).drop(columns="kind")
            table["mean_diagonal"] = [
                float(curvature.block(i).diagonal().mean()) - curvature.damping
                for i in table["block"]
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
        ``fisher_dominant_row_share``, ``fisher_mean_diagonal``, ``hessian_mean_diagonal``.
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
                            "fisher_mean_diagonal": table["fisher_mean_diagonal"].mean(),
                            "hessian_mean_diagonal": table["hessian_mean_diagonal"].mean(),
                        }
                    )
        return pd.DataFrame(rows)

    # --- helpers -------------------------------------------------------------------------
    def _check_samples(self, num_samples: int, batch_size: int) -> int:
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
                groups = group_blocks(layout)
                for grp in groups:
                    grp.matrix = torch.stack(
                        [
                            _sub_block(big, outer, layout.blocks[i])
                            for i, outer in ((i, inside[i]) for i in grp.blocks)
                        ]
                    )
                self._hessians[(layer, block_size)] = DenseBlockCurvature(
                    layout, groups, 0.0, kind="hessian"
                )
                return True
        return False


def _sub_block(big: DenseBlockCurvature, outer, inner) -> torch.Tensor:
    a, b = inner.start - outer.start, inner.stop - outer.start
    return big.block(outer.index)[a:b, a:b]


def _with_damping(curvature: DenseBlockCurvature, damping: float) -> DenseBlockCurvature:
    """A copy of the dense blocks with ``damping``·I added."""
    groups = []
    for grp in curvature.groups:
        matrix = grp.matrix.clone()
        matrix.diagonal(dim1=1, dim2=2).add_(damping)
        groups.append(BlockGroup(list(grp.blocks), grp.index, matrix))
    return DenseBlockCurvature(
        curvature.layout, groups, curvature.damping + damping, kind=curvature.kind
    )


# --- the dashboard -------------------------------------------------------------------------
_NOTE = "color:#555;margin:2px 0"
_ERROR = "color:#b00020;font-weight:bold;margin:2px 0"
_STAT_ROWS = {
    "dominant_row_share": "share of diagonally dominant rows",
    "median_row_ratio": "median row ratio |M_ii| / Σ_j≠i |M_ij|",
    "diagonal_frobenius_share": "share of ‖M‖²_F on the diagonal",
    "mean_diagonal": "mean diagonal entry",
}


class FisherHessianExplorer:
    """Dashboard: the exact Hessian and a Fisher of one block, their difference and statistics.

    Controls (attributes): ``layer``, ``block_size``, ``block``, ``num_samples`` (m),
    ``damping`` (λ, log scale), ``batch_size`` (b), ``fisher`` (empirical / true), ``view``
    (the dampened matrices C + λI, or their inverses) and ``log_scale``. Outputs:
    ``figure`` (a ``go.FigureWidget`` with three heatmaps: H + λI, F + λI and their
    difference, or the inverses; inside the box ``heatmap``), ``stats`` (HTML table; the
    numbers are in ``statistics`` and ``comparison``), ``message`` (why a setting cannot be
    drawn) and ``progress`` (progress bars of long computations). ``widget`` is the
    container to display.

    The Hessian of a (layer, block size) and the gradient samples of a (layer, b, Fisher
    kind) are computed once (see :class:`FisherHessianCache`, shared through ``cache``);
    λ, m, the block, the view and the scale only redraw.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        *,
        names: Sequence[str] | None = None,
        layer: str | None = None,
        block_size: int = 32,
        block: int = 0,
        num_samples: int | None = None,
        max_samples: int = 256,
        damping: float = 1e-4,
        batch_size: int = 1,
        fisher: str = "empirical",
        hessian_examples: int | None = None,
        block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        damping_range: tuple[float, float] = (-8.0, 1.0),
        cache: FisherHessianCache | None = None,
        progress: bool = True,
    ):
        self.cache = cache or FisherHessianCache(
            model,
            data,
            names=names,
            max_samples=max_samples,
            hessian_examples=hessian_examples,
            progress=progress,
        )
        layers = self.cache.layers
        if layer is None:  # the smallest layer: its Hessian is the quickest
            layer = min(layers, key=self.cache.layer_size)
        if layer not in layers:
            raise ValueError(f"layer {layer!r} is not analysed; choose one of {layers}")
        if fisher not in FISHER_KINDS:
            raise ValueError(f"fisher must be one of {list(FISHER_KINDS)}, got {fisher!r}")
        block_sizes = sorted({*block_sizes, block_size})
        batch_sizes = sorted({*batch_sizes, batch_size})
        low, high = damping_range
        if not (damping > 0 and low <= math.log10(damping) <= high):
            raise ValueError(f"damping must lie in [1e{low:g}, 1e{high:g}], got {damping!r}")
        if num_samples is None:
            num_samples = max(1, self.cache.available_samples(batch_size))
        self._wanted_samples = num_samples
        self._syncing = False
        self.last_redraw_seconds = float("nan")
        self.statistics = pd.DataFrame()
        self.comparison: dict[str, float] = {}

        style = {"description_width": "160px"}
        wide = widgets.Layout(width="430px")
        self.layer = widgets.Dropdown(options=layers, value=layer, description="layer")
        self.block_size = widgets.Dropdown(
            options=block_sizes, value=block_size, description="block size B"
        )
        self.block = widgets.IntSlider(value=0, min=0, max=max(block, 0), description="block")
        self.num_samples = widgets.IntSlider(
            value=max(num_samples, 1),
            min=1,
            max=max(num_samples, 1),
            description="gradients m",
        )
        self.damping = widgets.FloatLogSlider(
            value=damping, base=10, min=low, max=high, step=0.25, description="damping λ",
            readout_format=".1e",
        )  # fmt: skip
        self.batch_size = widgets.Dropdown(
            options=batch_sizes, value=batch_size, description="examples/gradient b"
        )
        self.fisher = widgets.ToggleButtons(
            options=[("empirical Fisher", "empirical"), ("true Fisher", "true")],
            value=fisher,
            description="Fisher",
        )
        self.view = widgets.ToggleButtons(
            options=[("C + λI", "curvature"), ("(C + λI)⁻¹", "inverse")],
            value="curvature",
            description="show",
        )
        self.log_scale = widgets.Checkbox(
            value=False, description="log-magnitude colours", layout=widgets.Layout(width="430px")
        )
        self.block.value = block
        for name, control in self.controls.items():
            control.style = style
            if isinstance(control, widgets.ToggleButtons):
                control.style.button_width = "125px"
            if isinstance(control, (widgets.IntSlider, widgets.FloatLogSlider)):
                control.layout = wide
            control.add_class("wfx-fisher-control")
            control.add_class(f"wfx-fisher-{name}")

        self.message = widgets.HTML("")
        self.message.add_class("wfx-fisher-message")
        self.progress = widgets.Output()
        self.progress.add_class("wfx-fisher-progress")
        self.stats = widgets.HTML("")
        self.stats.add_class("wfx-fisher-stats")
        placeholder = np.zeros((1, 1))
        figure = block_heatmaps(
            {"H + λI": placeholder, "F + λI": placeholder, "F − H": placeholder},
            difference=None,
            title="computing…",
            panel_size=260,
        )
        self.figure = go.FigureWidget(figure)
        self.figure.add_class("wfx-fisher-figure")
        # the plot element is the figure widget itself: a box around it carries the class
        # selected as ".wfx-fisher-heatmap .js-plotly-plot"
        self.heatmap = widgets.Box([self.figure])
        self.heatmap.add_class("wfx-fisher-heatmap")

        intro = widgets.HTML(
            "<b>Fisher versus Hessian, one block.</b> Left: the exact Hessian H of the mean "
            "loss; middle: the Fisher F = (1/m) Σ g gᵀ of m gradient samples; right: their "
            "difference — all with the damping λI that pruning adds, on one colour scale."
        )
        controls = widgets.VBox(
            [
                intro,
                self.layer,
                self.block_size,
                self.block,
                self.num_samples,
                self.damping,
                self.batch_size,
                self.fisher,
                self.view,
                self.log_scale,
            ],
            layout=widgets.Layout(width="440px"),
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([controls, self.stats], layout=widgets.Layout(flex_flow="row wrap")),
                self.message,
                self.progress,
                self.heatmap,
            ]
        )
        self.widget.add_class("wfx-fisher")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def controls(self) -> dict[str, widgets.ValueWidget]:
        return {
            "layer": self.layer,
            "block-size": self.block_size,
            "block": self.block,
            "m": self.num_samples,
            "damping": self.damping,
            "batch": self.batch_size,
            "kind": self.fisher,
            "view": self.view,
            "log": self.log_scale,
        }

    @property
    def setting(self) -> dict:
        """The current values of the controls."""
        return {
            "layer": self.layer.value,
            "block_size": self.block_size.value,
            "block": self.block.value,
            "num_samples": self.num_samples.value,
            "damping": self.damping.value,
            "batch_size": self.batch_size.value,
            "fisher": self.fisher.value,
            "view": self.view.value,
            "log_scale": self.log_scale.value,
        }

    def _on_change(self, change: dict) -> None:
        if self._syncing:
            return
        if change["owner"] is self.num_samples:
            self._wanted_samples = change["new"]
        self.update()

    def update(self) -> None:
        """Constrain the ranges to the setting, compute what is missing and redraw.

        A setting that cannot be drawn leaves the figure as it was and says why in
        ``message``.
        """
        self._syncing = True
        try:
            notes = self._sync_ranges()
        except ImpossibleSetting as err:
            self._say(str(err), error=True)
            return
        finally:
            self._syncing = False
        try:
            self._compute_missing()
            start = time.perf_counter()
            self._redraw()
            self.last_redraw_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - any failure is shown, never a traceback
            self._say(f"{type(err).__name__}: {err}", error=True)
            return
        self._say(" ".join(notes))

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.show()

    # --- internals -------------------------------------------------------------------------
    def _sync_ranges(self) -> list[str]:
        """Fit the block and m sliders to the layer, B and b; notes on what was lowered."""
        s = self.setting
        size = self.cache.layer_size(s["layer"])
        if s["block_size"] > size:
            raise ImpossibleSetting(
                f"Block size {s['block_size']} is larger than layer {s['layer']} ({size} "
                f"weights): choose a block size of at most {size}, or another layer. "
                "The figures still show the last setting that could be drawn."
            )
        self.block.max = math.ceil(size / s["block_size"]) - 1
        available = self.cache.available_samples(s["batch_size"])
        if available < 1:
            raise ImpossibleSetting(
                f"b = {s['batch_size']} examples per gradient is more than the "
                f"{self.cache.num_examples} examples the data holds: choose a smaller b. "
                "The figures still show the last setting that could be drawn."
            )
        notes = []
        self.num_samples.max = available
        value = min(self._wanted_samples, available)
        if value < self._wanted_samples:
            notes.append(
                f"m lowered from {self._wanted_samples} to {value}: with b = "
                f"{s['batch_size']} the data gives at most {available} gradient samples."
            )
        self.num_samples.value = value
        return notes

    def _compute_missing(self) -> None:
        """The Hessian and gradient samples of this setting, with progress shown while they run."""
        s = self.setting
        jobs = []
        if not self.cache.has_hessian(s["layer"], s["block_size"]):
            examples = self.cache.hessian_examples or self.cache.num_examples or "all"
            jobs.append(
                (
                    f"Computing the exact Hessian of {s['layer']} in blocks of {s['block_size']}: "
                    f"{self.cache.layer_size(s['layer'])} Hessian-vector products over "
                    f"{examples} examples…",
                    lambda: self.cache.hessian(s["layer"], s["block_size"]),
                )
            )
        if not self.cache.has_gradients(s["layer"], s["batch_size"], s["fisher"]):
            count = self.cache.available_samples(s["batch_size"])
            jobs.append(
                (
                    f"Computing {count} {s['fisher']}-Fisher gradient samples of "
                    f"{s['layer']} (b = {s['batch_size']})…",
                    lambda: self.cache.gradients(s["layer"], s["batch_size"], s["fisher"]),
                )
            )
        if not jobs:
            return
        try:
            for text, job in jobs:
                self._say(text)
                with self.progress:
                    job()
        finally:
            self.progress.outputs = ()
            self._say("")

    def _redraw(self) -> None:
        s = self.setting
        f = self.cache.fisher(
            s["layer"], s["block_size"], s["num_samples"], s["damping"], s["batch_size"],
            s["fisher"],
        )  # fmt: skip
        h = self.cache.hessian(s["layer"], s["block_size"], s["damping"])
        i = s["block"]
        if s["view"] == "inverse":
            hm, fm = h.inverse_block(i), f.inverse_block(i)
            labels = ("(H + λI)⁻¹", "(F + λI)⁻¹", "(F + λI)⁻¹ − (H + λI)⁻¹")
        else:
            hm, fm = h.block(i), f.block(i)
            labels = ("H + λI", "F + λI", "F − H")
        hm = hm.detach().to(torch.float64).cpu().numpy()
        fm = fm.detach().to(torch.float64).cpu().numpy()
        if s["fisher"] == "true":
            labels = tuple(t.replace("F", "F_true") for t in labels)
        matrices = dict(zip(labels, (hm, fm, fm - hm), strict=True))
        traces, coloraxis = heatmap_traces(matrices, log_magnitude=s["log_scale"])
        table = self.cache.compare(
            s["layer"], s["block_size"], s["num_samples"], s["damping"], s["batch_size"],
            s["fisher"], blocks=[i],
        ).iloc[0]  # fmt: skip
        with self.figure.batch_update():
            for trace, props in zip(self.figure.data, traces, strict=True):
                trace.update(props)
            self.figure.layout.coloraxis.update(coloraxis)
            for annotation, label in zip(self.figure.layout.annotations, labels, strict=True):
                annotation.text = label
            block = f.layout.blocks[i]
            self.figure.layout.title = (
                f"{s['layer']}, block {i} (weights {block.start}–{block.stop - 1}), "
                f"m = {s['num_samples']}, b = {s['batch_size']}, λ = {s['damping']:.2g}"
            )
        self.statistics = pd.DataFrame(
            {
                kind: {stat: float(table[f"{kind}_{stat}"]) for stat in _STAT_ROWS}
                for kind in ("fisher", "hessian")
            }
        ).T
        self.comparison = {
            "relative_frobenius_error": float(table["relative_frobenius_error"]),
            "obs_update_cosine_median": float(table["obs_update_cosine_median"]),
            "obs_update_cosine_min": float(table["obs_update_cosine_min"]),
            "damping_over_mean_fisher_diagonal": s["damping"] / float(table["fisher_mean_diagonal"])
            if table["fisher_mean_diagonal"] > 0
            else float("nan"),
        }
        self.stats.value = self._stats_html(s["fisher"])

    def _stats_html(self, fisher: str) -> str:
        rows = "".join(
            f"<tr><td>{label}</td><td>{self.statistics.loc['fisher', stat]:.3g}</td>"
            f"<td>{self.statistics.loc['hessian', stat]:.3g}</td></tr>"
            for stat, label in _STAT_ROWS.items()
        )
        c = self.comparison
        return (
            "<style>.wfx-fisher-table td, .wfx-fisher-table th {padding: 2px 10px}</style>"
            '<table style="font-size:13px" class="wfx-fisher-table">'
            f"<tr><th>block statistics (without λ)</th><th>{fisher} Fisher F</th>"
            f"<th>Hessian H</th></tr>{rows}</table>"
            '<table style="margin-top:8px;font-size:13px" class="wfx-fisher-table">'
            "<tr><td>‖F_λ − H_λ‖_F / ‖H_λ‖_F</td>"
            f"<td>{c['relative_frobenius_error']:.3g}</td></tr>"
            "<tr><td>cosine of OBS update directions (median, min)</td>"
            f"<td>{c['obs_update_cosine_median']:.3f}, {c['obs_update_cosine_min']:.3f}</td></tr>"
            "<tr><td>λ / mean diagonal of F</td>"
            f"<td>{c['damping_over_mean_fisher_diagonal']:.3g}</td></tr></table>"
        )

    def _say(self, text: str, *, error: bool = False) -> None:
        if not text:
            self.message.value = ""
            return
        style = _ERROR if error else _NOTE
        self.message.value = f'<p style="{style}">{html.escape(text)}</p>'
