"""Helpers for tests that drive JupyterLab, Voilà or a static HTML file in headless Chromium.

Not a test module: import from it (``from tests.browser import ...``). Debian's ``chromium``
is driven through Playwright; the browser is never downloaded by Playwright.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from playwright.sync_api import BrowserContext, Locator, Page, Request, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from wfexplore.servers import (
    ServerCommand,
    free_port,
    lab_command,
    teach_command,
    wait_for_port,
)

CHROMIUM = os.environ.get("WFEXPLORE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 300_000  # generous: shared cores, kernels importing torch
ARTIFACTS_ENV = "WFEXPLORE_TEST_ARTIFACTS"


# ---------------------------------------------------------------- browser


@contextmanager
def chromium(profile_dir: Path, width: int = 1400, height: int = 1600) -> Iterator[BrowserContext]:
    """A headless Debian Chromium with a fresh profile; closed (and its processes reaped) after."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
            "never `playwright install`"
        )
    profile_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            with suppress(Exception):
                context.close()


def loopback_only(context: BrowserContext) -> list[str]:
    """Abort every request that does not go to 127.0.0.1; returns the list of blocked URLs."""
    blocked: list[str] = []

    def handle(route: Route, request: Request) -> None:
        if re.match(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/", request.url):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    context.route("**/*", handle)
    return blocked


def open_file_offline(context: BrowserContext, path: Path) -> tuple[Page, list[str]]:
    """Open a local HTML file with every non-``file:`` request blocked and the context offline.

    Returns the page (loaded) and the list of URLs it tried to fetch from elsewhere.
    """
    blocked: list[str] = []

    def handle(route: Route, request: Request) -> None:
        if request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    context.route("**/*", handle)
    context.set_offline(True)
    page = context.new_page()
    page.goto(Path(path).resolve().as_uri(), wait_until="load")
    return page, blocked


def save_screenshot(target: Page | Locator, path: Path) -> Path:
    """Screenshot a page or an element to ``path``; copy it to ``$WFEXPLORE_TEST_ARTIFACTS``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(target, Locator):
        target.screenshot(path=str(path))
    else:
        target.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get(ARTIFACTS_ENV)
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path


# ---------------------------------------------------------------- what the page shows

_FIGURE_DATA_JS = """
gd => {
  const typed = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array,
                 i4: Int32Array, u4: Uint32Array, f4: Float32Array, f8: Float64Array};
  const decode = v => {
    const bytes = Uint8Array.from(atob(v.bdata), c => c.charCodeAt(0));
    const flat = Array.from(new typed[v.dtype](bytes.buffer));
    if (!v.shape) return flat;
    const shape = String(v.shape).split(",").map(Number);
    if (shape.length < 2) return flat;
    const rows = [];
    for (let i = 0; i < shape[0]; i++) rows.push(flat.slice(i * shape[1], (i + 1) * shape[1]));
    return rows;
  };
  const norm = v => {
    if (v === null || v === undefined) return null;
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (Array.isArray(v)) return v.map(norm);
    if (typeof v === "object" && "bdata" in v) return decode(v);
    return v;
  };
  return (gd.data || []).map(t => ({
    type: t.type || "scatter", name: t.name ?? null,
    x: norm(t.x), y: norm(t.y), z: norm(t.z),
  }));
}
"""


def figure_data(figure: Locator) -> list[dict]:
    """The data plotly is drawing in ``figure`` (a ``.js-plotly-plot`` element or a container of
    exactly one): per trace its type, name and x, y, z as plain lists."""
    if not figure.evaluate("el => el.classList.contains('js-plotly-plot')", timeout=10_000):
        figure = figure.locator(".js-plotly-plot")
    return figure.evaluate(_FIGURE_DATA_JS, timeout=10_000)


def wait_for_figure_change(
    figure: Locator, before: list[dict], timeout_s: float = 60.0
) -> list[dict]:
    """Poll the drawn data until it differs from ``before``; return it (fail on timeout)."""
    deadline = time.monotonic() + timeout_s
    now = figure_data(figure)
    while now == before:
        if time.monotonic() > deadline:
            raise AssertionError(f"figure data did not change within {timeout_s} s")
        time.sleep(0.2)
        now = figure_data(figure)
    return now


def wait_for_figure(figure: Locator, timeout_s: float = TIMEOUT_MS / 1000) -> list[dict]:
    """Scroll ``figure`` into view, wait until plotly has drawn at least one trace in it;
    return the data."""
    deadline = time.monotonic() + timeout_s
    figure.first.wait_for(state="attached", timeout=timeout_s * 1000)
    with suppress(Exception):
        figure.scroll_into_view_if_needed(timeout=10_000)
    problem: Exception | str = "no trace"
    while True:
        try:
            data = figure_data(figure)
            if data:
                return data
            problem = "no trace"
        except Exception as error:  # not drawn yet: no .js-plotly-plot inside
            problem = error
        if time.monotonic() > deadline:
            html = ""
            with suppress(Exception):
                html = figure.first.evaluate("e => e.outerHTML.slice(0, 2000)", timeout=5_000)
            raise AssertionError(
                f"no plotly figure drawn within {timeout_s:.0f} s ({problem}); element: {html}"
            )
        time.sleep(0.3)


def nudge_slider(page: Page, slider: Locator, presses: int = 3) -> None:
    """Move an ipywidgets slider as a person would: click its handle and press arrow keys
    (towards the larger end unless it is already there)."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    now = float(handle.get_attribute("aria-valuenow") or 0)
    top = float(handle.get_attribute("aria-valuemax") or 0)
    key = "ArrowLeft" if now >= top else "ArrowRight"
    handle.click()
    for _ in range(presses):
        handle.press(key)


