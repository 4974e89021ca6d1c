"""The pruning comparer in-process: controls drive figures that equal sweeps and masks
computed independently; cached redraws are quick; impossible choices give a message."""

import time

import numpy as np
import pytest

from wfexplore.figures.pruning import CATEGORY_NAMES, PRUNED
from wfexplore.pruning import PruningSettings, prune_model, sweep
from wfexplore.widgets.pruning_comparer import PruningComparer

SPARSITIES = (0.2, 0.5, 0.8)
SETTINGS = {"damping": 1e-3, "num_samples": 16, "block_size": 5}


@pytest.fixture
def comparer(mlp, mlp_loader, tmp_path):
    return PruningComparer(
        mlp,
        mlp_loader,
        methods=("magnitude", "obd", "woodfisher"),
        sparsities=SPARSITIES,
        sparsity=0.5,
        steps_options=(1, 2),
        cache=tmp_path / "sweeps",
        compute=True,
        **SETTINGS,
    )


def reference_sweep(model, loader, update="summed", steps=1):
    return sweep(
        model,
        loader,
        methods=("magnitude", "obd", "woodfisher"),
        sparsities=SPARSITIES,
        updates=(update,),
        steps=(steps,),
        dampings=(SETTINGS["damping"],),
        num_samples=(SETTINGS["num_samples"],),
        block_sizes=(SETTINGS["block_size"],),
        cache=False,
        progress=False,
    )


def curve(fig, name):
    (trace,) = [t for t in fig.data if t.name == name]
    return np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)


def test_accuracy_curves_equal_an_independent_sweep(comparer, mlp, mlp_loader):
    assert comparer.message.value == ""
    assert comparer.progress_box.layout.display == "none"
    frame = reference_sweep(mlp, mlp_loader)
    for method, label in [("magnitude", "magnitude"), ("obd", "OBD"), ("woodfisher", "WoodFisher")]:
        x, y = curve(comparer.accuracy, label)
        rows = frame[frame["method"] == method].sort_values("sparsity")
        np.testing.assert_allclose(x, SPARSITIES)
        np.testing.assert_allclose(y, rows["accuracy"], rtol=1e-12)


def test_slider_redraws_from_the_cache_quickly(comparer, mlp, mlp_loader):
    calls = comparer.sweep_calls
    marker_before = comparer.accuracy.data[-1].y
    bars_before = [np.asarray(t.y) for t in comparer.layers.data]
    start = time.perf_counter()
    comparer.sparsity.value = 0.8
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5 and comparer.last_redraw_seconds < 0.5
    assert comparer.sweep_calls == calls  # nothing recomputed
    marker = comparer.accuracy.data[-1]
    assert marker.name == "at sparsity" and marker.y != marker_before
    frame = comparer.curve_frame()
    at = frame[frame["sparsity"] == 0.8]
    assert list(marker.y[:3]) == list(at["accuracy"]) and list(marker.x[:3]) == [0.8] * 3
    assert any(
        not np.array_equal(b, np.asarray(t.y))
        for b, t in zip(bars_before, comparer.layers.data, strict=True)
    )
    # the bars and pictures are those of a direct prune_model call
    for trace, method in zip(comparer.layers.data, ("magnitude", "obd", "woodfisher"), strict=True):
        settings = PruningSettings(method, **SETTINGS)
        direct = prune_model(mlp, settings, 0.8, data=mlp_loader, progress=False)
        np.testing.assert_allclose(trace.y, direct.layers["sparsity"])
    pictures = {t.name: np.asarray(t.z, dtype=float) for t in comparer.masks.data}
    for method, label in [("magnitude", "magnitude"), ("woodfisher", "WoodFisher")]:
        settings = PruningSettings(method, **SETTINGS)
        direct = prune_model(mlp, settings, 0.8, data=mlp_loader, progress=False)
        pruned = ~direct.masks["0.weight"].numpy()
        z = pictures[label]  # 5 units of 6 inputs: one row of the picture per unit
        np.testing.assert_array_equal(np.nan_to_num(z, nan=-1) == PRUNED, pruned)


