"""Training with pruning masks held: pruned weights stay exactly zero through every step.

A pruned weight can come back in three ways, and each is closed:

- its gradient: ``∂L/∂w_q`` is zeroed after every backward pass, before the optimizer (and
  any gradient clipping) sees it;
- the optimizer's state: momentum buffers, Adam's first and second moments and any other
  per-weight state of the parameter's shape are zeroed at pruned entries whenever the masks
  change (state built up while the weight was alive would otherwise keep moving it);
- the step itself (weight decay, noise, an optimizer of unknown kind): after every
  ``optimizer.step()`` the pruned entries are set to exactly 0.0 again.

:class:`TrainingSettings` holds what the training is (the optimizer factory, by default SGD
with momentum, a learning-rate schedule stepped once per epoch, the seed of the shuffling);
:func:`train_epochs` runs epochs of it on a model with a :class:`MaskHolder`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore._checks import check_reusable
from wfexplore.gradients import LossFn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""Called with the parameters of the model being trained; returns the optimizer over them."""
ScheduleFactory = Callable[[torch.optim.Optimizer], object]
"""Called with the optimizer; returns a learning-rate scheduler (``.step()`` once per epoch)."""

DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.9


def default_optimizer() -> OptimizerFactory:
    """SGD with momentum 0.9 and learning rate 0.01: fine-tuning a trained model."""
    return functools.partial(torch.optim.SGD, lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)


@dataclass(frozen=True)
class TrainingSettings:
    """How the model is trained between and after pruning steps.

    ``optimizer`` is called once with the parameters of the model being trained and must
    return a ``torch.optim.Optimizer`` over (some of) them — a class with its settings, e.g.
    ``functools.partial(torch.optim.Adam, lr=1e-3)``; default SGD, momentum 0.9, lr 0.01.
    ``lr_schedule`` (optional) is called once with that optimizer and returns a scheduler
    whose ``step()`` runs after every epoch, e.g.
    ``functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)``.
    ``seed`` seeds the shuffling of the training data (torch's global generator inside a
    forked state, and a loader's own ``generator`` for the call, restored afterwards), so
    that every method trains on the same batches in the same order.
    """

    optimizer: OptimizerFactory = field(default_factory=default_optimizer)
    lr_schedule: ScheduleFactory | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not callable(self.optimizer):
            raise TypeError(
                f"optimizer must be a factory called with the model's parameters, got "
                f"{type(self.optimizer).__name__}; e.g. functools.partial(torch.optim.SGD, lr=0.01)"
            )
        if self.lr_schedule is not None and not callable(self.lr_schedule):
            raise TypeError(
                f"lr_schedule must be a factory called with the optimizer (or None), got "
                f"{type(self.lr_schedule).__name__}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")

    def build(self, model: nn.Module) -> tuple[torch.optim.Optimizer, object | None]:
        """The optimizer over ``model``'s parameters and its scheduler, both checked."""
        optimizer = self.optimizer(model.parameters())
        check_optimizer(optimizer, model)
        scheduler = None
        if self.lr_schedule is not None:
            scheduler = self.lr_schedule(optimizer)
            if not callable(getattr(scheduler, "step", None)):
                raise TypeError(
                    f"lr_schedule returned a {type(scheduler).__name__}, which has no step(); "
                    "return a scheduler such as torch.optim.lr_scheduler.StepLR(optimizer, 2)"
                )
        return optimizer, scheduler


