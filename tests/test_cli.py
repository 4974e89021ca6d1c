"""The command line refuses bad values in the parser: exit code 2, one error line, no work."""

from __future__ import annotations

from pathlib import Path

import pytest

import wfexplore.training
from wfexplore.cli import build_parser, main


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(autouse=True)
def _no_training(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        wfexplore.training, "pretrained_digits_model", lambda *a, **k: calls.append(a)
    )
    monkeypatch.chdir(tmp_path)  # the default report goes to the working folder
    yield
    assert calls == [], "work started before the arguments were checked"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--num-samples", "0", "expected a positive integer, got '0'"),
        ("--num-samples", "-5", "expected a positive integer"),
        ("--num-samples", "many", "expected a positive integer"),
        ("--hessian-examples", "0", "expected a positive integer"),
        ("--damping", "nan", "expected a finite positive number"),
        ("--damping", "-1", "expected a finite positive number"),
        ("--damping", "inf", "expected a finite positive number"),
        ("--damping", "0", "expected a finite positive number"),
        ("--block-size", "0", "expected a positive integer, 'layer' or 'model'"),
        ("--block-size", "-3", "expected a positive integer, 'layer' or 'model'"),
        ("--block-size", "rows", "expected a positive integer, 'layer' or 'model'"),
    ],
)
def test_demo_numbers_are_checked_by_the_parser(option, value, message, capsys):
    line = refused(["demo", option, value], capsys)
    assert option in line and message in line


@pytest.mark.parametrize("command", ["lab", "teach"])
@pytest.mark.parametrize("port", ["-1", "0", "65536", "http"])
def test_ports_outside_1_to_65535_are_refused(command, port, capsys):
    line = refused([command, "--port", port], capsys)
    assert "--port" in line and "from 1 to 65535" in line


def test_good_values_parse():
    args = build_parser().parse_args(
        ["demo", "--num-samples", "8", "--damping", "1e-3", "--block-size", "layer"]
    )
    assert (args.num_samples, args.damping, args.block_size) == (8, 1e-3, "layer")
    assert build_parser().parse_args(["demo", "--block-size", "16"]).block_size == 16
    assert build_parser().parse_args(["teach", "--port", "65535"]).port == 65535


def test_a_report_path_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys):
    line = refused(["demo", "--report", str(tmp_path)], capsys)
    assert "--report" in line and "is a folder, not a file" in line


def test_a_report_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    line = refused(["demo", "--report", str(tmp_path / "plain" / "sub" / "r.html")], capsys)
    assert "is a file, so no folder can be made there" in line


def test_a_report_in_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch, capsys):
    import wfexplore.cli as cli

    def refuse(*args, **kwargs):  # root ignores file modes: refuse where the OS would
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "mkstemp", refuse)
    line = refused(["demo", "--report", str(tmp_path / "r.html")], capsys)
    assert "is not writable (Permission denied)" in line


def test_a_writable_report_path_with_missing_folders_is_accepted_and_left_clean(tmp_path):
    target = tmp_path / "new" / "deeper" / "r.html"
    args = build_parser().parse_args(["demo", "--report", str(target)])
    assert args.report == Path(target)
    assert list(tmp_path.iterdir()) == []  # nothing created by the check
