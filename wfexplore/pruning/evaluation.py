"""BatchNorm statistics re-estimation, and the evaluation every pruning result reports."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from wfexplore._checks import positive_int
from wfexplore.evaluation import evaluate_model


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


__all__ = ["evaluate_model", "recalibrate_batchnorm"]
