import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import assert_same_state, loop_gradients, make_loader, model_state
from wfexplore.gradients import gradient_samples, iter_gradient_chunks
from wfexplore.params import ParameterLayout


def test_per_example_gradients_equal_a_loop_of_backward_passes(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    g = gradient_samples(mlp, mlp_loader, layout, 30, chunk_size=7, progress=False)
    torch.testing.assert_close(g, loop_gradients(mlp, mlp_loader, layout, 30), rtol=0, atol=1e-13)


def test_batchnorm_model_gradients_are_taken_in_eval_mode(bn_cnn, cnn_loader):
    bn_cnn.train()  # the caller's mode must not matter, nor change
    before = model_state(bn_cnn)
    layout = ParameterLayout.from_model(bn_cnn)
    g = gradient_samples(bn_cnn, cnn_loader, layout, 40, progress=False)
    torch.testing.assert_close(
        g, loop_gradients(bn_cnn, cnn_loader, layout, 40), rtol=0, atol=1e-12
    )
    assert_same_state(before, model_state(bn_cnn))
    assert bn_cnn.training


def test_mini_batch_samples_are_mean_gradients_of_b_examples(bn_cnn, cnn_loader):
    layout = ParameterLayout.from_model(bn_cnn, names=["0", "4", "1.weight"])
    g = gradient_samples(bn_cnn, cnn_loader, layout, 8, batch_size=5, progress=False)
    ref = loop_gradients(bn_cnn, cnn_loader, layout, 8, b=5)
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-12)


def test_chunks_cover_the_samples_in_order(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    chunks = list(iter_gradient_chunks(mlp, mlp_loader, layout, 20, chunk_size=6, progress=False))
    assert [c.shape[0] for c in chunks] == [6, 6, 6, 2]
    whole = gradient_samples(mlp, mlp_loader, layout, 20, chunk_size=20, progress=False)
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=0, atol=1e-14)


def test_true_fisher_labels_come_from_the_model_and_the_seed(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    true_a = gradient_samples(mlp, mlp_loader, layout, 24, fisher="true", seed=1, progress=False)
    true_b = gradient_samples(mlp, mlp_loader, layout, 24, fisher="true", seed=1, progress=False)
    true_c = gradient_samples(mlp, mlp_loader, layout, 24, fisher="true", seed=2, progress=False)
    assert torch.equal(true_a, true_b)
    assert not torch.equal(true_a, true_c)
    # each row is the gradient for one of the 3 possible labels of its example
    xs = torch.cat([x for x, _ in mlp_loader])[:24]
    per_label = []
    for label in range(3):
        labelled = make_loader(xs, 3)
        labelled.dataset.tensors = (xs, torch.full((24,), label))
        per_label.append(loop_gradients(mlp, labelled, layout, 24))
    distance = torch.stack([(true_a - p).abs().amax(1) for p in per_label])
    assert (distance.amin(0) < 1e-12).all()


def test_true_fisher_labels_follow_the_predictive_distribution():
    model = nn.Linear(1, 3).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    probs = torch.softmax(model.bias.detach(), 0)
    loader = make_loader(torch.ones(3000, 1, dtype=torch.float64), 3, batch=500)
    layout = ParameterLayout.from_model(model, names=["bias"])
    g = gradient_samples(model, loader, layout, 3000, fisher="true", progress=False)
    # ∂ℓ/∂b = softmax − onehot(y): the sampled label is where the gradient is negative
    labels = g.argmin(1)
    freq = torch.bincount(labels, minlength=3).double() / 3000
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.03)


