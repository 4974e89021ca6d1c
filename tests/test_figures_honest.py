"""What a reader sees in the figures: dominance among non-zero rows first, sizes that follow
the container, titles that fit at 1,000 px, legends that explain, colours that follow the
theme."""

import re

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
import torch

from wfexplore.figures import theme
from wfexplore.figures.curvature import (
    DOMINANCE_STATISTICS,
    block_heatmaps,
    dominance_by_layer,
    dominance_histograms,
)
from wfexplore.figures.pruning import CATEGORY_NAMES, accuracy_vs_sparsity, mask_figure
from wfexplore.preheat import VOILA_THEME_ENV
from wfexplore.statistics import diagonal_dominance

WIDTH = 1000  # px: a Lab window of 1,400 px with the file browser open


def _lines(text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in (text or "").split("<br>")]


def assert_titles_fit(fig, width: int = WIDTH) -> None:
    """Every subplot title fits above its panel, and the title across the figure, at ``width``
    px (glyphs taken as 0.6 of the font size wide, generous for sans-serif)."""
    layout = fig.layout
    margin = (layout.margin.l or 80) + (layout.margin.r or 80)
    plot = width - margin
    xaxes = [k for k in layout if k.startswith("xaxis")] or ["xaxis"]
    widest_panel = min(layout[k].domain[1] - layout[k].domain[0] for k in xaxes) * plot
    for annotation in layout.annotations:
        size = annotation.font.size or 16
        for line in _lines(annotation.text):
            assert len(line) * theme.CHAR_WIDTH * size <= widest_panel + 1, (line, widest_panel)
    if layout.title.text:
        size = layout.title.font.size or 17
        for line in _lines(layout.title.text):
            assert len(line) * theme.CHAR_WIDTH * size <= width - 40, line


def _responsive(fig) -> None:
    assert fig.layout.width is None, "a fixed width overflows a narrower window"
    assert fig.layout.autosize is not False


