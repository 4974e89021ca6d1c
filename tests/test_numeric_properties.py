"""Property tests of the numerics: inverse identities of every representation built from
gradients, OBS optimality of the group update on random quadratics, and invariance of
saliencies and updates under a permutation of the weights inside a block.

References are dense float64 matrices built by hand and inverted with ``torch.linalg``."""

from __future__ import annotations

from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wfexplore.curvature import DenseBlockCurvature, from_gradients
from wfexplore.curvature.dense import group_blocks
from wfexplore.params import AnalysedParameter, ParameterLayout
from wfexplore.pruning import update_weights
from wfexplore.pruning import updates as updates_module
from wfexplore.pruning.saliency import obs_saliency

FROM_GRADIENTS = ("diagonal", "dense", "woodbury", "lowrank")
SETTINGS = settings(max_examples=25, deadline=None)


# --- strategies -----------------------------------------------------------------------------------
@st.composite
def layouts(draw, max_numel: int = 30) -> ParameterLayout:
    """1–3 parameters of 1…max_numel weights, cut into blocks of B, per layer or one block."""
    sizes = draw(st.lists(st.integers(1, max_numel), min_size=1, max_size=3))
    block_size = draw(st.one_of(st.integers(1, 12), st.sampled_from(["layer", "model"])))
    params, offset = [], 0
    for i, n in enumerate(sizes):
        params.append(AnalysedParameter(f"l{i}.weight", f"l{i}", "Linear", (n,), offset))
        offset += n
    return ParameterLayout(params, block_size)