def check_optimizer(optimizer: object, model: nn.Module) -> torch.optim.Optimizer:
    """Refuse anything but an optimizer over parameters of ``model`` (at least one)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer: the factory returned a {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer; pass e.g. functools.partial(torch.optim.SGD, lr=0.01), "
            "which is called with the model's parameters"
        )
    own = {id(p) for p in model.parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        raise ValueError("optimizer: the factory returned an optimizer over no parameters")
    foreign = sum(id(p) not in own for p in params)
    if foreign:
        raise ValueError(
            f"optimizer: {foreign} of its {len(params)} parameters are not parameters of the "
            "model being trained (a private copy of yours); the factory must build the "
            "optimizer over the parameters it is called with, not over a model it captured"
        )
    return optimizer


class MaskHolder:
    """Keeps the pruned entries of a model's parameters at exactly zero.

    ``masks`` maps parameter names of ``model`` to keep masks (True = kept), as in
    :class:`~wfexplore.pruning.PruningResult`. Call :meth:`mask_gradients` after
    ``backward()`` and :meth:`after_step` after ``optimizer.step()``; :meth:`set_masks`
    when a pruning step changes the masks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None):
        self.params = dict(model.named_parameters())
        self.pruned: dict[str, torch.Tensor] = {}
        if masks:
            self.set_masks(masks)

    def set_masks(
        self, masks: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Hold ``masks`` from now on: zero the pruned weights and their optimizer state."""
        pruned = {}
        for name, keep in masks.items():
            param = self.params.get(name)
            if param is None or tuple(param.shape) != tuple(keep.shape):
                raise ValueError(
                    f"masks: {name!r} is not a parameter of the model with the mask's shape "
                    f"{tuple(keep.shape)}"
                )
            pruned[name] = ~keep.to(device=param.device, dtype=torch.bool)
        self.pruned = pruned
        self.apply()
        if optimizer is not None:
            self.zero_state(optimizer)

    @torch.no_grad()
    def apply(self) -> None:
        """Set every pruned weight to exactly 0.0."""
        for name, pruned in self.pruned.items():
            self.params[name].masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, pruned in self.pruned.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def zero_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight state tensor (momentum, Adam moments…) at pruned entries."""
        for name, pruned in self.pruned.items():
            state = optimizer.state.get(self.params[name], {})
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == pruned.shape:
                    value.masked_fill_(pruned, 0)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.apply()
        self.zero_state(optimizer)

    def check(self) -> None:
        """Raise if a pruned weight is not exactly zero (a bug, not a user error)."""
        for name, pruned in self.pruned.items():
            alive = int((self.params[name].detach()[pruned] != 0).sum())
            if alive:
                raise RuntimeError(f"{alive} pruned weights of {name} are no longer zero")


@contextlib.contextmanager
def seeded(data: Iterable, seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Draws of torch's global generator and of ``data``'s own ``generator`` (a shuffling
    ``DataLoader`` made with ``generator=``) seeded with ``seed`` inside the block; both
    are as they were afterwards."""
    devices = [device] if device is not None and device.type == "cuda" else []
    generator = getattr(data, "generator", None)
    saved = generator.get_state() if isinstance(generator, torch.Generator) else None
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if saved is not None:
            generator.manual_seed(seed)
        try:
            yield
        finally:
            if saved is not None:
                generator.set_state(saved)


def train_epochs(
    model: nn.Module,
    data: Iterable,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    holder: MaskHolder,
    *,
    scheduler: object | None = None,
    loss_fn: LossFn = F.cross_entropy,
    after_epoch: Callable[[float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``epochs`` epochs with ``holder``'s masks held.

    Train mode during the epochs (BatchNorm updates its statistics), modes restored
    afterwards; batches move to the model's device; ``scheduler.step()`` after each epoch,
    then ``after_epoch(mean training loss)``. Returns the mean training loss of each epoch.
    """
    if epochs > 1:
        check_reusable(data, "train_data")
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    losses = []
    try:
        for _ in range(epochs):
            model.train()
            total, count = 0.0, 0
            for batch in data:
                x, y = batch[0].to(device), batch[1].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                holder.mask_gradients()
                optimizer.step()
                holder.after_step(optimizer)
                total += float(loss.detach()) * len(y)
                count += len(y)
            if count == 0:
                raise ValueError("train_data: the loader yielded no batches to train on")
            if scheduler is not None:
                scheduler.step()
            losses.append(total / count)
            if after_epoch is not None:
                after_epoch(total / count)
    finally:
        for module, mode in modes:
            module.training = mode
    return losses


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_MOMENTUM",
    "MaskHolder",
    "OptimizerFactory",
    "ScheduleFactory",
    "TrainingSettings",
    "check_optimizer",
    "default_optimizer",
    "seeded",
    "train_epochs",
]
