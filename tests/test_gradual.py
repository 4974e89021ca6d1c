"""Training-aware pruning on tiny float64 models: the step plan, the schedule, masks held to the
end, the curvature re-estimated on the trained model in eval mode, equal budgets, protocols,
and bad input refused before training with the caller's model untouched."""

import functools

import pytest
import torch
from torch import nn

import wfexplore.pruning.gradual as gradual_module
from tests.conftest import assert_same_state, make_mlp, model_state
from wfexplore.curvature import estimate_curvature
from wfexplore.pruning import (
    PruningSchedule,
    PruningSettings,
    TrainingSettings,
    gradual_prune,
    one_shot,
    one_shot_then_finetune,
    prune_model,
    pruning_plan,
    run_protocol,
)
from wfexplore.pruning.gradual import step_targets

WF = PruningSettings("woodfisher", damping=1e-3, num_samples=16, block_size=8)
OBD = PruningSettings("obd", damping=1e-3, num_samples=16)
KFAC = PruningSettings("kfac", damping=1e-3, num_samples=16)
SGD = TrainingSettings(optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
ADAM = TrainingSettings(optimizer=functools.partial(torch.optim.Adam, lr=1e-2))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on shared cores two threads can run
    these tests many times slower; the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def zero_pattern_is_the_mask(result) -> bool:
    params = dict(result.model.named_parameters())
    return all(torch.equal(params[n] != 0, keep) for n, keep in result.masks.items())


def run(model, loader, method=WF, sparsity=0.6, **kwargs):
    kwargs = {"epochs": 3, "prune_every": 1, "progress": False, **kwargs}
    return gradual_prune(model, method, sparsity, train_data=loader, eval_data=loader, **kwargs)


# --- the plan and the schedule ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("epochs", "every", "steps", "expected"),
    [(3, 1, None, [0, 1, 2]), (10, 3, None, [0, 3, 6, 9]), (6, 2, 2, [0, 2]), (4, 4, None, [0])],
)
def test_steps_come_every_prune_every_epochs_from_epoch_zero(epochs, every, steps, expected):
    assert pruning_plan(epochs, every, steps) == expected


def test_the_cubic_schedule_starts_at_the_models_sparsity_and_ends_at_the_target(mlp):
    layout = WF.layout(mlp)
    start = torch.zeros(layout.dim, dtype=torch.bool)
    start[:10] = True
    s0 = 10 / layout.dim
    targets = step_targets(layout, start, 0.8, 4)
    expected = [0.8 + (s0 - 0.8) * (1 - t / 4) ** 3 for t in range(1, 5)]
    assert targets == pytest.approx(expected)
    assert step_targets(layout, start, 0.8, 4, "linear")[0] == pytest.approx(s0 + (0.8 - s0) / 4)
    assert step_targets(layout, start, 0.8, 2, [0.5, 0.8]) == [0.5, 0.8]


# --- what a run does -------------------------------------------------------------------------
@pytest.mark.parametrize("training", [SGD, ADAM], ids=["sgd_momentum", "adam"])
@pytest.mark.parametrize(
    "method", [PruningSettings("magnitude"), OBD, WF, KFAC], ids=lambda s: s.method
)
def test_the_target_is_reached_and_every_pruned_weight_is_zero_at_the_end(
    bn_cnn, cnn_loader, method, training
):
    result = run(bn_cnn, cnn_loader, method, training=training)
    assert result.sparsity == pytest.approx(round(0.6 * result.layout.dim) / result.layout.dim)
    assert zero_pattern_is_the_mask(result)
    assert list(result.steps["step"]) == [1, 2, 3]
    assert list(result.steps["epoch"]) == [0, 1, 2]
    assert result.steps["target_sparsity"].is_monotonic_increasing
    assert result.steps["target_sparsity"].iloc[-1] == pytest.approx(0.6)


def test_the_steps_frame_measures_before_after_and_after_recovery(mlp, mlp_loader):
    result = run(mlp, mlp_loader, epochs=4, prune_every=2)
    steps, history = result.steps, result.history
    for column in ("accuracy", "loss"):
        for when in ("before", "after", "recovered"):
            assert steps[f"{column}_{when}"].notna().all()
    assert (steps[["curvature_s", "prune_s", "train_s"]] > 0).all().all()
    assert list(steps["recovery_epochs"]) == [2, 2]
    # the next step starts where the last recovery ended; the first from the dense model
    assert steps["loss_before"].iloc[1] == steps["loss_recovered"].iloc[0]
    assert steps["loss_before"].iloc[0] == result.summary["dense_loss"]
    assert result.summary["loss"] == steps["loss_recovered"].iloc[-1]
    assert list(history["event"]) == [
        "before_step", "after_step", "epoch", "epoch",
        "before_step", "after_step", "epoch", "epoch",
    ]  # fmt: skip
    assert list(history["epoch"]) == [0, 0, 1, 2, 2, 2, 3, 4]
    after = history[history["event"] == "after_step"]
    assert list(after["loss"]) == list(steps["loss_after"])
    total = result.summary["curvature_s"] + result.summary["prune_s"] + result.summary["train_s"]
    assert result.summary["seconds"] == pytest.approx(total)