dampings = st.floats(-2, 1).map(lambda e: 10.0**e)  # λ ∈ [0.01, 10], log-uniform
seeds = st.integers(0, 2**31 - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_mask(layout: ParameterLayout) -> torch.Tensor:
    mask = torch.zeros(layout.dim, layout.dim, dtype=torch.bool)
    for b in layout.blocks:
        mask[b.start : b.stop, b.start : b.stop] = True
    return mask


def fisher_reference(G: torch.Tensor, layout: ParameterLayout, representation: str):
    """M by hand: (1/m) GᵀG in float64 with the off-block entries zeroed (only its diagonal
    for ``"diagonal"``)."""
    g = G.to(torch.float64)
    full = g.T @ g / g.shape[0]
    if representation == "diagonal":
        return torch.diag(full.diagonal())
    return torch.where(block_mask(layout), full, torch.zeros_like(full))


def spd_blocks(layout: ParameterLayout, seed: int) -> torch.Tensor:
    """A random SPD matrix, block-diagonal in ``layout``: Q diag(e) Qᵀ per block with
    eigenvalues e log-uniform in [0.01, 100]."""
    g = generator(seed)
    H = torch.zeros(layout.dim, layout.dim, dtype=torch.float64)
    for b in layout.blocks:
        q, _ = torch.linalg.qr(torch.randn(b.size, b.size, generator=g, dtype=torch.float64))
        e = 10.0 ** (4 * torch.rand(b.size, generator=g, dtype=torch.float64) - 2)
        H[b.start : b.stop, b.start : b.stop] = (q * e) @ q.T
    return (H + H.T) / 2


def dense_curvature(layout: ParameterLayout, H: torch.Tensor) -> DenseBlockCurvature:
    """H held as dense blocks (an invertible M, as the exact Hessian is)."""
    groups = group_blocks(layout)
    for grp in groups:
        grp.matrix = H[grp.index[:, :, None], grp.index[:, None, :]].clone()
    return DenseBlockCurvature(layout, groups, kind="quadratic", requires_damping=False)


@st.composite
def gradient_problems(draw):
    """A layout, a gradient matrix G (m × d, float64 or float32) and a representation."""
    layout = draw(layouts())
    m = draw(st.integers(1, 24))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    G = scale * torch.randn(m, layout.dim, generator=generator(draw(seeds)), dtype=dtype)
    return layout, G, draw(st.sampled_from(FROM_GRADIENTS))


def assert_near(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-8) -> None:
    """max |actual − expected| ≤ rel · max |expected| (float64 comparison)."""
    actual, expected = actual.to(torch.float64), expected.to(torch.float64)
    assert actual.shape == expected.shape
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    error = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert error <= rel * scale + 1e-300, f"error {error:.3g} vs scale {scale:.3g}"


# --- inverse identities of every representation built from gradients ------------------------------
@SETTINGS
@given(gradient_problems(), dampings, seeds)
def test_inverse_mv_undoes_mv_plus_lambda(problem, lam, seed):
    layout, G, representation = problem
    M = from_gradients(G, layout, representation)
    v = torch.randn(layout.dim, generator=generator(seed), dtype=torch.float64)
    assert_near(M.inverse_mv(M.mv(v) + lam * v, lam), v)
    C = M.damped(lam)
    assert_near(C.inverse_mv(C.mv(v)), v)
    # the forward product is that of the matrix built by hand
    assert_near(M.mv(v), fisher_reference(G, layout, representation) @ v, rel=1e-10)


@SETTINGS
@given(gradient_problems(), dampings)
def test_inverse_diag_is_the_diagonal_of_the_dense_inverse(problem, lam):
    layout, G, representation = problem
    M = from_gradients(G, layout, representation)
    reference = fisher_reference(G, layout, representation)
    inverse = torch.linalg.inv(reference + lam * torch.eye(layout.dim, dtype=torch.float64))
    assert_near(M.inverse_diag(lam), inverse.diagonal())
    assert bool((M.inverse_diag(lam) > 0).all())


@SETTINGS
@given(gradient_problems(), dampings, st.data())
def test_inverse_columns_are_inverse_mv_of_unit_vectors(problem, lam, data):
    layout, G, representation = problem
    M = from_gradients(G, layout, representation)
    b = layout.blocks[data.draw(st.integers(0, layout.num_blocks - 1))]
    positions = data.draw(
        st.lists(st.integers(0, b.size - 1), min_size=1, max_size=min(b.size, 6), unique=True)
    )
    cols = M.inverse_columns(b.index, positions, lam)
    assert cols.shape == (b.size, len(positions))
    for k, q in enumerate(positions):
        unit = torch.zeros(layout.dim, dtype=torch.float64)
        unit[b.start + q] = 1.0
        column = M.inverse_mv(unit, lam)
        outside = torch.ones(layout.dim, dtype=torch.bool)
        outside[b.start : b.stop] = False
        assert bool((column[outside] == 0).all())  # block-diagonal: nothing leaks out
        assert_near(cols[:, k], column[b.start : b.stop])
    assert_near(M.inverse_block(b.index, lam)[:, positions], cols)


@SETTINGS
@given(gradient_problems(), dampings, dampings, seeds)
def test_two_lambdas_from_one_object_each_match_a_fresh_dense_reference(problem, lam1, lam2, seed):
    layout, G, representation = problem
    M = from_gradients(G, layout, representation)
    reference = fisher_reference(G, layout, representation)
    eye = torch.eye(layout.dim, dtype=torch.float64)
    v = torch.randn(layout.dim, generator=generator(seed), dtype=torch.float64)
    for lam in (lam1, lam2, lam1, lam2):  # alternating: cached inverses must follow λ
        inverse = torch.linalg.inv(reference + lam * eye)
        assert_near(M.inverse_diag(lam), inverse.diagonal())
        assert_near(M.inverse_mv(v, lam), inverse @ v)
        b = layout.blocks[-1]
        assert_near(M.inverse_block(b.index, lam), inverse[b.start : b.stop, b.start : b.stop])


@SETTINGS
@given(layouts(), seeds, st.sampled_from([0.0, 0.01, 1.0]), seeds)
def test_random_spd_blocks_invert_exactly_including_without_damping(layout, seed, lam, vseed):
    H = spd_blocks(layout, seed)
    M = dense_curvature(layout, H)
    inverse = torch.linalg.inv(H + lam * torch.eye(layout.dim, dtype=torch.float64))
    v = torch.randn(layout.dim, generator=generator(vseed), dtype=torch.float64)
    assert_near(M.inverse_diag(lam), inverse.diagonal())
    assert_near(M.inverse_mv(v, lam), inverse @ v)
    assert_near(M.inverse_mv(M.mv(v) + lam * v, lam), v)
    for b in layout.blocks:
        assert_near(M.inverse_block(b.index, lam), inverse[b.start : b.stop, b.start : b.stop])


# --- OBS optimality of the group update on random quadratics --------------------------------------
def quadratic(H: torch.Tensor, w_star: torch.Tensor, w: torch.Tensor) -> float:
    """L(w) = ½(w − w*)ᵀH(w − w*)."""
    return float(0.5 * (w - w_star) @ H @ (w - w_star))


@st.composite
def quadratic_problems(draw):
    """A layout, H (random SPD blocks), w* and a non-empty random mask of pruned weights."""
    layout = draw(layouts())
    H = spd_blocks(layout, draw(seeds))
    w_star = torch.randn(layout.dim, generator=generator(draw(seeds)), dtype=torch.float64)
    density = draw(st.floats(0.05, 1.0))
    pruned = torch.rand(layout.dim, generator=generator(draw(seeds))) < density
    if not pruned.any():
        pruned[draw(st.integers(0, layout.dim - 1))] = True
    return layout, H, w_star, pruned


@SETTINGS
@given(quadratic_problems(), st.booleans(), seeds)
def test_the_group_update_satisfies_the_kkt_conditions_and_predicts_its_loss(
    problem, batched, seed
):
    layout, H, w_star, pruned = problem
    C = dense_curvature(layout, H).damped(0.0)
    limit = updates_module.BATCHED_GROUP_LIMIT if batched else 0  # 0: the per-block path
    with mock.patch.object(updates_module, "BATCHED_GROUP_LIMIT", limit):
        change = update_weights(w_star, pruned, C, "group")
    w = change.weights
    assert bool((w[pruned] == 0).all())  # w_Q = 0 exactly
    gradient = H @ (w - w_star)
    scale = float((H.abs().sum(1) * w_star.abs().max()).max())
    kept = gradient[~pruned]
    if kept.numel():  # stationary on the kept weights
        assert float(kept.abs().max()) <= 1e-9 * scale
    actual = quadratic(H, w_star, w)
    assert abs(change.predicted_delta_loss - actual) <= 1e-9 * max(actual, 1e-12)
    # the closed form ½ w_Qᵀ([H⁻¹]_QQ)⁻¹ w_Q
    q = pruned.nonzero()[:, 0]
    inverse = torch.linalg.inv(H)
    closed = float(0.5 * w_star[q] @ torch.linalg.solve(inverse[q][:, q], w_star[q]))
    assert abs(actual - closed) <= 1e-8 * max(closed, 1e-12)
    # no feasible point does better: move the kept weights at random
    step = torch.randn(layout.dim, generator=generator(seed), dtype=torch.float64)
    step[pruned] = 0.0
    for t in (1e-3, 1e-1, 1.0):
        assert quadratic(H, w_star, w + t * step) >= actual - 1e-9 * max(actual, 1e-12)


@st.composite
def one_per_block(draw):
    """A quadratic problem whose mask removes at most one weight per block (at least one)."""
    layout, H, w_star, _ = draw(quadratic_problems())
    pruned = torch.zeros(layout.dim, dtype=torch.bool)
    for b in layout.blocks:
        if draw(st.booleans()):
            pruned[b.start + draw(st.integers(0, b.size - 1))] = True
    if not pruned.any():
        pruned[draw(st.integers(0, layout.dim - 1))] = True
    return layout, H, w_star, pruned


@SETTINGS
@given(one_per_block())
def test_summed_equals_group_when_one_weight_per_block_is_removed(problem):
    layout, H, w_star, pruned = problem
    C = dense_curvature(layout, H).damped(0.0)
    summed = update_weights(w_star, pruned, C, "summed")
    group = update_weights(w_star, pruned, C, "group")
    assert_near(summed.weights, group.weights, rel=1e-9)
    # and each removal costs its saliency w_q² / (2[H⁻¹]_qq): blocks do not interact
    inverse_diag = torch.linalg.inv(H).diagonal()
    saliencies = obs_saliency(w_star, inverse_diag)[pruned].sum()
    assert abs(summed.predicted_delta_loss - float(saliencies)) <= 1e-8 * float(saliencies)


# --- invariance under a permutation of the weights inside a block ---------------------------------
@SETTINGS
@given(gradient_problems(), dampings, seeds, st.data())
def test_permuting_a_blocks_gradient_columns_permutes_saliencies_and_updates(
    problem, lam, seed, data
):
    layout, G, representation = problem
    b = layout.blocks[data.draw(st.integers(0, layout.num_blocks - 1))]
    inside = data.draw(st.permutations(range(b.size)))
    perm = torch.arange(layout.dim)
    perm[b.start : b.stop] = b.start + torch.tensor(inside, dtype=torch.long)
    g = generator(seed)
    w = torch.randn(layout.dim, generator=g, dtype=torch.float64)
    pruned = torch.rand(layout.dim, generator=g) < 0.4
    pruned[b.start] = True

    C = from_gradients(G, layout, representation).damped(lam)
    C_perm = from_gradients(G[:, perm], layout, representation).damped(lam)
    assert_near(C_perm.inverse_diag(), C.inverse_diag()[perm])
    assert_near(
        obs_saliency(w[perm], C_perm.inverse_diag()), obs_saliency(w, C.inverse_diag())[perm]
    )
    for update in ("summed", "group"):
        original = update_weights(w, pruned, C, update)
        permuted = update_weights(w[perm], pruned[perm], C_perm, update)
        assert_near(permuted.delta, original.delta[perm])
        assert abs(permuted.predicted_delta_loss - original.predicted_delta_loss) <= 1e-8 * max(
            abs(original.predicted_delta_loss), 1e-12
        )
