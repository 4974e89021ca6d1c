"""The HTML report is one self-contained file: plotly.js once, every figure inline, nothing
fetched from elsewhere; headless Chromium with no network draws every figure."""

import re

import plotly.offline
import pytest

from wfexplore.experiments import compare_fisher_and_hessian, compare_pruning
from wfexplore.report import model_table, write_report

PLOTLY_BANNER = "* plotly.js v"


@pytest.fixture(scope="module")
def report(mlp_module, loader_module, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    fisher_hessian = compare_fisher_and_hessian(
        mlp_module, loader_module, block_size=10, num_samples=24, damping=1e-3, progress=False
    )
    pruning = compare_pruning(
        mlp_module,
        loader_module,
        loader_module,
        sparsities=(0.3, 0.6),
        damping=1e-3,
        num_samples=16,
        block_size=5,
        sensitivity_sparsities=(0.3, 0.6),
        cache=False,
        progress=False,
    )
    path = write_report(
        folder / "sub" / "report.html",
        title="test <report>",
        model_info=model_table(mlp_module, "tiny MLP", accuracy=0.5, analysed=45),
        fisher_hessian=fisher_hessian,
        pruning=pruning,
        tables={"Sweep": pruning.sweep},
    )
    return path, pruning


@pytest.fixture(scope="module")
def mlp_module():
    from tests.conftest import make_mlp

    return make_mlp()


@pytest.fixture(scope="module")
def loader_module():
    import torch

    from tests.conftest import make_loader

    g = torch.Generator().manual_seed(2)
    return make_loader(torch.randn(48, 6, generator=g, dtype=torch.float64), 3)


def test_report_is_self_contained(report):
    path, pruning = report
    text = path.read_text(encoding="utf-8")
    assert text.count(PLOTLY_BANNER) == 1
    library = plotly.offline.get_plotlyjs()
    assert text.count(library) == 1
    ours = text.replace(library, "")  # the library's own strings mention its web site
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", ours)
    assert not [t for t in tags if re.search(r"\b(?:src|href)\s*=", t)], tags
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?:""", ours)
    assert "cdn.plot.ly" not in ours and "mathjax" not in ours.lower()
    assert "test &lt;report&gt;" in text  # titles are escaped
    figures = re.findall(r'<div id="(wfx-figure-\d+)" class="plotly-graph-div"', text)
    assert len(figures) == len(set(figures)) >= 8
    for heading in ("Model and data", "Fisher versus Hessian", "Pruning comparison", "Masks"):
        assert heading in text


def test_report_tables_hold_the_results(report):
    path, pruning = report
    text = path.read_text(encoding="utf-8")
    summary = pruning.summary()
    assert list(summary.columns) == ["sparsity", "unpruned", "magnitude", "OBD", "WoodFisher"]
    for value in summary["WoodFisher"]:
        assert f"{value:.3f}" in text
    for sentence in pruning.findings():
        assert sentence.split(";")[0].replace("<", "&lt;") in text


@pytest.mark.slow
def test_report_opens_offline_in_chromium_and_plotly_draws_every_figure(report, tmp_path):
    from tests.browser import chromium, figure_data, open_file_offline, save_screenshot

    path, _ = report
    expected = len(re.findall(r'class="plotly-graph-div"', path.read_text(encoding="utf-8")))
    with chromium(tmp_path / "profile") as context:
        page, blocked = open_file_offline(context, path)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.wait_for_function(
            "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n",
            arg=expected,
        )
        plots = page.locator(".js-plotly-plot")
        assert plots.count() == expected
        for i in range(expected):
            data = figure_data(plots.nth(i))
            assert data, f"figure {i} has no traces"
        assert page.evaluate("typeof Plotly !== 'undefined' && Plotly.version.startsWith('')")
        save_screenshot(page, tmp_path / "report.png")
    assert blocked == [] and errors == []


def _csv_links(text):
    import base64

    return {
        name: base64.b64decode(payload).decode("utf-8")
        for name, payload in re.findall(
            r'download="([^"]+)" href="data:text/csv;base64,([A-Za-z0-9+/=]+)"', text
        )
    }


def test_sweep_table_is_a_readable_subset_and_the_full_frame_downloads_as_csv(report):
    import io

    import pandas as pd

    path, pruning = report
    text = path.read_text(encoding="utf-8")
    links = _csv_links(text)
    assert "sweep.csv" in links
    full = pd.read_csv(io.StringIO(links["sweep.csv"]))
    assert list(full.columns) == list(pruning.sweep.columns)
    assert len(full) == len(pruning.sweep)
    pd.testing.assert_series_equal(full["accuracy"], pruning.sweep["accuracy"], check_names=False)
    sweep_table = text[text.index("<h3>Sweep</h3>") :].split("</table>")[0]
    headers = re.findall(r"<th>([^<]*)</th>", sweep_table)
    assert len(headers) <= 9 and "accuracy" in headers and "δL (predicted)" in headers
    assert "curvature_s" not in headers and "prune_s" not in headers
    assert "Magnitude pruning predicts no loss" in text


def test_magnitude_predicted_loss_is_blank_in_the_shown_table():
    import pandas as pd

    from wfexplore.report import readable_table

    frame = pd.DataFrame(
        {"method": ["magnitude", "obd"], "predicted_delta_loss": [42.0, 0.5]}
        | {f"c{i}": [0, 1] for i in range(12)}
    )
    shown = readable_table(frame)
    assert shown["δL (predicted)"].isna().tolist() == [True, False]
    assert frame["predicted_delta_loss"].tolist() == [42.0, 0.5]  # the caller's frame is kept


def test_report_leads_with_dominance_among_non_zero_rows_and_numbers_blocks_in_the_layer(report):
    path, _ = report
    text = path.read_text(encoding="utf-8")
    assert "dominant non-zero rows" in text and "all-zero rows" in text
    assert "Hessians tend to be diagonally dominant" in text
    assert "log-magnitude" in text
    found = re.search(r"Block (\d+) of (\d+) in (\d+\.weight)", text)
    assert found, "the heatmap title numbers the block within its layer"
    assert 1 <= int(found.group(1)) <= int(found.group(2))
    assert "weight index in the block" in text
    assert "Test accuracy and loss after one-shot pruning" in text
    assert "rings and dashed line" in text
    assert "fisher-hessian-layers.csv" in _csv_links(text)
