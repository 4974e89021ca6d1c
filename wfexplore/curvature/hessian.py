"""Exact Hessian blocks H_BB = ∂²L/∂w_B² of the mean training loss, beside the Fisher.

L(w) = (1/N) Σ_i ℓ(f(x_i; w), y_i) over the first N examples of the data. Column j of a
block is the Hessian-vector product H e_j (forward-over-reverse with ``torch.func``,
vmapped over chunks of basis vectors), restricted to the block's rows. The model is
copied and evaluated in eval mode, in float64 by default.

Where torch cannot run forward-over-reverse (``F.mse_loss`` raises "ZeroTensors are
immutable"; CPU flash attention, as in ``nn.MultiheadAttention``, has no forward-mode
derivative), the columns are computed by reverse-over-reverse instead (``vjp`` of ``grad``,
vmapped, else a loop over basis vectors), with a ``RuntimeWarning`` that names the cause.
The fallback runs scaled-dot-product attention on its math backend, the one backend with
derivatives of every order (the flash kernel's backward has no derivative either).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from wfexplore._checks import positive_int
from wfexplore.copies import private_copy
from wfexplore.curvature.dense import (
    DEFAULT_MAX_MEMORY_GB,
    DenseBlockCurvature,
    check_dense_memory,
    group_blocks,
)
from wfexplore.curvature.plan import ACTIVATION_COPIES, activation_bytes_of
from wfexplore.examples import take_examples
from wfexplore.gradients import LossFn
from wfexplore.params import ParameterLayout

DEFAULT_MAX_BLOCK_SIZE = 4096
PASS_ACTIVATION_BYTES = 2**30
"""Activations one vmapped Hessian-vector pass may keep alive: a pass over k basis vectors
and n examples keeps about k·n·ACTIVATION_COPIES examples' worth."""


