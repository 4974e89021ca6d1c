"""The pruning comparer in-process: controls drive figures that equal sweeps and masks
computed independently; cached redraws are quick; impossible choices give a message."""

import functools
import time

import numpy as np
import pytest
import torch

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
        prefetch=False,
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


# --- protocols with training -----------------------------------------------------------------
def shuffling(loader):
    from torch.utils.data import DataLoader

    return DataLoader(loader.dataset, batch_size=8, shuffle=True)


def test_training_protocols_equal_direct_gradual_and_finetune_runs(mlp, mlp_loader, tmp_path):
    from wfexplore.pruning import gradual_prune, one_shot_then_finetune

    train = shuffling(mlp_loader)
    comparer = PruningComparer(
        mlp, mlp_loader, methods=("magnitude", "woodfisher"), sparsities=(0.3, 0.6),
        sparsity=0.6, train_data=train, epochs=2, prune_every=1, cache=tmp_path / "sweeps",
        prefetch=False, compute=True, **SETTINGS,
    )  # fmt: skip
    assert comparer.protocol.layout.display != "none"
    one_shot = {m: curve(comparer.accuracy, label)[1] for m, label in _LABELS}
    calls = comparer.sweep_calls
    runs = {
        "gradual": functools.partial(gradual_prune, prune_every=1),
        "one_shot_finetune": one_shot_then_finetune,
    }
    for protocol, run in runs.items():
        comparer.protocol.value = protocol
        assert comparer.message.value == "" and comparer.sweep_calls == calls + 1
        calls = comparer.sweep_calls
        assert comparer.steps.disabled
        title = {"gradual": "after gradual", "one_shot_finetune": "after one-shot + fine-tune"}
        assert title[protocol] in comparer.accuracy.layout.title.text
        for method, label in _LABELS:
            settings = PruningSettings(method, **SETTINGS)
            direct = run(
                mlp, settings, 0.6, train_data=train, eval_data=mlp_loader, data=mlp_loader,
                epochs=2,
                progress=False,
            )  # fmt: skip
            x, y = curve(comparer.accuracy, label)
            assert y[list(x).index(0.6)] == pytest.approx(direct.summary["accuracy"], abs=1e-12)
            for name, keep in comparer.point(method).masks.items():
                assert torch.equal(keep, direct.masks[name].cpu())
    comparer.protocol.value = "one_shot"  # computed before: drawn from the cache
    assert comparer.sweep_calls == calls and not comparer.steps.disabled
    for method, label in _LABELS:
        np.testing.assert_array_equal(curve(comparer.accuracy, label)[1], one_shot[method])


_LABELS = [("magnitude", "magnitude"), ("woodfisher", "WoodFisher")]


def test_training_protocols_need_training_data(mlp, mlp_loader):
    with pytest.raises(ValueError, match="give train_data="):
        PruningComparer(mlp, mlp_loader, protocols=("one_shot", "gradual"), cache=False)
    with pytest.raises(ValueError, match="'annealed' is not one of"):
        PruningComparer(mlp, mlp_loader, protocols=("annealed",), cache=False)
    single = PruningComparer(mlp, mlp_loader, cache=False)
    assert single.protocol.layout.display == "none"


def test_methods_are_toggle_buttons_and_save_writes_the_figures(comparer, tmp_path):
    buttons = comparer.methods.buttons
    buttons["obd"].value = False  # one click drops one method
    assert comparer.state.methods == ("magnitude", "woodfisher")
    assert [t.name for t in comparer.layers.data] == ["magnitude", "WoodFisher"]
    written = comparer.save_bar.save(str(tmp_path / "comparison.html"))
    page = open(written, encoding="utf-8").read()
    assert "Accuracy after one-shot pruning" in page
    assert "Per-layer sparsity at 50%" in page and "WoodFisher" in page
    assert "wfx-comparer-save-status" not in page and "Saved to" in comparer.save_bar.status.value


def test_training_protocol_points_are_read_from_the_protocol_sweeps_cache(
    mlp, mlp_loader, tmp_path
):
    from wfexplore.experiments import protocol_sweep

    train, folder = shuffling(mlp_loader), tmp_path / "sweeps"
    plan = {"epochs": 2, "prune_every": 1}
    swept = protocol_sweep(
        mlp, train, mlp_loader, data=mlp_loader, methods=("magnitude", "woodfisher"),
        sparsities=(0.3, 0.6), protocols=("gradual",), cache=folder, keep_masks=True,
        progress=False, **plan, **SETTINGS,
    )  # fmt: skip
    comparer = PruningComparer(
        mlp, mlp_loader, methods=("magnitude", "woodfisher"), sparsities=(0.3, 0.6),
        train_data=train, protocols=("gradual",), protocol="gradual", cache=folder,
        compute=True, **plan, **SETTINGS,
    )  # fmt: skip
    assert comparer.frame["cached"].all()
    for method, label in _LABELS:
        rows = swept.points[swept.points["method"] == method].sort_values("sparsity")
        np.testing.assert_array_equal(curve(comparer.accuracy, label)[1], rows["accuracy"])


def test_settings_one_click_away_are_computed_in_the_background(mlp, mlp_loader, tmp_path):
    comparer = PruningComparer(
        mlp, mlp_loader, methods=("magnitude", "woodfisher"), sparsities=SPARSITIES,
        steps_options=(1, 2), cache=False, compute=True, **SETTINGS,
    )  # fmt: skip
    assert comparer.wait_for_prefetch(timeout=300) and comparer.prefetch_error is None
    # one click away from (global, summed, 1 step): none and group; layerwise; 2 steps
    assert comparer.prefetched == 4
    calls = comparer.sweep_calls
    frame = reference_sweep(mlp, mlp_loader, update="group")
    comparer.update_choice.value = "group"
    assert comparer.sweep_calls == calls and comparer.message.value == ""
    rows = frame[frame["method"] == "woodfisher"].sort_values("sparsity")
    np.testing.assert_allclose(curve(comparer.accuracy, "WoodFisher")[1], rows["accuracy"])
    assert comparer.wait_for_prefetch(timeout=300)
    comparer.steps.value = 2  # (global, group, 2 steps): computed ahead after the last click
    assert comparer.sweep_calls == calls
    frame = reference_sweep(mlp, mlp_loader, update="group", steps=2)
    rows = frame[frame["method"] == "woodfisher"].sort_values("sparsity")
    np.testing.assert_allclose(curve(comparer.accuracy, "WoodFisher")[1], rows["accuracy"])
