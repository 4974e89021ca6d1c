"""The presentation only calls the experiment layer and draws: no module of it imports gradient
samples, a curvature representation or the estimation functions of the pruning package, and
every name it imports from the package exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wfexplore"
PRESENTATION = sorted(
    [
        *(PACKAGE / "widgets").glob("*.py"),
        *(PACKAGE / "figures").glob("*.py"),
        PACKAGE / "report.py",
        PACKAGE / "cli.py",
    ]
)
ALLOWED_CURVATURE = "wfexplore.curvature.base"
ESTIMATION = {"estimate_curvature", "method_curvature", "take_examples"}


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import in the file, nested ones too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, alias.name, node.lineno) for alias in node.names]
    return out


def forbidden(module: str, name: str | None) -> str | None:
    """Why importing ``name`` from ``module`` is not for the presentation, or None."""
    full = f"{module}.{name}" if name and module == "wfexplore" else module
    if full == "wfexplore.gradients" or full.startswith("wfexplore.gradients."):
        return "gradient samples are the experiment layer's"
    if full.startswith("wfexplore.curvature") and full != ALLOWED_CURVATURE:
        return f"only the interface type ({ALLOWED_CURVATURE}) is for the presentation"
    if full.startswith("wfexplore.pruning") and name in ESTIMATION:
        return "estimating a curvature is the experiment layer's"
    return None


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", PRESENTATION, ids=_rel)
def test_presentation_imports_no_estimation(path: Path) -> None:
    found = [
        f"{_rel(path)}:{line}: {module}{'.' + name if name else ''} ({why})"
        for module, name, line in imports(path)
        if (why := forbidden(module, name))
    ]
    assert not found, "\n".join(found)


def module_file(module: str) -> Path | None:
    """The file of a ``wfexplore`` module in this checkout (not one an editable install of
    another checkout would fall back to), or None."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("path", PRESENTATION, ids=_rel)
def test_presentation_imports_names_that_exist(path: Path) -> None:
    missing = []
    for module, name, line in imports(path):
        if not module.startswith("wfexplore"):
            continue
        if module_file(module) is None:
            missing.append(f"{_rel(path)}:{line}: there is no module {module}")
            continue
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name) and not module_file(f"{module}.{name}"):
            missing.append(f"{_rel(path)}:{line}: {name} is not in {module}")
    assert not missing, "\n".join(missing)


def test_the_gate_sees_what_it_forbids() -> None:
    assert forbidden("wfexplore.gradients", "gradient_samples")
    assert forbidden("wfexplore.curvature", "hessian_blocks")
    assert forbidden("wfexplore.curvature.dense", "group_blocks")
    assert forbidden("wfexplore", "curvature")
    assert forbidden("wfexplore.pruning.estimation", "take_examples")
    assert forbidden("wfexplore.pruning", "estimate_curvature")
    assert not forbidden("wfexplore.curvature.base", "Curvature")
    assert not forbidden("wfexplore.pruning", "mask_overlap")
    assert not forbidden("wfexplore.experiments", "compare_pruning")


CURVATURE_CLASSES = {
    "Curvature",
    "DampedCurvature",
    "DenseBlockCurvature",
    "DiagonalCurvature",
    "IdentityCurvature",
    "KFACCurvature",
    "LowRankCurvature",
    "WoodburyCurvature",
}


def test_no_isinstance_on_curvature_classes_outside_the_curvature_package():
    """Representations are told apart by the interface (``is_diagonal``, ``undamped``), never by
    their class, so that a new representation needs no change elsewhere."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "curvature") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance"):
                continue
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if names & CURVATURE_CLASSES:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, offenders


def test_the_project_passes_ruff_with_its_complexity_rules():
    """ruff check (with C901 at 10, PLR0912, PLR0915 from pyproject.toml) and ruff format of
    the package, tests and benchmarks; the notebooks are linted."""
    import subprocess
    import sys

    root = PACKAGE.parent
    code = ["wfexplore", "tests", "benchmarks"]
    for command in (["check", *code, "notebooks"], ["format", "--check", *code]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_teacher_page_imports_no_torch():
    """The Voilà teacher draws its first figure without loading torch (seconds of import):
    every code cell of teach.ipynb run in a fresh interpreter."""
    import subprocess
    import sys

    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "teach.ipynb"
    probe = (
        "import json, sys; "
        f"cells = json.load(open({str(notebook)!r}, encoding='utf-8'))['cells']; ns = {{}}; "
        "[exec(''.join(c['source']), ns) for c in cells if c['cell_type'] == 'code']; "
        "print(sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