def hessian_blocks(
    model: nn.Module,
    data: Iterable,
    layout: ParameterLayout,
    *,
    loss_fn: LossFn = F.cross_entropy,
    num_examples: int | None = None,
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    basis_chunk: int = 128,
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> DenseBlockCurvature:
    """Exact Hessian blocks H_BB of the mean loss over the data (undamped; C = H + λI through
    ``inverse_*(…, λ)`` or ``.damped(λ)``, Cholesky where positive definite, else LU).

    ``num_examples`` limits the data used (default: all of it). Blocks larger than
    ``max_block_size`` are refused with their estimated memory; raise the limit to allow them.
    The data's batches are cut into slices of examples, and ``basis_chunk`` lowered, so that
    one vmapped pass keeps at most :data:`PASS_ACTIVATION_BYTES` of activations.
    """
    largest = max(layout.blocks, key=lambda b: b.size)
    if largest.size > max_block_size:
        name = layout.parameters[largest.layer].name
        raise MemoryError(
            f"a Hessian block of {name} has {largest.size} weights: {largest.size}² float64 "
            f"entries take an estimated {largest.size**2 * 8 / 2**30:.2f} GB and {largest.size} "
            f"Hessian-vector products; the limit is max_block_size={max_block_size}. Use a "
            "smaller block_size, select smaller layers, or raise max_block_size"
        )
    check_dense_memory(layout, max_memory_gb)
    positive_int(basis_chunk, "basis_chunk", "e.g. basis_chunk=64")

    work = private_copy(model).eval().to(dtype)
    device = next(work.parameters()).device
    params = {n: p.detach() for n, p in work.named_parameters()}
    fixed = {n: p for n, p in params.items() if n not in set(layout.names)}
    buffers = dict(work.named_buffers())
    w0 = layout.flatten(params)

    def loss_of(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(work, (layout.unflatten(w), fixed, buffers), (x,))
        return loss_fn(out, y)

    if num_examples is not None:
        positive_int(num_examples, "num_examples", "or None to use all the data")
    batches = [
        (x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype), y.to(device))
        for x, y in take_examples(data, num_examples)
    ]
    per_example = ACTIVATION_COPIES * activation_bytes_of(work, batches[0][0]) if batches else 0
    basis_chunk = max(1, min(basis_chunk, PASS_ACTIVATION_BYTES // max(per_example, 1)))
    step = max(1, PASS_ACTIVATION_BYTES // max(basis_chunk * per_example, 1))
    batches = [
        (x[a : a + step], y[a : a + step]) for x, y in batches for a in range(0, len(x), step)
    ]
    columns = _HessianColumns(loss_of, w0, batches)
    groups = group_blocks(layout, device)
    with warnings.catch_warnings():
        # torch loads its forward-mode decompositions through the deprecated torch.jit.script
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        _fill_blocks(groups, columns, layout, dtype, device, basis_chunk, progress)
    _check_finite_blocks(groups, layout)
    return DenseBlockCurvature(layout, groups, kind="hessian", requires_damping=False)


class _HessianColumns:
    """Maps a ``(k, d)`` chunk of vectors v to the ``(k, d)`` products H v of the mean loss.

    Forward-over-reverse (``jvp`` of ``grad``), vmapped, is the fast path. The first chunk it
    fails on switches to reverse-over-reverse for the rest of the run: ``vjp`` of ``grad``,
    linearised once per batch and chunk and vmapped over the chunk, else a loop over its
    vectors where vmap cannot run it; one ``RuntimeWarning`` names the cause and the path.
    """

    def __init__(self, loss_of, w0: torch.Tensor, batches: list) -> None:
        self.loss_of, self.w0, self.batches = loss_of, w0, batches
        self.total = sum(x.shape[0] for x, _ in batches)
        self.mode = "forward"

    def __call__(self, basis: torch.Tensor) -> torch.Tensor:
        if self.mode == "forward":
            try:
                return vmap(self._forward)(basis)
            except torch.OutOfMemoryError:
                raise  # reverse mode needs more memory, not less
            except Exception as error:  # noqa: BLE001 - any failure falls back to reverse mode
                return self._fall_back(basis, error)
        with sdpa_kernel(SDPBackend.MATH):
            return self._reverse(basis, batched=self.mode == "reverse")

    def _forward(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for x, y in self.batches:
            grad_here = partial(grad(self.loss_of), x=x, y=y)
            out += jvp(grad_here, (self.w0,), (v,))[1] * (x.shape[0] / self.total)
        return out

    def _reverse(self, basis: torch.Tensor, batched: bool) -> torch.Tensor:
        out = torch.zeros_like(basis)
        for x, y in self.batches:
            _, pullback = vjp(partial(grad(self.loss_of), x=x, y=y), self.w0)
            if batched:
                part = vmap(pullback)(basis)[0]
            else:
                part = torch.stack([pullback(v)[0] for v in basis])
            out += part * (x.shape[0] / self.total)
        return out

    def _fall_back(self, basis: torch.Tensor, error: Exception) -> torch.Tensor:
        cause = f"{type(error).__name__}: {_first_line(error)}"
        with sdpa_kernel(SDPBackend.MATH):
            try:
                out, self.mode, path = self._reverse(basis, batched=True), "reverse", "vmapped"
            except Exception as vmap_error:  # noqa: BLE001 - vmap failures fall back to a loop
                out, self.mode = self._reverse(basis, batched=False), "reverse-loop"
                path = (
                    f"a Python loop over basis vectors, since vmap cannot run them either "
                    f"({type(vmap_error).__name__}: {_first_line(vmap_error)})"
                )
        warnings.warn(
            f"forward-over-reverse Hessian-vector products fail for this model and loss "
            f"({cause}); computing Hessian columns by reverse-over-reverse ({path}; attention on "
            "its math backend), slower",
            RuntimeWarning,
            stacklevel=5,
        )
        return out


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _check_finite_blocks(groups, layout: ParameterLayout) -> None:
    """Refuse NaN/inf Hessian entries, naming the parameters they are in."""
    bad = set()
    for grp in groups:
        broken = ~torch.isfinite(grp.matrix).all(dim=2).all(dim=1)
        for k in broken.nonzero()[:, 0].tolist():
            bad.add(layout.parameters[layout.blocks[grp.blocks[k]].layer].name)
    if bad:
        raise FloatingPointError(
            f"non-finite Hessian entries in {sorted(bad)}; check the data, the model's outputs "
            "and the loss for NaN/inf"
        )


def _fill_blocks(groups, columns, layout, dtype, device, basis_chunk: int, progress: bool) -> None:
    """Set each group's ``matrix`` to its blocks H_BB, from Hessian-vector products H e_j
    (``columns`` maps a ``(k, d)`` chunk of basis vectors to their ``(k, d)`` products).

    Columns of all blocks of a group are batched together: column j of block k is
    (H e_j) restricted to the rows of block k.
    """
    bar = tqdm(total=layout.dim, desc="Hessian columns", unit="col", disable=not progress)
    for grp in groups:
        n, s = grp.index.shape
        grp.matrix = torch.empty(n, s, s, dtype=dtype, device=device)
        flat = grp.index.reshape(-1)  # column j = flat[i] of block i // s, position i % s
        for a in range(0, flat.numel(), basis_chunk):
            pairs = torch.arange(a, min(a + basis_chunk, flat.numel()), device=device)
            block, col = pairs // s, pairs % s
            basis = torch.zeros(len(pairs), layout.dim, dtype=dtype, device=device)
            basis[torch.arange(len(pairs), device=device), flat[pairs]] = 1.0
            products = columns(basis)  # (k, d)
            grp.matrix[block, :, col] = products.gather(1, grp.index[block])
            bar.update(len(pairs))
        grp.matrix = (grp.matrix + grp.matrix.transpose(1, 2)) / 2
    bar.close()
