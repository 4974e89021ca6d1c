"""What every dashboard shares: a state model observed by the views, the controls bound to it,
a message area, a progress bar with a label, figure slots and display in a notebook.

The choices live in one ``traitlets.HasTraits`` model (``state``); each control's value is
linked to a trait of it, and the dashboard observes the traits, as in the model–view
examples of ipywidgets. Experiments report progress through :meth:`ComputingDashboard.note`
and :meth:`ComputingDashboard.step` (the :class:`~wfexplore.experiments.Progress` protocol).
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from plotly.graph_objects import FigureWidget  # loaded here, not at the first figure

from wfexplore._checks import ImpossibleSetting

# JupyterLab's theme variables, with light fallbacks: readable in Light, Dark and Voilà
# (the plain colour first, for pages without the variables)
NOTE = "color:#555;color:var(--jp-ui-font-color2, #555555);margin:2px 0"
ERROR = "color:#b00020;color:var(--jp-error-color1, #b00020);font-weight:bold;margin:2px 0"
RELOAD_HINT = (
    "A notebook saved with its outputs and opened again shows “Error displaying widget: "
    "model not found” in place of a dashboard: the widgets live in the kernel, so run the "
    "cells again (Run ▸ Run All Cells)."
)

__all__ = [
    "ERROR",
    "NOTE",
    "RELOAD_HINT",
    "SaveBar",
    "ToggleSet",
    "ComputingDashboard",
    "Dashboard",
    "FigureSlot",
    "ImpossibleSetting",
    "message_html",
    "readable",
]


def message_html(text: str, *, error: bool = False, css_class: str | None = None) -> str:
    """One escaped paragraph in the note or the error style."""
    cls = f' class="{css_class}"' if css_class else ""
    return f'<p{cls} style="{ERROR if error else NOTE}">{html.escape(text)}</p>'


def readable(err: Exception) -> str:
    """What a person is told when a choice fails: the reason, never a traceback."""
    if isinstance(err, ImpossibleSetting):
        return str(err)
    return (
        f"This choice cannot be computed ({type(err).__name__}): {err} "
        "The figures still show the last choice that could be drawn."
    )


class FigureSlot:
    """A box, with a stable CSS class, holding one ``go.FigureWidget`` for its lifetime.

    :meth:`draw` shows a new figure in that FigureWidget, traces and layout replaced in place:
    a fresh FigureWidget would send plotly.js (about 5 MB) to the page again and make the
    page evaluate it, seconds per figure. ``figure`` is the widget, whose traces may also be
    changed in place. In the page the plot is the ``.js-plotly-plot`` element inside the box.
    """

    def __init__(self, css_class: str, layout: dict):
        self.css_class = css_class
        self.figure = FigureWidget(layout=layout)
        self._template = self.figure.layout.template.to_plotly_json()
        self.box = widgets.Box([self.figure])
        self.box.add_class(css_class)

    def draw(self, fig: go.Figure) -> FigureWidget:
        """``fig``'s traces and layout in the slot's FigureWidget, which then holds what a
        fresh figure would (properties that ``fig`` lacks are removed). The shown traces that
        are of the same types as ``fig``'s first ones are changed in place, with the layout,
        in one update; the others are removed, and ``fig``'s remaining ones added: the page
        draws once when the traces are of the same types, at most three times otherwise."""
        figure = self.figure
        shown, new = [t.type for t in figure.data], [t.type for t in fig.data]
        same = 0
        while same < min(len(shown), len(new)) and shown[same] == new[same]:
            same += 1
        if same < len(shown):
            figure.data = figure.data[:same]
        layout = fig.layout.to_plotly_json()
        kept = ()
        if layout.get("template", {}) == self._template:  # not validated again
            layout.pop("template", None)
            kept = ("template",)
        else:
            self._template = layout.get("template", {})
        with figure.batch_update():
            _replace(figure.layout, layout, keep=kept)
            for old, new in zip(figure.data, fig.data[:same], strict=True):
                _replace(old, new.to_plotly_json(), keep=("type", "uid"))
        if same < len(fig.data):
            figure.add_traces(list(fig.data[same:]))
        return figure


def _replace(shown, properties: dict, keep: tuple[str, ...] = ()) -> None:
    """Make the plotly object ``shown`` hold exactly ``properties``: those it has and they
    lack are unset, the others overwritten whole (not merged)."""
    for key in set(shown.to_plotly_json()) - set(properties) - set(keep):
        shown[key] = None
    shown.update(properties, overwrite=True)


class ToggleSet(widgets.HBox):
    """Several choices, each a toggle button: ``value`` is the tuple of those pressed, in
    ``options`` order. One click picks or drops one choice (no Ctrl-click)."""

    value = traitlets.Tuple()

    def __init__(self, options: list[tuple[str, str]], value: tuple = (), **kwargs):
        self.buttons = {
            key: widgets.ToggleButton(description=label, value=key in value, tooltip=label)
            for label, key in options
        }
        super().__init__(list(self.buttons.values()), **kwargs)
        self._syncing = False
        self.value = tuple(key for key in self.buttons if key in value)
        for button in self.buttons.values():
            button.layout = widgets.Layout(width="auto")
            button.observe(lambda _: self._from_buttons(), names="value")
        self.observe(lambda _: self._to_buttons(), names="value")

    def _from_buttons(self) -> None:
        if self._syncing:
            return
        pressed = tuple(key for key, button in self.buttons.items() if button.value)
        if pressed != self.value:
            self.value = pressed

    def _to_buttons(self) -> None:
        self._syncing = True
        try:
            for key, button in self.buttons.items():
                if button.value != (key in self.value):
                    button.value = key in self.value
        finally:
            self._syncing = False


class SaveBar:
    """A file name, a "save" button and a line saying what was written.

    Clicking writes the dashboard's current figures and tables (``dashboard.saved()``: a
    title, heading → figure, heading → frame) to one self-contained HTML file with the
    report's writer (:func:`wfexplore.report.write_report`).
    """

    def __init__(self, dashboard: Dashboard, default_name: str):
        self.dashboard = dashboard
        self.path = widgets.Text(
            value=default_name, description="save as", layout=widgets.Layout(width="320px")
        )
        self.button = widgets.Button(description="save", icon="save", tooltip="save as HTML")
        self.status = widgets.HTML("")
        for part, name in ((self.path, "save-path"), (self.button, "save")):
            part.add_class(f"{dashboard.prefix}-{name}")
        self.status.add_class(f"{dashboard.prefix}-save-status")
        self.button.on_click(lambda _: self.save())
        self.widget = widgets.HBox([self.path, self.button, self.status])

    def save(self, path: str | None = None):
        """Write the HTML file (to ``path`` or the name typed) and return its path."""
        from wfexplore.report import write_report

        target = path or self.path.value.strip() or "wfexplore-dashboard.html"
        title, figures, tables = self.dashboard.saved()
        try:
            written = write_report(target, title=title, figures=figures, tables=tables)
        except OSError as err:
            self.status.value = message_html(f"Could not write {target}: {err}", error=True)
            return None
        self.status.value = message_html(f"Saved to {written}")
        return written


class Dashboard:
    """A ``state`` model, controls bound to it and the ``widget`` to display.

    Subclasses build ``widget`` and observe ``state``; CSS classes are ``<prefix>``,
    ``<prefix>-control`` and ``<prefix>-<name>`` for the control called ``name``.
    """

    widget: widgets.Widget
    #: control name (its CSS class and key in ``controls``) → attribute holding the control
    CONTROLS: dict[str, str] = {}

    def __init__(self, prefix: str, state: traitlets.HasTraits):
        self.prefix = prefix
        self.state = state

    @property
    def controls(self) -> dict[str, widgets.ValueWidget]:
        """The controls by name (see ``CONTROLS``)."""
        return {name: getattr(self, attr) for name, attr in self.CONTROLS.items()}

    def bind(
        self,
        controls: Mapping[str, widgets.ValueWidget],
        traits: Mapping[str, str],
        style: dict | None = None,
    ) -> None:
        """Class and style every control; link the value of each named in ``traits``
        (control name → trait of ``state``) both ways to that trait."""
        for name, control in controls.items():
            if style is not None:
                control.style = style
            control.add_class(f"{self.prefix}-control")
            control.add_class(f"{self.prefix}-{name}")
            if name in traits:
                traitlets.link((self.state, traits[name]), (control, "value"))

    def saved(self) -> tuple[str, dict[str, go.Figure], dict]:
        """What "save" writes: a title, heading → current figure, heading → current table."""
        return self.prefix, {}, {}

    def save(self, path: str) -> object:
        """Write the current figures and tables to a self-contained HTML file at ``path``."""
        return SaveBar(self, path).save(path)

    def show(self) -> None:
        """Display the dashboard (then compute what it shows, where it computes)."""
        from IPython.display import display

        display(self.widget)
        self._shown()

    def _shown(self) -> None:
        """Called once the dashboard is displayed."""

    def _ipython_display_(self) -> None:
        self.show()


class ComputingDashboard(Dashboard):
    """A dashboard with a ``message`` area and a progress bar (``progress``, with
    ``progress_label``, inside ``progress_box``, shown only while something runs)."""

    _prefetcher = None  # the thread computing ahead, if one was started

    def wait_for_prefetch(self, timeout: float | None = None) -> bool:
        """Wait for the computation ahead (a background thread) to end; whether it has."""
        thread = self._prefetcher
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def __init__(self, prefix: str, state: traitlets.HasTraits):
        super().__init__(prefix, state)
        self.message = widgets.HTML("")
        self.message.add_class(f"{prefix}-message")
        self.progress = widgets.IntProgress(value=0, min=0, max=1)
        self.progress.add_class(f"{prefix}-progress")
        self.progress_label = widgets.HTML("")
        self.progress_box = widgets.HBox([self.progress, self.progress_label])
        self.progress_box.layout.display = "none"

    def say(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` in the message area (empty: clear it)."""
        self.message.value = message_html(text, error=error) if text else ""

    def fail(self, err: Exception) -> None:
        self.say(readable(err), error=True)

    @contextmanager
    def working(self, total: int) -> Iterator[ComputingDashboard]:
        """Show the progress bar for ``total`` steps while the block runs."""
        self.progress.max = max(total, 1)
        self.progress.value = 0
        self.progress_box.layout.display = "flex"
        try:
            yield self
        finally:
            self.progress_box.layout.display = "none"
            self.progress_label.value = ""

    def note(self, text: str) -> None:
        """Say what runs now, beside the progress bar."""
        self.progress_label.value = f'<span style="{NOTE}">{html.escape(text)}</span>'

    def step(self) -> None:
        """One step done."""
        self.progress.value = min(self.progress.value + 1, self.progress.max)
