"""`wfexplore lab` and `wfexplore teach`: working copies, loopback, tokens, shipped notebooks."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from wfexplore import preheat, servers
from wfexplore.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def test_the_package_finds_the_repository_notebooks() -> None:
    shipped = {p.name for p in servers.shipped_notebooks()}
    assert shipped == {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    assert servers.TEACHER in shipped


def test_copy_notebooks_copies_then_keeps_modified_copies(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    first = servers.copy_notebooks(folder)
    names = sorted(p.name for p in servers.shipped_notebooks())
    assert sorted(first.copied) == names and not first.kept
    for name in names:
        assert (folder / name).read_bytes() == (servers.notebooks_dir() / name).read_bytes()

    edited = folder / names[0]
    edited.write_text("my own notes")
    again = servers.copy_notebooks(folder)
    assert again.copied == [] and again.kept == [names[0]]
    assert sorted(again.unchanged) == names[1:]
    assert edited.read_text() == "my own notes"
    assert names[0] in again.summary() and "--overwrite" in again.summary()

    replaced = servers.copy_notebooks(folder, overwrite=True)
    assert replaced.replaced == [names[0]]
    assert edited.read_bytes() == (servers.notebooks_dir() / names[0]).read_bytes()


def test_lab_command_binds_loopback_with_a_random_token_kept_off_the_command_line(
    tmp_path: Path,
) -> None:
    one = servers.lab_command(tmp_path)
    two = servers.lab_command(tmp_path)
    assert one.token != two.token and len(one.token) >= 32
    assert "--ServerApp.ip=127.0.0.1" in one.argv
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in one.argv
    assert f"--ServerApp.port={one.port}" in one.argv
    assert "--no-browser" in one.argv
    assert not any(one.token in arg for arg in one.argv)
    assert one.env == {"JUPYTER_TOKEN": one.token}
    assert one.url == f"http://127.0.0.1:{one.port}/lab?token={one.token}"


def test_teach_command_serves_the_teacher_without_code_on_loopback() -> None:
    command = servers.teach_command(port=8123, token="abc123")
    assert command.argv[3] == str(servers.notebooks_dir().resolve() / servers.TEACHER)
    for arg in (
        "--Voila.ip=127.0.0.1",
        "--port=8123",
        "--strip_sources=True",
        "--no-browser",
    ):
        assert arg in command.argv
    assert command.url == "http://127.0.0.1:8123/?token=abc123"


def test_teach_keeps_its_token_off_the_command_line_and_does_not_move_port() -> None:
    command = servers.teach_command(port=8123, token="abc123")
    assert not any("abc123" in arg for arg in command.argv)
    assert command.env["JUPYTER_TOKEN"] == "abc123"
    assert "--Voila.auto_token=True" in command.argv  # Voilà then reads JUPYTER_TOKEN
    assert "--Voila.port_retries=0" in command.argv  # the printed URL is the served one


@pytest.mark.parametrize("command", ["lab", "teach"])
def test_a_busy_port_is_refused_in_one_line_before_anything_starts(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import socket

    from wfexplore.cli import main

    started = []
    monkeypatch.setattr(servers, "_serve", lambda *a, **k: started.append(a) or 0)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert main([command, "--port", str(busy), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert f"--port {busy}: 127.0.0.1:{busy} is already in use" in err
    assert len(err.strip().splitlines()) == 1
    assert started == []


def test_teach_preheats_its_kernel_and_names_the_ready_file(tmp_path: Path) -> None:
    plain = servers.teach_command(port=8123, token="abc123")
    assert "--preheat_kernel=True" in plain.argv
    assert f"--VoilaKernelManager.fill_delay={servers.REFILL_DELAY_S}" in plain.argv
    assert plain.ready_file is None and preheat.READY_FILE_ENV not in plain.env
    ready = servers.teach_command(port=8123, token="abc123", ready_file=tmp_path / "r")
    assert ready.ready_file == (tmp_path / "r").resolve()
    assert ready.env[preheat.READY_FILE_ENV] == str(ready.ready_file)


def test_teach_serves_the_page_and_its_kernel_in_one_theme() -> None:
    light = servers.teach_command(port=8123)
    assert "--theme=light" in light.argv and light.env[preheat.VOILA_THEME_ENV] == "light"
    dark = servers.teach_command(port=8123, theme="dark")
    assert "--theme=dark" in dark.argv and dark.env[preheat.VOILA_THEME_ENV] == "dark"
    with pytest.raises(ValueError, match=r"--theme.*'sepia'"):
        servers.teach_command(port=8123, theme="sepia")


def test_the_teacher_notebook_waits_for_its_visitor_before_the_theme_and_the_teacher() -> None:
    import json

    cells = json.loads((REPO / "notebooks" / servers.TEACHER).read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in cells["cells"] if c["cell_type"] == "code"]
    waits = [i for i, source in enumerate(code) if "wait_for_visitor()" in source]
    assert waits, "the teacher notebook never calls wait_for_visitor()"
    after = "\n".join(code[waits[0] :]).split("wait_for_visitor()", 1)[1]
    assert "use_theme()" in after and "OBSTeacher()" in after  # per visit: ?theme= is known


def test_wait_for_visitor_returns_at_once_outside_a_preheated_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import voila.utils

    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    monkeypatch.setenv(preheat.READY_FILE_ENV, str(tmp_path / "ready"))
    monkeypatch.setattr(voila.utils, "wait_for_request", lambda: pytest.fail("waited"))
    preheat.wait_for_visitor()
    monkeypatch.setenv("VOILA_PREHEAT", "False")  # what Voilà sets in a kernel for one visit
    preheat.wait_for_visitor()
    assert not (tmp_path / "ready").exists()


def test_wait_for_visitor_says_ready_then_waits_in_a_preheated_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import voila.utils

    ready = tmp_path / "ready"
    seen = []
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setenv(preheat.READY_FILE_ENV, str(ready))
    monkeypatch.setattr(voila.utils, "wait_for_request", lambda: seen.append(ready.exists()))
    preheat.wait_for_visitor()
    assert seen == [True]


_LISTEN_THEN_READY = """
import socket, sys, time
from pathlib import Path
with socket.socket() as s:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    time.sleep(float(sys.argv[3]))
    if sys.argv[2]:
        Path(sys.argv[2]).touch()
    time.sleep(1.5)
