"""K-FAC blocks against dense Kronecker products, gradient outer products and autograd patches."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import assert_same_state, loop_gradients, make_loader, model_state
from wfexplore.curvature import KFACCurvature, estimate_curvature
from wfexplore.params import ParameterLayout

LAM = 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_one_example_linear_blocks_equal_the_gradient_outer_product(mlp, mlp_loader):
    """With m = 1, F = g gᵀ = (s sᵀ) ⊗ (a aᵀ) exactly: pins the row-major order S ⊗ A."""
    layout = ParameterLayout.from_model(mlp, names=["0.weight", "0.bias", "3.weight"])
    layout = layout.with_block_size("layer")
    curv = KFACCurvature.from_model(mlp, mlp_loader, layout, 1, progress=False).damped(LAM)
    g = loop_gradients(mlp, mlp_loader, layout, 1)[0]
    for b in layout.blocks:
        gb = g[b.start : b.stop]
        expected = torch.outer(gb, gb) + LAM * torch.eye(b.size, dtype=torch.float64)
        torch.testing.assert_close(curv.block(b.index), expected, rtol=1e-12, atol=1e-15)


def test_conv_covering_the_input_is_a_linear_layer_and_matches_exactly():
    """A 3×3 kernel on a 3×3 input has one location (T = 1): pins the (channel, row, col) order."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3, 4)).double()
    loader = make_loader(torch.randn(5, 2, 3, 3, generator=_gen(5), dtype=torch.float64), 4)
    layout = ParameterLayout.from_model(model, names=["0.weight", "0.bias"])
    curv = KFACCurvature.from_model(model, loader, layout, 1, progress=False).damped(LAM)
    g = loop_gradients(model, loader, layout, 1)[0]
    for b in layout.blocks:
        gb = g[b.start : b.stop]
        expected = torch.outer(gb, gb) + LAM * torch.eye(b.size, dtype=torch.float64)
        torch.testing.assert_close(curv.block(b.index), expected, rtol=1e-12, atol=1e-15)


def _reference_factors(model, first, rest, loader, m, unfold_param):
    """A = mean (1/T) Σ_t a_t a_tᵀ, a_t = ∂z_{0,t}/∂W[0] by autograd; S = mean Σ_t s_t s_tᵀ."""
    xs = torch.cat([x for x, _ in loader])[:m]
    ys = torch.cat([y for _, y in loader])[:m]
    model = model.eval()
    A, S = 0.0, 0.0
    for x, y in zip(xs, ys, strict=True):
        inp = first(x[None]).detach()
        module = unfold_param
        z = module(inp)
        s = torch.autograd.grad(F.cross_entropy(rest(z), y[None]), z)[0][0]  # (out, *spatial)
        z_flat = z[0].reshape(z.shape[1], -1)
        T = z_flat.shape[1]
        rows = [
            torch.autograd.grad(z_flat[0, t], module.weight, retain_graph=True)[0][0]
            for t in range(T)
        ]
        a = torch.stack([r.reshape(-1) for r in rows])  # (T, in)
        st = s.reshape(s.shape[0], -1).T  # (T, out)
        A = A + a.T @ a / T
        S = S + st.T @ st
    return A / m, S / m