class ModeRecorder(nn.Module):
    """Records the mode of every forward pass, in a list the private copies share."""

    modes: list[bool] = []

    def forward(self, x):
        ModeRecorder.modes.append(self.training)
        return x


def test_the_curvature_is_re_estimated_on_the_trained_model_in_eval_mode(
    bn_cnn, cnn_loader, monkeypatch
):
    model = nn.Sequential(*bn_cnn[:2], ModeRecorder(), *bn_cnn[2:])
    seen = []
    from wfexplore.pruning import prune as prune_module  # RunOptions.curvature calls it there

    original = prune_module.method_curvature

    def spy(work, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in work.state_dict().items()})
        ModeRecorder.modes = []
        out = original(work, *args, **kwargs)
        seen[-1]["modes"] = list(ModeRecorder.modes)
        return out

    monkeypatch.setattr(prune_module, "method_curvature", spy)
    model.train()  # the caller's mode does not leak into the curvature
    ModeRecorder.modes = []
    result = run(model, cnn_loader, OBD)
    assert len(seen) == 3  # once per step
    dense = model.state_dict()
    assert torch.equal(seen[0]["0.weight"], dense["0.weight"])
    for later in seen[1:]:  # trained in between: weights and BatchNorm statistics moved
        assert not torch.equal(later["0.weight"], dense["0.weight"])
        assert not torch.equal(later["1.running_mean"], dense["1.running_mean"])
    assert all(s["modes"] and not any(s["modes"]) for s in seen)  # curvature: eval mode
    assert True in ModeRecorder.modes  # training after the last step: train mode
    assert not torch.equal(result.model[1].running_mean, model[1].running_mean)


def test_the_callers_model_and_loader_are_untouched_and_a_rerun_repeats(bn_cnn, cnn_loader):
    generator = torch.Generator().manual_seed(5)
    loader = torch.utils.data.DataLoader(
        cnn_loader.dataset, batch_size=8, shuffle=True, generator=generator
    )
    state = generator.get_state()
    bn_cnn.train()
    before = model_state(bn_cnn)
    first = run(bn_cnn, loader, WF, training=ADAM)
    second = run(bn_cnn, loader, WF, training=ADAM)
    assert_same_state(before, model_state(bn_cnn))
    assert torch.equal(generator.get_state(), state)
    assert first.model is not bn_cnn
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_shot_then_finetune_trains_the_same_epochs_after_one_step(mlp, mlp_loader):
    gradual = run(mlp, mlp_loader, epochs=4, prune_every=1)
    once = one_shot_then_finetune(
        mlp, WF, 0.6, train_data=mlp_loader, eval_data=mlp_loader, epochs=4, progress=False
    )
    assert len(once.steps) == 1 and once.steps["recovery_epochs"].iloc[0] == 4
    assert gradual.steps["recovery_epochs"].sum() == 4
    for result in (gradual, once):
        assert (result.history["event"] == "epoch").sum() == 4
    assert once.summary["protocol"] == "one_shot_finetune"
    assert once.sparsity == gradual.sparsity
    assert zero_pattern_is_the_mask(once)


