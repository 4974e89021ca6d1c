"""Every representation answers the whole interface, for every λ, from one undamped M.

Each representation is built on the small MLP and checked against an independent dense
float64 matrix: the Fisher (1/m)GᵀG from a loop of backward passes, its diagonal, the
identity, the Kronecker products of K-FAC's own factors, and the exact Hessian from
``torch.autograd.functional.hessian``. Forward products are of M, inverse ones of M + λI
at two values of λ asked of the same object.
"""

import pytest
import torch

from tests.conftest import dense_block_fisher, loop_gradients
from tests.test_hessian import autograd_hessian
from wfexplore.curvature import DampedCurvature, estimate_curvature, hessian_blocks
from wfexplore.params import ParameterLayout

REPRESENTATIONS = ("identity", "diagonal", "dense", "woodbury", "lowrank", "kfac", "hessian")
DAMPINGS = (1e-2, 0.3)
M = 24


def build(name, mlp, loader):
    """(curvature, dense reference of M) for one representation."""
    block_size = "layer" if name == "kfac" else 7
    layout = ParameterLayout.from_model(mlp, block_size=block_size)
    if name == "hessian":
        curv = hessian_blocks(mlp, loader, layout, progress=False)
        full = autograd_hessian(mlp, loader, layout)
        return curv, _block_diagonal(full, layout)
    curv = estimate_curvature(
        mlp, loader, representation=name, layout=layout, num_samples=M, progress=False
    )
    if name == "identity":
        return curv, torch.eye(layout.dim, dtype=torch.float64)
    if name == "kfac":
        return curv, torch.block_diag(*[torch.kron(f.S, f.A) for f in curv.factors])
    fisher, _ = dense_block_fisher(loop_gradients(mlp, loader, layout, M), layout, 0.0)
    return curv, torch.diag(fisher.diag()) if name == "diagonal" else fisher


def _block_diagonal(full, layout):
    out = torch.zeros_like(full)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        out[rows, rows] = full[rows, rows]
    return out


@pytest.fixture(scope="module", params=REPRESENTATIONS)
def built(request):
    from tests.conftest import make_loader, make_mlp

    g = torch.Generator().manual_seed(2)
    loader = make_loader(torch.randn(48, 6, generator=g, dtype=torch.float64), 3)
    return request.param, *build(request.param, make_mlp(), loader)


def test_forward_products_are_those_of_the_undamped_matrix(built):
    name, curv, reference = built
    layout = curv.layout
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert curv.damping == 0.0 and curv.undamped is curv
    torch.testing.assert_close(curv.diag(), reference.diag(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(curv.mv(v), reference @ v, rtol=1e-10, atol=1e-13)
    assert curv.mean_diagonal() == pytest.approx(float(reference.diag().mean()), rel=1e-10)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        positions = [0, b.size - 1]
        torch.testing.assert_close(curv.block(b.index), reference[rows, rows], atol=1e-13, rtol=0)
        torch.testing.assert_close(
            curv.columns(b.index, positions),
            reference[rows, rows][:, positions],
            atol=1e-13,
            rtol=0,
        )
    assert curv.is_diagonal == (name in ("identity", "diagonal"))


@pytest.mark.parametrize("lam", DAMPINGS)
def test_inverse_products_are_those_of_the_damped_matrix_at_every_lambda(built, lam):
    _, curv, reference = built
    layout = curv.layout
    damped = reference + lam * torch.eye(layout.dim, dtype=torch.float64)
    inverse = torch.linalg.inv(damped)
    scale = float(inverse.abs().max())
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(curv.inverse_diag(lam), inverse.diag(), rtol=1e-8, atol=0)
    torch.testing.assert_close(curv.inverse_mv(v, lam), inverse @ v, rtol=0, atol=1e-9 * scale)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        torch.testing.assert_close(
            curv.inverse_block(b.index, lam), inverse[rows, rows], rtol=0, atol=1e-9 * scale
        )
        last = [b.size - 1]
        torch.testing.assert_close(
            curv.inverse_columns(b.index, last, lam),
            inverse[rows, rows][:, last],
            rtol=0,
            atol=1e-9 * scale,
        )
    same = [b.index for b in layout.blocks if b.size == layout.blocks[0].size]
    expected = torch.stack(
        [inverse[b.start : b.stop, b.start : b.stop] for b in layout.blocks if b.index in same]
    )
    torch.testing.assert_close(curv.inverse_blocks(same, lam), expected, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("lam", DAMPINGS)
def test_the_damped_view_answers_without_lambda(built, lam):
    _, curv, reference = built
    view = curv.damped(lam)
    assert isinstance(view, DampedCurvature) and view.damping == lam and view.undamped is curv
    damped = reference + lam * torch.eye(curv.dim, dtype=torch.float64)
    v = torch.randn(curv.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(view.diag(), damped.diag(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(view.mv(v), damped @ v, rtol=1e-10, atol=1e-13)
    b = curv.layout.blocks[0]
    torch.testing.assert_close(view.block(0), damped[b.start : b.stop, b.start : b.stop])
    torch.testing.assert_close(view.columns(0, [2]), damped[b.start : b.stop, [b.start + 2]])
    torch.testing.assert_close(view.inverse_diag(), curv.inverse_diag(lam), rtol=0, atol=0)
    torch.testing.assert_close(view.inverse_mv(v), curv.inverse_mv(v, lam), rtol=0, atol=0)


def test_relative_damping_is_a_multiple_of_the_mean_diagonal(built):
    _, curv, reference = built
    view = curv.damped(0.5, relative=True)
    assert view.damping == pytest.approx(0.5 * float(reference.diag().mean()), rel=1e-10)


def test_singular_representations_refuse_zero_or_bad_damping(built):
    name, curv, _ = built
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="damping must be a finite"):
            curv.inverse_diag(bad)
    if name in ("dense", "woodbury", "lowrank", "kfac"):
        with pytest.raises(ValueError, match="damping must be a finite positive number"):
            curv.damped(0.0)
    else:
        assert curv.damped(0.0).damping == 0.0  # identity, Hessian, a positive diagonal


def test_a_diagonal_with_a_zero_entry_needs_damping():
    from wfexplore.curvature import DiagonalCurvature

    layout = ParameterLayout.from_model(torch.nn.Linear(3, 1, bias=False))
    curv = DiagonalCurvature(layout, torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="damping must be a finite positive number"):
        curv.inverse_diag(0.0)
    torch.testing.assert_close(curv.inverse_diag(0.5), torch.tensor([1 / 1.5, 2.0, 0.4]).double())
