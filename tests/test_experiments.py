from statistics import median

import pytest
import torch

from tests.conftest import dense_block_fisher, loop_gradients
from tests.test_hessian import autograd_hessian
from wfexplore.cli import main
from wfexplore.experiments import compare_fisher_and_hessian
from wfexplore.params import ParameterLayout


def test_layer_table_matches_hand_built_fisher_and_autograd_hessian(mlp, mlp_loader):
    lam = 1e-3
    result = compare_fisher_and_hessian(
        mlp, mlp_loader, block_size=10, num_samples=40, damping=lam, progress=False
    )
    layout = ParameterLayout.from_model(mlp, block_size=10)
    fisher, _ = dense_block_fisher(loop_gradients(mlp, mlp_loader, layout, 40), layout, lam)
    hessian = autograd_hessian(mlp, mlp_loader, layout) + lam * torch.eye(layout.dim).double()
    errors = {0: [], 1: []}
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        f, h = fisher[rows, rows], hessian[rows, rows]
        errors[b.layer].append(float(torch.linalg.norm(f - h) / torch.linalg.norm(h)))
    for layer, errs in errors.items():
        row = result.layers[result.layers["layer"] == layer].iloc[0]
        assert row["fisher_vs_hessian_error"] == pytest.approx(median(errs), rel=1e-8)
        assert row["blocks"] == len(errs)
    assert list(result.layers["numel"]) == [30, 15]


@pytest.mark.slow
def test_demo_command_prints_the_layer_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path))
    report = tmp_path / "out" / "report.html"
    code = main(
        ["demo", "--num-samples", "64", "--hessian-examples", "32", "--block-size", "32"]
        + ["--sparsities", "0.5,0.9", "--report", str(report)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "test accuracy" in out
    for column in ("fisher_vs_hessian_error", "obs_update_cosine", "hessian_dominant_rows"):
        assert column in out
    assert (tmp_path / "digits-mlp-v1.pt").is_file()
    for method in ("magnitude", "OBD", "WoodFisher"):
        assert method in out
    assert f"report: {report.resolve()}" in out
    text = report.read_text(encoding="utf-8")
    assert text.count("* plotly.js v") == 1
    assert text.count('class="plotly-graph-div"') >= 8
    for heading in ("Fisher versus Hessian", "Pruning comparison", "Masks", "Per-layer sparsity"):
        assert heading in text


def test_cli_model_choices_are_the_trainable_digits_models():
    from wfexplore.cli import DIGITS_KINDS as CLI_KINDS
    from wfexplore.training import DIGITS_KINDS

    assert CLI_KINDS == DIGITS_KINDS