def slider_readout(slider: Locator) -> str:
    """The value an ipywidgets slider shows next to it."""
    return slider.locator(".widget-readout").first.inner_text()


@contextmanager
def explain_failure(
    page: Page, server: ServerProcess | None = None, screenshot: Path | None = None
) -> Iterator[None]:
    """On failure inside the block, add what the page and the server showed to the error (and
    save a screenshot of the page)."""
    try:
        yield
    except Exception as error:
        details = []
        with suppress(Exception):
            details.append(f"url: {page.url}")
            details.append(f"status bar: {page.locator('.jp-StatusBar-Widget').all_inner_texts()}")
        if screenshot is not None:
            with suppress(Exception):
                save_screenshot(page, screenshot)
                details.append(f"screenshot: {screenshot}")
        if server is not None:
            details.append(f"server log (tail):\n{server.log_tail()}")
        raise AssertionError(f"{error}\n" + "\n".join(details)) from error


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses that process ``pid`` listens on (TCP)."""
    return {
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


# ---------------------------------------------------------------- servers


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class ServerProcess:
    """A server started in its own process group; ``stop()`` ends it and every process it
    started (kernels run in their own sessions), by pid."""

    command: ServerCommand
    process: subprocess.Popen
    log: Path
    _known: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.command.url

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.command.port}"

    def log_tail(self) -> str:
        return _tail(self.log)

    def remember_children(self) -> None:
        """Note the server's current descendants (its kernels) so that ``stop()`` can reap them."""
        with suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._known.setdefault(child.pid, child)

    def stop(self, grace_s: float = 20.0) -> None:
        self.remember_children()
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # it shuts its kernels down
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=grace_s)
        else:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        leftovers = [p for p in self._known.values() if _alive(p)]
        for p in leftovers:
            with suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=5)
        for p in alive:
            with suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_server(
    command: ServerCommand, log: Path, env: Mapping[str, str] | None = None, ready_path: str = "/"
) -> ServerProcess:
    """Start ``command`` in its own process group, logging to ``log``; wait until it answers."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **command.env, **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ServerProcess(command, process, log)
    try:
        if not wait_for_port(command.port, timeout=TIMEOUT_MS / 1000, process=process):
            raise RuntimeError(f"server did not start:\n{server.log_tail()}")
        url = f"{server.base}{ready_path}"
        sep = "&" if "?" in url else "?"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}{sep}token={command.token}", timeout=10):
                    break
            except OSError as error:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"server not ready ({error}):\n{server.log_tail()}"
                    ) from None
                time.sleep(0.3)
    except BaseException:
        server.stop()
        raise
    return server


_LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "autoStartDefaultKernel": True,
        "windowingMode": "none",
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# No build check (tens of seconds of server CPU per page load) and no extension manager.
_LAB_PAGE_CONFIG = {
    "buildCheck": False,
    "buildAvailable": False,
    "disabledExtensions": {"@jupyterlab/extensionmanager-extension": True},
}


@contextmanager
def lab_server(
    root: Path, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    """JupyterLab on ``root`` (loopback, free port, token) with throwaway config, runtime and
    settings folders under ``workdir``: kernels start on their own, no news prompt, every cell
    stays in the DOM. Stopped, with its kernels, on exit."""
    settings = workdir / "lab-settings"
    for name, value in _LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    dirs = {
        "JUPYTER_CONFIG_DIR": workdir / "jupyter-config",
        "JUPYTER_RUNTIME_DIR": workdir / "jupyter-runtime",
        "JUPYTER_DATA_DIR": workdir / "jupyter-data",
        "IPYTHONDIR": workdir / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    labconfig = dirs["JUPYTER_CONFIG_DIR"] / "labconfig"
    labconfig.mkdir(exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(_LAB_PAGE_CONFIG))
    command = lab_command(
        root,
        port=free_port(),
        extra_args=[
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={workdir / 'lab-workspaces'}",
        ],
    )
    server = start_server(
        command,
        workdir / "jupyterlab.log",
        {**{k: str(v) for k, v in dirs.items()}, **(env or {})},
        ready_path="/api/status",
    )
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def voila_server(
    workdir: Path, notebook: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Voilà serving ``notebook`` (default: the teacher) as ``wfexplore teach`` does (loopback,
    token, no code),
    with throwaway Jupyter folders under ``workdir``; stopped, with its kernels, on exit."""
    dirs = {
        "JUPYTER_CONFIG_DIR": workdir / "jupyter-config",
        "JUPYTER_RUNTIME_DIR": workdir / "jupyter-runtime",
        "JUPYTER_DATA_DIR": workdir / "jupyter-data",
        "IPYTHONDIR": workdir / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    command = teach_command(port=free_port(), notebook=notebook)
    server = start_server(
        command,
        workdir / "voila.log",
        {**{k: str(v) for k, v in dirs.items()}, **(env or {})},
        ready_path="/login",  # answers without rendering the notebook (no kernel started)
    )
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- JupyterLab pages


def kernel_idle(page: Page) -> Locator:
    """The status-bar item that reads ``Idle`` once the notebook's kernel is connected and idle."""
    return page.locator(".jp-StatusBar-Widget").filter(has_text=re.compile(r"\|\s*Idle"))


def open_notebook(page: Page, server: ServerProcess, name: str) -> Locator:
    """Open ``name`` alone in a fresh JupyterLab workspace (no tabs restored from another page)
    and wait for its kernel to be idle; return the notebook."""
    workspace = f"test-{uuid.uuid4().hex[:12]}"
    page.goto(f"{server.base}/lab/workspaces/{workspace}/tree/{name}?token={server.command.token}")
    notebook = page.locator(".jp-NotebookPanel .jp-Notebook").filter(visible=True).first
    notebook.wait_for(state="visible")
    kernel_idle(page).first.wait_for(state="visible")
    server.remember_children()
    return notebook


_CODE_PROMPTS_JS = """nb => Array.from(nb.querySelectorAll('.jp-CodeCell'))
    .filter(c => (c.querySelector('.cm-content')?.textContent ?? '').trim() !== '')
    .map(c => (c.querySelector('.jp-InputPrompt')?.textContent ?? '').trim())"""


def code_prompts(notebook: Locator) -> list[str]:
    """The prompts (``[ ]:``, ``[*]:``, ``[3]:``) of the notebook's non-empty code cells."""
    return notebook.evaluate(_CODE_PROMPTS_JS)


def run_all_cells(page: Page, notebook: Locator, server: ServerProcess) -> None:
    """Run > Run All Cells, then wait until every non-empty code cell has an execution count;
    fail with the first traceback shown.

    The status bar is not used to tell the end: with subshells (ipykernel 7) it can read
    ``Idle`` while cells are still queued. A click that started nothing (the kernel not quite
    ready) is repeated.
    """
    for _attempt in range(5):
        notebook.click(position={"x": 5, "y": 5})  # focus the notebook so Run targets it
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).first.click()
        with suppress(PlaywrightTimeoutError):
            page.wait_for_function(
                f"nb => ({_CODE_PROMPTS_JS})(nb).some(p => /\\[(\\*|\\d+)\\]/.test(p))",
                arg=notebook.element_handle(),
                timeout=30_000,
            )
            break
    else:
        raise AssertionError(f"Run All Cells started nothing; prompts: {code_prompts(notebook)}")
    server.remember_children()
    page.wait_for_function(
        f"nb => {{ const p = ({_CODE_PROMPTS_JS})(nb);"
        " return p.length > 0 && p.every(x => /\\[\\d+\\]/.test(x)); }",
        arg=notebook.element_handle(),
        timeout=2 * TIMEOUT_MS,
    )
    errors = notebook.locator(".jp-OutputArea-output").filter(
        has_text=re.compile(r"Traceback \(most recent call last\)|Cell In\[\d+\], line \d+")
    )
    if errors.count():
        raise AssertionError(f"a cell failed:\n{errors.first.inner_text()[:4000]}")
