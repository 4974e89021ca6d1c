"""Gradient samples g_n = ∇_w ℓ_n of the analysed weights.

A gradient sample is the gradient of one example (``batch_size=1``) or the mean
gradient of a mini-batch of ``b`` examples. Samples are computed with
``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``) in chunks, on a
private copy of the model in eval mode, so the caller's model is never touched.
For the true Fisher, labels are drawn from the model's own predictive
distribution with a seeded generator instead of taken from the data.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from wfexplore._checks import one_of, positive_int
from wfexplore.params import ParameterLayout

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FISHER_KINDS = ("empirical", "true")
DEFAULT_CHUNK_BYTES = 256 * 2**20


def gradient_samples(
    model: nn.Module,
    data: Iterable,
    layout: ParameterLayout,
    num_samples: int,
    **kwargs,
) -> torch.Tensor:
    """The ``(m, d)`` matrix G whose rows are gradient samples; see :func:`iter_gradient_chunks`."""
    return torch.cat(list(iter_gradient_chunks(model, data, layout, num_samples, **kwargs)))


def iter_gradient_chunks(
    model: nn.Module,
    data: Iterable,
    layout: ParameterLayout,
    num_samples: int,
    *,
    batch_size: int = 1,
    loss_fn: LossFn = F.cross_entropy,
    fisher: str = "empirical",
    seed: int = 0,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield gradient samples as ``(c, d)`` chunks, ``num_samples`` rows in all.

    Sample n is ∇_w (1/b) Σ_{i ∈ batch n} ℓ(f(x_i), y_i), taken over the first
    ``num_samples * batch_size`` examples of ``data`` (an iterable of ``(x, y)`` batches,
    e.g. a ``DataLoader``). ``loss_fn(outputs, targets)`` must return the batch mean.
    With ``fisher="true"``, y_i ~ softmax(f(x_i)) (seeded), which assumes a
    classifier trained with cross-entropy. Rows are in the dtype of the model.
    """
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    positive_int(batch_size, "batch_size", "use 1 for per-example gradients")
    one_of(fisher, "fisher", FISHER_KINDS)
    _check_enough_data(data, num_samples, batch_size)
    work = copy.deepcopy(model).eval()
    if device is not None:
        work = work.to(device)
    device = next(work.parameters()).device
    if chunk_size is None:
        itemsize = next(work.parameters()).element_size()
        chunk_size = max(1, min(256, DEFAULT_CHUNK_BYTES // (layout.dim * itemsize)))
    positive_int(chunk_size, "chunk_size", "e.g. chunk_size=64")

    compute = _GradientComputer(work, layout, loss_fn)
    generator = torch.Generator(device=device).manual_seed(seed)
    bar = tqdm(total=num_samples, desc="gradient samples", unit="g", disable=not progress)
    try:
        for x, y in iter_example_chunks(data, num_samples, batch_size, chunk_size):
            x, y = x.to(device), y.to(device)
            if fisher == "true":
                y = _sample_labels(work, x, generator)
            n = x.shape[0] // batch_size
            x = x.reshape(n, batch_size, *x.shape[1:])
            y = y.reshape(n, batch_size, *y.shape[1:])
            chunk = compute(x, y)
            _check_finite(chunk, layout)
            bar.update(n)
            yield chunk
    finally:
        bar.close()


def iter_example_chunks(
    data: Iterable, num_samples: int, batch_size: int, chunk_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` chunks of ``chunk_size · batch_size`` examples, ``num_samples · batch_size``
    in all, taken in order from ``data``; too little data is refused with a named error."""
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    positive_int(batch_size, "batch_size", "use 1 for per-example gradients")
    positive_int(chunk_size, "chunk_size", "e.g. chunk_size=64")
    _check_enough_data(data, num_samples, batch_size)
    return _chunks_or_error(data, num_samples, batch_size, chunk_size)


def _chunks_or_error(data, num_samples: int, batch_size: int, chunk_size: int):
    needed = num_samples * batch_size
    try:
        yield from _regroup(data, chunk_size * batch_size, needed)
    except _ShortData as short:
        raise ValueError(
            f"num_samples={num_samples} with batch_size={batch_size} needs {needed} examples, "
            f"but data gave only {short.seen}; lower num_samples or batch_size"
        ) from None


def _check_enough_data(data: Iterable, num_samples: int, batch_size: int) -> None:
    needed = num_samples * batch_size
    available = _dataset_length(data)
    if available is not None and available < needed:
        raise ValueError(
            f"num_samples={num_samples} with batch_size={batch_size} needs {needed} examples, "
            f"but data holds {available}; lower num_samples or batch_size"
        )


class _GradientComputer:
    """Maps a ``(n, b, ...)`` batch of groups to the ``(n, d)`` mean gradient of each group."""

    def __init__(self, model: nn.Module, layout: ParameterLayout, loss_fn: LossFn):
        self.model, self.layout, self.loss_fn = model, layout, loss_fn
        params = {name: p.detach() for name, p in model.named_parameters()}
        self.analysed = {name: params[name] for name in layout.names}
        self.fixed = {name: p for name, p in params.items() if name not in self.analysed}
        self.buffers = dict(model.named_buffers())
        self.use_vmap = True

    def group_loss(self, analysed: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (analysed, self.fixed, self.buffers), (x,))
        return self.loss_fn(out, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.use_vmap:
            try:
                grads = vmap(grad(self.group_loss), in_dims=(None, 0, 0))(self.analysed, x, y)
                return self._flatten(grads)
            except Exception as error:  # noqa: BLE001 - any vmap failure falls back to a loop
                self.use_vmap = False
                warnings.warn(
                    f"torch.func.vmap cannot run this model ({type(error).__name__}: {error}); "
                    "computing gradient samples with a slower Python loop",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self._loop(x, y)

    def _loop(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        named = dict(self.model.named_parameters())
        inputs = [named[name] for name in self.layout.names]
        rows = []
        for xg, yg in zip(x, y, strict=True):
            loss = self.loss_fn(self.model(xg), yg)
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, inputs)]))
        return torch.stack(rows)

    def _flatten(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(grads.values())).shape[0]
        return torch.cat([grads[name].reshape(n, -1) for name in self.layout.names], dim=1)


@torch.no_grad()
def _sample_labels(model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    probs = torch.softmax(model(x).double(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _regroup(data: Iterable, size: int, total: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Re-batch ``(x, y)`` batches into chunks of ``size`` examples, ``total`` examples in all."""
    xs, ys, held, given = [], [], 0, 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError("data must yield (inputs, targets) batches, like a DataLoader")
        x, y = batch[0], batch[1]
        xs.append(x)
        ys.append(y)
        held += x.shape[0]
        while held >= size or (held > 0 and given + held >= total):
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            take = min(size, total - given)
            yield x_all[:take], y_all[:take]
            given += take
            if given >= total:
                return
            xs, ys, held = [x_all[take:]], [y_all[take:]], x_all.shape[0] - take
    raise _ShortData(given + held)


class _ShortData(Exception):
    def __init__(self, seen: int):
        self.seen = seen


def _dataset_length(data: Iterable) -> int | None:
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _check_finite(chunk: torch.Tensor, layout: ParameterLayout) -> None:
    if torch.isfinite(chunk).all():
        return
    bad = [
        p.name for p in layout.parameters if not torch.isfinite(chunk[:, p.offset : p.stop]).all()
    ]
    raise FloatingPointError(
        f"non-finite gradients in {bad}; check the model's outputs and loss for NaN/inf "
        "(e.g. a learning rate that diverged, or log of zero in the loss)"
    )