"""


@pytest.mark.parametrize("kernel", ["ready", "exits", "slow"])
def test_teach_prints_its_address_once_the_kernel_is_ready(
    kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ready = tmp_path / "ready"
    ready.touch()  # left by an earlier server: must not count
    port = servers.free_port()
    touched = str(ready) if kernel == "ready" else ""
    argv = [sys.executable, "-c", _LISTEN_THEN_READY, str(port), touched, "1.0"]
    command = servers.ServerCommand(argv, {}, "http://addr", port, "t", tmp_path, ready)
    opened = []
    monkeypatch.setattr(servers.webbrowser, "open", lambda url: opened.append(ready.exists()))
    if kernel == "slow":
        monkeypatch.setattr(servers, "READY_WAIT_S", 1.5)
    assert servers._serve(command, True, "The teacher") == 0
    time.sleep(0.5)  # the announcing thread polls every 0.2 s
    out = capsys.readouterr().out
    if kernel == "ready":
        assert "The teacher is running at" in out and "http://addr" in out
        assert "not reported" not in out
        assert opened == [True], "the browser was opened before the kernel was ready"
    elif kernel == "exits":  # the server exited without ever being ready: nothing to visit
        assert "running at" not in out and opened == []
    else:  # still listening, never ready: the address anyway, saying so
        assert "http://addr" in out and "has not reported ready in 2 s" in out
        assert opened == [False]


def test_run_teach_gives_a_ready_file_in_a_folder_it_removes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = {}

    def fake_serve(command: servers.ServerCommand, open_browser: bool, what: str) -> int:
        seen.update(ready=command.ready_file, folder_there=command.ready_file.parent.is_dir())
        return 0

    monkeypatch.setattr(servers, "_serve", fake_serve)
    assert servers.run_teach(port=None, open_browser=False) == 0
    assert seen["folder_there"] and not seen["ready"].exists()
    assert not seen["ready"].parent.exists()


def test_teach_command_names_a_missing_notebook(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no teacher notebook"):
        servers.teach_command(notebook=tmp_path / "missing.ipynb")


def test_free_port_falls_back_when_the_preferred_one_is_taken() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert servers.free_port(busy) != busy


def test_cli_parses_lab_and_teach() -> None:
    parser = build_parser()
    lab = parser.parse_args(["lab", "somewhere", "--port", "9000", "--no-browser", "--overwrite"])
    assert (lab.command, lab.folder, lab.port, lab.no_browser, lab.overwrite) == (
        "lab",
        "somewhere",
        9000,
        True,
        True,
    )
    assert parser.parse_args(["lab"]).folder == servers.DEFAULT_FOLDER
    teach = parser.parse_args(["teach"])
    assert (teach.command, teach.port, teach.no_browser) == ("teach", None, False)
    assert teach.theme == "light"
    assert parser.parse_args(["teach", "--theme", "dark"]).theme == "dark"


def test_run_lab_copies_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    seen = {}

    def fake_serve(command: servers.ServerCommand, open_browser: bool, what: str) -> int:
        seen.update(command=command, open_browser=open_browser)
        return 0

    monkeypatch.setattr(servers, "_serve", fake_serve)
    assert servers.run_lab(tmp_path / "nb", port=9001, open_browser=False) == 0
    assert seen["command"].cwd == (tmp_path / "nb").resolve()
    assert seen["open_browser"] is False
    assert (tmp_path / "nb" / servers.TEACHER).is_file()
    assert "copied" in capsys.readouterr().out


def test_the_wheel_ships_every_notebook(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", ".*cache", ".hypothesis"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(source), "-w", str(tmp_path / "dist")],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("wfexplore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("wfexplore/notebooks/")}
        teacher = archive.read(f"wfexplore/notebooks/{servers.TEACHER}")
    expected = {f"wfexplore/notebooks/{p.name}" for p in (REPO / "notebooks").glob("*.ipynb")}
    assert shipped == expected
    assert teacher == (REPO / "notebooks" / servers.TEACHER).read_bytes()


_SERVE_A_SLEEPER = """
import sys
import time
from pathlib import Path
from wfexplore.servers import ServerCommand, _serve, free_port
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
port = free_port()
sys.exit(_serve(ServerCommand(sleeper, {}, "http://x", port, "t", Path.cwd()), False, "x"))
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_the_server_stops_when_the_command_is_killed(signame: str) -> None:
    import signal

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", _SERVE_A_SLEEPER], cwd=REPO)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not (children := psutil.Process(parent.pid).children()):
            assert time.monotonic() < deadline, "the server never started"
            time.sleep(0.1)
        parent.send_signal(getattr(signal, signame))
        parent.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, "the server outlived the command"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in children:
            with contextlib.suppress(psutil.Error):
                p.kill()
