"""Figures of training-aware pruning, from the frames of a small protocol sweep."""

import pytest
import torch

from tests.conftest import make_loader, make_mlp
from wfexplore.experiments import protocol_sweep
from wfexplore.figures.training import (
    accuracy_vs_wall_time,
    final_accuracy_vs_sparsity,
    step_drops,
    training_curves,
)


@pytest.fixture(scope="module")
def result():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on shared cores
    g = torch.Generator().manual_seed(2)
    loader = make_loader(torch.randn(48, 6, generator=g, dtype=torch.float64), 3)
    out = protocol_sweep(
        make_mlp(),
        loader,
        loader,
        methods=["magnitude", "obd"],
        sparsities=[0.5, 0.7],
        epochs=2,
        num_samples=16,
        damping=1e-3,
        cache=False,
        progress=False,
    )
    torch.set_num_threads(before)
    return out


def test_training_curves_draw_each_step_as_a_drop_at_its_epoch(result):
    fig = training_curves(result.history)
    lines = [t for t in fig.data if t.mode == "lines"]
    marks = [t for t in fig.data if t.mode == "markers"]
    # 2 methods × 2 training protocols (one-shot does not train) × 2 sparsity panels
    assert len(lines) == len(marks) == 8
    assert {t.xaxis for t in lines} == {"x", "x2"}
    gradual = next(t for t in lines if t.name == "magnitude · gradual" and t.xaxis == "x")
    assert list(gradual.x) == [0, 0, 1, 1, 1, 2]  # dense, after step 1, epoch 1, before/after 2
    steps = result.steps
    part = steps[(steps["method"] == "magnitude") & (steps["protocol"] == "gradual")]
    expected = part[part["sparsity"] == 0.5]["accuracy_after"].tolist()
    mark = next(t for t in marks if t.legendgroup == "magnitude · gradual" and t.xaxis == "x")
    assert list(mark.y) == pytest.approx(expected)
    assert sum(t.showlegend for t in lines) == 4


def test_training_curves_select_protocols_and_sparsities(result):
    fig = training_curves(result.history, protocols=["gradual"], sparsities=[0.7], y="loss")
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [t.name for t in lines] == ["magnitude", "OBD"]
    assert fig.layout.yaxis.title.text == "loss"


def test_step_drops_show_before_and_after_of_every_gradual_step(result):
    fig = step_drops(result.steps)
    assert len(fig.data) == 4  # before and after, per method
    steps = result.steps
    part = steps[(steps["protocol"] == "gradual") & (steps["sparsity"] == 0.7)]
    obd = part[part["method"] == "obd"]
    after = next(t for t in fig.data if t.name == "OBD, right after")
    assert list(after.y) == pytest.approx(obd["accuracy_after"].tolist())
    assert list(after.x) == pytest.approx(obd["target_sparsity"].tolist())
    with pytest.raises(ValueError, match="no steps of protocol"):
        step_drops(result.steps, sparsity=0.3)


def test_final_accuracy_has_a_line_per_method_and_protocol(result):
    fig = final_accuracy_vs_sparsity(result.points)
    names = [t.name for t in fig.data]
    assert len(names) == 2 * 3 + 1 and names[-1] == "unpruned"
    dashes = {t.name: t.line.dash for t in fig.data[:-1]}
    assert dashes["OBD · gradual"] == "solid" and dashes["OBD · one-shot"] == "dot"
    gradual = next(t for t in fig.data if t.name == "OBD · gradual")
    rows = result.points[
        (result.points["method"] == "obd") & (result.points["protocol"] == "gradual")
    ]
    assert list(gradual.y) == pytest.approx(rows.sort_values("sparsity")["accuracy"].tolist())


def test_accuracy_against_wall_time_is_on_a_log_axis(result):
    fig = accuracy_vs_wall_time(result.points)
    assert fig.layout.xaxis.type == "log"
    assert len(fig.data) == 6
    assert all(len(t.x) == 2 for t in fig.data)  # one marker per sparsity
    assert list(fig.data[0].text) == ["50%", "70%"]


def test_figures_name_missing_columns(result):
    with pytest.raises(ValueError, match="missing columns"):
        training_curves(result.points)
    with pytest.raises(ValueError, match="empty"):
        final_accuracy_vs_sparsity(result.points.iloc[:0])