def test_overlap_bars_equal_the_jaccard_of_the_two_methods_masks(comparer):
    comparer.overlap_a.value = "magnitude"
    comparer.overlap_b.value = "woodfisher"
    a, b = comparer.point("magnitude").masks, comparer.point("woodfisher").masks
    expected = []
    for name in a:
        pa, pb = ~a[name], ~b[name]
        expected.append(float((pa & pb).sum()) / float((pa | pb).sum()))
    np.testing.assert_allclose(comparer.overlap.data[0].y, expected)
    assert "magnitude vs WoodFisher" in comparer.overlap.layout.title.text


def test_changing_the_update_computes_it_once_and_redraws(comparer, mlp, mlp_loader):
    _, summed = curve(comparer.accuracy, "WoodFisher")
    calls = comparer.sweep_calls
    comparer.update_choice.value = "group"
    assert comparer.sweep_calls == calls + 1 and comparer.message.value == ""
    _, group = curve(comparer.accuracy, "WoodFisher")
    frame = reference_sweep(mlp, mlp_loader, update="group")
    rows = frame[frame["method"] == "woodfisher"].sort_values("sparsity")
    np.testing.assert_allclose(group, rows["accuracy"], rtol=1e-12)
    assert "group" in comparer.accuracy.layout.title.text
    comparer.update_choice.value = "summed"  # back to a computed choice: no new sweep
    assert comparer.sweep_calls == calls + 1
    np.testing.assert_allclose(curve(comparer.accuracy, "WoodFisher")[1], summed)


def test_recomputation_steps_are_swept(comparer, mlp, mlp_loader):
    comparer.methods.value = ("woodfisher",)
    comparer.overlap_a.value = comparer.overlap_b.value = "woodfisher"
    comparer.steps.value = 2
    assert "same" in comparer.message.value  # overlap of a method with itself: a note
    frame = reference_sweep(mlp, mlp_loader, steps=2)
    rows = frame[frame["method"] == "woodfisher"].sort_values("sparsity")
    np.testing.assert_allclose(curve(comparer.accuracy, "WoodFisher")[1], rows["accuracy"])


def test_impossible_choices_show_a_message_and_keep_the_figures(comparer):
    before = [np.asarray(t.y) for t in comparer.layers.data]
    comparer.methods.value = ()
    assert "No method is selected" in comparer.message.value
    assert [np.asarray(t.y) for t in comparer.layers.data][0].tolist() == before[0].tolist()
    comparer.methods.value = ("magnitude", "woodfisher")
    comparer.overlap_a.value = "obd"
    assert "OBD is not selected" in comparer.message.value
    assert len(comparer.layers.data) == 2  # the rest was drawn
    comparer.overlap_a.value = "magnitude"
    comparer.overlap_b.value = "woodfisher"
    assert comparer.message.value == ""


def test_too_few_examples_is_a_readable_message(mlp, mlp_loader, tmp_path):
    comparer = PruningComparer(
        mlp, mlp_loader, sparsities=SPARSITIES, num_samples=500, cache=False, compute=True
    )
    assert "holds only 48 examples" in comparer.message.value
    assert "Traceback" not in comparer.message.value
    assert comparer.progress_box.layout.display == "none"


def test_controls_and_figures_carry_stable_css_classes(comparer):
    classes = {c for w in [comparer.widget, *comparer.controls.values()] for c in w._dom_classes}
    for name in ("wfx-comparer", "wfx-comparer-sparsity", "wfx-comparer-methods"):
        assert name in classes
    for slot in ("accuracy", "layers", "masks", "overlap"):
        box = comparer.slots[slot].box
        assert f"wfx-comparer-{slot}" in box._dom_classes
        assert box.children == (getattr(comparer, slot),)  # the figure drawn last
    assert "wfx-comparer-message" in comparer.message._dom_classes
    assert comparer.masks.data[0].colorbar.ticktext == CATEGORY_NAMES
