"""The layer sensitivity explorer in-process: its figures equal saliencies and per-layer
sensitivity computed independently; picking a layer only redraws; impossible choices give a
message."""

import numpy as np
import pytest
import torch

from tests.conftest import loop_gradients
from wfexplore.params import ParameterLayout
from wfexplore.pruning import PruningSettings, layer_sensitivity
from wfexplore.widgets.sensitivity_explorer import ALL_LAYERS, LayerSensitivityExplorer

SPARSITIES = (0.3, 0.6)
LAMBDA, M = 1e-3, 16


@pytest.fixture
def explorer(mlp, mlp_loader):
    return LayerSensitivityExplorer(
        mlp,
        mlp_loader,
        methods=("magnitude", "obd", "woodfisher"),
        sparsities=SPARSITIES,
        damping=LAMBDA,
        num_samples=M,
        block_size=5,
        compute=True,
        prefetch=False,  # layers computed when picked, not ahead
    )


def violin(fig, label):
    (trace,) = [t for t in fig.data if t.name.startswith(label)]
    return np.asarray(trace.y, dtype=float)


def test_saliency_violins_equal_hand_computed_saliencies(explorer, mlp, mlp_loader):
    assert explorer.message.value.startswith('<p style="color:#555')  # a note, not an error
    assert explorer.layer.value == "0.weight"
    w = mlp[0].weight.detach().double().reshape(-1)
    np.testing.assert_allclose(violin(explorer.saliency, "magnitude"), np.sort(w**2 / 2))
    layout = ParameterLayout.from_model(mlp, block_size="layer")
    g = loop_gradients(mlp, mlp_loader, layout, M)[:, :30].double()
    obd = 0.5 * (g.pow(2).mean(0) + LAMBDA) * w**2  # ρ = w² / (2 / (F_qq + λ))
    np.testing.assert_allclose(violin(explorer.saliency, "OBD"), np.sort(obd.numpy()), rtol=1e-8)
    assert explorer.saliency.layout.yaxis.type == "log"


def test_scatter_equals_an_independent_layer_sensitivity(explorer, mlp, mlp_loader):
    explorer.log_scale.value = False
    explorer.layer.value = "3.weight"
    settings = PruningSettings("woodfisher", damping=LAMBDA, num_samples=M, block_size=5)
    frame = layer_sensitivity(mlp, settings, mlp_loader, sparsities=SPARSITIES, progress=False)
    rows = frame[frame["parameter"] == "3.weight"]
    wf = {t.name: t for t in explorer.scatter.data}["WoodFisher"]
    np.testing.assert_allclose(wf.x, rows["predicted_delta_loss"], rtol=1e-8)
    np.testing.assert_allclose(wf.y, rows["actual_delta_loss"], rtol=1e-8)
    assert "magnitude" not in {t.name for t in explorer.scatter.data}
    assert "3.weight" in explorer.scatter.layout.title.text
    explorer.log_scale.value = True  # log axes: every point drawn, those ≤ 0 at the floor
    traces = {t.name: t for t in explorer.scatter.data}
    drawn = [x for name in ("OBD", "WoodFisher") if name in traces for x in traces[name].x]
    floor = traces.get("≤ 0 (drawn at the floor)")
    drawn += [] if floor is None else [float(v[0]) for v in floor.customdata]
    expected = list(explorer.layer_rows()["predicted_delta_loss"])
    assert sorted(drawn) == pytest.approx(sorted(expected), rel=1e-12)
    assert explorer.scatter.layout.xaxis.type == "log"


def test_a_layer_is_pruned_alone_when_first_picked_then_only_redrawn(explorer):
    assert explorer.sensed_layers == {"0.weight"}  # the first figure needs only this layer
    assert set(explorer.sensitivity["parameter"]) == {"0.weight"}
    before = violin(explorer.saliency, "WoodFisher")
    computations = explorer.computations
    explorer.layer.value = "3.weight"
    assert explorer.computations == computations  # no curvature estimated again
    assert explorer.sensed_layers == {"0.weight", "3.weight"}
    rows = explorer.sensitivity
    assert len(rows) == 2 * 2 * len(SPARSITIES)  # (OBD, WoodFisher) × layers × sparsities
    after = violin(explorer.saliency, "WoodFisher")
    assert len(after) == 15 and not np.array_equal(before, after)
    explorer.layer.value = "0.weight"
    assert len(explorer.sensitivity) == len(rows)  # picked before: only redrawn
    assert explorer.last_redraw_seconds < 2.0
    explorer.log_scale.value = False
    explorer.layer.value = ALL_LAYERS
    names = {t.name for t in explorer.scatter.data}
    for layer in ("0.weight", "3.weight"):
        for method in ("OBD", "WoodFisher"):
            assert f"{layer} · {method}" in names
    xaxis = explorer.saliency.layout.xaxis
    assert set(explorer.saliency.data[0].x) == set(xaxis.tickvals) == {0, 1}
    assert list(xaxis.ticktext) == ["0.weight", "3.weight"]
    assert explorer.computations == computations


