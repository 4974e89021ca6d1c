"""Loss and accuracy of a model on a loader, without touching its modes or weights."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from wfexplore.distributed import Ranks

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: Iterable,
    *,
    loss_fn: LossFn = F.cross_entropy,
    name: str = "eval_data",
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Mean ``loss`` (``loss_fn`` averaged over examples) and ``accuracy`` in eval mode.

    Accuracy is argmax agreement for (N, C) outputs with integer targets, else NaN.
    Examples whose outputs hold NaN or inf make both numbers NaN, with a ``RuntimeWarning``
    naming ``name`` and the count (an argmax over NaN logits is no accuracy); so does a
    non-finite loss. Submodule train/eval modes are restored afterwards; batches move to
    the model's device. With ``ranks`` each rank evaluates its own shard and the totals are
    summed over the process group (every rank returns the same numbers).
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
    if ranks is not None:
        sums = ranks.sum_numbers(total, correct, count, non_finite, bad_loss, not classify)
        total, correct, count, non_finite, bad_loss = sums[0], *map(int, sums[1:5])
        classify = sums[5] == 0
    if count == 0:
        raise ValueError(
            f"{name}: the loader yielded no examples (it is empty); pass a loader with data"
        )
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
