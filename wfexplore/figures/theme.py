"""Light and dark looks for figures and HTML callouts, following JupyterLab or Voilà.

A kernel cannot ask the browser for its theme, so :func:`detect_theme` reads what it can:

1. the environment variable ``WFEXPLORE_THEME`` (``"dark"`` or ``"light"``), which wins;
2. in a kernel Voilà started (it sets ``VOILA_PREHEAT``), the page's theme: the request's
   ``?theme=dark``, which Voilà hands to the kernel as ``QUERY_STRING``, else the server's
   default theme, ``WFEXPLORE_VOILA_THEME`` (set by ``wfexplore teach --theme``) or light;
3. elsewhere, JupyterLab's saved theme setting (``@jupyterlab/apputils-extension:themes``
   in the user settings folder, ``$JUPYTERLAB_SETTINGS_DIR`` or
   ``~/.jupyter/lab/user-settings``): a theme whose name contains "dark" counts as dark.

:func:`use_theme` makes the matching plotly template the default, so every figure built
afterwards follows it; the figure factories pick line and marker colours that stay visible
in both (:func:`ink`). HTML callouts use JupyterLab's CSS variables with light fallbacks
(:func:`callout_style`), so they follow the page's theme without asking the kernel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs

import plotly.graph_objects as go
import plotly.io as pio

from wfexplore.preheat import THEMES, VOILA_THEME_ENV, in_voila

__all__ = [
    "DARK_TEMPLATE",
    "LIGHT_TEMPLATE",
    "callout_style",
    "detect_theme",
    "ink",
    "register_templates",
    "is_dark",
    "use_theme",
]

DARK_TEMPLATE = "wfexplore_dark"
LIGHT_TEMPLATE = "wfexplore_light"
_LAB_THEME_FILE = Path("@jupyterlab") / "apputils-extension" / "themes.jupyterlab-settings"


def register_templates() -> None:
    """Add the light and dark templates to ``plotly.io.templates`` (once)."""
    if DARK_TEMPLATE not in pio.templates:
        dark = go.layout.Template(pio.templates["plotly_dark"])
        # JupyterLab Dark's page colour (--jp-layout-color0), so plots are not grey boxes
        dark.layout.paper_bgcolor = "#111111"
        dark.layout.plot_bgcolor = "#1a1a1a"
        pio.templates[DARK_TEMPLATE] = dark
    if LIGHT_TEMPLATE not in pio.templates:
        pio.templates[LIGHT_TEMPLATE] = go.layout.Template(pio.templates["plotly"])


def _lab_settings_dir() -> Path:
    given = os.environ.get("JUPYTERLAB_SETTINGS_DIR")
    if given:
        return Path(given)
    config = os.environ.get("JUPYTER_CONFIG_DIR") or str(Path.home() / ".jupyter")
    return Path(config) / "lab" / "user-settings"


def _lab_theme() -> str | None:
    try:
        text = (_lab_settings_dir() / _LAB_THEME_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r'"theme"\s*:\s*"([^"]*)"', text)
    if not found:
        return None
    return "dark" if "dark" in found.group(1).lower() else "light"


def detect_theme() -> str:
    """``"dark"`` or ``"light"``: the environment, Voilà's page, JupyterLab's setting."""
    given = os.environ.get("WFEXPLORE_THEME", "").strip().lower()
    if given in THEMES:
        return given
    query = parse_qs(os.environ.get("QUERY_STRING", ""))
    voila = (query.get("theme") or [""])[0].lower()
    if voila:
        return "dark" if "dark" in voila else "light"
    if in_voila():  # a Voilà page, whatever JupyterLab's setting says
        default = os.environ.get(VOILA_THEME_ENV, "light").strip().lower()
        return "dark" if "dark" in default else "light"
    return _lab_theme() or "light"


def use_theme(theme: str = "auto") -> str:
    """Make the plotly template of ``theme`` (``"auto"``: :func:`detect_theme`) the default.

    Returns the theme used. Figures built afterwards follow it; ones already drawn keep theirs.
    """
    if theme == "auto":
        theme = detect_theme()
    if theme not in THEMES:
        raise ValueError(f"theme must be 'auto', 'light' or 'dark', got {theme!r}")
    register_templates()
    pio.templates.default = DARK_TEMPLATE if theme == "dark" else LIGHT_TEMPLATE
    return theme


def is_dark() -> bool:
    """Whether the default plotly template is dark (as :func:`use_theme` set it)."""
    name = str(pio.templates.default or "")
    return "dark" in name


def ink() -> str:
    """A neutral colour for reference lines and markers that shows on the current template."""
    return "#e6e6e6" if is_dark() else "black"


def callout_style(kind: str = "info") -> str:
    """Inline CSS of a callout (``"info"``, ``"warn"`` or ``"error"``) that follows the theme.

    Text in JupyterLab's main font colour on a background tinted by the kind's colour over
    the page colour (``color-mix``; a light pastel where the browser lacks it), with a
    coloured left border: readable in JupyterLab Light and Dark and Voilà's themes alike.
    """
    accents = {
        "info": ("info", "#4c78a8"),
        "warn": ("warn", "#e0a800"),
        "error": ("error", "#b00020"),
    }
    pastel = {"info": "#e8f1fb", "warn": "#fff3cd", "error": "#fde7ea"}
    if kind not in accents:
        raise ValueError(f"kind must be one of {list(accents)}, got {kind!r}")
    name, fallback = accents[kind]
    accent = f"var(--jp-{name}-color1, {fallback})"
    return (
        f"background:{pastel[kind]};"
        f"background:color-mix(in srgb, {accent} 16%, var(--jp-layout-color1, #ffffff));"
        f"border-left:4px solid {accent};color:var(--jp-ui-font-color1, #222222);"
        "padding:4px 8px;margin:4px 0"
    )


# --- text that fits ------------------------------------------------------------------------
REFERENCE_WIDTH = 1000
"""The figure width (px) titles must fit at: a Lab window of 1,400 px with the file browser
open, or a Voilà page at 1,024 px."""

CHAR_WIDTH = 0.6
"""Average glyph width as a share of the font size, for sans-serif text (a generous guess)."""


def wrap_text(text: str, max_chars: int) -> str:
    """``text`` with ``<br>`` between words so that no line is longer than ``max_chars``.

    Existing ``<br>`` breaks are kept; a single word longer than the limit stays whole.
    """
    lines = []
    for part in text.split("<br>"):
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > max_chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def chars_that_fit(width_px: float, font_size: float) -> int:
    """How many characters of ``font_size`` fit in ``width_px`` (at least 8)."""
    return max(8, int(width_px / (CHAR_WIDTH * font_size)))


def panel_chars(columns: int, font_size: float, *, spacing: float = 0.08, margin: int = 160) -> int:
    """Characters of a subplot title that fit above one of ``columns`` panels at
    :data:`REFERENCE_WIDTH`, with ``margin`` px of left+right margin and colour bar."""
    usable = (REFERENCE_WIDTH - margin) * (1 - spacing * (columns - 1)) / columns
    return chars_that_fit(usable, font_size)
