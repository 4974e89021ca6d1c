"""Gradient samples g_n = ∇_w ℓ_n of the analysed weights.

A gradient sample is the gradient of one example (``batch_size=1``) or the mean
gradient of a mini-batch of ``b`` examples. Samples are computed with
``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``) in chunks, on a
private copy of the model in eval mode (without the caller's hooks), so the caller's
model is never touched. Each chunk is checked with one plain forward and loss first, so
that a wrong batch (targets of the wrong shape, type or range, a dtype mismatch, a model
that returns a tuple) is named as such; only a failure of ``vmap`` itself falls back to a
Python loop. For the true Fisher, labels are drawn from the model's own predictive
distribution with a seeded generator instead of taken from the data (:func:`sample_labels`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from wfexplore._checks import one_of, positive_int
from wfexplore.copies import private_copy
from wfexplore.evaluation import LossFn
from wfexplore.params import ParameterLayout

FISHER_KINDS = ("empirical", "true")
DEFAULT_CHUNK_BYTES = 256 * 2**20


def gradient_samples(
    model: nn.Module,
    data: Iterable,
    layout: ParameterLayout,
    num_samples: int,
    **kwargs,
) -> torch.Tensor:
    """The ``(m, d)`` matrix G whose rows are gradient samples; see :func:`iter_gradient_chunks`.

    Chunks are written into G as they come (G is allocated once, never copied)."""
    return collect_rows(
        iter_gradient_chunks(model, data, layout, num_samples, **kwargs), num_samples
    )


def collect_rows(chunks: Iterable[torch.Tensor], total: int | None = None) -> torch.Tensor:
    """Stack ``(c, d)`` chunks into one ``(total, d)`` tensor allocated at the first chunk
    (no list of chunks and copy); without ``total``, the chunks are concatenated."""
    if total is None:
        return torch.cat(list(chunks))
    out, filled = None, 0
    for chunk in chunks:
        if out is None:
            out = torch.empty(total, *chunk.shape[1:], dtype=chunk.dtype, device=chunk.device)
        if filled + chunk.shape[0] > total:
            raise ValueError(f"chunks: more than the {total} rows expected")
        out[filled : filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    if out is None or filled != total:
        raise ValueError(f"chunks: {filled} rows given, {total} expected")
    return out


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
    With ``fisher="true"``, y_i is drawn (seeded) from the likelihood of ``loss_fn``, see
    :func:`sample_labels`; other losses are refused. Rows are in the dtype of the model.
    """
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    positive_int(batch_size, "batch_size", "use 1 for per-example gradients")
    one_of(fisher, "fisher", FISHER_KINDS)
    if fisher == "true":
        true_fisher_likelihood(loss_fn)
    _check_enough_data(data, num_samples, batch_size)
    work = private_copy(model).eval()
    if device is not None:
        work = work.to(device)
    device = next(work.parameters()).device
    if chunk_size is None:
        itemsize = next(work.parameters()).element_size()
        chunk_size = max(1, min(256, DEFAULT_CHUNK_BYTES // (layout.dim * itemsize)))
    positive_int(chunk_size, "chunk_size", "e.g. chunk_size=64")

    compute = _GradientComputer(work, layout, loss_fn)
    generator = torch.Generator().manual_seed(seed)  # labels are drawn on the host
    bar = tqdm(total=num_samples, desc="gradient samples", unit="g", disable=not progress)
    try:
        for x, y in iter_example_chunks(data, num_samples, batch_size, chunk_size):
            x, y = x.to(device), y.to(device)
            if fisher == "true":
                y = sample_labels(plain_forward(work, x), loss_fn, generator)
            check_batch(work, x, y, loss_fn, probe=batch_size)
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


# --- the loss's likelihood and the true Fisher -----------------------------------------------
def true_fisher_likelihood(loss_fn: LossFn) -> str:
    """``"categorical"`` for cross-entropy, ``"gaussian"`` for the mean squared error; any
    other loss is refused, since the true Fisher needs the likelihood the loss comes from."""
    if loss_fn is F.cross_entropy:
        return "categorical"
    if loss_fn is F.mse_loss:
        return "gaussian"
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if (
            loss_fn.weight is not None
            or loss_fn.label_smoothing != 0
            or loss_fn.reduction != "mean"
        ):
            raise ValueError(
                "fisher='true' needs the plain negative log-likelihood: nn.CrossEntropyLoss with "
                f"weight={'set' if loss_fn.weight is not None else None}, "
                f"label_smoothing={loss_fn.label_smoothing}, reduction={loss_fn.reduction!r} is "
                "not one; use nn.CrossEntropyLoss() or fisher='empirical'"
            )
        return "categorical"
    if isinstance(loss_fn, nn.MSELoss):
        if loss_fn.reduction != "mean":
            raise ValueError(
                f"fisher='true' needs the batch mean: nn.MSELoss(reduction={loss_fn.reduction!r}) "
                "is not; use nn.MSELoss() or fisher='empirical'"
            )
        return "gaussian"
    raise ValueError(
        f"fisher='true' draws labels from the likelihood behind the loss, which is known only for "
        f"cross-entropy (F.cross_entropy, nn.CrossEntropyLoss) and squared error (F.mse_loss, "
        f"nn.MSELoss); loss_fn={_loss_name(loss_fn)} is neither. Pass one of those, or use "
        "fisher='empirical'"
    )


@torch.no_grad()
def sample_labels(
    outputs: torch.Tensor, loss_fn: LossFn, generator: torch.Generator
) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution, for the true Fisher.

    Cross-entropy: y ~ Categorical(softmax(f(x))) over the class dimension (dim 1).
    Mean squared error: y = f(x) + σ ε, ε ~ N(0, I), with σ² = K/2 for K outputs per
    example, the Gaussian whose negative log-likelihood is ``loss_fn`` up to a constant
    (ℓ = (1/K)‖f − y‖²); then E_y[∇ℓ ∇ℓᵀ] = (2/K) JᵀJ, the Gauss–Newton matrix of ℓ, as
    the true Fisher of cross-entropy is. ``generator`` (a CPU generator) seeds it: the draws
    are made on the host and moved to the outputs' device, so that CPU and GPU runs with one
    seed draw the same labels.
    """
    if not isinstance(outputs, torch.Tensor) or outputs.ndim == 0:
        raise ValueError("outputs: expected a (N, ...) tensor of model outputs")
    outputs = outputs.detach()
    if true_fisher_likelihood(loss_fn) == "gaussian":
        per_example = outputs[0].numel() if outputs.shape[0] else 1
        noise = torch.randn(outputs.shape, generator=generator, dtype=torch.float64)
        noisy = outputs.double() + math.sqrt(per_example / 2) * noise.to(outputs.device)
        return noisy.to(outputs.dtype)
    if outputs.ndim < 2:
        raise ValueError(
            "outputs: cross-entropy needs (N, C, ...) class scores, got shape "
            f"{tuple(outputs.shape)}"
        )
    scores = outputs.movedim(1, -1)
    probs = torch.softmax(scores.double().reshape(-1, scores.shape[-1]), dim=-1).cpu()
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return labels.reshape(scores.shape[:-1]).to(outputs.device)


def _loss_name(loss_fn) -> str:
    return getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__


# --- checks of a batch, before vmap ------------------------------------------------------------
def _tensor_output(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"model: forward returned a {type(out).__name__}, not a tensor; gradient samples need "
        "the outputs as one tensor: wrap the model so that forward returns it (e.g. out[0])"
    )


def _criterion(loss_fn) -> str | None:
    if loss_fn is F.cross_entropy or isinstance(loss_fn, nn.CrossEntropyLoss):
        return "cross-entropy"
    if loss_fn is F.mse_loss or isinstance(loss_fn, nn.MSELoss):
        return "mse"
    return None


def check_targets(outputs: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    """Refuse targets that cross-entropy or mean squared error would reject, broadcast or
    misread: class labels of shape (N, 1), float class labels, labels out of range, MSE
    targets of another shape or integer type. Other losses are not checked here."""
    kind = _criterion(loss_fn)
    if kind is None:
        return
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"targets: expected a tensor, got {type(y).__name__}")
    if kind == "mse":
        _check_regression_targets(outputs, y)
    else:
        _check_class_targets(outputs, y, loss_fn)


def _check_regression_targets(outputs: torch.Tensor, y: torch.Tensor) -> None:
    out_shape, y_shape = tuple(outputs.shape), tuple(y.shape)
    if y_shape[1:] != out_shape[1:]:
        raise ValueError(
            f"targets: shape {_batch_shape(y_shape)} differs from the outputs' "
            f"{_batch_shape(out_shape)}; mse_loss would broadcast them into a wrong loss: "
            "reshape the targets like the outputs "
            f"(e.g. y.view(-1, {', '.join(map(str, out_shape[1:])) or '1'}))"
        )
    if not y.is_floating_point():
        raise ValueError(
            f"targets: mse_loss needs floating targets, got {y.dtype}; convert them "
            "(y.to(outputs.dtype))"
        )


def _check_class_targets(outputs: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    out_shape, y_shape = tuple(outputs.shape), tuple(y.shape)
    out_n, y_n = _batch_shape(out_shape), _batch_shape(y_shape)
    if len(out_shape) < 2:
        raise ValueError(
            f"model: cross-entropy needs (N, C) class scores, the outputs have shape {out_n}"
        )
    if y.is_floating_point():
        if y_shape[1:] == out_shape[1:]:
            return  # class probabilities
        raise ValueError(
            f"targets: float labels of shape {y_n}; cross-entropy needs integer class labels "
            f"of shape (N,) (y.long()) or class probabilities shaped like the outputs {out_n}"
        )
    expected = out_shape[2:]
    if y_shape[1:] != expected:
        if y_shape[1:] == (1,) and not expected:
            raise ValueError(
                f"targets: class labels of shape {y_n}; cross-entropy needs shape (N,): "
                "use y.squeeze(1)"
            )
        raise ValueError(
            f"targets: shape {y_n} does not fit outputs of shape {out_n}; cross-entropy "
            f"needs class labels of shape (N{''.join(f', {d}' for d in expected)})"
        )
    classes = out_shape[1]
    ignore = getattr(loss_fn, "ignore_index", -100)
    bad = ((y < 0) | (y >= classes)) & (y != ignore)
    if bool(bad.any()):
        value = int(y[bad].flatten()[0])
        raise ValueError(
            f"targets: label {value} is outside the {classes} classes of the model's outputs "
            f"(0 to {classes - 1}); check the labels or the model's output size"
        )


def _batch_shape(shape: tuple[int, ...]) -> str:
    """``(N, 1)`` for a shape ``(48, 1)``: the batch dimension named N."""
    return "(" + ", ".join(["N", *map(str, shape[1:])]) + ("," if len(shape) == 1 else "") + ")"


def check_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, probe: int = 1
) -> torch.Tensor:
    """Check a batch with one plain forward and loss on its first ``probe`` examples,
    outside any ``torch.func`` transform, and return those outputs.

    A failure here is the batch's or the model's, not vmap's: it is raised with what is
    wrong (targets of every example, see :func:`check_targets`; dtypes; a non-tensor
    output; a loss that is not one number)."""
    out = plain_forward(model, x[:probe])
    check_targets(out, y, loss_fn)
    with torch.no_grad():
        try:
            loss = loss_fn(out, y[:probe])
        except Exception as error:
            raise ValueError(
                f"loss_fn fails on the model's outputs {tuple(out.shape)} and targets "
                f"{tuple(y[:probe].shape)} ({y.dtype}) of a batch ({type(error).__name__}: "
                f"{error})"
            ) from error
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return the mean loss of the batch (one number), got {shape}; "
            "use reduction='mean'"
        )
    return out


@torch.no_grad()
def plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradients; a failure or a non-tensor output is named as such."""
    try:
        out = model(x)
    except Exception as error:
        raise ValueError(
            f"data: the model fails on a batch of the data in a plain forward pass "
            f"({type(error).__name__}: {error}){_dtype_hint(model, x)}"
        ) from error
    return _tensor_output(out)


def _dtype_hint(model: nn.Module, x: torch.Tensor) -> str:
    param = next(model.parameters(), None)
    if param is None or not x.is_floating_point() or x.dtype == param.dtype:
        return ""
    return (
        f"; the inputs are {x.dtype} but the model's parameters are {param.dtype}: convert one "
        f"of them (x.to({param.dtype}) or model.to({x.dtype}))"
    )


class _GradientComputer:
    """Maps a ``(n, b, ...)`` batch of groups to the ``(n, d)`` mean gradient of each group."""

    def __init__(self, model: nn.Module, layout: ParameterLayout, loss_fn: LossFn):
        self.model, self.layout, self.loss_fn = model, layout, loss_fn
        for name, p in model.named_parameters():
            if name in layout.names:
                p.requires_grad_(True)  # a private copy: the loop fallback needs the graph
        params = {name: p.detach() for name, p in model.named_parameters()}
        self.analysed = {name: params[name] for name in layout.names}
        self.fixed = {name: p for name, p in params.items() if name not in self.analysed}
        self.buffers = dict(model.named_buffers())
        self.use_vmap = True

    def group_loss(self, analysed: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (analysed, self.fixed, self.buffers), (x,))
        return self.loss_fn(out, y).reshape(())

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
            loss = self.loss_fn(self.model(xg), yg).reshape(())
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, inputs)]))
        return torch.stack(rows)

    def _flatten(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(grads.values())).shape[0]
        return torch.cat([grads[name].reshape(n, -1) for name in self.layout.names], dim=1)


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
