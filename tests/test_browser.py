"""The notebooks and the teacher page as a person uses them: real JupyterLab and Voilà servers
driven by Playwright in headless Debian Chromium."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.browser import (
    ServerProcess,
    chromium,
    explain_failure,
    listening_addresses,
    loopback_only,
    nudge_slider,
    open_notebook,
    run_all_cells,
    save_screenshot,
    slider_readout,
    voila_server,
    wait_for_figure,
    wait_for_figure_change,
)
from wfexplore.servers import notebooks_dir

pytestmark = pytest.mark.slow

TEACHER_NOTEBOOK = "01_obd_obs_first_principles.ipynb"
FISHER_NOTEBOOK = "02_how_good_is_the_fisher.ipynb"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        loopback_only(context)  # the lab template asks a CDN for fonts
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    yield page
    page.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_lab_listens_on_loopback_only_and_wants_the_token(lab: ServerProcess) -> None:
    assert listening_addresses(lab.process.pid) <= {"127.0.0.1"}
    assert _status(f"{lab.base}/api/contents") == 403
    assert _status(f"{lab.base}/api/contents?token={lab.command.token}") == 200


def _run_notebook(page: Page, lab: ServerProcess, name: str) -> None:
    assert (notebooks_dir() / name).is_file(), f"notebooks/{name} is missing"
    notebook = open_notebook(page, lab, name)
    run_all_cells(page, notebook, lab)


def test_teacher_notebook_slider_redraws_figure(
    page: Page, lab: ServerProcess, tmp_path: Path
) -> None:
    with explain_failure(page, lab, tmp_path / "lab_teacher_failure.png"):
        _run_notebook(page, lab, TEACHER_NOTEBOOK)
        dashboard = page.locator(".wfx-teacher").first
        figure = dashboard.locator(".wfx-teacher-figure")
        slider = dashboard.locator(".wfx-teacher-h11")
        before = wait_for_figure(figure)
        readout = slider_readout(slider)
        nudge_slider(page, slider)
        after = wait_for_figure_change(figure, before)
        assert slider_readout(slider) != readout
        assert len(after) == len(before)
        shot = save_screenshot(dashboard, tmp_path / "lab_teacher.png")
    assert shot.stat().st_size > 10_000


def test_fisher_explorer_notebook_damping_slider_redraws_heatmaps(
    page: Page, lab: ServerProcess, tmp_path: Path
) -> None:
    with explain_failure(page, lab, tmp_path / "lab_fisher_explorer_failure.png"):
        _run_notebook(page, lab, FISHER_NOTEBOOK)
        dashboard = page.locator(".wfx-fisher").first
        figure = dashboard.locator(".wfx-fisher-heatmap")
        slider = dashboard.locator(".wfx-fisher-damping")
        before = wait_for_figure(figure)
        assert any(trace["type"] == "heatmap" and trace["z"] for trace in before)
        readout = slider_readout(slider)
        nudge_slider(page, slider)
        after = wait_for_figure_change(figure, before)
        assert slider_readout(slider) != readout
        changed = [a["z"] != b["z"] for a, b in zip(after, before, strict=True) if a["z"]]
        assert any(changed), "no heatmap's values changed"
        shot = save_screenshot(dashboard, tmp_path / "lab_fisher_explorer.png")
    assert shot.stat().st_size > 10_000


def test_teach_page_in_voila(
    browser: BrowserContext, page: Page, tmp_path: Path, kernel_env: dict[str, str]
) -> None:
    assert (notebooks_dir() / "teach.ipynb").is_file(), "notebooks/teach.ipynb is missing"
    with voila_server(tmp_path / "voila", env=kernel_env) as server:
        with explain_failure(page, server, tmp_path / "voila_teacher_failure.png"):
            assert listening_addresses(server.process.pid) <= {"127.0.0.1"}
            assert "/login" in _final_url(f"{server.base}/"), "served without the token"
            page.goto(server.url)
            dashboard = page.locator(".wfx-teacher").first
            dashboard.wait_for(state="visible")
            assert page.locator(".jp-InputArea-editor, .cm-editor").count() == 0, "code shown"
            figure = dashboard.locator(".wfx-teacher-figure")
            slider = dashboard.locator(".wfx-teacher-w1")
            before = wait_for_figure(figure)
            readout = slider_readout(slider)
            nudge_slider(page, slider)
            after = wait_for_figure_change(figure, before)
            assert slider_readout(slider) != readout
            assert len(after) == len(before)
            height = page.evaluate(
                "() => (document.querySelector('#rendered_cells') ?? document.body).scrollHeight"
            )
            page.set_viewport_size({"width": 1400, "height": max(1000, int(height) + 50)})
            shot = save_screenshot(page, tmp_path / "voila_teacher.png")
    assert shot.stat().st_size > 10_000


def _final_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.url
