import time

import numpy as np
import pytest
import torch

import wfexplore.experiments.fisher_hessian as experiment_module
from tests.conftest import dense_block_fisher, loop_gradients
from tests.test_hessian import autograd_hessian
from wfexplore.params import ParameterLayout
from wfexplore.widgets.fisher_explorer import FisherHessianExplorer

LAYER = "0.weight"  # 5×6 = 30 weights in the conftest MLP; "3.weight" has 15


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of the two expensive functions the explorer's cache may make."""
    calls = {"hessian": 0, "gradients": 0}
    real_hessian = experiment_module.hessian_blocks
    real_gradients = experiment_module.gradient_samples

    def hessian(*args, **kwargs):
        calls["hessian"] += 1
        return real_hessian(*args, **kwargs)

    def gradients(*args, **kwargs):
        calls["gradients"] += 1
        return real_gradients(*args, **kwargs)

    monkeypatch.setattr(experiment_module, "hessian_blocks", hessian)
    monkeypatch.setattr(experiment_module, "gradient_samples", gradients)
    return calls


def make_explorer(mlp, loader, **kwargs) -> FisherHessianExplorer:
    settings = {"layer": LAYER, "block_size": 8, "num_samples": 20, "damping": 1e-3}
    return FisherHessianExplorer(mlp, loader, progress=False, **{**settings, **kwargs})


def heatmaps(explorer: FisherHessianExplorer) -> list[np.ndarray]:
    return [np.array(trace.z, dtype=float) for trace in explorer.figure.data]


