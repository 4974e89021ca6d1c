r"""Pruning comparer: methods, scope, update and steps, with a sparsity slider over cached sweeps.

For each (method, scope, update, steps) the comparer runs :func:`~wfexplore.pruning.sweep`
over all its sparsities once (accuracy and loss, cached on disk by the sweep) and prunes
the model once per sparsity through :func:`~wfexplore.pruning.prune_model` to keep the
masks (one-shot pruning reuses one curvature of the dense model per method). Choosing a
setting not computed yet computes it, with a progress bar; moving the sparsity slider only
redraws from the cache.

Shown: the accuracy curves with a marker at the slider, the sparsity of each layer, the
masks of one layer as pictures (pruned, kept, compensated by the OBS update) and the
Jaccard overlap of two methods' pruned sets.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from wfexplore.curvature.base import Curvature
from wfexplore.figures.pruning import (
    accuracy_vs_sparsity,
    layer_sparsity_bars,
    marker_traces,
    mask_figure,
    mask_overlap_bars,
    mask_panel_title,
    mask_traces,
    method_label,
    result_categories,
)
from wfexplore.params import BlockSpec
from wfexplore.pruning import (
    METHODS,
    SCOPES,
    UPDATES,
    PruningSettings,
    estimate_curvature,
    mask_overlap,
    prune_model,
    sweep,
)
from wfexplore.pruning.estimation import take_examples

DEFAULT_METHODS = ("magnitude", "obd", "woodfisher")
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEFAULT_STEPS = (1, 2, 4)
DIAGONAL_METHODS = ("magnitude", "obd")

_NOTE = "color:#555;margin:2px 0"
_ERROR = "color:#b00020;font-weight:bold;margin:2px 0"


class ImpossibleCombination(ValueError):
    """A choice of controls that cannot be drawn; the message says why and what to do."""


def effective_update(method: str, update: str) -> str:
    """Magnitude and OBD have a diagonal curvature: every update is just zeroing (``"none"``)."""
    return "none" if method in DIAGONAL_METHODS else update


@dataclass
class PrunedPoint:
    """What the comparer keeps of one pruned model: keep masks, per-layer table, categories."""

    masks: dict[str, torch.Tensor]
    layers: pd.DataFrame
    categories: np.ndarray
    summary: dict


class FigureSlot:
    """A box, with a stable CSS class, holding one ``go.FigureWidget``.

    :meth:`draw` puts a fresh FigureWidget of a new figure in the box (a figure whose
    subplots or traces change is best drawn anew); ``figure`` is the current one, whose
    traces may also be changed in place. In the page the plot is the ``.js-plotly-plot``
    element inside the box.
    """

    def __init__(self, css_class: str, layout: dict):
        self.css_class = css_class
        self.figure = go.FigureWidget(layout=layout)
        self.box = widgets.Box([self.figure])
        self.box.add_class(css_class)

    def draw(self, fig: go.Figure) -> go.FigureWidget:
        old, self.figure = self.figure, go.FigureWidget(fig)
        self.box.children = (self.figure,)
        old.close()
        return self.figure


class PruningComparer:
    """Dashboard comparing pruning methods, scopes, updates and recomputation steps.

    Controls (attributes): ``methods`` (several), ``scope``, ``update``, ``steps``,
    ``sparsity`` (a slider over the swept sparsities), ``overlap_a`` / ``overlap_b`` (the
    two methods whose masks are compared). Figures (``go.FigureWidget``): ``accuracy``,
    ``layers`` (per-layer sparsity), ``masks`` (pictures of ``picture_layer``), ``overlap``
    (Jaccard per layer). ``message`` says why a choice cannot be drawn; ``progress`` and
    ``progress_label`` show long computations. ``frame`` holds every sweep row computed so
    far; ``widget`` is the container to display. Nothing is computed until the dashboard
    is displayed, :meth:`update` is called, or ``compute=True``.

    OBD, WoodFisher and K-FAC use the empirical Fisher of ``num_samples`` gradients of the
    first examples of ``data`` (give a loader with a fixed order) with damping ``damping``;
    WoodFisher uses blocks of ``block_size``. Accuracy and loss are measured on
    ``eval_data`` (default ``data``). ``cache`` is the sweep's on-disk cache (True: the
    default folder, a folder, or False).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        eval_data: Iterable | None = None,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        selected: Sequence[str] | None = None,
        sparsities: Sequence[float] = DEFAULT_SPARSITIES,
        sparsity: float | None = None,
        scope: str = "global",
        update: str = "summed",
        steps: int = 1,
        steps_options: Sequence[int] = DEFAULT_STEPS,
        damping: float = 1e-4,
        num_samples: int = 256,
        block_size: BlockSpec = 64,
        picture_layer: str | None = None,
        image_shape: tuple[int, int] | None = None,
        cache: bool | str | Path = True,
        compute: bool = False,
    ):
        methods = list(dict.fromkeys(methods))
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"methods: {m!r} is not one of {list(METHODS)}")
        if not methods:
            raise ValueError("methods: give at least one pruning method")
        sparsities = sorted({float(s) for s in sparsities})
        if not sparsities or not all(0 <= s < 1 for s in sparsities):
            raise ValueError(f"sparsities must be numbers in [0, 1), got {sparsities}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {list(UPDATES)}, got {update!r}")
        steps_options = sorted({int(k) for k in (*steps_options, steps)})
        if steps_options[0] < 1:
            raise ValueError(f"steps must be positive integers, got {steps_options}")
        self.model = model
        self.data = data
        self.eval_data = eval_data if eval_data is not None else data
        self.damping = damping
        self.num_samples = num_samples
        self.block_size = block_size
        self.cache = cache
        self.frame = pd.DataFrame()
        self.allocation = pd.DataFrame()
        self.overlap_table = pd.DataFrame()
        self.points: dict[tuple, PrunedPoint] = {}
        self.curvatures: dict[str, Curvature] = {}
        self.sweep_calls = 0
        self.last_redraw_seconds = float("nan")
        self._done: set[tuple] = set()
        self._examples: list | None = None
        self._syncing = False
        self._drawn: tuple | None = None

        names = PruningSettings("magnitude").layout(model).names
        self.picture_layer = picture_layer or names[0]
        if self.picture_layer not in names:
            raise ValueError(f"picture_layer {self.picture_layer!r} is not analysed: {names}")
        shape = dict(model.named_parameters())[self.picture_layer].shape
        if image_shape is None and len(shape) == 2 and shape[1] == 64:
            image_shape = (8, 8)
        self.image_shape = image_shape

        options = [(method_label(m), m) for m in methods]
        selected = list(selected) if selected is not None else methods
        style = {"description_width": "110px"}
        self.methods = widgets.SelectMultiple(
            options=options, value=tuple(selected), rows=len(options), description="methods"
        )
        self.scope = widgets.ToggleButtons(
            options=[("global", "global"), ("layerwise", "layerwise")],
            value=scope,
            description="scope",
        )
        self.update_choice = widgets.ToggleButtons(
            options=[("none", "none"), ("summed OBS", "summed"), ("group OBS", "group")],
            value=update,
            description="update",
        )
        self.steps = widgets.Dropdown(options=steps_options, value=steps, description="steps")
        if sparsity is None:
            sparsity = sparsities[len(sparsities) // 2]
        sparsity = min(sparsities, key=lambda s: abs(s - sparsity))
        self.sparsity = widgets.SelectionSlider(
            options=[(f"{s:.0%}", s) for s in sparsities],
            value=sparsity,
            description="sparsity",
            continuous_update=False,
            layout=widgets.Layout(width="420px"),
        )
        first = selected[0] if selected else methods[0]
        second = next((m for m in selected if m != first), first) if selected else first
        self.overlap_a = widgets.Dropdown(options=options, value=first, description="overlap of")
        self.overlap_b = widgets.Dropdown(options=options, value=second, description="and")
        for name, control in self.controls.items():
            control.style = style
            control.add_class("wfx-comparer-control")
            control.add_class(f"wfx-comparer-{name}")

        self.message = widgets.HTML("")
        self.message.add_class("wfx-comparer-message")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="")
        self.progress.add_class("wfx-comparer-progress")
        self.progress_label = widgets.HTML("")
        self.progress_box = widgets.HBox([self.progress, self.progress_label])
        self.progress_box.layout.display = "none"

        self.slots = {
            "accuracy": FigureSlot(
                "wfx-comparer-accuracy", {"height": 380, "title": "Accuracy after pruning"}
            ),
            "layers": FigureSlot(
                "wfx-comparer-layers", {"height": 340, "title": "Sparsity of each layer"}
            ),
            "masks": FigureSlot("wfx-comparer-masks", {"height": 380, "title": "Masks"}),
            "overlap": FigureSlot("wfx-comparer-overlap", {"height": 320, "title": "Overlap"}),
        }

        intro = widgets.HTML(
            "<b>Comparing pruning choices.</b> Each method removes the weights of lowest "
            "saliency ρ = w²/(2[C⁻¹]_qq): C = I for magnitude, the diagonal Fisher for OBD, "
            "Fisher blocks for WoodFisher. <i>global</i> ranks all layers together, "
            "<i>layerwise</i> gives every layer the same sparsity; the OBS <i>update</i> moves "
            "the kept weights to make up for the removed ones; <i>steps</i> &gt; 1 re-estimates "
            "the Fisher on the pruned model between steps."
        )
        controls = widgets.VBox(
            [
                intro,
                widgets.HBox([self.methods, widgets.VBox([self.scope, self.update_choice])]),
                widgets.HBox([self.steps, self.sparsity]),
            ]
        )
        self.widget = widgets.VBox(
            [
                controls,
                self.message,
                self.progress_box,
                self.slots["accuracy"].box,
                self.slots["layers"].box,
                self.slots["masks"].box,
                widgets.HBox([self.overlap_a, self.overlap_b]),
                self.slots["overlap"].box,
            ]
        )
        self.widget.add_class("wfx-comparer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        if compute:
            self.update()

    # --- figures and controls ----------------------------------------------------------------
    @property
    def accuracy(self) -> go.FigureWidget:
        """Accuracy against sparsity, one line per method; the last trace marks the slider."""
        return self.slots["accuracy"].figure

    @property
    def layers(self) -> go.FigureWidget:
        """Sparsity of each layer at the slider, one bar series per method."""
        return self.slots["layers"].figure

    @property
    def masks(self) -> go.FigureWidget:
        """Pictures of ``picture_layer``: pruned, kept, compensated, one panel per method."""
        return self.slots["masks"].figure

    @property
    def overlap(self) -> go.FigureWidget:
        """Jaccard overlap of the pruned sets of ``overlap_a`` and ``overlap_b`` per layer."""
        return self.slots["overlap"].figure

    @property
    def controls(self) -> dict[str, widgets.ValueWidget]:
        return {
            "methods": self.methods,
            "scope": self.scope,
            "update": self.update_choice,
            "steps": self.steps,
            "sparsity": self.sparsity,
            "overlap-a": self.overlap_a,
            "overlap-b": self.overlap_b,
        }

    @property
    def setting(self) -> dict:
        return {
            "methods": list(self.methods.value),
            "scope": self.scope.value,
            "update": self.update_choice.value,
            "steps": int(self.steps.value),
            "sparsity": float(self.sparsity.value),
            "overlap": (self.overlap_a.value, self.overlap_b.value),
        }

    @property
    def sparsities(self) -> list[float]:
        return [value for _, value in self.sparsity.options]

    def key(self, method: str, scope: str, update: str, steps: int) -> tuple:
        """The cache key of one curve: (method, scope, effective update, steps)."""
        return (method, scope, effective_update(method, update), int(steps))

    def curve_frame(self, setting: dict | None = None) -> pd.DataFrame:
        """The sweep rows drawn for ``setting`` (default: the current one)."""
        s = setting or self.setting
        if not len(self.frame):
            return self.frame
        keep = np.zeros(len(self.frame), dtype=bool)
        for method in s["methods"]:
            m, scope, upd, k = self.key(method, s["scope"], s["update"], s["steps"])
            keep |= (
                (self.frame["method"] == m)
                & (self.frame["scope"] == scope)
                & (self.frame["update"] == upd)
                & (self.frame["steps"] == k)
            ).to_numpy()
        return self.frame[keep].sort_values(["method", "sparsity"], kind="stable")

    def _on_change(self, change: dict) -> None:
        if self._syncing:
            return
        if change["owner"] is self.sparsity:
            self.redraw()
        elif change["owner"] in (self.overlap_a, self.overlap_b):
            self.redraw(only_overlap=True)
        else:
            self.update()

    # --- computing --------------------------------------------------------------------------
    def update(self) -> None:
        """Compute whatever the current choice lacks (with a progress bar), then redraw.

        An impossible choice, or a failure of the computation, is shown in ``message``; the
        figures keep what they showed.
        """
        try:
            self._check(self.setting)
            self._compute_missing(self.setting)
        except Exception as err:  # noqa: BLE001 - shown to the person, never a traceback
            self._say(_readable(err), error=True)
            return
        self.redraw()

    def compute(self) -> None:
        """Compute the current choice (what displaying the dashboard does)."""
        self.update()

    def _check(self, s: dict) -> None:
        if not s["methods"]:
            raise ImpossibleCombination(
                "No method is selected: choose at least one in the list (Ctrl/Shift-click for "
                "several). The figures still show the last choice that could be drawn."
            )

    def _compute_missing(self, s: dict) -> None:
        missing = [
            m
            for m in s["methods"]
            if self.key(m, s["scope"], s["update"], s["steps"]) not in self._done
        ]
        if not missing:
            return
        sparsities = self.sparsities
        total = 1 + len(missing) * len(sparsities)
        total += sum(1 for m in missing if s["steps"] == 1 and m not in self.curvatures)
        self._progress_start(total)
        try:
            labels = ", ".join(method_label(m) for m in missing)
            self._progress(
                f"Sweeping {labels} over {len(sparsities)} sparsities ({s['scope']}, "
                f"update {s['update']}, {s['steps']} step(s))…"
            )
            frame = sweep(
                self.model,
                self.data,
                methods=missing,
                sparsities=sparsities,
                scopes=(s["scope"],),
                updates=(s["update"],),
                steps=(s["steps"],),
                dampings=(self.damping,),
                num_samples=(self.num_samples,),
                block_sizes=(self.block_size,),
                eval_data=self.eval_data,
                cache=self.cache,
                progress=False,
            )
            self.sweep_calls += 1
            self._add_rows(frame)
            self._progress_step()
            for method in missing:
                key = self.key(method, s["scope"], s["update"], s["steps"])
                for sparsity in sparsities:
                    self._progress(
                        f"Pruning with {method_label(method)} to {sparsity:.0%} for the masks…"
                    )
                    self.points[(*key, sparsity)] = self._prune(method, key, sparsity)
                    self._progress_step()
                self._done.add(key)
        finally:
            self._progress_end()

    def _add_rows(self, frame: pd.DataFrame) -> None:
        if not len(self.frame):
            self.frame = frame.reset_index(drop=True)
            return
        keys = ["method", "scope", "update", "steps", "sparsity"]
        combined = pd.concat([self.frame, frame], ignore_index=True)
        self.frame = combined.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)

    def _settings(self, method: str) -> PruningSettings:
        return PruningSettings(
            method,
            damping=self.damping,
            num_samples=self.num_samples,
            block_size=self.block_size,
        )

    def _curvature(self, method: str) -> Curvature:
        if method not in self.curvatures:
            self._progress(f"Estimating the curvature of {method_label(method)}…")
            settings = self._settings(method)
            if settings.needs_data and self._examples is None:
                self._examples = take_examples(self.data, settings.examples_needed)
            self.curvatures[method] = estimate_curvature(
                self.model, self._examples, settings.layout(self.model), settings
            )
            self._progress_step()
        return self.curvatures[method]

    def _prune(self, method: str, key: tuple, sparsity: float) -> PrunedPoint:
        _, scope, update, steps = key
        upd = None if method in DIAGONAL_METHODS else update
        if steps == 1:
            how = self._curvature(method)
            result = prune_model(
                self.model, how, sparsity, scope=scope, update=upd, eval_data=None,
                progress=False,
            )  # fmt: skip
        else:
            result = prune_model(
                self.model, self._settings(method), sparsity, data=self.data, scope=scope,
                update=upd, steps=steps, eval_data=None, progress=False,
            )  # fmt: skip
        return PrunedPoint(
            masks={k: v.cpu() for k, v in result.masks.items()},
            layers=result.layers,
            categories=result_categories(result, self.model, self.picture_layer),
            summary=result.summary,
        )

    # --- drawing ----------------------------------------------------------------------------
    def point(self, method: str, setting: dict | None = None) -> PrunedPoint:
        s = setting or self.setting
        return self.points[(*self.key(method, s["scope"], s["update"], s["steps"]), s["sparsity"])]

    def redraw(self, *, only_overlap: bool = False) -> None:
        """Draw the current choice from the cache (nothing is computed here)."""
        s = self.setting
        try:
            self._check(s)
            keys = [self.key(m, s["scope"], s["update"], s["steps"]) for m in s["methods"]]
            if any(k not in self._done for k in keys):
                raise ImpossibleCombination(
                    "This choice is not computed yet; it is computed when the methods, scope, "
                    "update or steps change (or call update())."
                )
            start = time.perf_counter()
            drawn = (tuple(s["methods"]), s["scope"], s["update"], s["steps"])
            if only_overlap:
                pass
            elif drawn == self._drawn:
                self._slide(s)
            else:
                self._draw_main(s)
                self._drawn = drawn
            notes = self._draw_overlap(s)
            self.last_redraw_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - shown to the person, never a traceback
            self._say(_readable(err), error=True)
            return
        self._say(" ".join(notes))

    def _draw_main(self, s: dict) -> None:
        sparsity = s["sparsity"]
        curves = self.curve_frame(s)
        title = (
            f"Accuracy after {s['scope']} pruning, update {s['update']}, "
            f"{s['steps']} step{'s' if s['steps'] > 1 else ''}"
        )
        self.slots["accuracy"].draw(
            accuracy_vs_sparsity(curves, "accuracy", marker_at=sparsity, title=title)
        )
        self.allocation = self._allocation(s)
        bars = layer_sparsity_bars(self.allocation, title=self._layers_title(s))
        bars.add_hline(y=sparsity, line_dash="dash", line_color="black")
        self.slots["layers"].draw(bars)
        panels = {method_label(m): self.point(m, s).categories for m in s["methods"]}
        picture = mask_figure(
            panels,
            image_shape=self.image_shape,
            title=self._masks_title(s),
            panel_size=260,
        )
        self.slots["masks"].draw(picture)

    def _allocation(self, s: dict) -> pd.DataFrame:
        rows = []
        for method in s["methods"]:
            layers = self.point(method, s).layers
            rows.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "parameter": layers["parameter"],
                        "numel": layers["numel"],
                        "pruned": layers["pruned"],
                        "layer_sparsity": layers["sparsity"],
                    }
                )
            )
        return pd.concat(rows, ignore_index=True)

    def _slide(self, s: dict) -> None:
        """Only the sparsity moved: change the data of the drawn traces in place."""
        sparsity = s["sparsity"]
        marker = marker_traces(self.curve_frame(s), ["accuracy"], sparsity)[0]
        with self.accuracy.batch_update():
            trace = self.accuracy.data[-1]
            trace.x, trace.y = marker.x, marker.y
            trace.marker.size = marker.marker.size
        self.allocation = self._allocation(s)
        with self.layers.batch_update():
            for trace, method in zip(self.layers.data, s["methods"], strict=True):
                part = self.allocation[self.allocation["method"] == method]
                trace.y = part["layer_sparsity"].to_numpy(dtype=float)
                trace.customdata = np.stack(
                    [part["pruned"].to_numpy(), part["numel"].to_numpy()], axis=1
                )
            shape = self.layers.layout.shapes[0]
            shape.y0 = shape.y1 = sparsity
            self.layers.layout.title.text = self._layers_title(s)
        panels = {method_label(m): self.point(m, s).categories for m in s["methods"]}
        traces = mask_traces(panels, image_shape=self.image_shape)
        with self.masks.batch_update():
            for trace, props in zip(self.masks.data, traces, strict=True):
                trace.z, trace.text = props["z"], props["text"]
            for annotation, props in zip(self.masks.layout.annotations, traces, strict=False):
                annotation.text = mask_panel_title(props["name"], props["meta"])
            self.masks.layout.title.text = self._masks_title(s)

    def _layers_title(self, s: dict) -> str:
        return f"Sparsity of each layer at {s['sparsity']:.0%} ({s['scope']})"

    def _masks_title(self, s: dict) -> str:
        return f"{self.picture_layer} at {s['sparsity']:.0%}: pruned, kept, compensated"

    def _draw_overlap(self, s: dict) -> list[str]:
        a, b = s["overlap"]
        notes = []
        for m in (a, b):
            if m not in s["methods"]:
                raise ImpossibleCombination(
                    f"The overlap compares {method_label(a)} with {method_label(b)}, but "
                    f"{method_label(m)} is not selected: select it in the methods list, or "
                    "choose another method for the overlap."
                )
        if a == b:
            notes.append("Both overlap methods are the same: the overlap is 1 in every layer.")
        table = mask_overlap(self.point(a, s).masks, self.point(b, s).masks)
        self.overlap_table = table
        self.slots["overlap"].draw(
            mask_overlap_bars(
                table,
                labels=(method_label(a), method_label(b)),
                title=f"Pruned by both / by either at {s['sparsity']:.0%}: "
                f"{method_label(a)} vs {method_label(b)}",
            ),
        )
        return notes

    # --- progress and messages ---------------------------------------------------------------
    def _progress_start(self, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = 0
        self.progress_box.layout.display = "flex"

    def _progress(self, text: str) -> None:
        self.progress_label.value = f'<span style="{_NOTE}">{html.escape(text)}</span>'

    def _progress_step(self) -> None:
        self.progress.value = min(self.progress.value + 1, self.progress.max)

    def _progress_end(self) -> None:
        self.progress_box.layout.display = "none"
        self.progress_label.value = ""

    def _say(self, text: str, *, error: bool = False) -> None:
        if not text:
            self.message.value = ""
            return
        style = _ERROR if error else _NOTE
        self.message.value = f'<p style="{style}">{html.escape(text)}</p>'

    def show(self) -> None:
        """Display the dashboard, then compute the current choice with a progress bar."""
        from IPython.display import display

        display(self.widget)
        if not self._done:
            self.update()

    def _ipython_display_(self) -> None:
        self.show()


def _readable(err: Exception) -> str:
    if isinstance(err, ImpossibleCombination):
        return str(err)
    return (
        f"This choice cannot be computed ({type(err).__name__}): {err} "
        "The figures still show the last choice that could be drawn."
    )


__all__ = [
    "FigureSlot",
    "ImpossibleCombination",
    "PrunedPoint",
    "PruningComparer",
    "effective_update",
]