def test_one_shot_is_prune_model_in_the_frames_of_the_other_protocols(mlp, mlp_loader):
    result = one_shot(mlp, WF, 0.6, eval_data=mlp_loader, data=mlp_loader, progress=False)
    reference = prune_model(mlp, WF, 0.6, data=mlp_loader, progress=False)
    for a, b in zip(result.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert result.steps["accuracy_recovered"].isna().all()
    assert result.summary["train_s"] == 0 and result.summary["epochs"] == 0


def test_run_protocol_dispatches_the_three_protocols(mlp, mlp_loader):
    common = {"train_data": mlp_loader, "eval_data": mlp_loader, "epochs": 2, "progress": False}
    for protocol, steps in (("one_shot", 1), ("one_shot_finetune", 1), ("gradual", 2)):
        result = run_protocol(mlp, protocol, "magnitude", 0.5, schedule="linear", **common)
        assert result.summary["protocol"] == protocol
        assert len(result.steps) == steps


def test_layerwise_scope_with_a_per_layer_target(mlp, mlp_loader):
    target = {"0.weight": 0.5, "3.weight": 0.8}
    result = run(mlp, mlp_loader, OBD, target, scope="layerwise", update="none")
    layers = result.layers.set_index("parameter")["sparsity"]
    assert layers["0.weight"] == pytest.approx(0.5)
    assert layers["3.weight"] == pytest.approx(0.8, abs=0.07)
    assert zero_pattern_is_the_mask(result)


def test_batchnorm_can_be_re_estimated_after_every_step(bn_cnn, cnn_loader):
    result = run(bn_cnn, cnn_loader, "magnitude", recalibrate_bn=True)
    assert result.summary["recalibrated_bn"]


def test_the_result_attaches_to_torch_prune(mlp, mlp_loader):
    result = run(mlp, mlp_loader, "magnitude", epochs=2)
    attached = result.apply_torch_prune()
    assert torch.equal(attached[0].weight_mask.bool(), result.masks["0.weight"])


# --- bad input: refused before training, the caller's model untouched ------------------------
class CountingFactory:
    def __init__(self):
        self.calls = 0

    def __call__(self, params):
        self.calls += 1
        return torch.optim.SGD(params, lr=0.1)


BAD = [
    ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
    ({"epochs": -2}, ValueError, "epochs must be a positive integer"),
    ({"prune_every": 0}, ValueError, "prune_every must be a positive integer"),
    ({"prune_every": 4}, ValueError, "prune_every=4 is longer than the training"),
    ({"steps": 4}, ValueError, "cannot reach the target within epochs=3"),
    ({"schedule": [0.3, 0.6]}, ValueError, "2 sparsities given for 3 pruning steps"),
    ({"schedule": [0.3, 0.5, 0.55]}, ValueError, "cannot reach the target"),
    ({"schedule": [0.5, 0.3, 0.6]}, ValueError, "must rise"),
    ({"schedule": "quadratic"}, ValueError, "schedule must be one of"),
    ({"schedule": -1.0}, ValueError, "schedule must be a finite positive number"),
    ({"min_density": 0.9}, ValueError, "min_density=0.9"),
    ({"steps": 2, "pruning": PruningSchedule(steps=2)}, ValueError, "leave PruningSchedule"),
    ({"learning_rate": 0.1}, TypeError, "unexpected keyword"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_before_training(bn_cnn, cnn_loader, kwargs, error, match):
    factory = CountingFactory()
    before = model_state(bn_cnn)
    with pytest.raises(error, match=match):
        run(bn_cnn, cnn_loader, training=TrainingSettings(optimizer=factory), **kwargs)
    assert factory.calls == 0
    assert_same_state(before, model_state(bn_cnn))


def test_a_target_below_the_models_sparsity_cannot_be_reached(mlp, mlp_loader):
    with torch.no_grad():
        mlp[0].weight[:, :4] = 0  # 20 of the 45 analysed weights are already zero
    with pytest.raises(ValueError, match="more than the target"):
        run(mlp, mlp_loader, sparsity=0.2)


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda params: "sgd", TypeError, "not a torch.optim.Optimizer"),
        (lambda params: torch.optim.SGD(make_mlp().parameters(), lr=0.1), ValueError, "captured"),
        (lambda params: torch.optim.SGD([nn.Parameter(torch.ones(1))]), ValueError, "not param"),
    ],
    ids=["not_an_optimizer", "another_model", "a_foreign_tensor"],
)
def test_an_optimizer_factory_not_over_the_models_parameters_is_refused(
    mlp, mlp_loader, factory, error, match, monkeypatch
):
    monkeypatch.setattr(
        gradual_module, "train_epochs", lambda *a, **k: pytest.fail("training started")
    )
    before = model_state(mlp)
    with pytest.raises(error, match=match):
        run(mlp, mlp_loader, training=TrainingSettings(optimizer=factory))
    assert_same_state(before, model_state(mlp))


def test_missing_or_one_shot_data_and_a_ready_curvature_are_refused(mlp, mlp_loader):
    common = {"eval_data": mlp_loader, "epochs": 2, "prune_every": 1, "progress": False}
    with pytest.raises(ValueError, match="train_data: a loader"):
        gradual_prune(mlp, WF, 0.5, train_data=None, **common)
    with pytest.raises(ValueError, match="one-shot iterator"):
        gradual_prune(mlp, WF, 0.5, train_data=iter(mlp_loader), **common)
    curvature = estimate_curvature(mlp, mlp_loader, representation="diagonal", num_samples=8)
    with pytest.raises(TypeError, match="ready curvature cannot be re-estimated"):
        gradual_prune(mlp, curvature.damped(1e-3), 0.5, train_data=mlp_loader, **common)


