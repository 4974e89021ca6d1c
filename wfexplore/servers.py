"""JupyterLab on the notebooks and the OBD/OBS teacher as a Voilà page, on loopback with a token."""

from __future__ import annotations

import filecmp
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from wfexplore.preheat import READY_FILE_ENV, THEMES, VOILA_THEME_ENV

HOST = "127.0.0.1"
TEACHER = "teach.ipynb"
DEFAULT_FOLDER = "wfexplore-notebooks"
#: seconds Voilà waits, after a visitor takes the preheated kernel, before preheating the
#: next: on 2 cores 2 s cost the first figure 0.2 s against 5 s, and a second visit at once
#: took 3.2 s against 6 s
REFILL_DELAY_S = 2.0
#: how long the address waits for the preheated kernel before it is printed anyway
READY_WAIT_S = 60.0


def notebooks_dir() -> Path:
    """The folder holding the shipped notebooks (inside the package, or the checkout's)."""
    shipped = Path(str(resources.files("wfexplore") / "notebooks"))
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent / "notebooks"


def shipped_notebooks() -> list[Path]:
    """Every shipped notebook, sorted by name."""
    return sorted(notebooks_dir().glob("*.ipynb"))


@dataclass
class CopyReport:
    """What :func:`copy_notebooks` did with each notebook."""

    folder: Path
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # the user's copy differs and was left alone
    replaced: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"notebooks in {self.folder}:"]
        if self.copied:
            lines.append(f"  copied: {', '.join(self.copied)}")
        if self.replaced:
            lines.append(f"  replaced with the shipped version: {', '.join(self.replaced)}")
        if self.unchanged:
            lines.append(f"  already there, unchanged: {', '.join(self.unchanged)}")
        if self.kept:
            lines.append(
                f"  kept your modified copy of: {', '.join(self.kept)} "
                "(pass --overwrite to replace it with the shipped version)"
            )
        return "\n".join(lines)


def copy_notebooks(
    folder: str | os.PathLike = DEFAULT_FOLDER, overwrite: bool = False
) -> CopyReport:
    """Copy the shipped notebooks into ``folder``; an existing file is replaced only on request."""
    dest = Path(folder).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    report = CopyReport(dest)
    for source in shipped_notebooks():
        target = dest / source.name
        if not target.exists():
            shutil.copyfile(source, target)
            report.copied.append(source.name)
        elif filecmp.cmp(source, target, shallow=False):
            report.unchanged.append(source.name)
        elif overwrite:
            shutil.copyfile(source, target)
            report.replaced.append(source.name)
        else:
            report.kept.append(source.name)
    return report


class PortInUse(OSError):
    """The port asked for is taken on loopback."""