@pytest.mark.parametrize("conv_kind", ["conv2d", "conv1d_reflect", "conv2d_strided_same"])
def test_conv_factors_equal_patches_taken_by_autograd(conv_kind):
    torch.manual_seed(6)
    if conv_kind == "conv2d":
        conv, shape = nn.Conv2d(2, 3, 3, padding=1), (2, 4, 4)
    elif conv_kind == "conv1d_reflect":
        conv, shape = nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 6)
    else:
        conv, shape = nn.Conv2d(2, 3, (2, 3), stride=2, dilation=(1, 2), padding=(1, 2)), (2, 5, 6)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).double()
    with torch.no_grad():
        flat = model(torch.zeros(1, *shape, dtype=torch.float64)).shape[1]
    model.append(nn.Linear(flat, 4).double())
    loader = make_loader(torch.randn(7, *shape, generator=_gen(7), dtype=torch.float64), 4, batch=3)
    layout = ParameterLayout.from_model(model, block_size="layer")
    curv = KFACCurvature.from_model(model, loader, layout, 6, chunk_size=4, progress=False).damped(
        LAM
    )
    A, S = _reference_factors(model, nn.Identity(), model[1:], loader, 6, model[0])
    torch.testing.assert_close(curv.factors[0].A, A, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(curv.factors[0].S, S, rtol=1e-10, atol=1e-14)
    expected = torch.kron(S, A) + LAM * torch.eye(A.shape[0] * S.shape[0], dtype=torch.float64)
    torch.testing.assert_close(curv.block(0), expected, rtol=1e-10, atol=1e-14)


def test_factors_of_a_later_linear_layer_in_a_batchnorm_cnn(bn_cnn, cnn_loader):
    layout = ParameterLayout.from_model(bn_cnn, block_size="layer")
    curv = KFACCurvature.from_model(bn_cnn, cnn_loader, layout, 9, progress=False).damped(LAM)
    A, S = _reference_factors(bn_cnn, bn_cnn[:4], bn_cnn[5:], cnn_loader, 9, bn_cnn[4])
    torch.testing.assert_close(curv.factors[1].A, A, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(curv.factors[1].S, S, rtol=1e-10, atol=1e-14)


def test_inverse_queries_equal_the_dense_kronecker_product(bn_cnn, cnn_loader):
    """diag(C⁻¹), C⁻¹v, columns of C⁻¹ and of C, Cv: against torch.kron(S, A) + λI built densely."""
    layout = ParameterLayout.from_model(bn_cnn, block_size="layer")
    curv = KFACCurvature.from_model(bn_cnn, cnn_loader, layout, 20, progress=False).damped(LAM)
    dense = torch.block_diag(
        *[
            torch.kron(f.S, f.A) + LAM * torch.eye(f.S.shape[0] * f.A.shape[0], dtype=torch.float64)
            for f in curv.factors
        ]
    )
    inverse = torch.linalg.inv(dense)
    v = torch.randn(layout.dim, generator=_gen(8), dtype=torch.float64)
    scale = inverse.abs().max()
    torch.testing.assert_close(curv.diag(), dense.diag(), rtol=1e-12, atol=0)
    torch.testing.assert_close(curv.inverse_diag(), inverse.diag(), rtol=1e-9, atol=0)
    torch.testing.assert_close(curv.inverse_mv(v), inverse @ v, rtol=0, atol=1e-10 * scale)
    torch.testing.assert_close(curv.mv(v), dense @ v, rtol=1e-12, atol=1e-14)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        pos = [0, 5, b.size - 1]
        torch.testing.assert_close(
            curv.inverse_columns(b.index, pos),
            inverse[rows, rows][:, pos],
            rtol=0,
            atol=1e-10 * scale,
        )
        torch.testing.assert_close(curv.columns(b.index, pos), dense[rows, rows][:, pos])
        torch.testing.assert_close(
            curv.inverse_block(b.index), inverse[rows, rows], rtol=0, atol=1e-10 * scale
        )


def test_another_damping_reuses_the_factors(bn_cnn, cnn_loader):
    layout = ParameterLayout.from_model(bn_cnn, block_size="layer")
    curv = KFACCurvature.from_model(bn_cnn, cnn_loader, layout, 10, progress=False).damped(LAM)
    other = curv.undamped.damped(0.5)
    assert other.factors[0] is curv.factors[0] and other.damping == 0.5
    torch.testing.assert_close(other.diag(), curv.diag() - LAM + 0.5)


def test_mean_gradient_samples_scale_S_by_one_over_b(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp, block_size="layer")
    one = KFACCurvature.from_model(mlp, mlp_loader, layout, 24, progress=False).damped(LAM)
    two = KFACCurvature.from_model(
        mlp, mlp_loader, layout, 12, batch_size=2, progress=False
    ).damped(LAM)
    for f1, f2 in zip(one.factors, two.factors, strict=True):
        torch.testing.assert_close(f2.A, f1.A)
        torch.testing.assert_close(f2.S, f1.S / 2)


def test_estimate_fisher_kfac_defaults_to_layer_blocks_and_leaves_the_model_alone(
    bn_cnn, cnn_loader
):
    before = model_state(bn_cnn.train())
    curv = estimate_curvature(
        bn_cnn, cnn_loader, num_samples=10, progress=False, representation="kfac"
    ).damped(1e-5)
    assert isinstance(curv.undamped, KFACCurvature) and curv.layout.block_size == "layer"
    assert_same_state(before, model_state(bn_cnn))
    true1 = estimate_curvature(
        bn_cnn,
        cnn_loader,
        num_samples=10,
        fisher="true",
        seed=3,
        progress=False,
        representation="kfac",
    ).damped(1e-5)
    true2 = estimate_curvature(
        bn_cnn,
        cnn_loader,
        num_samples=10,
        fisher="true",
        seed=3,
        progress=False,
        representation="kfac",
    ).damped(1e-5)
    torch.testing.assert_close(true1.inverse_diag(), true2.inverse_diag(), rtol=0, atol=0)
    relative = estimate_curvature(
        bn_cnn, cnn_loader, num_samples=10, progress=False, representation="kfac"
    ).damped(0.1, relative=True)
    undamped_mean = float((curv.diag() - curv.damping).mean())
    assert relative.damping == pytest.approx(0.1 * undamped_mean, rel=1e-10)


def test_kfac_refuses_other_blocks_and_unsupported_parameters(mlp, mlp_loader):
    with pytest.raises(ValueError, match="block_size='layer'"):
        estimate_curvature(
            mlp, mlp_loader, block_size=16, progress=False, representation="kfac"
        ).damped(1e-5)
    layout = ParameterLayout.from_model(mlp, names=["2.gain"], block_size="layer")
    with pytest.raises(ValueError, match="Linear, Conv1d or Conv2d"):
        KFACCurvature.from_model(mlp, mlp_loader, layout, 4, progress=False).damped(LAM)
    grouped = nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Flatten()).double()
    loader = DataLoader(
        TensorDataset(torch.randn(4, 2, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    )
    with pytest.raises(ValueError, match="grouped convolution"):
        estimate_curvature(
            grouped, loader, num_samples=2, progress=False, representation="kfac"
        ).damped(1e-5)
    with pytest.raises(ValueError, match="num_samples=100"):
        estimate_curvature(
            mlp, mlp_loader, num_samples=100, progress=False, representation="kfac"
        ).damped(1e-5)


def test_kfac_memory_is_the_factors_not_the_blocks():
    model = nn.Sequential(nn.Linear(300, 200)).double()
    loader = DataLoader(
        TensorDataset(torch.randn(8, 300, dtype=torch.float64), torch.randint(0, 200, (8,))),
        batch_size=4,
    )
    curv = estimate_curvature(
        model, loader, num_samples=8, progress=False, representation="kfac"
    ).damped(1e-5)
    assert curv.memory_bytes() < 3 * 8 * (300**2 + 200**2)
    assert curv.inverse_diag().shape == (60000,)
    with pytest.raises(ValueError, match="dense copy"):
        curv.block(0)


def test_slicing_the_unfolded_patches_and_sizing_chunks_leave_the_factors_unchanged(
    bn_cnn, cnn_loader, monkeypatch
):
    from wfexplore.curvature import kfac

    layout = ParameterLayout.from_model(bn_cnn, block_size="layer")
    whole = KFACCurvature.from_model(bn_cnn, cnn_loader, layout, 20, chunk_size=20, progress=False)
    monkeypatch.setattr(kfac, "UNFOLD_BYTES", 1)  # one example per slice
    monkeypatch.setattr(kfac, "CHUNK_ACTIVATION_BYTES", 1)  # one example per pass
    assert kfac._examples_per_chunk(bn_cnn, cnn_loader) == 1
    sliced = KFACCurvature.from_model(bn_cnn, cnn_loader, layout, 20, progress=False)
    for a, b in zip(whole.factors, sliced.factors, strict=True):
        torch.testing.assert_close(a.A, b.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.S, b.S, rtol=1e-12, atol=1e-14)
    A, S = _reference_factors(bn_cnn, bn_cnn[:4], bn_cnn[5:], cnn_loader, 20, bn_cnn[4])
    torch.testing.assert_close(sliced.factors[1].A, A, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(sliced.factors[1].S, S, rtol=1e-10, atol=1e-14)
    monkeypatch.setattr(kfac, "CHUNK_ACTIVATION_BYTES", 2**40)
    assert kfac._examples_per_chunk(bn_cnn, cnn_loader) == kfac.MAX_CHUNK_EXAMPLES
