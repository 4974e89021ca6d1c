r"""Layer sensitivity explorer: saliency distributions and predicted against actual δL per layer.

Computed once (:meth:`LayerSensitivityExplorer.compute`, through
:func:`~wfexplore.experiments.layer_sensitivities`): for each method the saliencies
ρ_q = w_q²/(2[C⁻¹]_qq) of every weight and, for the methods with a curvature (OBD,
WoodFisher, K-FAC), each layer pruned alone at each sparsity: the loss increase the quadratic
model predicts, ½ δwᵀCδw, against the one measured. The picked layer is computed first;
while the dashboard waits, a background thread prunes the other layers alone, so that picking
another layer or "all layers" usually only redraws, as picking methods or log axes does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import traitlets
from torch import nn

from wfexplore.curvature.base import AnyCurvature
from wfexplore.experiments import QUIET, ImpossibleSetting, MethodCurvatures, layer_sensitivities
from wfexplore.experiments.common import check_methods
from wfexplore.experiments.sensitivity import NO_PREDICTION, sensitivity_steps
from wfexplore.figures.pruning import (
    method_label,
    saliency_distributions,
    saliency_frame,
    sensitivity_scatter,
)
from wfexplore.params import BlockSpec
from wfexplore.pruning import Saliency
from wfexplore.widgets.base import ComputingDashboard, FigureSlot, SaveBar, ToggleSet

DEFAULT_METHODS = ("magnitude", "obd", "woodfisher")
DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)
ALL_LAYERS = "all layers"


class SensitivityState(traitlets.HasTraits):
    """The choices of a :class:`LayerSensitivityExplorer`."""

    layer = traitlets.Unicode()
    methods = traitlets.Tuple()
    log_scale = traitlets.Bool(True)


class LayerSensitivityExplorer(ComputingDashboard):
    """Dashboard: which layers are fragile, and how well each method predicts it.

    Controls (attributes): ``layer`` (one analysed layer or "all layers"), ``methods``
    (several), ``log_scale`` (log axes). Figures (``go.FigureWidget``): ``saliency``
    (violins of the saliencies of the layer, per method) and ``scatter`` (predicted against
    actual loss increase when the layer alone is pruned at each sparsity, with y = x).
    ``table`` shows the numbers of the picked layer, ``message`` why a choice cannot be
    drawn, ``progress`` / ``progress_label`` the computation. ``saliencies`` (method →
    :class:`~wfexplore.pruning.Saliency`) and ``sensitivity`` (tidy frame with a ``method``
    column) hold the cached results. Nothing is computed until the dashboard is displayed,
    :meth:`compute` is called, or ``compute=True``; then the curvatures and saliencies of
    every method once, and each layer pruned alone when that layer is first picked ("all
    layers": every layer not computed yet), so that a large model's first figure comes
    quickly. ``sensed_layers`` holds the layers computed so far.

    Magnitude pruning has no curvature: its ½‖δw‖² is no prediction of the loss, so it is
    drawn among the saliencies only. ``update`` is the weight update of the sensitivity
    runs (default: the summed OBS update for WoodFisher and K-FAC).
    """

    CONTROLS = {
        "layer": "layer",
        "methods": "methods",
        "log": "log_scale",
    }

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
        prefetch: bool = True,
    ):
        methods = check_methods(methods)
        self.model = model
        self.eval_data = eval_data if eval_data is not None else data
        self.method_names = methods
        self.sparsity_grid = [float(s) for s in sparsities]
        self.update_rule = update
        self.study = MethodCurvatures(
            model, data, damping=damping, num_samples=num_samples, block_size=block_size,
            names=names,
        )  # fmt: skip
        self.sensitivity = pd.DataFrame()
        self.sensed_layers: set[str] = set()
        self.computations = 0
        self.last_redraw_seconds = float("nan")
        self._saliency_frame = pd.DataFrame()
        self.prefetch = prefetch
        self.prefetched = 0
        self.prefetch_error: Exception | None = None
        self._lock = threading.Lock()  # one computation at a time: the dashboard's or ahead
        self._stop_prefetch = threading.Event()
        self._prefetcher: threading.Thread | None = None

        layers = self.study.layers
        if layer is not None and layer not in (*layers, ALL_LAYERS):
            raise ValueError(f"layer {layer!r} is not analysed; choose one of {layers}")
        super().__init__(
            "wfx-sensitivity",
            SensitivityState(layer=layer or layers[0], methods=tuple(methods)),
        )
        self.layer = widgets.Dropdown(options=[*layers, ALL_LAYERS], description="layer")
        self.methods = ToggleSet([(method_label(m), m) for m in methods], value=tuple(methods))
        self.log_scale = widgets.Checkbox(description="log axes")
        traits = {"layer": "layer", "methods": "methods", "log": "log_scale"}
        self.bind(self.controls, traits, style={"description_width": "90px"})
        self.table = widgets.HTML("")
        self.table.add_class("wfx-sensitivity-table")
        self.save_bar = SaveBar(self, "layer-sensitivity.html")
        self.slots = {
            "saliency": FigureSlot(
                "wfx-sensitivity-saliency", {"height": 400, "title": "Saliencies"}
            ),
            "scatter": FigureSlot(
                "wfx-sensitivity-scatter", {"height": 420, "title": "Predicted against actual δL"}
            ),
        }
        self.widget = widgets.VBox(
            [
                widgets.HTML(_INTRO),
                widgets.HBox([self.layer, self.methods, self.log_scale]),
                self.message,
                self.progress_box,
                widgets.HBox(
                    [self.slots["saliency"].box, self.slots["scatter"].box],
                    layout={"flex_flow": "row wrap"},
                ),
                self.table,
                self.save_bar.widget,
            ]
        )
        self.widget.add_class("wfx-sensitivity")
        self.state.observe(lambda _: self.update(), names=["layer", "methods", "log_scale"])
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
    def saliencies(self) -> dict[str, Saliency]:
        """Method → saliencies of the dense model, for the methods computed so far."""
        return self.study.saliencies

    @property
    def curvatures(self) -> dict[str, AnyCurvature]:
        """Method → curvature of the dense model, for the methods computed so far."""
        return self.study.curvatures

    @property
    def setting(self) -> dict:
        s = self.state
        return {"layer": s.layer, "methods": list(s.methods), "log_scale": bool(s.log_scale)}

    @property
    def computed(self) -> bool:
        """Whether the picked layer (every layer for "all layers") is computed."""
        return set(self.saliencies) == set(self.method_names) and not self._missing_layers()

    def _missing_layers(self) -> list[str]:
        picked = self.state.layer
        wanted = self.study.layers if picked == ALL_LAYERS else [picked]
        return [layer for layer in wanted if layer not in self.sensed_layers]

    # --- computing --------------------------------------------------------------------------
    def compute(self) -> None:
        """Saliencies of every method (once), and each layer pruned alone for the picked
        layer (every layer for "all layers") where not computed yet."""
        if not self._todo() and not self._missing_layers():
            return
        with self._lock:  # waits for a layer being computed ahead
            todo, layers = self._todo(), self._missing_layers()
            if not todo and not layers:
                return
            methods = list(self.method_names) if layers else todo
            with self.working(sensitivity_steps(methods)):
                self._sense(methods, layers, reporter=self)

    def _todo(self) -> list[str]:
        return [m for m in self.method_names if m not in self.saliencies]

    def _sense(self, methods: list[str], layers: list[str], reporter=QUIET) -> None:
        """Saliencies of ``methods`` and ``layers`` (empty: every layer) pruned alone, added to
        what is shown (the caller holds the lock)."""
        todo = self._todo()
        result = layer_sensitivities(
            self.study,
            methods,
            self.eval_data,
            sparsities=self.sparsity_grid,
            update=self.update_rule,
            layers=layers or None,
            reporter=reporter,
        )
        self.computations += len(todo)
        frames = [f for f in (self.sensitivity, result.sensitivity) if len(f)]
        if frames:
            self.sensitivity = pd.concat(frames, ignore_index=True)
        self.sensed_layers.update(layers or self.study.layers)
        if todo:
            frame = saliency_frame(self.saliencies)
            self._saliency_frame = frame.assign(method=frame["method"].map(method_label))

    # --- computing ahead --------------------------------------------------------------------
    def _start_prefetch(self) -> None:
        ahead = [layer for layer in self.study.layers if layer not in self.sensed_layers]
        if not self.prefetch or not ahead or self._todo():
            return
        self._stop_prefetch = threading.Event()  # a thread still running ends after its layer
        self._prefetcher = threading.Thread(
            target=self._prefetch, args=(ahead, self._stop_prefetch), daemon=True
        )
        self._prefetcher.start()

    def _prefetch(self, layers: list[str], stop: threading.Event) -> None:
        for layer in layers:
            with self._lock:
                if stop.is_set():
                    return
                if layer in self.sensed_layers:
                    continue
                try:
                    self._sense(list(self.method_names), [layer])
                except Exception as err:  # noqa: BLE001 - the dashboard computes it when picked
                    self.prefetch_error = err
                    return
                self.prefetched += 1

    def update(self) -> None:
        """Compute once if needed, then redraw; impossible choices become a message. Then the
        layers not computed yet are computed ahead in the background."""
        self._stop_prefetch.set()
        try:
            if not self.setting["methods"]:
                raise ImpossibleSetting(
                    "No method is selected: press at least one of the method buttons. "
                    "The figures still show the last choice that could be drawn."
                )
            self.compute()
            start = time.perf_counter()
            notes = self._redraw()
            self.last_redraw_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - shown to the person, never a traceback
            self.fail(err)
            return
        self.say(" ".join(notes))
        self._start_prefetch()

    def _shown(self) -> None:
        self.update()

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
        violins = saliency_distributions(
            self._saliency_frame,
            layers=layers,
            methods=[method_label(m) for m in s["methods"]],
            log=s["log_scale"],
            title=f"Saliencies of {s['layer']}",
        )
        self.slots["saliency"].draw(violins)
        rows = self.layer_rows(s)
        if s["methods"] and set(s["methods"]) <= set(NO_PREDICTION):
            notes.append(
                "Magnitude pruning has no curvature, so it predicts no loss increase: choose "
                "OBD or WoodFisher for the scatter."
            )
        elif any(m in NO_PREDICTION for m in s["methods"]):
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

    def layer_summary(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One row per layer: for each method, the measured δL at the largest sparsity and the
        median of predicted / actual δL over the sparsities (1 = the quadratic model is right)."""
        top = rows["sparsity"].max()
        out = pd.DataFrame(index=pd.Index(list(dict.fromkeys(rows["parameter"])), name="layer"))
        for method, part in rows.groupby("method", sort=False):
            label = method_label(method)
            at_top = part[part["sparsity"] == top].set_index("parameter")["actual_delta_loss"]
            ratio = (part["predicted_delta_loss"] / part["actual_delta_loss"]).groupby(
                part["parameter"]
            )
            out[f"{label}: δL at {top:.0%}"] = at_top
            out[f"{label}: predicted / actual (median)"] = ratio.median()
        return out.reset_index()

    def _table_html(self, rows: pd.DataFrame) -> str:
        if not len(rows):
            return ""
        if self.setting["layer"] == ALL_LAYERS:
            summary = self.layer_summary(rows)
            return (
                "<p><b>All layers, each pruned alone</b> (one row per layer; pick a layer "
                "for every sparsity)</p>"
                + summary.to_html(
                    index=False,
                    border=0,
                    classes="wfx-sensitivity-numbers wfx-sensitivity-summary",
                    float_format=lambda v: f"{v:.3g}",
                    na_rep="–",
                )
            )
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

    def saved(self) -> tuple[str, dict[str, go.Figure], dict]:
        s = self.setting
        rows = self.layer_rows(s)
        table = self.layer_summary(rows) if s["layer"] == ALL_LAYERS and len(rows) else rows
        return (
            f"Per-layer sensitivity: {s['layer']}",
            {
                "Saliencies": go.Figure(self.saliency),
                "Predicted against actual δL": go.Figure(self.scatter),
            },
            {"Each layer pruned alone": table} if len(table) else {},
        )


_INTRO = (
    "<b>Per-layer sensitivity.</b> Left: the saliency ρ = w²/(2[C⁻¹]_qq) of every "
    "weight of the layer — the loss increase each method predicts for removing that "
    "weight alone. Right: the layer pruned alone to each sparsity; the quadratic "
    "model's prediction ½ δwᵀCδw against the loss increase measured. Points above "
    "the dashed line are worse than predicted."
)

__all__ = ["ALL_LAYERS", "LayerSensitivityExplorer", "SensitivityState"]