@pytest.fixture
def blocks():
    dead = torch.zeros(6, 6)
    dead[:3, :3] = torch.tensor([[1.0, 2.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    table = pd.concat(
        [
            dominance_table_of(dead, "Hessian"),
            dominance_table_of(torch.eye(6) + 0.01, "Fisher"),
        ],
        ignore_index=True,
    )
    return table


def dominance_table_of(matrix, kind):
    row = {"block": 0, "layer": 0, "parameter": "w", "size": matrix.shape[0]}
    return pd.DataFrame([{**row, **diagonal_dominance(matrix), "kind": kind}])


def test_dominance_figures_lead_with_the_non_zero_rows_and_show_the_zero_rows_apart(blocks):
    for fig in (dominance_by_layer(blocks), dominance_histograms(blocks)):
        titles = [a.text.replace("<br>", " ") for a in fig.layout.annotations]
        assert "non-zero rows" in titles[0] and "all-zero rows" in titles[1], titles
        assert len(titles) == len(DOMINANCE_STATISTICS)
        _responsive(fig)
        assert_titles_fit(fig)
    bars = dominance_by_layer(blocks)
    hessian = [t for t in bars.data if t.name == "Hessian"]
    # dead rows: half the rows, naive count 1/2; among the live rows none is dominant
    assert hessian[0].y[0] == 0.0 and hessian[1].y[0] == 0.5


def test_block_heatmaps_size_to_the_container_and_label_their_axes():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8))
    panels = {"Hessian H": a @ a.T, "empirical Fisher F": a.T @ a, "true Fisher": np.eye(8)}
    fig = block_heatmaps(panels, difference=("empirical Fisher F", "Hessian H"), title="t")
    _responsive(fig)
    assert_titles_fit(fig)
    assert fig.layout.xaxis4.title.text == "weight index in the block"
    assert fig.layout.yaxis.title.text == "weight index in the block"
    assert len(fig.layout.annotations) == 4  # the difference panel's title is there, wrapped


def test_mask_legend_keeps_compensated_in_view_and_the_figure_is_responsive():
    categories = np.array([[0, 1, 2], [1, 1, 0]])
    fig = mask_figure({"magnitude": categories, "OBD": categories, "WoodFisher": categories})
    _responsive(fig)
    colorbar = fig.data[0].colorbar
    assert colorbar.orientation == "h" and list(colorbar.ticktext) == list(CATEGORY_NAMES)
    assert "compensated" in colorbar.ticktext
    assert fig.layout.margin.b >= 60  # room under the panels for the horizontal bar


def test_accuracy_figure_explains_the_rings_and_the_dashed_line():
    frame = pd.DataFrame(
        {
            "method": ["magnitude", "magnitude", "obd", "obd"],
            "sparsity": [0.5, 0.8, 0.5, 0.8],
            "accuracy": [0.9, 0.7, 0.92, 0.8],
            "loss": [0.3, 0.6, 0.25, 0.5],
            "dense_accuracy": [0.95] * 4,
            "dense_loss": [0.1] * 4,
        }
    )
    fig = accuracy_vs_sparsity(frame, ["accuracy", "loss"], marker_at=0.8, title="Accuracy")
    assert fig.data[-1].name == "at sparsity"
    (marker,) = [t for t in fig.data if t.name == "at sparsity" and t.showlegend]
    assert "rings and dashed line" in marker.legendgrouptitle.text
    assert "80%" in marker.legendgrouptitle.text
    assert fig.layout.title.text == "Accuracy"
    _responsive(fig)


@pytest.fixture
def restore_template():
    before = pio.templates.default
    yield
    pio.templates.default = before


def test_dark_theme_makes_figures_dark_and_reference_lines_light(restore_template, monkeypatch):
    monkeypatch.setenv("WFEXPLORE_THEME", "dark")
    assert theme.use_theme() == "dark"
    assert pio.templates.default == theme.DARK_TEMPLATE
    assert pio.templates[theme.DARK_TEMPLATE].layout.paper_bgcolor == "#111111"
    assert theme.ink() != "black"
    frame = pd.DataFrame(
        {"method": ["obd"] * 2, "sparsity": [0.5, 0.8], "accuracy": [0.9, 0.8]}
        | {"dense_accuracy": [0.95] * 2}
    )
    fig = accuracy_vs_sparsity(frame, marker_at=0.5)
    unpruned = next(t for t in fig.data if t.name == "unpruned")
    assert unpruned.line.color == theme.ink()
    assert theme.use_theme("light") == "light" and theme.ink() == "black"


def test_theme_is_read_from_voila_and_from_jupyterlab_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("WFEXPLORE_THEME", raising=False)
    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    monkeypatch.setenv("QUERY_STRING", "theme=dark&x=1")
    assert theme.detect_theme() == "dark"
    monkeypatch.setenv("QUERY_STRING", "")
    settings = tmp_path / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "themes.jupyterlab-settings").write_text(
        '{\n  // comment\n  "theme": "JupyterLab Dark"\n}', encoding="utf-8"
    )
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    assert theme.detect_theme() == "dark"
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "none"))
    assert theme.detect_theme() == "light"
    with pytest.raises(ValueError, match="theme"):
        theme.use_theme("sepia")


def test_a_voila_kernel_follows_the_page_not_jupyterlab(monkeypatch, tmp_path):
    monkeypatch.delenv("WFEXPLORE_THEME", raising=False)
    monkeypatch.delenv(VOILA_THEME_ENV, raising=False)
    settings = tmp_path / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "themes.jupyterlab-settings").write_text(
        '{"theme": "JupyterLab Dark"}', encoding="utf-8"
    )
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setenv("QUERY_STRING", "token=abc")
    assert theme.detect_theme() == "light"  # Voilà's page is light unless asked otherwise
    monkeypatch.setenv(VOILA_THEME_ENV, "dark")  # wfexplore teach --theme dark
    assert theme.detect_theme() == "dark"
    monkeypatch.setenv("QUERY_STRING", "theme=light&token=abc")
    assert theme.detect_theme() == "light"  # the visitor's ?theme= wins
    monkeypatch.setenv("WFEXPLORE_THEME", "dark")
    assert theme.detect_theme() == "dark"  # and the environment over everything


def test_callouts_use_the_themes_css_variables():
    for kind in ("info", "warn", "error"):
        style = theme.callout_style(kind)
        assert "color:var(--jp-ui-font-color1" in style
        assert "var(--jp-layout-color1" in style and f"--jp-{kind}-color1" in style


def test_wrap_text_breaks_between_words_within_the_limit():
    assert theme.wrap_text("empirical Fisher F − Hessian H", 18) == (
        "empirical Fisher F<br>− Hessian H"
    )
    assert theme.wrap_text("short", 18) == "short"
