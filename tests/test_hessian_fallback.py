"""Exact Hessian blocks where forward-over-reverse autodiff cannot run: reverse-over-reverse."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

from wfexplore.curvature import hessian_blocks
from wfexplore.params import ParameterLayout

FALLBACK = "forward-over-reverse Hessian-vector products fail"


def autograd_hessian(model, loader, layout, loss_fn):
    """Reference: torch.autograd.functional.hessian of the mean loss on the flat weights,
    with attention on its math backend (CPU flash attention has no double backward)."""
    xs = torch.cat([x for x, _ in loader])
    ys = torch.cat([y for _, y in loader])
    params = {n: p.detach() for n, p in model.named_parameters()}
    model.eval()

    def loss(w):
        return loss_fn(functional_call(model, {**params, **layout.unflatten(w)}, (xs,)), ys)

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, layout.flatten(params))


def blocks_and_fallback_warnings(model, loader, layout, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hess = hessian_blocks(model, loader, layout, basis_chunk=8, progress=False, **kwargs)
    fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    return hess, [str(w.message) for w in fallbacks if FALLBACK in str(w.message)]


def assert_blocks_equal(hess, full, layout):
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        torch.testing.assert_close(hess.block(b.index), full[rows, rows], rtol=0, atol=1e-12)


class Attention(nn.Module):
    """Tokens → self-attention (SDPA, no attention weights) → mean over tokens → classes."""

    def __init__(self, dim: int = 4, heads: int = 2, classes: int = 3):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(x, x, x, need_weights=False)
        return self.head(out.mean(dim=1))


class Cube(torch.autograd.Function):
    """x³ with a backward that vmap cannot batch (data-dependent control flow), no jvp."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if bool((g == 0).all()):
            return torch.zeros_like(x)
        return 3 * x**2 * g


class CubeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(Cube.apply(self.first(x)))


@pytest.mark.parametrize("block_size", [7, "layer"])
def test_mse_regression_hessian_falls_back_to_reverse_mode_and_equals_autograd(block_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, y), batch_size=12)
    layout = ParameterLayout.from_model(model, block_size=block_size)
    hess, fallbacks = blocks_and_fallback_warnings(model, loader, layout, loss_fn=F.mse_loss)
    assert len(fallbacks) == 1
    assert "ZeroTensors are immutable" in fallbacks[0] and "vmapped" in fallbacks[0]
    assert_blocks_equal(hess, autograd_hessian(model, loader, layout, F.mse_loss), layout)


def test_multihead_attention_hessian_falls_back_to_reverse_mode_and_equals_autograd():
    torch.manual_seed(0)
    model = Attention().double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    names = ["attention.in_proj_weight", "attention.out_proj.weight", "head.weight"]
    layout = ParameterLayout.from_model(model, names=names)
    hess, fallbacks = blocks_and_fallback_warnings(model, loader, layout)
    assert len(fallbacks) == 1
    assert "forward AD" in fallbacks[0] and "flash_attention" in fallbacks[0]
    assert_blocks_equal(hess, autograd_hessian(model, loader, layout, F.cross_entropy), layout)


def test_reverse_mode_loops_over_basis_vectors_where_vmap_cannot_run_it():
    torch.manual_seed(0)
    model = CubeNet().double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (10,), generator=g)
    loader = [(x, y)]
    layout = ParameterLayout.from_model(model, block_size="model")
    hess, fallbacks = blocks_and_fallback_warnings(model, loader, layout)
    assert len(fallbacks) == 1 and "Python loop over basis vectors" in fallbacks[0]
    assert_blocks_equal(hess, autograd_hessian(model, loader, layout, F.cross_entropy), layout)
