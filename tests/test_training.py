import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import wfexplore.training as training
from wfexplore.data import digits_datasets, digits_loaders
from wfexplore.models import DigitsCNN, DigitsMLP
from wfexplore.training import (
    cache_dir,
    digits_model_path,
    evaluate,
    pretrained_digits_model,
    train_classifier,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the real home cache, whatever a test does."""
    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path / "env-cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both default models trained once into a shared cache directory."""
    folder = tmp_path_factory.mktemp("cache")
    models = {
        kind: pretrained_digits_model(kind, cache=folder, progress=False) for kind in ("mlp", "cnn")
    }
    return folder, models


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_training(calls: list):
    def fake(model, loader, epochs, **kwargs):
        calls.append(epochs)
        return model

    return fake


# --- cache_dir ------------------------------------------------------------------------------


def test_cache_dir_prefers_explicit_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "a"


def test_cache_dir_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("WFEXPLORE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "wfexplore"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "wfexplore"


def test_cache_file_name_carries_a_version(tmp_path):
    assert digits_model_path("cnn", tmp_path) == tmp_path / "digits-cnn-v1.pt"
    assert digits_model_path("MLP").parent == cache_dir()


# --- train_classifier and evaluate ---------------------------------------------------------


def _small_run(seed: int, epochs: int = 2) -> tuple[DigitsMLP, torch.Tensor]:
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(16,))
    train, _ = digits_datasets()
    loader = DataLoader(train, batch_size=128, shuffle=True)  # draws from the global RNG
    rng_before = torch.get_rng_state()
    out = train_classifier(model, loader, epochs=epochs, seed=seed, progress=False)
    assert out is model
    return model, rng_before


def test_train_classifier_is_deterministic_per_seed_and_spares_global_rng():
    a, rng_before = _small_run(seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b, _ = _small_run(seed=0)
    c, _ = _small_run(seed=1)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert not _states_equal(a.state_dict(), c.state_dict())


def test_train_classifier_lowers_the_loss_and_leaves_train_mode():
    torch.manual_seed(0)
    model = DigitsMLP(hidden=(16,))
    train_loader, _ = digits_loaders(batch_size=128)
    before = evaluate(model, train_loader)["loss"]
    model.eval()
    train_classifier(model, train_loader, epochs=3, progress=False)
    assert model.training
    assert evaluate(model, train_loader)["loss"] < 0.5 * before


def test_train_classifier_progress_bar_can_be_silenced(capsys):
    train_loader, _ = digits_loaders(batch_size=512)
    train_classifier(DigitsMLP(hidden=(8,)), train_loader, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    train_classifier(DigitsMLP(hidden=(8,)), train_loader, epochs=1, progress=True)
    assert "train" in capsys.readouterr().err


def test_evaluate_matches_hand_computation_and_restores_modes():
    torch.manual_seed(0)
    model = DigitsCNN()
    model.train()
    model[1].eval()  # a mixed state must come back exactly as it was
    _, test = digits_datasets()
    loader = DataLoader(test, batch_size=100)
    running_mean = model[4].running_mean.clone()
    result = evaluate(model, loader)
    assert [m.training for m in model.modules()] == [True, True, False] + [True] * 9
    assert torch.equal(model[4].running_mean, running_mean)
    model.eval()
    with torch.no_grad():
        logits = model(test.tensors[0])
    expected_loss = F.cross_entropy(logits, test.tensors[1]).item()
    expected_acc = (logits.argmax(1) == test.tensors[1]).float().mean().item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(expected_acc)
    assert not model.training


def test_evaluate_rejects_an_empty_loader():
    empty = DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 64), torch.zeros(0)))
    with pytest.raises(ValueError, match="empty"):
        evaluate(DigitsMLP(), empty)


# --- pretrained_digits_model ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_pretrained_models_reach_90_percent_test_accuracy(trained, kind):
    _, models = trained
    model = models[kind]
    assert not model.training
    _, test_loader = digits_loaders()
    assert evaluate(model, test_loader)["accuracy"] >= 0.90


def test_training_leaves_only_the_cache_files(trained):
    folder, _ = trained
    assert sorted(p.name for p in folder.iterdir()) == ["digits-cnn-v1.pt", "digits-mlp-v1.pt"]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_cached_model_loads_identical_weights_without_training(trained, monkeypatch, kind):
    folder, models = trained
    monkeypatch.setattr(training, "train_classifier", _no_training(calls := []))
    loaded = pretrained_digits_model(kind, cache=folder)
    assert calls == []
    assert not loaded.training
    assert _states_equal(loaded.state_dict(), models[kind].state_dict())
    saved = torch.load(digits_model_path(kind, folder), weights_only=True)
    assert _states_equal(loaded.state_dict(), saved)


def test_default_cache_location_comes_from_environment(trained, monkeypatch, tmp_path):
    folder, models = trained
    env_cache = Path(tmp_path / "env-cache")
    env_cache.mkdir()
    (env_cache / "digits-mlp-v1.pt").write_bytes(digits_model_path("mlp", folder).read_bytes())
    monkeypatch.setattr(training, "train_classifier", _no_training(calls := []))
    loaded = pretrained_digits_model("mlp")
    assert calls == []
    assert _states_equal(loaded.state_dict(), models["mlp"].state_dict())