class ItemModule(nn.Module):
    """A module vmap cannot batch (it reads a Python number from a tensor)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x) * (1.0 + 0.0 * x.sum().item())


def test_a_module_vmap_cannot_handle_falls_back_to_a_loop(mlp_loader):
    model = ItemModule().double()
    layout = ParameterLayout.from_model(model)
    with pytest.warns(RuntimeWarning, match="slower Python loop"):
        g = gradient_samples(model, mlp_loader, layout, 10, progress=False)
    torch.testing.assert_close(g, loop_gradients(model, mlp_loader, layout, 10), rtol=0, atol=1e-13)
    assert all(p.grad is None for p in model.parameters())


def test_asking_for_more_samples_than_the_data_holds_is_refused(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    with pytest.raises(ValueError, match="num_samples=13 with batch_size=4 needs 52 examples"):
        gradient_samples(mlp, mlp_loader, layout, 13, batch_size=4, progress=False)
    unsized = ((x, y) for x, y in mlp_loader)  # no dataset length: found out while streaming
    with pytest.raises(ValueError, match="data gave only 48"):
        gradient_samples(mlp, unsized, layout, 49, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"num_samples": 4, "batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_samples": 4, "fisher": "exact"}, "fisher must be one of"),
        ({"num_samples": 4, "chunk_size": -1}, "chunk_size must be a positive integer"),
    ],
)
def test_bad_arguments_name_the_argument(mlp, mlp_loader, kwargs, message):
    layout = ParameterLayout.from_model(mlp)
    with pytest.raises(ValueError, match=message):
        gradient_samples(mlp, mlp_loader, layout, progress=False, **kwargs)


def test_non_finite_gradients_name_the_layer(mlp, mlp_loader):
    broken = copy.deepcopy(mlp)
    with torch.no_grad():
        broken[3].weight[0, 0] = float("inf")
    layout = ParameterLayout.from_model(broken)
    with pytest.raises(FloatingPointError, match=r"\['0.weight', '3.weight'\]|'3.weight'"):
        gradient_samples(broken, mlp_loader, layout, 4, progress=False)


def test_custom_loss_is_used(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    doubled = gradient_samples(
        mlp, mlp_loader, layout, 5, loss_fn=lambda o, y: 2 * F.cross_entropy(o, y), progress=False
    )
    plain = gradient_samples(mlp, mlp_loader, layout, 5, progress=False)
    torch.testing.assert_close(doubled, 2 * plain, rtol=1e-14, atol=0)


# --- a wrong batch is named before vmap, and only vmap's own failures fall back to a loop ---------
def _no_loop_fallback():
    import warnings

    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error", RuntimeWarning)
    return context


def _with_targets(loader, targets):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(loader.dataset.tensors[0], targets), batch_size=16)


@pytest.mark.parametrize(
    ("make_targets", "message"),
    [
        (lambda y: y[:, None], r"shape \(N, 1\); cross-entropy needs shape \(N,\): use y.squeeze"),
        (lambda y: y.double(), "float labels of shape .* integer class labels"),
        (lambda y: torch.where(y == 2, 7, y), "label 7 is outside the 3 classes"),
        (lambda y: y - 3, r"label -\d is outside the 3 classes"),
    ],
)
def test_wrong_targets_are_named_without_a_loop_rerun(mlp, mlp_loader, make_targets, message):
    data = _with_targets(mlp_loader, make_targets(mlp_loader.dataset.tensors[1]))
    layout = ParameterLayout.from_model(mlp)
    context = _no_loop_fallback()
    try:
        with pytest.raises(ValueError, match=message):
            gradient_samples(mlp, data, layout, 8, progress=False)
    finally:
        context.__exit__(None, None, None)


def test_a_dtype_mismatch_is_named(mlp, mlp_loader):
    x, y = mlp_loader.dataset.tensors
    data = _with_targets(make_loader(x.float(), 3), y)
    layout = ParameterLayout.from_model(mlp)
    with pytest.raises(ValueError, match=r"inputs are torch.float32 but the model's parameters"):
        gradient_samples(mlp, data, layout, 8, progress=False)


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        out = self.fc(x)
        return out, out.sum()


def test_a_model_returning_a_tuple_is_named(mlp_loader):
    model = TupleModel().double()
    layout = ParameterLayout.from_model(model)
    with pytest.raises(TypeError, match="forward returned a tuple, not a tensor"):
        gradient_samples(model, mlp_loader, layout, 8, progress=False)


def test_a_loss_that_is_not_one_number_is_named(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    per_example = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match=r"loss_fn must return the mean loss .* reduction='mean'"):
        gradient_samples(
            mlp, mlp_loader, layout, 8, batch_size=2, loss_fn=per_example, progress=False
        )


def test_mse_targets_that_would_broadcast_are_refused():
    model = nn.Linear(6, 1).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(x, torch.randn(20, dtype=torch.float64)), batch_size=5)
    layout = ParameterLayout.from_model(model)
    with pytest.raises(
        ValueError, match=r"targets: shape \(N,\) differs from the outputs' \(N, 1\)"
    ):
        gradient_samples(model, data, layout, 4, batch_size=5, loss_fn=F.mse_loss, progress=False)


# --- the true Fisher needs a known likelihood ---------------------------------------------------
@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda o, y: 2 * F.cross_entropy(o, y),
        F.l1_loss,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.MSELoss(reduction="sum"),
    ],
)
def test_true_fisher_refuses_a_loss_whose_likelihood_is_unknown(mlp, mlp_loader, loss_fn):
    layout = ParameterLayout.from_model(mlp)
    with pytest.raises(ValueError, match="fisher='true'.*fisher='empirical'"):
        gradient_samples(mlp, mlp_loader, layout, 4, fisher="true", loss_fn=loss_fn, progress=False)


def test_sample_labels_draws_cross_entropy_classes_and_gaussian_regression_targets():
    from wfexplore.gradients import sample_labels

    logits = torch.randn(5, 3, 4, dtype=torch.float64)  # (N, C, positions): classes on dim 1
    labels = sample_labels(logits, nn.CrossEntropyLoss(), torch.Generator().manual_seed(0))
    assert labels.shape == (5, 4) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < 3
    outputs = torch.randn(4000, 2, dtype=torch.float64)
    y = sample_labels(outputs, F.mse_loss, torch.Generator().manual_seed(0))
    noise = y - outputs
    torch.testing.assert_close(
        noise.var(0), torch.full((2,), 1.0, dtype=torch.float64), rtol=0, atol=0.08
    )  # K/2 = 1
    again = sample_labels(outputs, nn.MSELoss(), torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_true_fisher_of_mse_is_the_gauss_newton_matrix_of_the_loss():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(3000, 3, dtype=torch.float64)
    data = DataLoader(TensorDataset(x, torch.zeros(3000, 2, dtype=torch.float64)), batch_size=500)
    layout = ParameterLayout.from_model(model, names=["bias"])  # J = I for the bias
    g = gradient_samples(
        model, data, layout, 3000, fisher="true", loss_fn=F.mse_loss, progress=False
    )
    fisher = g.T @ g / 3000
    # K = 2 outputs: ℓ = ½‖f − y‖², σ² = 1, GGN = (2/K) JᵀJ = I
    torch.testing.assert_close(fisher, torch.eye(2, dtype=torch.float64), rtol=0, atol=0.08)
    empirical = gradient_samples(model, data, layout, 3000, loss_fn=F.mse_loss, progress=False)
    assert not torch.allclose(empirical.T @ empirical / 3000, fisher, atol=0.08)
