import pytest
import torch

from tests.conftest import (
    assert_same_state,
    dense_block_fisher,
    loop_gradients,
    make_mlp,
    model_state,
)
from wfexplore.curvature import IdentityCurvature, estimate_curvature, from_gradients
from wfexplore.params import AnalysedParameter, ParameterLayout

LAM = 1e-3
BUILDERS = {
    name: lambda g, layout, lam, name=name: from_gradients(g, layout, name).damped(lam)
    for name in ("dense", "woodbury", "lowrank")
}


def synthetic_layout(sizes=(23, 40), block_size=10) -> ParameterLayout:
    params, offset = [], 0
    for i, n in enumerate(sizes):
        params.append(AnalysedParameter(f"l{i}.weight", f"l{i}", "Linear", (n,), offset))
        offset += n
    return ParameterLayout(params, block_size)


@pytest.fixture
def gradients() -> torch.Tensor:
    return torch.randn(30, 63, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("method", list(BUILDERS))
@pytest.mark.parametrize("block_size", [10, 7, "layer", "model"])
def test_fisher_representations_equal_the_dense_matrix_built_by_hand(gradients, method, block_size):
    layout = synthetic_layout(block_size=block_size)
    fisher, inverse = dense_block_fisher(gradients, layout, LAM)
    curv = BUILDERS[method](gradients, layout, LAM)
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scale = inverse.abs().max()
    torch.testing.assert_close(curv.diag(), fisher.diag(), rtol=1e-12, atol=0)
    torch.testing.assert_close(curv.inverse_diag(), inverse.diag(), rtol=1e-9, atol=0)
    torch.testing.assert_close(curv.inverse_mv(v), inverse @ v, rtol=0, atol=1e-10 * scale)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        torch.testing.assert_close(curv.block(b.index), fisher[rows, rows], rtol=0, atol=1e-13)
        torch.testing.assert_close(
            curv.inverse_block(b.index), inverse[rows, rows], rtol=0, atol=1e-10 * scale
        )
        cols = [0, b.size - 1]
        torch.testing.assert_close(
            curv.inverse_columns(b.index, cols),
            inverse[rows, rows][:, cols],
            rtol=0,
            atol=1e-10 * scale,
        )


def test_recursion_batched_and_low_rank_agree_to_1e6_relative(gradients):
    layout = synthetic_layout(block_size="layer")
    diags = [BUILDERS[m](gradients, layout, 1e-5).inverse_diag() for m in BUILDERS]
    for other in diags[1:]:
        assert ((other - diags[0]).abs() / diags[0].abs()).max() < 1e-6


def test_diagonal_and_identity_equal_their_dense_matrices(gradients):
    layout = synthetic_layout()
    fisher, _ = dense_block_fisher(gradients, layout, LAM)
    diagonal = from_gradients(gradients.split(7), layout, "diagonal").damped(LAM)
    torch.testing.assert_close(diagonal.diag(), fisher.diag(), rtol=1e-13, atol=0)
    torch.testing.assert_close(diagonal.inverse_diag(), 1 / fisher.diag(), rtol=1e-13, atol=0)
    torch.testing.assert_close(diagonal.block(1), torch.diag(fisher.diag()[10:20]))
    torch.testing.assert_close(
        diagonal.inverse_columns(1, [2]), torch.diag(1 / fisher.diag()[10:20])[:, [2]]
    )
    identity = IdentityCurvature(layout).damped(0.0)
    v = torch.randn(layout.dim, dtype=torch.float64)
    assert torch.equal(identity.inverse_mv(v), v)
    assert torch.equal(identity.inverse_block(0), torch.eye(10, dtype=torch.float64))


def test_streamed_chunks_give_the_same_blocks_as_the_whole_matrix(gradients):
    layout = synthetic_layout()
    whole = from_gradients(gradients, layout, "dense").damped(LAM)
    streamed = from_gradients(iter(gradients.split(4)), layout, "dense").damped(LAM)
    torch.testing.assert_close(streamed.inverse_diag(), whole.inverse_diag(), rtol=1e-12, atol=0)
    recursion = from_gradients(iter(gradients.split(4)), layout, "woodbury").damped(LAM)
    torch.testing.assert_close(recursion.inverse_diag(), whole.inverse_diag(), rtol=1e-9, atol=0)


def ill_conditioned_gradients(m: int, d: int, condition: float, lam: float) -> torch.Tensor:
    """float32 gradients whose Fisher λI + GᵀG/m has condition number ≈ ``condition``."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, -6, m, dtype=torch.float64) * lam * condition
    return (u @ torch.diag((eig * m).sqrt()) @ v.T).float()


@pytest.mark.parametrize("method", list(BUILDERS))
def test_inverse_diagonal_stays_accurate_at_condition_number_1e6(method):
    lam = 1e-5
    layout = synthetic_layout(sizes=(200,), block_size=100)
    g = ill_conditioned_gradients(80, 200, 1e6, lam)
    fisher, inverse = dense_block_fisher(g, layout, lam)
    block = fisher[:100, :100]
    condition = torch.linalg.cond(block)
    assert 1e5 < condition < 1e7
    curv = BUILDERS[method](g, layout, lam)
    relerr = ((curv.inverse_diag() - inverse.diag()).abs() / inverse.diag()).max()
    assert relerr <= 1e-5


def test_relative_damping_scales_with_the_mean_diagonal(gradients):
    layout = synthetic_layout()
    mean_diag = float((gradients**2).mean())
    for method in ("dense", "lowrank", "woodbury", "diagonal"):
        curv = from_gradients(gradients, layout, method).damped(0.1, relative=True)
        assert curv.damping == pytest.approx(0.1 * mean_diag, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf")])
@pytest.mark.parametrize("method", list(BUILDERS))
def test_non_positive_or_non_finite_damping_is_refused(gradients, method, bad):
    with pytest.raises(ValueError, match="damping must be a finite positive number"):
        BUILDERS[method](gradients, synthetic_layout(), bad)


def test_dense_blocks_over_the_memory_limit_are_refused_with_the_estimate():
    layout = synthetic_layout(sizes=(5000,), block_size="layer")
    with pytest.raises(MemoryError, match=r"0\.37 GB.*max_memory_gb=0\.1"):
        from_gradients(torch.zeros(2, 5000), layout, "dense", max_memory_gb=0.1)


def test_gradient_chunks_of_the_wrong_width_or_none_at_all_are_refused(gradients):
    with pytest.raises(ValueError, match="rows of 63 entries"):
        from_gradients(gradients[:, :10], synthetic_layout(), "woodbury")
    with pytest.raises(ValueError, match="no gradient samples"):
        from_gradients(iter([]), synthetic_layout(), "woodbury")


@pytest.mark.parametrize("method", ["diagonal", "dense", "woodbury", "lowrank"])
def test_estimate_curvature_on_a_batchnorm_model_matches_a_backward_loop(
    bn_cnn, cnn_loader, method
):
    bn_cnn.train()
    before = model_state(bn_cnn)
    curv = estimate_curvature(
        bn_cnn,
        cnn_loader,
        representation=method,
        block_size=16,
        num_samples=25,
        progress=False,
    ).damped(LAM)
    assert_same_state(before, model_state(bn_cnn))
    g = loop_gradients(bn_cnn, cnn_loader, curv.layout, 25)
    fisher, inverse = dense_block_fisher(g, curv.layout, LAM)
    expected = fisher.diag() if method == "diagonal" else inverse.diag()
    got = 1 / curv.inverse_diag() if method == "diagonal" else curv.inverse_diag()
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=0)


def test_estimate_curvature_with_a_custom_non_prunable_module(mlp, mlp_loader):
    curv = estimate_curvature(
        mlp, mlp_loader, representation="dense", num_samples=20, progress=False
    ).damped(1e-5)
    assert curv.layout.names == ["0.weight", "3.weight"]
    g = loop_gradients(mlp, mlp_loader, curv.layout, 20)
    _, inverse = dense_block_fisher(g, curv.layout, 1e-5)
    torch.testing.assert_close(curv.inverse_diag(), inverse.diag(), rtol=1e-8, atol=0)


def test_estimate_curvature_rejects_unknown_representations(mlp, mlp_loader):
    with pytest.raises(ValueError, match=r"representation must be one of \['identity'"):
        estimate_curvature(mlp, mlp_loader, representation="shampoo", progress=False)


def test_mini_batch_gradients_shrink_the_fisher(mlp, mlp_loader):
    """Mean gradients of b examples scale F by ≈ 1/b: λ has to be re-tuned with b."""
    per_example = estimate_curvature(
        mlp, mlp_loader, representation="diagonal", num_samples=48, progress=False
    )
    batched = estimate_curvature(
        mlp, mlp_loader, representation="diagonal", num_samples=6, batch_size=8, progress=False
    )
    ratio = batched.diag().sum() / per_example.diag().sum()
    assert ratio < 0.6


def test_a_whole_gradient_matrix_is_held_as_it_is_not_copied(gradients):
    layout = synthetic_layout(block_size="layer")
    held = from_gradients(gradients, layout, "lowrank").gradients
    assert held.data_ptr() == gradients.data_ptr()
    streamed = from_gradients(iter(gradients.split(7)), layout, "lowrank", num_samples=30)
    torch.testing.assert_close(streamed.gradients, gradients, rtol=0, atol=0)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_block_shares_cover_every_block_once_in_runs_of_about_equal_work(size):
    from wfexplore.curvature.lowrank import block_shares

    layout = ParameterLayout.from_model(make_mlp(), block_size=3)
    m = 8
    shares = block_shares(layout, size, m)
    assert len(shares) == size
    assert [i for share in shares for i in share] == list(range(layout.num_blocks))
    cost = [2.25 * m * m * b.size + m**3 / 3 for b in layout.blocks]
    work = [sum(cost[i] for i in share) for share in shares]
    assert max(work) - sum(work) / size <= max(cost)  # off an even share by under one block