def test_heatmaps_equal_a_hand_built_fisher_and_the_autograd_hessian(mlp, mlp_loader):
    explorer = make_explorer(mlp, mlp_loader)
    before = heatmaps(explorer)
    lam, m, index = 1e-2, 12, 2
    explorer.num_samples.value = m
    explorer.damping.value = lam
    explorer.block.value = index
    after = heatmaps(explorer)
    assert explorer.message.value == ""
    assert not np.allclose(before[1], after[1])

    layout = ParameterLayout.from_model(mlp, names=[LAYER], block_size=8)
    fisher, _ = dense_block_fisher(loop_gradients(mlp, mlp_loader, layout, m), layout, lam)
    hessian = autograd_hessian(mlp, mlp_loader, layout) + lam * torch.eye(layout.dim).double()
    block = layout.blocks[index]
    rows = slice(block.start, block.stop)
    f, h = fisher[rows, rows].numpy(), hessian[rows, rows].numpy()
    np.testing.assert_allclose(after[0], h, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(after[1], f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(after[2], f - h, rtol=1e-9, atol=1e-12)
    axis = explorer.figure.layout.coloraxis
    assert axis.cmax == pytest.approx(max(np.abs(a).max() for a in (f, h, f - h)))
    assert axis.cmin == -axis.cmax
    error = np.linalg.norm(f - h) / np.linalg.norm(h)
    assert explorer.comparison["relative_frobenius_error"] == pytest.approx(error, rel=1e-8)
    undamped_h = h - lam * np.eye(len(h))
    diagonal_share = (np.diag(undamped_h) ** 2).sum() / (undamped_h**2).sum()
    assert explorer.statistics.loc["hessian", "diagonal_frobenius_share"] == pytest.approx(
        diagonal_share
    )
    assert "Hessian H" in explorer.stats.value
    assert "wfx-fisher-heatmap" in explorer.heatmap._dom_classes
    assert explorer.heatmap.children == (explorer.figure,)
    assert "wfx-fisher-damping" in explorer.damping._dom_classes

    explorer.view.value = "inverse"
    np.testing.assert_allclose(heatmaps(explorer)[1], np.linalg.inv(f), rtol=1e-7, atol=1e-9)


def test_damping_samples_and_block_redraw_quickly_without_new_hessians(mlp, mlp_loader, counted):
    explorer = make_explorer(mlp, mlp_loader)
    assert counted == {"hessian": 1, "gradients": 1}
    changes = [
        (explorer.damping, 3e-2),
        (explorer.num_samples, 7),
        (explorer.block, 3),
        (explorer.damping, 1e-5),
        (explorer.view, "inverse"),
        (explorer.log_scale, True),
        (explorer.num_samples, 40),
    ]
    for control, value in changes:
        before = heatmaps(explorer)
        start = time.perf_counter()
        control.value = value
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, (control.description, elapsed)
        assert explorer.message.value == ""
        assert any(
            not np.array_equal(a, b) for a, b in zip(before, heatmaps(explorer), strict=True)
        )
    assert counted == {"hessian": 1, "gradients": 1}

    explorer.fisher.value = "true"  # new gradient samples, same Hessian
    assert counted == {"hessian": 1, "gradients": 2}
    assert "F_true" in explorer.figure.layout.annotations[1].text
    explorer.block_size.value = 4  # blocks of 4 lie inside blocks of 8: cut, not recomputed
    assert counted["hessian"] == 1
    layout = ParameterLayout.from_model(mlp, names=[LAYER], block_size=4)
    reference = autograd_hessian(mlp, mlp_loader, layout)
    cut = explorer.cache.hessian(LAYER, 4)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        np.testing.assert_allclose(cut.block(b.index), reference[rows, rows], atol=1e-12)
    explorer.layer.value = "3.weight"
    assert counted["hessian"] == 2
    assert explorer.block.max == 15 // 4  # ceil(15 / 4) blocks


def test_impossible_settings_show_a_message_instead_of_an_exception(mlp, mlp_loader):
    explorer = make_explorer(mlp, mlp_loader, layer="3.weight", block_size=8)
    before = heatmaps(explorer)
    explorer.block_size.value = 32  # the layer has 15 weights
    assert "larger than layer 3.weight" in explorer.message.value
    assert all(np.array_equal(a, b) for a, b in zip(before, heatmaps(explorer), strict=True))

    explorer.block_size.value = 8
    assert explorer.message.value == ""
    explorer.batch_size.value = 64  # the data holds 48 examples
    assert "more than the 48 examples" in explorer.message.value

    explorer.batch_size.value = 4  # 20 samples of 4 need 80 examples: m is lowered to 12
    assert explorer.num_samples.value == 12 and explorer.num_samples.max == 12
    assert "m lowered from 20 to 12" in explorer.message.value
    explorer.batch_size.value = 1  # the wanted m comes back when the data allows it
    assert explorer.num_samples.value == 20
    assert explorer.message.value == ""


def test_sweep_rows_are_block_medians_of_the_hand_built_comparison(mlp, mlp_loader):
    explorer = make_explorer(mlp, mlp_loader)
    base = {"num_samples": 16, "damping": 1e-3, "batch_size": 1}
    frame = explorer.cache.sweep(
        LAYER, 8, base=base, num_samples=[4, 16], dampings=[1e-1], batch_sizes=[2]
    )
    assert list(frame["varied"]) == ["num_samples", "num_samples", "damping", "batch_size"]
    row = frame[(frame["varied"] == "damping")].iloc[0]
    assert (row["num_samples"], row["damping"], row["batch_size"]) == (16, 1e-1, 1)

    layout = ParameterLayout.from_model(mlp, names=[LAYER], block_size=8)
    fisher, _ = dense_block_fisher(loop_gradients(mlp, mlp_loader, layout, 16), layout, 1e-1)
    hessian = autograd_hessian(mlp, mlp_loader, layout) + 1e-1 * torch.eye(layout.dim).double()
    errors = []
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        f, h = fisher[rows, rows], hessian[rows, rows]
        errors.append(float(torch.linalg.norm(f - h) / torch.linalg.norm(h)))
    assert row["relative_frobenius_error"] == pytest.approx(np.median(errors), rel=1e-8)
    mini = frame[frame["varied"] == "batch_size"].iloc[0]
    assert mini["fisher_mean_diagonal"] < frame.iloc[1]["fisher_mean_diagonal"]


def test_the_state_drives_the_controls_and_the_heatmaps(mlp, mlp_loader, counted):
    explorer = make_explorer(mlp, mlp_loader)
    before = heatmaps(explorer)
    explorer.state.damping = 3e-2
    assert explorer.damping.value == pytest.approx(3e-2)
    assert not np.array_equal(before[1], heatmaps(explorer)[1])
    explorer.state.block = 3
    assert explorer.block.value == 3 and "block 3" in explorer.figure.layout.title.text
    explorer.state.block_size = 16  # 30 weights: two blocks, so block 3 is lowered to 1
    assert explorer.block.max == 1 and explorer.block.value == explorer.state.block == 1
    assert "block 1" in explorer.figure.layout.title.text and explorer.message.value == ""
    assert counted["gradients"] == 1


def test_statistics_lead_with_dominance_among_non_zero_rows_and_save_writes_html(
    mlp, mlp_loader, tmp_path
):
    explorer = make_explorer(mlp, mlp_loader)
    rows = list(explorer.statistics.columns)
    assert rows[:2] == ["dominant_nonzero_row_share", "zero_row_share"]
    assert "among the non-zero rows" in explorer.stats.value
    assert explorer.figure.layout.width is None  # sizes to the page
    path = explorer.save(str(tmp_path / "fisher.html"))
    text = path.read_text(encoding="utf-8")
    assert text.count('class="plotly-graph-div"') == 1
    assert "Block statistics (without λ)" in text and "dominant_nonzero_row_share" in text