def test_other_layers_are_computed_ahead_in_the_background(mlp, mlp_loader):
    explorer = LayerSensitivityExplorer(
        mlp, mlp_loader, methods=("obd", "woodfisher"), sparsities=SPARSITIES, damping=LAMBDA,
        num_samples=M, block_size=5, compute=True,
    )  # fmt: skip
    assert explorer.wait_for_prefetch(timeout=300) and explorer.prefetch_error is None
    assert explorer.prefetched == 1 and explorer.sensed_layers == {"0.weight", "3.weight"}
    held = explorer.sensitivity
    explorer.layer.value = "3.weight"
    explorer.layer.value = ALL_LAYERS
    assert explorer.sensitivity is held  # only redrawn: nothing computed when picked
    settings = PruningSettings("woodfisher", damping=LAMBDA, num_samples=M, block_size=5)
    frame = layer_sensitivity(mlp, settings, mlp_loader, sparsities=SPARSITIES, progress=False)
    ahead = held[(held["method"] == "woodfisher")].sort_values(["parameter", "sparsity"])
    np.testing.assert_allclose(
        ahead["actual_delta_loss"],
        frame.sort_values(["parameter", "sparsity"])["actual_delta_loss"],
        rtol=1e-10,
    )


def test_all_layers_computes_every_layer_once(mlp, mlp_loader):
    explorer = LayerSensitivityExplorer(
        mlp, mlp_loader, methods=("obd",), sparsities=SPARSITIES, damping=LAMBDA,
        num_samples=M, layer=ALL_LAYERS, compute=True,
    )  # fmt: skip
    assert explorer.sensed_layers == {"0.weight", "3.weight"}
    settings = PruningSettings("obd", damping=LAMBDA, num_samples=M)
    frame = layer_sensitivity(mlp, settings, mlp_loader, sparsities=SPARSITIES, progress=False)
    np.testing.assert_allclose(
        explorer.sensitivity["actual_delta_loss"], frame["actual_delta_loss"], rtol=1e-10
    )
    with pytest.raises(ValueError, match="choose among"):
        layer_sensitivity(mlp, settings, mlp_loader, layers=["9.weight"], progress=False)


def test_impossible_choices_show_a_message(explorer):
    explorer.methods.value = ()
    assert "No method is selected" in explorer.message.value
    explorer.methods.value = ("magnitude",)
    assert "no curvature" in explorer.message.value
    assert explorer.scatter.layout.title.text == "No loss prediction to draw"


def test_too_few_examples_is_a_readable_message(mlp, mlp_loader):
    explorer = LayerSensitivityExplorer(mlp, mlp_loader, num_samples=1000, compute=True)
    assert "holds only 48 examples" in explorer.message.value
    assert explorer.progress_box.layout.display == "none"


def test_css_classes(explorer):
    assert "wfx-sensitivity" in explorer.widget._dom_classes
    assert "wfx-sensitivity-layer" in explorer.layer._dom_classes
    for slot in ("saliency", "scatter"):
        box = explorer.slots[slot].box
        assert f"wfx-sensitivity-{slot}" in box._dom_classes
        assert box.children == (getattr(explorer, slot),)
    assert torch.is_tensor(explorer.saliencies["obd"].scores)


def test_methods_are_toggle_buttons_one_click_each(explorer):
    import ipywidgets as widgets

    buttons = explorer.methods.buttons
    assert all(isinstance(b, widgets.ToggleButton) for b in buttons.values())
    assert [b.description for b in buttons.values()] == ["magnitude", "OBD", "WoodFisher"]
    buttons["woodfisher"].value = False  # one click drops WoodFisher
    assert explorer.state.methods == ("magnitude", "obd")
    assert "WoodFisher" not in {t.name for t in explorer.scatter.data}
    buttons["woodfisher"].value = True
    assert explorer.state.methods == ("magnitude", "obd", "woodfisher")
    explorer.methods.value = ("obd",)
    assert [b.value for b in buttons.values()] == [False, True, False]


def test_all_layers_table_is_one_row_per_layer(explorer):
    explorer.layer.value = ALL_LAYERS
    table = explorer.table.value
    assert "wfx-sensitivity-summary" in table
    body = table.split("<tbody>")[1]
    assert body.count("<tr") == 2  # two analysed layers, not layers × sparsities × methods
    assert "WoodFisher: δL at" in table and "predicted / actual" in table


def test_save_writes_the_figures_and_the_table(explorer, tmp_path):
    path = explorer.save(str(tmp_path / "sensitivity.html"))
    text = path.read_text(encoding="utf-8")
    assert text.count('class="plotly-graph-div"') == 2
    assert "Each layer pruned alone" in text and "data:text/csv;base64," in text
    explorer.save_bar.path.value = str(tmp_path / "clicked.html")
    explorer.save_bar.button.click()
    assert (tmp_path / "clicked.html").exists() and "Saved to" in explorer.save_bar.status.value