# --- the protocol sweep ----------------------------------------------------------------------
def small_sweep(mlp, loader, **kwargs):
    from wfexplore.experiments import protocol_sweep

    kwargs = {
        "methods": ["magnitude", "woodfisher"], "sparsities": [0.6], "epochs": 2,
        "num_samples": 16, "damping": 1e-3, "block_size": 8, "progress": False, **kwargs,
    }  # fmt: skip
    return protocol_sweep(mlp, loader, loader, **kwargs)


def test_protocol_points_are_cached_and_read_back_unchanged(mlp, mlp_loader, tmp_path):
    first = small_sweep(mlp, mlp_loader, cache=tmp_path)
    assert not first.points["cached"].any() and len(first.points) == 6
    second = small_sweep(mlp, mlp_loader, cache=tmp_path)
    assert second.points["cached"].all()
    columns = [c for c in first.points.columns if c != "cached" and not c.endswith("_s")]
    assert first.points[columns].equals(second.points[columns])
    assert first.steps.equals(second.steps)
    assert first.history.equals(second.history)
    changed = small_sweep(mlp, mlp_loader, cache=tmp_path, epochs=3)  # a new budget: trained
    trains = changed.points["protocol"] != "one_shot"
    assert not changed.points[trains]["cached"].any() and changed.points[~trains]["cached"].all()


def test_protocol_frames_are_keyed_and_findings_come_from_them(mlp, mlp_loader):
    result = small_sweep(mlp, mlp_loader, cache=False)
    assert list(result.steps.columns[:3]) == ["method", "protocol", "sparsity"]
    assert set(result.steps["sparsity"]) == {0.6}
    gradual = result.points[result.points["protocol"] == "gradual"]
    assert (gradual["steps"] == 2).all() and (gradual["epochs"] == 2).all()
    one = result.points.set_index(["method", "protocol"])
    wf = one.loc[("woodfisher", "gradual")]
    steps = result.steps[(result.steps["method"] == "woodfisher")]
    assert wf["worst_after_step"] == steps[steps["protocol"] == "gradual"]["accuracy_after"].min()
    gaps = result.gaps()
    assert list(gaps.columns) == ["one_shot", "one_shot_finetune", "gradual"]
    expected = wf["accuracy"] - one.loc[("magnitude", "gradual"), "accuracy"]
    assert gaps.loc[0.6, "gradual"] == pytest.approx(expected)
    findings = result.findings()
    assert findings[0].startswith("At 60%, WoodFisher minus magnitude in final accuracy")
    assert any("Right after a gradual pruning step" in f for f in findings)


def test_a_lambda_optimizer_factory_turns_the_cache_off_with_a_warning(mlp, mlp_loader, tmp_path):
    training = TrainingSettings(optimizer=lambda params: torch.optim.SGD(params, lr=0.01))
    with pytest.warns(RuntimeWarning, match="caching is off"):
        small_sweep(mlp, mlp_loader, cache=tmp_path, training=training, methods=["magnitude"])
    assert not list(tmp_path.glob("*.json"))
    named = small_sweep(
        mlp, mlp_loader, cache=tmp_path, training=training, methods=["magnitude"],
        cache_key="sgd lr 0.01",
    )  # fmt: skip
    assert not named.points["cached"].any() and list(tmp_path.glob("*.json"))


def test_protocol_sweep_refuses_bad_grids_before_any_work(mlp, mlp_loader):
    with pytest.raises(ValueError, match="protocols: 'gradually'"):
        small_sweep(mlp, mlp_loader, protocols=["gradually"], cache=False)
    with pytest.raises(ValueError, match="prune_every=5 is longer"):
        small_sweep(mlp, mlp_loader, prune_every=5, cache=False)


def test_protocol_points_keep_their_masks_through_the_cache(mlp, mlp_loader, tmp_path):
    first = small_sweep(mlp, mlp_loader, cache=tmp_path, keep_masks=True, methods=["obd"])
    second = small_sweep(mlp, mlp_loader, cache=tmp_path, keep_masks=True, methods=["obd"])
    assert second.points["cached"].all()
    for a, b in zip(first.points["masks"], second.points["masks"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    row = first.points.iloc[0]
    pruned = sum(int((~keep).sum()) for keep in row["masks"].values())
    assert pruned == round(0.6 * sum(keep.numel() for keep in row["masks"].values()))
    assert not any(moved.any() for moved in row["moved"].values())
