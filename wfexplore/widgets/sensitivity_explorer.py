r"""Layer sensitivity explorer: saliency distributions and predicted against actual δL per layer.

Computed once (:meth:`LayerSensitivityExplorer.compute`): for each method the curvature of
the dense model (:func:`~wfexplore.pruning.estimate_curvature`), the saliencies
ρ_q = w_q²/(2[C⁻¹]_qq) of every weight (:func:`~wfexplore.pruning.compute_saliency`) and,
for the methods with a curvature (OBD, WoodFisher, K-FAC), each layer pruned alone at each
sparsity (:func:`~wfexplore.pruning.layer_sensitivity`): the loss increase the quadratic
model predicts, ½ δwᵀCδw, against the one measured. Picking a layer or methods only redraws.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
from torch import nn

from wfexplore.curvature.base import Curvature
from wfexplore.figures.pruning import (
    method_label,
    saliency_distributions,
    saliency_frame,
    sensitivity_scatter,
)
from wfexplore.params import BlockSpec
from wfexplore.pruning import (
    METHODS,
    PruningSettings,
    Saliency,
    compute_saliency,
    estimate_curvature,
    layer_sensitivity,
)
from wfexplore.pruning.estimation import take_examples
from wfexplore.widgets.pruning_comparer import FigureSlot, ImpossibleCombination, _readable

DEFAULT_METHODS = ("magnitude", "obd", "woodfisher")
DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
ALL_LAYERS = "all layers"
_NO_PREDICTION = ("magnitude",)

_NOTE = "color:#555;margin:2px 0"
_ERROR = "color:#b00020;font-weight:bold;margin:2px 0"


class LayerSensitivityExplorer:
    """Dashboard: which layers are fragile, and how well each method predicts it.

    Controls (attributes): ``layer`` (one analysed layer or "all layers"), ``methods``
    (several), ``log_scale`` (log axes). Figures (``go.FigureWidget``): ``saliency``
    (violins of the saliencies of the layer, per method) and ``scatter`` (predicted against
    actual loss increase when the layer alone is pruned at each sparsity, with y = x).
    ``table`` shows the numbers of the picked layer, ``message`` why a choice cannot be
    drawn, ``progress`` / ``progress_label`` the computation. ``saliencies`` (method →
    :class:`~wfexplore.pruning.Saliency`) and ``sensitivity`` (tidy frame with a ``method``
    column) hold the cached results. Nothing is computed until the dashboard is displayed,
    :meth:`compute` is called, or ``compute=True``.

    Magnitude pruning has no curvature: its ½‖δw‖² is no prediction of the loss, so it is
    drawn among the saliencies only. ``update`` is the weight update of the sensitivity
    runs (default: the summed OBS update for WoodFisher and K-FAC).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        eval_data: Iterable | None = None,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        sparsities: Sequence[float] = DEFAULT_SPARSITIES,
        damping: float = 1e-4,
        num_samples: int = 256,
        block_size: BlockSpec = 64,
        update: str | None = None,
        names: Sequence[str] | None = None,
        layer: str | None = None,
        compute: bool = False,
    ):
        methods = list(dict.fromkeys(methods))
        if not methods:
            raise ValueError("methods: give at least one pruning method")
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"methods: {m!r} is not one of {list(METHODS)}")
        self.model = model
        self.data = data
        self.eval_data = eval_data if eval_data is not None else data
        self.method_names = methods
        self.sparsity_grid = [float(s) for s in sparsities]
        self.damping = damping
        self.num_samples = num_samples
        self.block_size = block_size
        self.update_rule = update
        self.names = list(names) if names is not None else None
        self.saliencies: dict[str, Saliency] = {}
        self.curvatures: dict[str, Curvature] = {}
        self.sensitivity = pd.DataFrame()
        self.computations = 0
        self.last_redraw_seconds = float("nan")
        self._saliency_frame = pd.DataFrame()

        layers = PruningSettings("magnitude").layout(model, self.names).names
        if layer is not None and layer not in (*layers, ALL_LAYERS):
            raise ValueError(f"layer {layer!r} is not analysed; choose one of {layers}")
        style = {"description_width": "90px"}
        self.layer = widgets.Dropdown(
            options=[*layers, ALL_LAYERS], value=layer or layers[0], description="layer"
        )
        self.methods = widgets.SelectMultiple(
            options=[(method_label(m), m) for m in methods],
            value=tuple(methods),
            rows=len(methods),
            description="methods",
        )
        self.log_scale = widgets.Checkbox(value=True, description="log axes")
        for name, control in self.controls.items():
            control.style = style
            control.add_class("wfx-sensitivity-control")
            control.add_class(f"wfx-sensitivity-{name}")

        self.message = widgets.HTML("")
        self.message.add_class("wfx-sensitivity-message")
        self.progress = widgets.IntProgress(value=0, min=0, max=1)
        self.progress.add_class("wfx-sensitivity-progress")
        self.progress_label = widgets.HTML("")
        self.progress_box = widgets.HBox([self.progress, self.progress_label])
        self.progress_box.layout.display = "none"
        self.table = widgets.HTML("")
        self.table.add_class("wfx-sensitivity-table")
        self.slots = {
            "saliency": FigureSlot(
                "wfx-sensitivity-saliency", {"height": 400, "title": "Saliencies"}
            ),
            "scatter": FigureSlot(
                "wfx-sensitivity-scatter", {"height": 420, "title": "Predicted against actual δL"}
            ),
        }

        intro = widgets.HTML(
            "<b>Per-layer sensitivity.</b> Left: the saliency ρ = w²/(2[C⁻¹]_qq) of every "
            "weight of the layer — the loss increase each method predicts for removing that "
            "weight alone. Right: the layer pruned alone to each sparsity; the quadratic "
            "model's prediction ½ δwᵀCδw against the loss increase measured. Points above "
            "the dashed line are worse than predicted."
        )
        self.widget = widgets.VBox(
            [
                intro,
                widgets.HBox([self.layer, self.methods, self.log_scale]),
                self.message,
                self.progress_box,
                widgets.HBox(
                    [self.slots["saliency"].box, self.slots["scatter"].box],
                    layout={"flex_flow": "row wrap"},
                ),
                self.table,
            ]
        )
        self.widget.add_class("wfx-sensitivity")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        if compute:
            self.update()

    @property
    def saliency(self) -> go.FigureWidget:
        """Violins of the saliencies of the picked layer(s), one per method."""
        return self.slots["saliency"].figure

    @property
    def scatter(self) -> go.FigureWidget:
        """Predicted against actual loss increase of the picked layer(s), with y = x."""
        return self.slots["scatter"].figure

    @property
    def controls(self) -> dict[str, widgets.ValueWidget]:
        return {"layer": self.layer, "methods": self.methods, "log": self.log_scale}

    @property
    def setting(self) -> dict:
        return {
            "layer": self.layer.value,
            "methods": list(self.methods.value),
            "log_scale": bool(self.log_scale.value),
        }

    @property
    def computed(self) -> bool:
        return set(self.saliencies) == set(self.method_names)

    def _on_change(self, change: dict) -> None:
        self.update()

    # --- computing --------------------------------------------------------------------------
    def compute(self) -> None:
        """Curvatures, saliencies and per-layer sensitivity of every method, once."""
        todo = [m for m in self.method_names if m not in self.saliencies]
        if not todo:
            return
        layers = len(self.layer.options) - 1
        predicting = [m for m in todo if m not in _NO_PREDICTION]
        self.progress.max = len(todo) + len(predicting)
        self.progress.value = 0
        self.progress_box.layout.display = "flex"
        frames = [self.sensitivity] if len(self.sensitivity) else []
        try:
            for method in todo:
                settings = PruningSettings(
                    method,
                    damping=self.damping,
                    num_samples=self.num_samples,
                    block_size=self.block_size,
                )
                self._progress(f"Estimating the curvature of {method_label(method)}…")
                examples = (
                    take_examples(self.data, settings.examples_needed)
                    if settings.needs_data
                    else None
                )
                curvature = estimate_curvature(
                    self.model, examples, settings.layout(self.model, self.names), settings
                )
                self.curvatures[method] = curvature
                self.saliencies[method] = compute_saliency(self.model, curvature)
                self._step()
                if method in predicting:
                    self._progress(
                        f"Pruning each of the {layers} layers alone with {method_label(method)} "
                        f"at {len(self.sparsity_grid)} sparsities…"
                    )
                    update = self.update_rule
                    if method in ("magnitude", "obd"):
                        update = None
                    table = layer_sensitivity(
                        self.model,
                        curvature,
                        eval_data=self.eval_data,
                        sparsities=self.sparsity_grid,
                        update=update,
                        progress=False,
                    )
                    table.insert(0, "method", method)
                    frames.append(table)
                    self._step()
                self.computations += 1
        finally:
            self.progress_box.layout.display = "none"
            self.progress_label.value = ""
            if frames:
                self.sensitivity = pd.concat(frames, ignore_index=True)
            if self.saliencies:
                self._saliency_frame = saliency_frame(self.saliencies)

    def update(self) -> None:
        """Compute once if needed, then redraw; impossible choices become a message."""
        try:
            if not self.setting["methods"]:
                raise ImpossibleCombination(
                    "No method is selected: choose at least one (Ctrl/Shift-click for several). "
                    "The figures still show the last choice that could be drawn."
                )
            self.compute()
            start = time.perf_counter()
            notes = self._redraw()
            self.last_redraw_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - shown to the person, never a traceback
            self._say(_readable(err), error=True)
            return
        self._say(" ".join(notes))

    # --- drawing ----------------------------------------------------------------------------
    def layer_rows(self, setting: dict | None = None) -> pd.DataFrame:
        """The sensitivity rows drawn in the scatter for ``setting`` (default: current)."""
        s = setting or self.setting
        frame = self.sensitivity
        if not len(frame):
            return frame
        part = frame[frame["method"].isin(s["methods"])]
        if s["layer"] != ALL_LAYERS:
            part = part[part["parameter"] == s["layer"]]
        return part

    def _redraw(self) -> list[str]:
        s = self.setting
        notes = []
        layers = None if s["layer"] == ALL_LAYERS else [s["layer"]]
        frame = self._saliency_frame.copy()
        frame["method"] = frame["method"].map(method_label)
        violins = saliency_distributions(
            frame,
            layers=layers,
            methods=[method_label(m) for m in s["methods"]],
            log=s["log_scale"],
            title=f"Saliencies of {s['layer']}",
        )
        self.slots["saliency"].draw(violins)
        rows = self.layer_rows(s)
        if s["methods"] and set(s["methods"]) <= set(_NO_PREDICTION):
            notes.append(
                "Magnitude pruning has no curvature, so it predicts no loss increase: choose "
                "OBD or WoodFisher for the scatter."
            )
        elif any(m in _NO_PREDICTION for m in s["methods"]):
            notes.append("Magnitude has no loss prediction and is left out of the scatter.")
        if len(rows):
            labelled = rows.assign(method=rows["method"].map(method_label))
            many = s["layer"] == ALL_LAYERS
            scatter = sensitivity_scatter(
                labelled,
                color="parameter" if many else "method",
                symbol="method" if many else None,
                log=s["log_scale"],
                title=f"{s['layer']} pruned alone: predicted against actual δL",
            )
        else:
            scatter = go.Figure(layout={"title": "No loss prediction to draw", "height": 420})
        self.slots["scatter"].draw(scatter)
        self.table.value = self._table_html(rows)
        return notes

    def _table_html(self, rows: pd.DataFrame) -> str:
        if not len(rows):
            return ""
        columns = [
            "method",
            "parameter",
            "sparsity",
            "pruned",
            "predicted_delta_loss",
            "actual_delta_loss",
            "accuracy",
        ]
        shown = rows[columns].assign(method=rows["method"].map(method_label))
        return shown.to_html(
            index=False,
            border=0,
            classes="wfx-sensitivity-numbers",
            float_format=lambda v: f"{v:.4g}",
        )

    def _progress(self, text: str) -> None:
        self.progress_label.value = f'<span style="{_NOTE}">{html.escape(text)}</span>'

    def _step(self) -> None:
        self.progress.value = min(self.progress.value + 1, self.progress.max)

    def _say(self, text: str, *, error: bool = False) -> None:
        if not text:
            self.message.value = ""
            return
        style = _ERROR if error else _NOTE
        self.message.value = f'<p style="{style}">{html.escape(text)}</p>'

    def show(self) -> None:
        """Display the dashboard, then compute (once) with a progress bar and draw."""
        from IPython.display import display

        display(self.widget)
        self.update()

    def _ipython_display_(self) -> None:
        self.show()


__all__ = ["ALL_LAYERS", "LayerSensitivityExplorer"]
