r"""Pruning comparer: methods, protocol, scope, update and steps, with a sparsity slider over
cached sweeps.

For each (method, protocol, scope, update, steps) the comparer runs one sweep over all its
sparsities (:func:`~wfexplore.experiments.sweep_points` for one-shot pruning,
:func:`~wfexplore.experiments.protocol_points` for one-shot + fine-tune and gradual pruning
with training: accuracy, loss and the masks of every point, cached on disk), so nothing is
pruned twice. Choosing a setting not computed yet computes it, with a progress bar; moving the
sparsity slider only redraws from the cache. While the dashboard waits, a background thread
computes the one-shot settings one click away (each other update, scope and number of steps),
so that the next choice is usually drawn at once.

Shown: the accuracy curves with a marker at the slider, the sparsity of each layer, the
masks of one layer as pictures (pruned, kept, compensated by the OBS update) and the
Jaccard overlap of two methods' pruned sets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import traitlets
from torch import nn

from wfexplore.experiments import (
    ImpossibleSetting,
    PrunedPoint,
    allocation_frame,
    effective_update,
    point_key,
    protocol_label,
    protocol_points,
    sweep_points,
)
from wfexplore.experiments.common import check_methods, picture_defaults
from wfexplore.figures.pruning import (
    accuracy_vs_sparsity,
    layer_sparsity_bars,
    marker_traces,
    mask_figure,
    mask_overlap_bars,
    mask_panel_title,
    mask_panels,
    mask_traces,
    method_label,
)
from wfexplore.params import BlockSpec
from wfexplore.pruning import PROTOCOLS, SCOPES, UPDATES, TrainingSettings, mask_overlap
from wfexplore.widgets.base import ComputingDashboard, FigureSlot, SaveBar, ToggleSet

DEFAULT_METHODS = ("magnitude", "obd", "woodfisher")
DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEFAULT_STEPS = (1, 2, 4)
_CURVE_COLUMNS = ("method", "protocol", "scope", "update", "steps")


class ComparerState(traitlets.HasTraits):
    """The choices of a :class:`PruningComparer`."""

    methods = traitlets.Tuple()
    protocol = traitlets.Unicode("one_shot")
    scope = traitlets.Unicode("global")
    update = traitlets.Unicode("summed")
    steps = traitlets.Int(1)
    sparsity = traitlets.Float()
    overlap_a = traitlets.Unicode()
    overlap_b = traitlets.Unicode()


def _check_protocols(protocols, protocol, train_data) -> list[str]:
    if protocols is None:
        protocols = PROTOCOLS if train_data is not None else ("one_shot",)
    protocols = list(dict.fromkeys(protocols))
    for p in (*protocols, protocol):
        if p not in PROTOCOLS:
            raise ValueError(f"protocols: {p!r} is not one of {list(PROTOCOLS)}")
    if protocol not in protocols:
        raise ValueError(f"protocol {protocol!r} is not among protocols={protocols}")
    if train_data is None and any(p != "one_shot" for p in protocols):
        raise ValueError(
            f"protocols={protocols} train the pruned model: give train_data= (a shuffling "
            "loader of training examples), or protocols=('one_shot',)"
        )
    return protocols


def _check_grid(sparsities, scope, update, steps, steps_options) -> tuple[list, list]:
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
    return sparsities, steps_options


class PruningComparer(ComputingDashboard):
    """Dashboard comparing pruning methods, protocols, scopes, updates and recomputation steps.

    Controls (attributes): ``methods`` (toggle buttons, several), ``protocol`` (shown when
    ``protocols`` holds more than one), ``scope``, ``update_choice``, ``steps`` (one-shot
    only), ``sparsity`` (a slider over the swept sparsities), ``overlap_a`` / ``overlap_b``
    (the two methods whose masks are compared); their values live in ``state``. Figures
    (``go.FigureWidget``): ``accuracy``, ``layers`` (per-layer sparsity), ``masks``
    (pictures of ``picture_layer``), ``overlap`` (Jaccard per layer). ``message`` says why a
    choice cannot be drawn; ``progress`` and ``progress_label`` show long computations.
    ``frame`` holds every sweep row computed so far and ``points`` their masks; ``widget``
    is the container to display. Nothing is computed until the dashboard is displayed,
    :meth:`update` is called, or ``compute=True``.

    OBD, WoodFisher and K-FAC use the empirical Fisher of ``num_samples`` gradients of the
    first examples of ``data`` (give a loader with a fixed order) with damping ``damping``;
    WoodFisher uses blocks of ``block_size``. Accuracy and loss are measured on
    ``eval_data`` (default ``data``). ``cache`` is the sweep's on-disk cache (True: the
    default folder, a folder, or False).

    ``protocols`` (default: all three when ``train_data`` is given, else one-shot only):
    ``"one_shot_finetune"`` prunes once, then trains ``epochs`` epochs on ``train_data``;
    ``"gradual"`` trains as long, pruning every ``prune_every`` epochs in ``gradual_steps``
    steps (default: as many as fit); ``training`` is the optimizer and its seed
    (:class:`~wfexplore.pruning.TrainingSettings`). Their points are those of
    :func:`~wfexplore.experiments.protocol_sweep` with the same settings, read from its cache.
    ``save_bar`` writes the current figures and tables to an HTML file. With ``prefetch``
    a background thread computes the one-shot settings one click away from the drawn one
    (:meth:`wait_for_prefetch` waits for it; ``prefetched`` counts its sweeps).
    """

    CONTROLS = {
        "methods": "methods",
        "protocol": "protocol",
        "scope": "scope",
        "update": "update_choice",
        "steps": "steps",
        "sparsity": "sparsity",
        "overlap-a": "overlap_a",
        "overlap-b": "overlap_b",
    }

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
        train_data: Iterable | None = None,
        protocols: Sequence[str] | None = None,
        protocol: str = "one_shot",
        epochs: int = 3,
        prune_every: int = 1,
        gradual_steps: int | None = None,
        training: TrainingSettings | None = None,
        prefetch: bool = True,
        compute: bool = False,
    ):
        methods = check_methods(methods)
        sparsities, steps_options = _check_grid(sparsities, scope, update, steps, steps_options)
        protocols = _check_protocols(protocols, protocol, train_data)
        self.model = model
        self.data = data
        self.eval_data = eval_data if eval_data is not None else data
        self.train_data = train_data
        self.curvature_settings = {
            "damping": damping,
            "num_samples": num_samples,
            "block_size": block_size,
        }
        self.training_plan = {
            "epochs": epochs,
            "prune_every": prune_every,
            "steps": gradual_steps,
            "training": training or TrainingSettings(),
        }
        self.cache = cache
        self.frame = pd.DataFrame()
        self.allocation = pd.DataFrame()
        self.overlap_table = pd.DataFrame()
        self.points: dict[tuple, PrunedPoint] = {}
        self.sweep_calls = 0
        self.prefetch = prefetch
        self.prefetched = 0
        self.prefetch_error: Exception | None = None
        self._lock = threading.Lock()  # one sweep at a time: the dashboard's or the prefetch's
        self._stop_prefetch = threading.Event()
        self._prefetcher: threading.Thread | None = None
        self._steps_options = steps_options
        self.last_redraw_seconds = float("nan")
        self._drawn: tuple | None = None
        self.picture_layer, self.image_shape = picture_defaults(model, picture_layer, image_shape)

        selected = list(selected) if selected is not None else methods
        first = selected[0] if selected else methods[0]
        if sparsity is None:
            sparsity = sparsities[len(sparsities) // 2]
        super().__init__(
            "wfx-comparer",
            ComparerState(
                methods=tuple(selected),
                protocol=protocol,
                scope=scope,
                update=update,
                steps=steps,
                sparsity=min(sparsities, key=lambda s: abs(s - sparsity)),
                overlap_a=first,
                overlap_b=next((m for m in selected if m != first), first),
            ),
        )
        self._build_controls(methods, protocols, sparsities, steps_options)
        self.save_bar = SaveBar(self, "pruning-comparison.html")
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
        self.widget = widgets.VBox(
            [
                widgets.HTML(_INTRO),
                self.methods,
                self.protocol,
                widgets.HBox([self.scope, self.update_choice]),
                widgets.HBox([self.steps, self.sparsity]),
                self.message,
                self.progress_box,
                self.slots["accuracy"].box,
                self.slots["layers"].box,
                self.slots["masks"].box,
                widgets.HBox([self.overlap_a, self.overlap_b]),
                self.slots["overlap"].box,
                self.save_bar.widget,
            ]
        )
        self.widget.add_class("wfx-comparer")
        self.state.observe(
            lambda _: self.update(), names=["methods", "protocol", "scope", "update", "steps"]
        )
        self.state.observe(lambda _: self.redraw(), names="sparsity")
        self.state.observe(
            lambda _: self.redraw(only_overlap=True), names=["overlap_a", "overlap_b"]
        )
        if compute:
            self.update()

    def _build_controls(self, methods, protocols, sparsities, steps_options) -> None:
        options = [(method_label(m), m) for m in methods]
        self.methods = ToggleSet(options, value=self.state.methods)
        self.protocol = widgets.ToggleButtons(
            options=[(protocol_label(p), p) for p in protocols], description="protocol"
        )
        if len(protocols) < 2:
            self.protocol.layout.display = "none"
        self.scope = widgets.ToggleButtons(
            options=[("global", "global"), ("layerwise", "layerwise")], description="scope"
        )
        self.update_choice = widgets.ToggleButtons(
            options=[("none", "none"), ("summed OBS", "summed"), ("group OBS", "group")],
            description="update",
        )
        self.steps = widgets.Dropdown(options=steps_options, description="steps")
        self.sparsity = widgets.SelectionSlider(
            options=[(f"{s:.0%}", s) for s in sparsities],
            description="sparsity",
            continuous_update=False,
            layout=widgets.Layout(width="420px"),
        )
        self.overlap_a = widgets.Dropdown(options=options, description="overlap of")
        self.overlap_b = widgets.Dropdown(options=options, description="and")
        traits = {"update": "update", "overlap-a": "overlap_a", "overlap-b": "overlap_b"}
        traits |= {name: name for name in ("methods", "protocol", "scope", "steps", "sparsity")}
        self.bind(self.controls, traits, style={"description_width": "110px"})

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
    def setting(self) -> dict:
        s = self.state
        return {
            "methods": list(s.methods),
            "protocol": s.protocol,
            "scope": s.scope,
            "update": s.update,
            "steps": int(s.steps),
            "sparsity": float(s.sparsity),
            "overlap": (s.overlap_a, s.overlap_b),
        }

    @property
    def sparsities(self) -> list[float]:
        return [value for _, value in self.sparsity.options]

    def point(self, method: str, setting: dict | None = None) -> PrunedPoint:
        """The masks of ``method`` under ``setting`` (default: the current one)."""
        s = setting or self.setting
        return self.points[_key(method, s, s["sparsity"])]

    def computed(self, method: str, setting: dict | None = None) -> bool:
        """Whether every sparsity of ``method`` under ``setting`` is computed."""
        s = setting or self.setting
        return all(_key(method, s, sparsity) in self.points for sparsity in self.sparsities)

    def curve_frame(self, setting: dict | None = None) -> pd.DataFrame:
        """The sweep rows drawn for ``setting`` (default: the current one)."""
        s = setting or self.setting
        if not len(self.frame):
            return self.frame
        keep = np.zeros(len(self.frame), dtype=bool)
        for method in s["methods"]:
            wanted = (
                method, s["protocol"], s["scope"], effective_update(method, s["update"]),
                s["steps"],
            )  # fmt: skip
            match = np.ones(len(self.frame), dtype=bool)
            for column, value in zip(_CURVE_COLUMNS, wanted, strict=True):
                if column != "steps" or s["protocol"] == "one_shot":
                    match &= (self.frame[column] == value).to_numpy()
            keep |= match
        return self.frame[keep].sort_values(["method", "sparsity"], kind="stable")

    # --- computing --------------------------------------------------------------------------
    def update(self) -> None:
        """Compute whatever the current choice lacks (with a progress bar), then redraw.

        An impossible choice, or a failure of the computation, is shown in ``message``; the
        figures keep what they showed.
        """
        self._stop_prefetch.set()
        try:
            self._check(self.setting)
            self._compute_missing(self.setting)
        except Exception as err:  # noqa: BLE001 - shown to the person, never a traceback
            self.fail(err)
            return
        self.redraw()
        self._start_prefetch(self.setting)

    def compute(self) -> None:
        """Compute the current choice (what displaying the dashboard does)."""
        self.update()

    def _shown(self) -> None:
        if not self.points:
            self.update()

    def _check(self, s: dict) -> None:
        if not s["methods"]:
            raise ImpossibleSetting(
                "No method is selected: press at least one method button. The figures still "
                "show the last choice that could be drawn."
            )

    def _missing(self, s: dict) -> list[str]:
        return [m for m in s["methods"] if not self.computed(m, s)]

    def _compute_missing(self, s: dict) -> None:
        if not self._missing(s):
            return
        with self.working(1), self._lock:  # waits for a prefetch sweep under way
            missing = self._missing(s)
            if not missing:
                return
            self.note(
                f"{protocol_label(s['protocol']).capitalize()} pruning of "
                f"{', '.join(method_label(m) for m in missing)} at "
                f"{len(self.sparsities)} sparsities ({_describe(s, self.training_plan)})…"
            )
            self._sweep(s, missing)
            self.sweep_calls += 1
            self.step()

    def _sweep(self, s: dict, methods: list[str]) -> None:
        """Sweep ``methods`` under setting ``s`` over every sparsity; keep rows and masks."""
        common = {
            "methods": methods,
            "sparsities": self.sparsities,
            "scope": s["scope"],
            "update": s["update"],
            "cache": self.cache,
            **self.curvature_settings,
        }
        if s["protocol"] == "one_shot":
            frame, points = sweep_points(
                self.model, self.data, self.eval_data, steps=s["steps"], **common
            )
        else:
            frame, points = protocol_points(
                self.model, self.train_data, self.eval_data, protocol=s["protocol"],
                data=self.data, **common, **self.training_plan,
            )  # fmt: skip
        self._add_rows(frame)
        self.points.update(points)

    # --- computing ahead --------------------------------------------------------------------
    def neighbours(self, s: dict | None = None) -> list[dict]:
        """The one-shot settings one control change away from ``s`` (default: the current
        one): each other update, the other scope, each other number of steps."""
        s = s or self.setting
        if s["protocol"] != "one_shot":
            return []
        changes = [("update", u) for u in UPDATES if u != s["update"]]
        changes += [("scope", c) for c in SCOPES if c != s["scope"]]
        changes += [("steps", k) for k in self._steps_options if k != s["steps"]]
        return [{**s, key: value} for key, value in changes]

    def _start_prefetch(self, s: dict) -> None:
        if not self.prefetch or not any(self._missing(n) for n in self.neighbours(s)):
            return
        self._stop_prefetch = threading.Event()  # a thread still running ends after its sweep
        self._prefetcher = threading.Thread(
            target=self._prefetch, args=(self.neighbours(s), self._stop_prefetch), daemon=True
        )
        self._prefetcher.start()

    def _prefetch(self, settings: list[dict], stop: threading.Event) -> None:
        for s in itertools.takewhile(lambda _: not stop.is_set(), settings):
            with self._lock:
                missing = self._missing(s)
                if stop.is_set() or not missing:
                    continue
                try:
                    self._sweep(s, missing)
                except Exception as err:  # noqa: BLE001 - the dashboard computes it when chosen
                    self.prefetch_error = err
                    return
                self.prefetched += 1

    def _add_rows(self, frame: pd.DataFrame) -> None:
        if not len(self.frame):
            self.frame = frame.reset_index(drop=True)
            return
        keys = [*_CURVE_COLUMNS, "sparsity"]
        combined = pd.concat([self.frame, frame], ignore_index=True)
        self.frame = combined.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)

    # --- drawing ----------------------------------------------------------------------------
    def redraw(self, *, only_overlap: bool = False) -> None:
        """Draw the current choice from the cache (nothing is computed here)."""
        s = self.setting
        try:
            self._check(s)
            if not all(self.computed(m, s) for m in s["methods"]):
                raise ImpossibleSetting(
                    "This choice is not computed yet; it is computed when the methods, scope, "
                    "update or steps change (or call update())."
                )
            start = time.perf_counter()
            drawn = (tuple(s["methods"]), s["protocol"], s["scope"], s["update"], s["steps"])
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
            self.fail(err)
            return
        self.say(" ".join(notes))

    def _points(self, s: dict) -> dict[str, PrunedPoint]:
        return {m: self.point(m, s) for m in s["methods"]}

    def _draw_main(self, s: dict) -> None:
        sparsity = s["sparsity"]
        self.steps.disabled = s["protocol"] != "one_shot"
        title = f"Accuracy after {protocol_label(s['protocol'])} pruning: " + _describe(
            s, self.training_plan
        )
        self.slots["accuracy"].draw(
            accuracy_vs_sparsity(self.curve_frame(s), "accuracy", marker_at=sparsity, title=title)
        )
        self.allocation = self._allocation(s)
        bars = layer_sparsity_bars(self.allocation, title=self._layers_title(s))
        bars.add_hline(y=sparsity, line_dash="dash", line_color="black")
        self.slots["layers"].draw(bars)
        picture = mask_figure(
            mask_panels(self._points(s), self.picture_layer),
            image_shape=self.image_shape,
            title=self._masks_title(s),
            panel_size=260,
        )
        self.slots["masks"].draw(picture)

    def _allocation(self, s: dict) -> pd.DataFrame:
        frame = allocation_frame(self._points(s))
        return frame[["method", "parameter", "numel", "pruned", "layer_sparsity"]]

    def _slide(self, s: dict) -> None:
        """Only the sparsity moved: change the data of the drawn traces in place."""
        marker = marker_traces(self.curve_frame(s), ["accuracy"], s["sparsity"])[0]
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
            shape.y0 = shape.y1 = s["sparsity"]
            self.layers.layout.title.text = self._layers_title(s)
        traces = mask_traces(
            mask_panels(self._points(s), self.picture_layer), image_shape=self.image_shape
        )
        with self.masks.batch_update():
            for trace, props in zip(self.masks.data, traces, strict=True):
                trace.z, trace.text = props["z"], props["text"]
            for annotation, props in zip(self.masks.layout.annotations, traces, strict=False):
                annotation.text = mask_panel_title(props["name"], props["meta"])
            self.masks.layout.title.text = self._masks_title(s)

    def saved(self) -> tuple[str, dict[str, go.Figure], dict]:
        s = self.setting
        drawn = {
            self.slots[name].figure.layout.title.text or name: go.Figure(self.slots[name].figure)
            for name in ("accuracy", "layers", "masks", "overlap")
        }
        tables = {}
        if self.computed_all(s):
            tables["Accuracy and loss at every sparsity"] = self.curve_frame(s)
            tables[f"Per-layer sparsity at {s['sparsity']:.0%}"] = self._allocation(s)
        return f"Pruning comparison: {_describe(s, self.training_plan)}", drawn, tables

    def computed_all(self, setting: dict | None = None) -> bool:
        """Whether every selected method of ``setting`` (default: the current one) is drawn
        from computed points."""
        s = setting or self.setting
        return bool(s["methods"]) and all(self.computed(m, s) for m in s["methods"])

    def _layers_title(self, s: dict) -> str:
        return f"Sparsity of each layer at {s['sparsity']:.0%} ({s['scope']})"

    def _masks_title(self, s: dict) -> str:
        return f"{self.picture_layer} at {s['sparsity']:.0%}: pruned, kept, compensated"

    def _draw_overlap(self, s: dict) -> list[str]:
        a, b = s["overlap"]
        notes = []
        for m in (a, b):
            if m not in s["methods"]:
                raise ImpossibleSetting(
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


def _key(method: str, s: dict, sparsity: float):
    return point_key(method, s["scope"], s["update"], s["steps"], sparsity, s["protocol"])


def _describe(s: dict, plan: dict) -> str:
    """The setting in words: scope, update, and steps or the training budget."""
    text = f"{s['scope']}, update {s['update']}"
    if s["protocol"] == "one_shot":
        return f"{text}, {s['steps']} step{'s' if s['steps'] > 1 else ''}"
    epochs = f"{plan['epochs']} epoch{'s' if plan['epochs'] > 1 else ''}"
    if s["protocol"] == "gradual":
        return f"{text}, pruned every {plan['prune_every']} of {epochs}"
    return f"{text}, then {epochs} of training"


_INTRO = (
    "<b>Comparing pruning choices.</b> Each method removes the weights of lowest "
    "saliency ρ = w²/(2[C⁻¹]_qq): C = I for magnitude, the diagonal Fisher for OBD, "
    "Fisher blocks for WoodFisher. <i>global</i> ranks all layers together, "
    "<i>layerwise</i> gives every layer the same sparsity; the OBS <i>update</i> moves "
    "the kept weights to make up for the removed ones; <i>steps</i> &gt; 1 re-estimates "
    "the Fisher on the pruned model between steps. With training data, the <i>protocol</i> "
    "adds training at an equal budget: prune once then fine-tune, or prune gradually with "
    "recovery training between steps (the curvature re-estimated at each step)."
)

__all__ = ["ComparerState", "PruningComparer"]
