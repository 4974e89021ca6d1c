"""Loss and accuracy of a model on a loader, and BatchNorm statistics re-estimation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from wfexplore._checks import positive_int
from wfexplore.gradients import LossFn


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: Iterable,
    *,
    loss_fn: LossFn = F.cross_entropy,
    name: str = "eval_data",
) -> dict[str, float]:
    """Mean ``loss`` (``loss_fn`` averaged over examples) and ``accuracy`` in eval mode.

    Accuracy is argmax agreement for (N, C) outputs with integer targets, else NaN.
    Examples whose outputs hold NaN or inf make both numbers NaN, with a ``RuntimeWarning``
    naming ``name`` and the count (an argmax over NaN logits is no accuracy); so does a
    non-finite loss. Submodule train/eval modes are restored afterwards; batches move to
    the model's device.
    """
    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    model.eval()
    total, correct, count, classify = 0.0, 0, 0, True
    non_finite, bad_loss = 0, 0
    try:
        for batch in data:
            x, y = batch[0].to(device), batch[1].to(device)
            out = model(x)
            n = x.shape[0]
            finite = torch.isfinite(out.detach().reshape(n, -1)).all(dim=1)
            non_finite += int((~finite).sum())
            loss = float(loss_fn(out, y))
            bad_loss += not math.isfinite(loss)
            total += loss * n
            if out.ndim == 2 and y.ndim == 1 and not y.is_floating_point():
                correct += int((out.argmax(dim=1) == y).sum())
            else:
                classify = False
            count += n
    finally:
        for module, mode in modes:
            module.training = mode
    if count == 0:
        raise ValueError(f"{name}: the loader yielded no examples; pass a loader with data")
    if non_finite or bad_loss:
        what = (
            f"{non_finite} of {count} examples have non-finite outputs (NaN/inf)"
            if non_finite
            else f"the loss is non-finite on {bad_loss} batch(es)"
        )
        warnings.warn(
            f"{name}: {what}; loss and accuracy are reported as NaN. Check the inputs and the "
            "model's weights for NaN/inf (e.g. a diverged update or corrupt data)",
            RuntimeWarning,
            stacklevel=2,
        )
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": total / count, "accuracy": correct / count if classify else float("nan")}


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Iterable, *, num_batches: int | None = None, name: str = "data"
) -> nn.Module:
    """Re-estimate the running mean and variance of every BatchNorm layer of ``model`` in place.

    Statistics are reset and re-accumulated as a plain average (momentum=None) over
    ``num_batches`` batches of ``data`` (all by default), with only the BatchNorm layers in
    train mode. Modes and momenta are restored afterwards. Returns ``model``.
    """
    if num_batches is not None:
        positive_int(num_batches, "bn_batches", "or None for the whole loader")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    device = next(model.parameters()).device
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for i, batch in enumerate(data):
            if num_batches is not None and i >= num_batches:
                break
            model(batch[0].to(device))
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for module, mode in modes:
            module.training = mode
    if seen == 0:
        for m, state in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        raise ValueError(f"{name}: the loader yielded no batches to re-estimate BatchNorm with")
    return model
