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


# --- the pruning comparison: nothing is pruned twice ------------------------------------------
@pytest.fixture
def prunings(monkeypatch):
    """Count the pruning runs of the sweep, and forbid any other way of pruning."""
    import wfexplore.pruning.prune as prune_module
    import wfexplore.pruning.sweeps as sweeps_module

    calls = []
    real = sweeps_module.run_pruning

    def counted(*args, **kwargs):
        calls.append(args[3])  # the sparsity
        return real(*args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("prune_model called: the sweep's masks should have been used")

    monkeypatch.setattr(sweeps_module, "run_pruning", counted)
    monkeypatch.setattr(prune_module, "prune_model", refused)
    return calls


CURVATURE = {"damping": 1e-3, "num_samples": 16, "block_size": 5}


def test_compare_pruning_prunes_each_point_once(mlp, mlp_loader, prunings, tmp_path):
    from wfexplore.experiments import compare_pruning

    result = compare_pruning(
        mlp, mlp_loader, mlp_loader, sparsities=(0.3, 0.6), sparsity=0.5,
        sensitivity_sparsities=(0.5,), cache=tmp_path, progress=False, **CURVATURE,
    )  # fmt: skip
    assert sorted(prunings) == [0.3, 0.3, 0.3, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6]
    assert sorted(result.sweep["sparsity"].unique()) == [0.3, 0.6]  # 0.5 is for the pictures
    assert "masks" not in result.sweep.columns
    wf = result.allocation[result.allocation["method"] == "woodfisher"]
    masks = result.points["woodfisher"].masks
    assert list(wf["pruned"]) == [int((~keep).sum()) for keep in masks.values()]
    assert set(wf["sparsity"]) == {0.5}
    assert result.overlap["pair"].nunique() == 3
    again = compare_pruning(
        mlp, mlp_loader, mlp_loader, sparsities=(0.3, 0.6), sparsity=0.5,
        sensitivity_sparsities=(0.5,), cache=tmp_path, progress=False, **CURVATURE,
    )  # fmt: skip
    assert len(prunings) == 9  # the second comparison reads every point from the cache
    for method, point in result.points.items():
        for name, keep in point.masks.items():
            assert torch.equal(again.points[method].masks[name], keep)


def test_a_new_comparer_setting_prunes_only_its_own_points(mlp, mlp_loader, prunings, tmp_path):
    import time

    from wfexplore.widgets.pruning_comparer import PruningComparer

    comparer = PruningComparer(
        mlp,
        mlp_loader,
        sparsities=(0.2, 0.5, 0.8),
        cache=tmp_path,
        prefetch=False,
        compute=True,
        **CURVATURE,
    )
    assert comparer.message.value == "" and len(prunings) == 9
    start = time.perf_counter()
    comparer.update_choice.value = "group"  # only WoodFisher has an update to change
    print(f"new comparer setting (tiny MLP): {time.perf_counter() - start:.2f} s")
    assert len(prunings) == 12 and comparer.message.value == ""
    comparer.state.steps = 2  # the state drives the controls and the figures
    assert comparer.steps.value == 2 and len(prunings) == 21
    assert "2 steps" in comparer.accuracy.layout.title.text


def test_method_sentences_name_both_methods_where_they_tie():
    import pandas as pd

    from wfexplore.experiments import compare_methods_sentences

    frame = pd.DataFrame(
        {
            "method": ["woodfisher", "magnitude"] * 3,
            "sparsity": [0.5, 0.5, 0.7, 0.7, 0.9, 0.9],
            "accuracy": [0.9, 0.9, 0.8, 0.6, 0.3, 0.4],
        }
    )
    better, worse, tied = compare_methods_sentences(frame, "woodfisher", "magnitude")
    assert "at sparsity 70%" in better and "0.800 against 0.600" in better
    assert worse.startswith("magnitude is more accurate than WoodFisher at 90%")
    assert tied == "WoodFisher and magnitude reach the same accuracy at 50%."