def test_corrupt_cache_warns_with_path_and_is_rebuilt(trained, tmp_path):
    folder, models = trained
    path = digits_model_path("mlp", tmp_path)
    path.write_bytes(b"this is not a torch file")
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        model = pretrained_digits_model("mlp", cache=tmp_path, progress=False)
    _, test_loader = digits_loaders()
    assert evaluate(model, test_loader)["accuracy"] >= 0.90
    # Training is deterministic: the rebuilt model equals the one trained in the fixture.
    assert _states_equal(model.state_dict(), models["mlp"].state_dict())
    assert _states_equal(torch.load(path, weights_only=True), model.state_dict())


@pytest.mark.parametrize(
    "content",
    [DigitsCNN().state_dict(), [torch.zeros(3)], {}],
    ids=["other-architecture", "not-a-dict", "empty-dict"],
)
def test_incompatible_cache_warns_and_is_replaced(tmp_path, monkeypatch, content):
    path = digits_model_path("mlp", tmp_path)
    torch.save(content, path)
    monkeypatch.setattr(training, "train_classifier", _no_training(calls := []))
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        model = pretrained_digits_model("mlp", cache=tmp_path)
    assert len(calls) == 1
    assert _states_equal(torch.load(path, weights_only=True), model.state_dict())


def test_retrain_ignores_a_valid_cache(trained, tmp_path, monkeypatch):
    folder, _ = trained
    path = digits_model_path("mlp", tmp_path)
    path.write_bytes(digits_model_path("mlp", folder).read_bytes())
    monkeypatch.setattr(training, "train_classifier", _no_training(calls := []))
    model = pretrained_digits_model("mlp", cache=tmp_path, retrain=True)
    assert len(calls) == 1
    # The fake trainer left the seeded initial weights, which were saved over the old file.
    assert _states_equal(torch.load(path, weights_only=True), model.state_dict())
    assert not _states_equal(
        model.state_dict(), torch.load(digits_model_path("mlp", folder), weights_only=True)
    )


def test_failed_save_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "train_classifier", _no_training([]))

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", failing_save)
    cache = tmp_path / "new" / "cache"
    with pytest.warns(RuntimeWarning, match="disk full"):  # the trained model is kept
        model = pretrained_digits_model("mlp", cache=cache)
    assert isinstance(model, DigitsMLP) and not model.training
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("where", ["file-in-the-way", "read-only"])
def test_a_cache_that_cannot_be_written_keeps_the_trained_model_with_a_warning(
    tmp_path, monkeypatch, where
):
    monkeypatch.setattr(training, "train_classifier", _no_training(calls := []))
    if where == "file-in-the-way":
        blocker = tmp_path / "cache"
        blocker.write_text("not a folder")
        cache = blocker / "sub"
    else:  # root ignores file modes, so refuse the write where the OS would
        cache = tmp_path / "ro"

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(cache))

        monkeypatch.setattr(training.tempfile, "mkstemp", refuse)
    with pytest.warns(RuntimeWarning, match=r"could not be cached .*WFEXPLORE_CACHE_DIR"):
        model = pretrained_digits_model("mlp", cache=cache)
    assert calls == [20] and isinstance(model, DigitsMLP)


def test_cache_dir_names_a_variable_that_points_at_a_file(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError, match=r"\$WFEXPLORE_CACHE_DIR=.* is a file"):
        cache_dir()
    monkeypatch.delenv("WFEXPLORE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError, match=r"\$XDG_CACHE_HOME"):
        cache_dir()


def test_resolve_cache_folder_maps_each_kind_of_argument(tmp_path, monkeypatch):
    from wfexplore.training import resolve_cache_folder

    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_folder(True, "sweeps") == tmp_path / "env" / "sweeps"
    assert (tmp_path / "env" / "sweeps").is_dir()
    assert resolve_cache_folder(tmp_path / "mine", "sweeps") == tmp_path / "mine"
    assert resolve_cache_folder(str(tmp_path / "s"), "sweeps") == tmp_path / "s"
    assert resolve_cache_folder(False, "sweeps") is None
    assert resolve_cache_folder(None, "sweeps") is None
    with pytest.raises(ValueError, match="cache='' names no folder"):
        resolve_cache_folder("", "sweeps")
    for bad in (0, 1, 2.5, ["a"]):
        with pytest.raises(TypeError, match="cache must be True, False, None or a folder path"):
            resolve_cache_folder(bad, "sweeps")


def test_resolve_cache_folder_says_cache_false_when_it_cannot_write(tmp_path, monkeypatch):
    from wfexplore.training import resolve_cache_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"is a file.*cache=False"):
        resolve_cache_folder(tmp_path / "file" / "sweeps", "sweeps")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=r"cannot be created .*cache=False"):
        resolve_cache_folder(tmp_path / "new", "sweeps")
    monkeypatch.undo()
    monkeypatch.setattr(training.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match=r"not writable.*cache=False"):
        resolve_cache_folder(tmp_path, "sweeps")


def test_digits_model_path_refuses_a_cache_that_is_not_a_path(tmp_path):
    for bad in ("", 0):
        with pytest.raises(TypeError, match="cache must be a folder path"):
            digits_model_path("mlp", bad)


def test_training_for_several_epochs_refuses_a_one_shot_iterator():
    train, _ = digits_loaders(batch_size=64)
    batches = iter(train)
    with pytest.raises(
        ValueError, match="loader: a one-shot iterator .* pass a list or a DataLoader"
    ):
        train_classifier(DigitsMLP(), batches, epochs=2, progress=False)
    train_classifier(DigitsMLP(), [next(iter(train))], epochs=2, progress=False)


def test_unknown_kind_lists_valid_kinds(tmp_path):
    with pytest.raises(ValueError, match="'resnet'.*mlp, cnn"):
        pretrained_digits_model("resnet", cache=tmp_path)
