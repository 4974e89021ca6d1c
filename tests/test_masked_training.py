"""Masks hold through training: gradients, optimizer state and the step itself cannot revive a
pruned weight; optimizer factories are checked; the shuffling is seeded and restored."""

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import make_mlp
from wfexplore.pruning import MaskHolder, TrainingSettings, train_epochs
from wfexplore.pruning.masked_training import check_optimizer, seeded

OPTIMIZERS = {
    "sgd_momentum": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    "sgd_nesterov_decay": functools.partial(
        torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2),
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
    "rmsprop": functools.partial(torch.optim.RMSprop, lr=1e-3, momentum=0.5),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on shared cores two threads can run
    these tests many times slower; the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def half_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep masks (True = kept) pruning every other weight of each Linear weight."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim == 2:
            out[name] = (torch.arange(p.numel()) % 2 == 0).reshape(p.shape)
    return out


def pruned_values(model: nn.Module, masks) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach()[~keep] for n, keep in masks.items()])


def dense_epoch(model, loader, optimizer) -> None:
    """One epoch without masks: builds momentum / Adam moments at every weight."""
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_pruned_weight_is_exactly_zero_after_training(name, mlp_loader):
    model = make_mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    dense_epoch(model, mlp_loader, optimizer)  # state built while every weight was alive
    masks = half_masks(model)
    holder = MaskHolder(model)
    holder.set_masks(masks, optimizer)
    kept_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_epochs(model, mlp_loader, 3, optimizer, holder)
    values = pruned_values(model, masks)
    assert values.numel() > 0
    assert torch.equal(values, torch.zeros_like(values))
    for n, keep in masks.items():  # the kept weights did train
        assert not torch.equal(dict(model.named_parameters())[n][keep], kept_before[n][keep])
    for n, keep in masks.items():  # and the state that would move a pruned weight is zero
        for value in optimizer.state[dict(model.named_parameters())[n]].values():
            if isinstance(value, torch.Tensor) and value.shape == keep.shape:
                assert torch.equal(value[~keep], torch.zeros_like(value[~keep]))


def test_masking_the_gradients_alone_lets_momentum_revive_pruned_weights(mlp_loader):
    """Why the state is zeroed and the weights re-masked: momentum from before pruning moves a
    zeroed weight whose gradient is masked."""
    model = make_mlp()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    dense_epoch(model, mlp_loader, optimizer)
    masks = half_masks(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, keep in masks.items():
            params[n].masked_fill_(~keep, 0.0)
    for x, y in mlp_loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for n, keep in masks.items():
            params[n].grad.masked_fill_(~keep, 0.0)
        optimizer.step()
    assert (pruned_values(model, masks) != 0).any()


def test_gradients_of_pruned_weights_are_zero_when_the_optimizer_steps(mlp_loader):
    model = make_mlp()
    masks = half_masks(model)
    holder = MaskHolder(model, masks)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            params = dict(model.named_parameters())
            seen.append(all(bool((params[n].grad[~k] == 0).all()) for n, k in masks.items()))
            return super().step(closure)

    optimizer = Spy(model.parameters(), lr=0.1)
    train_epochs(model, mlp_loader, 1, optimizer, holder)
    assert seen and all(seen)


def test_training_runs_in_train_mode_and_restores_the_modes(bn_cnn, cnn_loader):
    bn_cnn.eval()
    modes = []
    bn_cnn[1].register_forward_pre_hook(lambda m, i: modes.append(m.training))
    stats = bn_cnn[1].running_mean.clone()
    optimizer = torch.optim.SGD(bn_cnn.parameters(), lr=0.01)
    losses = train_epochs(bn_cnn, cnn_loader, 2, optimizer, MaskHolder(bn_cnn))
    assert len(losses) == 2 and all(modes)
    assert not bn_cnn.training and not bn_cnn[1].training
    assert not torch.equal(bn_cnn[1].running_mean, stats)  # BatchNorm statistics trained


def test_the_scheduler_steps_once_per_epoch(mlp_loader):
    model = make_mlp()
    settings = TrainingSettings(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        lr_schedule=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    optimizer, scheduler = settings.build(model)
    train_epochs(model, mlp_loader, 3, optimizer, MaskHolder(model), scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_the_default_is_sgd_with_momentum():
    optimizer, scheduler = TrainingSettings().build(make_mlp())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert scheduler is None


def test_a_factory_that_returns_no_optimizer_is_refused():
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        TrainingSettings(optimizer=lambda params: list(params)).build(make_mlp())


def test_an_optimizer_over_another_models_parameters_is_refused():
    other = make_mlp()
    with pytest.raises(ValueError, match="not parameters of the model being trained"):
        TrainingSettings(optimizer=lambda _: torch.optim.SGD(other.parameters(), lr=0.1)).build(
            make_mlp()
        )


def test_an_optimizer_over_part_of_the_model_is_accepted():
    model = make_mlp()
    optimizer = torch.optim.SGD(model[3].parameters(), lr=0.1)
    assert check_optimizer(optimizer, model) is optimizer


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": "sgd"}, TypeError, "factory called with the model's parameters"),
        ({"lr_schedule": 3}, TypeError, "lr_schedule must be a factory"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
    ],
)
def test_training_settings_refuse_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainingSettings(**kwargs)


def test_a_scheduler_without_step_is_refused():
    settings = TrainingSettings(lr_schedule=lambda optimizer: object())
    with pytest.raises(TypeError, match="has no step"):
        settings.build(make_mlp())


def test_masks_of_the_wrong_shape_or_name_are_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match="not a parameter of the model"):
        MaskHolder(model, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not a parameter of the model"):
        MaskHolder(model, {"nope": torch.ones(2, dtype=torch.bool)})


def test_seeded_shuffling_repeats_and_leaves_the_loaders_generator_and_global_rng_as_they_were():
    data = TensorDataset(torch.arange(32.0).unsqueeze(1), torch.zeros(32, dtype=torch.long))
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator())
    loader.generator.manual_seed(123)
    state = loader.generator.get_state()
    global_state = torch.get_rng_state()
    orders = []
    for _ in range(2):
        with seeded(loader, 7):
            orders.append(torch.cat([x for x, _ in loader]).flatten())
    assert torch.equal(orders[0], orders[1])
    assert torch.equal(loader.generator.get_state(), state)
    assert torch.equal(torch.get_rng_state(), global_state)
    plain = DataLoader(data, batch_size=8, shuffle=True)  # shuffles with the global generator
    with seeded(plain, 7):
        first = torch.cat([x for x, _ in plain]).flatten()
    with seeded(plain, 7):
        assert torch.equal(torch.cat([x for x, _ in plain]).flatten(), first)


def test_an_empty_loader_is_refused():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no batches"):
        train_epochs(model, [], 1, optimizer, MaskHolder(model))