def check_port_free(port: int) -> int:
    """``port`` if nothing listens on it on 127.0.0.1, else :class:`PortInUse` naming ``--port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as err:
            raise PortInUse(
                f"--port {port}: {HOST}:{port} is already in use ({err.strerror or err}); "
                "choose another port, or omit --port for a free one"
            ) from None
    return port


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on loopback, else a port the system picks."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, preferred or 0))
        except OSError:
            s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerCommand:
    """How to start one server: its argument vector, extra environment, and where to point a
    browser (the URL carries the token)."""

    argv: list[str]
    env: dict[str, str]
    url: str
    port: int
    token: str
    cwd: Path
    ready_file: Path | None = None  # exists once the server can answer a visitor at once


def lab_command(
    folder: str | os.PathLike = DEFAULT_FOLDER,
    port: int | None = None,
    token: str | None = None,
    extra_args: Sequence[str] = (),
) -> ServerCommand:
    """JupyterLab serving ``folder``, bound to 127.0.0.1, with a token (random by default).

    The token travels in ``JUPYTER_TOKEN``, not on the command line where ``ps`` would show it.
    """
    root = Path(folder).expanduser().resolve()
    port = port or free_port(8888)
    token = token or secrets.token_hex(24)
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.ip={HOST}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--no-browser",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    argv.extend(extra_args)
    url = f"http://{HOST}:{port}/lab?token={token}"
    return ServerCommand(argv, {"JUPYTER_TOKEN": token}, url, port, token, root)


def teach_command(
    port: int | None = None,
    token: str | None = None,
    notebook: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    ready_file: str | os.PathLike | None = None,
    theme: str = "light",
) -> ServerCommand:
    """Voilà serving the OBD/OBS teacher without its code, bound to 127.0.0.1, with a token.

    As for JupyterLab, the token travels in ``JUPYTER_TOKEN`` (read by Voilà's identity
    provider when ``Voila.auto_token`` is on), not on the command line; Voilà does not move
    to another port (``port_retries=0``), so the URL printed is the one served.

    The kernel is preheated: Voilà starts it with the server and runs the notebook up to
    :func:`wfexplore.preheat.wait_for_visitor` (the imports, a few seconds), so a visitor's
    page only builds the teacher. That kernel then creates ``ready_file`` (when given), which
    says the first visit will be quick. The page and that kernel follow ``theme``; a visit
    whose ``?theme=`` differs is served by a kernel started for it, as without preheating.
    """
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)} (--theme), got {theme!r}")
    path = Path(notebook) if notebook is not None else notebooks_dir() / TEACHER
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no teacher notebook at {path}")
    port = port or free_port(8866)
    token = token or secrets.token_hex(24)
    argv = [
        sys.executable,
        "-m",
        "voila",
        str(path),
        "--no-browser",
        f"--Voila.ip={HOST}",
        f"--port={port}",
        "--Voila.port_retries=0",
        "--Voila.auto_token=True",
        "--strip_sources=True",
        "--template=lab",
        f"--theme={theme}",
        "--preheat_kernel=True",
        f"--VoilaKernelManager.fill_delay={REFILL_DELAY_S}",
        *extra_args,
    ]
    env = {"JUPYTER_TOKEN": token, VOILA_THEME_ENV: theme}
    ready = None
    if ready_file is not None:
        ready = Path(ready_file).expanduser().resolve()
        env[READY_FILE_ENV] = str(ready)
    url = f"http://{HOST}:{port}/?token={token}"
    return ServerCommand(argv, env, url, port, token, path.parent, ready)


def _wait_until(done: Callable[[], bool], timeout: float, process: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if done():
            return True
        time.sleep(0.2)
    return False


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def wait_for_port(
    port: int, timeout: float = 60.0, process: subprocess.Popen | None = None
) -> bool:
    """Wait until something listens on ``port`` on loopback; False on timeout or if
    ``process`` exits first."""
    return _wait_until(lambda: _listening(port), timeout, process)


def wait_for_ready_file(
    path: Path, timeout: float = 120.0, process: subprocess.Popen | None = None
) -> bool:
    """Wait until ``path`` exists; False on timeout or if ``process`` exits first."""
    return _wait_until(path.exists, timeout, process)


def _serve(command: ServerCommand, open_browser: bool, what: str) -> int:
    """Run a server in the foreground until it exits or Ctrl-C; print its address and open a
    browser when it listens and, if it has a ready file, once that exists (after
    ``READY_WAIT_S`` the address is printed anyway, saying the kernel has not reported).

    SIGTERM and SIGHUP stop the server with us; one that arrives while it is starting is
    held until the server process is known, so that it is never left running.
    """
    env = {**os.environ, **command.env}
    if command.ready_file is not None:
        command.ready_file.unlink(missing_ok=True)  # only this server's kernel may create it
    started: list[subprocess.Popen] = []
    restore, pending = _stop_on_signals(started)
    try:
        started.append(subprocess.Popen(command.argv, cwd=command.cwd, env=env))
        process = started[0]
        if pending.is_set():
            raise KeyboardInterrupt
        threading.Thread(
            target=_announce, args=(command, process, open_browser, what), daemon=True
        ).start()
        return process.wait()
    except KeyboardInterrupt:
        if not started:
            raise
        started[0].terminate()
        try:
            return started[0].wait(timeout=30)
        except subprocess.TimeoutExpired:
            started[0].kill()
            return started[0].wait()
    finally:
        restore()


def _announce(
    command: ServerCommand, process: subprocess.Popen, open_browser: bool, what: str
) -> None:
    """Print the address (and open a browser) once the server listens and its kernel is ready."""
    if not wait_for_port(command.port, timeout=120.0, process=process):
        return
    note = ""
    if command.ready_file is not None and not wait_for_ready_file(
        command.ready_file, timeout=READY_WAIT_S, process=process
    ):
        if process.poll() is not None:
            return
        note = (
            f"(its kernel has not reported ready in {READY_WAIT_S:.0f} s: the first "
            "visit may be slow, or the notebook failed; see the messages above)\n"
        )
    print(f"\n{what} is running at\n\n    {command.url}\n{note}\nCtrl-C stops it.\n", flush=True)
    if open_browser:
        webbrowser.open(command.url)


def _stop_on_signals(started: list) -> tuple[Callable[[], None], threading.Event]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt once the server is in ``started`` (before
    that they are held in the returned event), so that the server is stopped with us when
    this process is killed or its terminal closes."""
    pending = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return (lambda: None), pending

    def stop(signum: int, frame: object) -> None:
        if not started:
            pending.set()
            return
        raise KeyboardInterrupt

    names = ("SIGTERM", "SIGHUP")
    previous = {sig: signal.signal(sig, stop) for n in names if (sig := getattr(signal, n, None))}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore, pending


def run_lab(
    folder: str | os.PathLike = DEFAULT_FOLDER,
    port: int | None = None,
    open_browser: bool = True,
    overwrite: bool = False,
) -> int:
    """Copy the notebooks into ``folder`` (keeping modified copies) and run JupyterLab there.

    A ``port`` that is taken is refused (:class:`PortInUse`) before anything starts."""
    if port is not None:
        check_port_free(port)
    report = copy_notebooks(folder, overwrite=overwrite)
    print(report.summary(), flush=True)
    return _serve(lab_command(report.folder, port=port), open_browser, "JupyterLab")


def run_teach(port: int | None = None, open_browser: bool = True, theme: str = "light") -> int:
    """Serve the OBD/OBS teacher as a Voilà page (no code shown) in ``theme``; a ``port`` that
    is taken is refused (:class:`PortInUse`). The address is printed (and a browser opened)
    once the preheated kernel is ready, so that the first visit shows the teacher within
    seconds."""
    if port is not None:
        check_port_free(port)
    with tempfile.TemporaryDirectory(prefix="wfexplore-teach-") as folder:
        command = teach_command(port=port, ready_file=Path(folder) / "kernel-ready", theme=theme)
        return _serve(command, open_browser, "The OBD/OBS teacher")
