r"""Fisher versus Hessian explorer: one block of the exact Hessian beside a Fisher, live.

The dashboard draws from a :class:`~wfexplore.experiments.FisherHessianCache`, which
computes the Hessian of a (layer, block size) and the gradient samples of a (layer, b,
Fisher kind) once; moving λ, m or the block only redraws. Controls: layer, block size,
block, m, λ, b, empirical or true Fisher; heatmaps of H + λI, F + λI and their difference
(or of their inverses, which the OBS saliency and update use), and a statistics table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import traitlets
from torch import nn

from wfexplore.experiments import FisherHessianCache, ImpossibleSetting
from wfexplore.figures.curvature import block_heatmaps, heatmap_traces
from wfexplore.widgets.base import ComputingDashboard, SaveBar

DEFAULT_BLOCK_SIZES = (4, 8, 16, 32, 64, 128, 256)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
FISHER_CHOICES = (("empirical Fisher", "empirical"), ("true Fisher", "true"))
_STAT_ROWS = {
    "dominant_nonzero_row_share": "share of dominant rows among the non-zero rows",
    "zero_row_share": "share of all-zero rows (dead units; dominant only as 0 ≥ 0)",
    "dominant_row_share": "share of dominant rows, all-zero rows counted",
    "median_row_ratio": "median row ratio |M_ii| / Σ_j≠i |M_ij|",
    "diagonal_frobenius_share": "share of ‖M‖²_F on the diagonal",
    "mean_diagonal": "mean diagonal entry",
}
_TRAITS = {
    "layer": "layer",
    "block-size": "block_size",
    "block": "block",
    "damping": "damping",
    "batch": "batch_size",
    "kind": "fisher",
    "view": "view",
    "log": "log_scale",
}
"""Control name → trait of the state; m is not linked: its slider shows at most what b allows."""


class FisherState(traitlets.HasTraits):
    """The choices of a :class:`FisherHessianExplorer`; ``num_samples`` is the m asked for."""

    layer = traitlets.Unicode()
    block_size = traitlets.Int()
    block = traitlets.Int(0)
    num_samples = traitlets.Int(1)
    damping = traitlets.Float()
    batch_size = traitlets.Int(1)
    fisher = traitlets.Unicode("empirical")
    view = traitlets.Unicode("curvature")
    log_scale = traitlets.Bool(False)


class FisherHessianExplorer(ComputingDashboard):
    """Dashboard: the exact Hessian and a Fisher of one block, their difference and statistics.

    Controls (attributes): ``layer``, ``block_size``, ``block``, ``num_samples`` (m),
    ``damping`` (λ, log scale), ``batch_size`` (b), ``fisher`` (empirical / true), ``view``
    (the dampened matrices C + λI, or their inverses) and ``log_scale``. Outputs:
    ``figure`` (a ``go.FigureWidget`` with three heatmaps: H + λI, F + λI and their
    difference, or the inverses; inside the box ``heatmap``), ``stats`` (HTML table; the
    numbers are in ``statistics`` and ``comparison``), ``message`` (why a setting cannot be
    drawn) and ``progress`` / ``progress_label`` (long computations). The values of the
    controls live in ``state``. ``widget`` is the container to display.

    The Hessian of a (layer, block size) and the gradient samples of a (layer, b, Fisher
    kind) are computed once (see :class:`~wfexplore.experiments.FisherHessianCache`, shared
    through ``cache``); λ, m, the block, the view and the scale only redraw.
    """

    CONTROLS = {
        "layer": "layer",
        "block-size": "block_size",
        "block": "block",
        "m": "num_samples",
        "damping": "damping",
        "batch": "batch_size",
        "kind": "fisher",
        "view": "view",
        "log": "log_scale",
    }

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
        kinds = [kind for _, kind in FISHER_CHOICES]
        if fisher not in kinds:
            raise ValueError(f"fisher must be one of {kinds}, got {fisher!r}")
        low, high = damping_range
        if not (damping > 0 and low <= math.log10(damping) <= high):
            raise ValueError(f"damping must lie in [1e{low:g}, 1e{high:g}], got {damping!r}")
        if num_samples is None:
            num_samples = max(1, self.cache.available_samples(batch_size))
        self.last_redraw_seconds = float("nan")
        self.statistics = pd.DataFrame()
        self.comparison: dict[str, float] = {}
        super().__init__(
            "wfx-fisher",
            FisherState(
                layer=layer, block_size=block_size, block=block, num_samples=max(num_samples, 1),
                damping=damping, batch_size=batch_size, fisher=fisher,
            ),
        )  # fmt: skip
        self._build_controls(
            layers,
            sorted({*block_sizes, block_size}),
            sorted({*batch_sizes, batch_size}),
            low,
            high,
        )
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
        controls = widgets.VBox(
            [widgets.HTML(_INTRO), *self.controls.values()], layout=widgets.Layout(width="440px")
        )
        self.save_bar = SaveBar(self, "fisher-vs-hessian.html")
        self.widget = widgets.VBox(
            [
                widgets.HBox([controls, self.stats], layout=widgets.Layout(flex_flow="row wrap")),
                self.message,
                self.progress_box,
                self.heatmap,
                self.save_bar.widget,
            ]
        )
        self.widget.add_class("wfx-fisher")
        self.num_samples.observe(self._on_samples, names="value")
        self.state.observe(lambda _: self.update(), names=list(FisherState.class_trait_names()))
        self.update()

    def _build_controls(self, layers, block_sizes, batch_sizes, low, high) -> None:
        s = self.state
        self.layer = widgets.Dropdown(options=layers, description="layer")
        self.block_size = widgets.Dropdown(options=block_sizes, description="block size B")
        self.block = widgets.IntSlider(min=0, max=max(s.block, 0), description="block")
        self.num_samples = widgets.IntSlider(
            value=s.num_samples, min=1, max=s.num_samples, description="gradients m"
        )
        self.damping = widgets.FloatLogSlider(
            value=s.damping, base=10, min=low, max=high, step=0.25, description="damping λ",
            readout_format=".1e",
        )  # fmt: skip
        self.batch_size = widgets.Dropdown(options=batch_sizes, description="examples/gradient b")
        self.fisher = widgets.ToggleButtons(options=FISHER_CHOICES, description="Fisher")
        self.view = widgets.ToggleButtons(
            options=[("C + λI", "curvature"), ("(C + λI)⁻¹", "inverse")], description="show"
        )
        self.log_scale = widgets.Checkbox(
            description="log-magnitude colours", layout=widgets.Layout(width="430px")
        )
        self.bind(self.controls, _TRAITS, style={"description_width": "160px"})
        for control in self.controls.values():
            if isinstance(control, widgets.ToggleButtons):
                control.style.button_width = "125px"
            if isinstance(control, (widgets.IntSlider, widgets.FloatLogSlider)):
                control.layout = widgets.Layout(width="430px")

    @property
    def setting(self) -> dict:
        """The current choices, with the m the slider shows (at most what b allows)."""
        return {**self.state.trait_values(), "num_samples": self.num_samples.value}

    def _on_samples(self, change: dict) -> None:
        """m moved by the person (not lowered to fit b): it becomes the m asked for."""
        shown = min(self.state.num_samples, self.cache.available_samples(self.state.batch_size))
        if change["new"] != shown:
            self.state.num_samples = change["new"]

    def update(self) -> None:
        """Constrain the ranges to the setting, compute what is missing and redraw.

        A setting that cannot be drawn leaves the figure as it was and says why in
        ``message``.
        """
        try:
            notes = self._constrain()
            if notes is None:
                return  # constraining changed the state, and that change redrew
            self._compute_missing()
            start = time.perf_counter()
            self._redraw()
            self.last_redraw_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - any failure is shown, never a traceback
            self.fail(err)
            return
        self.say(" ".join(notes))

    # --- internals -------------------------------------------------------------------------
    def _constrain(self) -> list[str] | None:
        """Fit the m and block sliders to the layer, B and b; notes on what was lowered, or
        None when the block had to change (the state's observers then redraw)."""
        s = self.state
        try:
            size = self.cache.layout(s.layer, s.block_size).parameter(s.layer).numel
            available = self.cache.check_samples(1, s.batch_size)
        except ImpossibleSetting as err:
            raise ImpossibleSetting(
                f"{err}. The figures still show the last setting that could be drawn."
            ) from None
        notes = []
        shown = min(s.num_samples, available)
        if shown < s.num_samples:
            notes.append(
                f"m lowered from {s.num_samples} to {shown}: with b = {s.batch_size} the data "
                f"gives at most {available} gradient samples."
            )
        self.num_samples.max = available  # a lower max lowers the value: ignored as not asked for
        self.num_samples.value = shown
        block = s.block
        self.block.max = math.ceil(size / s.block_size) - 1
        return None if s.block != block else notes

    def _compute_missing(self) -> None:
        """The Hessian and gradient samples of this setting, with progress shown while they run."""
        s = self.setting
        jobs = self.cache.pending(s["layer"], s["block_size"], s["batch_size"], s["fisher"])
        if not jobs:
            return
        with self.working(len(jobs)):
            for text, job in jobs:
                self.note(text)
                job()
                self.step()

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

    def saved(self) -> tuple[str, dict[str, go.Figure], dict]:
        s = self.setting
        statistics = getattr(self, "statistics", None)
        tables = {}
        if statistics is not None:
            tables["Block statistics (without λ)"] = statistics.reset_index(names="matrix")
            tables["Fisher against Hessian"] = pd.DataFrame([self.comparison])
        return (
            f"Fisher versus Hessian: {s['layer']}, block {s['block']}",
            {"Heatmaps": go.Figure(self.figure)},
            tables,
        )


_INTRO = (
    "<b>Fisher versus Hessian, one block.</b> Left: the exact Hessian H of the mean "
    "loss; middle: the Fisher F = (1/m) Σ g gᵀ of m gradient samples; right: their "
    "difference — all with the damping λI that pruning adds, on one colour scale."
)

__all__ = ["FisherHessianExplorer", "FisherState"]
