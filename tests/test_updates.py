"""Weight updates on an explicit quadratic loss ½(w − w*)ᵀH(w − w*), against a direct KKT solve."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wfexplore.curvature import (
    DenseBlockCurvature,
    DiagonalCurvature,
    IdentityCurvature,
    KFACCurvature,
    from_gradients,
)
from wfexplore.curvature.dense import group_blocks
from wfexplore.params import ParameterLayout
from wfexplore.pruning import prune_model, update_weights
from wfexplore.pruning import updates as updates_module
from wfexplore.pruning.saliency import obs_saliency


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def two_layer_model() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)).double()


def spd_blocks(layout: ParameterLayout, seed: int = 0, diagonal: bool = False) -> torch.Tensor:
    """A random SPD matrix, block-diagonal with respect to ``layout`` (d × d, float64)."""
    H = torch.zeros(layout.dim, layout.dim, dtype=torch.float64)
    g = _gen(seed)
    for b in layout.blocks:
        if diagonal:
            block = torch.diag(torch.rand(b.size, generator=g, dtype=torch.float64) + 0.1)
        else:
            x = torch.randn(b.size, b.size + 3, generator=g, dtype=torch.float64)
            block = x @ x.T / b.size + 0.05 * torch.eye(b.size, dtype=torch.float64)
        H[b.start : b.stop, b.start : b.stop] = block
    return H


def dense_curvature(layout: ParameterLayout, H: torch.Tensor) -> DenseBlockCurvature:
    groups = group_blocks(layout)
    for grp in groups:
        grp.matrix = H[grp.index[:, :, None], grp.index[:, None, :]].clone()
    return DenseBlockCurvature(layout, groups, kind="quadratic", requires_damping=False).damped(0.0)


def kkt_minimum(H: torch.Tensor, w_star: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """argmin ½(w − w*)ᵀH(w − w*) s.t. w_Q = 0, from [H Eᵀ; E 0][w; μ] = [H w*; 0]."""
    q = pruned.nonzero()[:, 0]
    d, k = len(w_star), len(q)
    E = torch.zeros(k, d, dtype=torch.float64)
    E[torch.arange(k), q] = 1.0
    system = torch.zeros(d + k, d + k, dtype=torch.float64)
    system[:d, :d], system[:d, d:], system[d:, :d] = H, E.T, E
    rhs = torch.cat([H @ w_star, torch.zeros(k, dtype=torch.float64)])
    return torch.linalg.solve(system, rhs)[:d]


def quadratic_loss(H, w_star, w):
    return 0.5 * (w - w_star) @ H @ (w - w_star)


def random_pruned(d: int, count: int, seed: int) -> torch.Tensor:
    pruned = torch.zeros(d, dtype=torch.bool)
    pruned[torch.randperm(d, generator=_gen(seed))[:count]] = True
    return pruned


def lowrank_with_matrix(layout, seed=3, m=9, lam=0.3):
    g = torch.randn(m, layout.dim, generator=_gen(seed), dtype=torch.float64)
    curv = from_gradients(g, layout, "lowrank").damped(lam)
    H = torch.block_diag(*[curv.block(b.index) for b in layout.blocks])
    return curv, H


def kfac_with_matrix(model, layout):
    x = torch.randn(12, 5, generator=_gen(4), dtype=torch.float64)
    loader = DataLoader(
        TensorDataset(x, torch.randint(0, 3, (12,), generator=_gen(5))), batch_size=6
    )
    curv = KFACCurvature.from_model(model, loader, layout, 12, progress=False).damped(0.05)
    H = torch.block_diag(*[curv.block(b.index) for b in layout.blocks])
    return curv, H


@pytest.mark.parametrize("representation", ["dense", "dense_per_block", "lowrank", "kfac"])
@pytest.mark.parametrize("count", [3, 9, 25, 32])
def test_group_update_reaches_the_kkt_minimum_and_predicts_its_loss(
    representation, count, monkeypatch
):
    model = two_layer_model()
    block_size = "layer" if representation == "kfac" else ("model" if count == 25 else 7)
    layout = ParameterLayout.from_model(model, block_size=block_size)
    if representation.startswith("dense"):
        H = spd_blocks(layout)
        curv = dense_curvature(layout, H)
        if representation == "dense_per_block":  # the generic path: inverse and complement forms
            monkeypatch.setattr(updates_module, "BATCHED_GROUP_LIMIT", 0)
    elif representation == "lowrank":
        curv, H = lowrank_with_matrix(layout)
    else:
        curv, H = kfac_with_matrix(model, layout)
    w_star = layout.flatten(model).double()
    pruned = random_pruned(layout.dim, count, seed=count)
    change = update_weights(w_star, pruned, curv, "group")
    expected = kkt_minimum(H, w_star, pruned)
    torch.testing.assert_close(change.weights, expected, rtol=0, atol=1e-10)
    assert bool((change.weights[pruned] == 0).all())
    actual = quadratic_loss(H, w_star, change.weights)
    assert abs(change.predicted_delta_loss - float(actual)) < 1e-10
    # the closed form ½ w_Qᵀ([H⁻¹]_QQ)⁻¹ w_Q, per block
    inverse = torch.linalg.inv(H)
    q = pruned.nonzero()[:, 0]
    closed = 0.5 * w_star[q] @ torch.linalg.solve(inverse[q][:, q], w_star[q])
    assert abs(change.predicted_delta_loss - float(closed)) < 1e-10


def test_prune_model_with_the_group_update_lands_on_the_kkt_minimum():
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size="model")
    H = spd_blocks(layout, seed=5)
    curv = dense_curvature(layout, H)
    result = prune_model(model, curv, 0.5, update="group", progress=False)
    w_star = layout.flatten(model).double()
    pruned = ~torch.cat([result.masks[n].reshape(-1) for n in layout.names])
    w_new = layout.flatten(result.model).double()
    torch.testing.assert_close(w_new, kkt_minimum(H, w_star, pruned), rtol=0, atol=1e-10)
    actual = float(quadratic_loss(H, w_star, w_new))
    assert abs(result.summary["predicted_delta_loss"] - actual) < 1e-10
    assert result.layers["predicted_delta_loss"].sum() == pytest.approx(actual, abs=1e-12)
    # the mask is the lowest OBS saliencies w²/(2[H⁻¹]_qq), globally
    rho = obs_saliency(w_star, torch.linalg.inv(H).diag())
    assert set(pruned.nonzero()[:, 0].tolist()) == set(rho.argsort()[:16].tolist())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("update", ["none", "summed", "group"])
def test_obs_with_a_diagonal_hessian_is_obd(scope, update):
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size="model")
    H = spd_blocks(layout, seed=6, diagonal=True)
    obs = prune_model(
        model, dense_curvature(layout, H), 0.6, scope=scope, update=update, progress=False
    )
    obd = prune_model(
        model, DiagonalCurvature(layout, H.diag().clone()), 0.6, scope=scope, progress=False
    )
    for name in layout.names:
        assert torch.equal(obs.masks[name], obd.masks[name])
    torch.testing.assert_close(
        layout.flatten(obs.model), layout.flatten(obd.model), rtol=0, atol=1e-15
    )
    w = layout.flatten(model).double()
    torch.testing.assert_close(
        obs_saliency(w, torch.linalg.inv(H).diag()), 0.5 * H.diag() * w**2, rtol=1e-13, atol=0
    )


@pytest.mark.parametrize("update", ["summed", "group"])
def test_obs_with_the_identity_is_magnitude_pruning(update):
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size=7)
    eye = torch.eye(layout.dim, dtype=torch.float64)
    obs = prune_model(model, dense_curvature(layout, eye), 0.7, update=update, progress=False)
    magnitude = prune_model(model, "magnitude", 0.7, progress=False)
    for name in layout.names:
        assert torch.equal(obs.masks[name], magnitude.masks[name])
    torch.testing.assert_close(layout.flatten(obs.model), layout.flatten(magnitude.model))


def test_summed_equals_group_when_each_block_loses_at_most_one_weight():
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size=4)
    H = spd_blocks(layout, seed=7)
    curv = dense_curvature(layout, H)
    w = layout.flatten(model).double()
    pruned = torch.zeros(layout.dim, dtype=torch.bool)
    for i, b in enumerate(layout.blocks):
        if i % 3 != 2:
            pruned[b.start + i % b.size] = True
    summed = update_weights(w, pruned, curv, "summed")
    group = update_weights(w, pruned, curv, "group")
    torch.testing.assert_close(summed.weights, group.weights, rtol=0, atol=1e-13)
    assert summed.predicted_delta_loss == pytest.approx(group.predicted_delta_loss, rel=1e-12)
    # ... and the sum of single-weight saliencies is then the predicted loss too
    rho = obs_saliency(w, curv.inverse_diag())
    assert float(rho[pruned].sum()) == pytest.approx(group.predicted_delta_loss, rel=1e-12)
    # two weights in one block: the summed update no longer is the optimum
    pruned[1] = pruned[2] = True
    summed = update_weights(w, pruned, curv, "summed")
    group = update_weights(w, pruned, curv, "group")
    assert group.predicted_delta_loss < summed.predicted_delta_loss
    torch.testing.assert_close(group.weights, kkt_minimum(H, w, pruned), rtol=0, atol=1e-10)


def test_summed_update_is_the_sum_of_single_weight_obs_updates():
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size="layer")
    H = spd_blocks(layout, seed=8)
    inverse = torch.linalg.inv(H)
    w = layout.flatten(model).double()
    pruned = random_pruned(layout.dim, 10, seed=1)
    expected = w.clone()
    for q in pruned.nonzero()[:, 0]:
        expected -= w[q] / inverse[q, q] * inverse[:, q]
    expected[pruned] = 0
    change = update_weights(w, pruned, dense_curvature(layout, H), "summed")
    torch.testing.assert_close(change.weights, expected, rtol=0, atol=1e-12)
    none = update_weights(w, pruned, dense_curvature(layout, H), "none")
    torch.testing.assert_close(none.weights, w.masked_fill(pruned, 0.0))
    delta = none.weights - w
    assert none.predicted_delta_loss == pytest.approx(float(0.5 * delta @ H @ delta), rel=1e-12)


@pytest.mark.parametrize("kind", ["identity", "diagonal", "dense", "lowrank", "kfac"])
def test_products_with_C_itself_match_the_dense_matrix(kind):
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size="layer" if kind == "kfac" else 5)
    if kind == "identity":
        curv, H = IdentityCurvature(layout).damped(0.0), torch.eye(layout.dim, dtype=torch.float64)
    elif kind == "diagonal":
        values = torch.rand(layout.dim, generator=_gen(2), dtype=torch.float64) + 0.5
        curv, H = DiagonalCurvature(layout, values - 0.1).damped(0.1), torch.diag(values)
    elif kind == "dense":
        H = spd_blocks(layout, seed=9)
        curv = dense_curvature(layout, H)
    elif kind == "lowrank":
        curv, H = lowrank_with_matrix(layout)
    else:
        curv, H = kfac_with_matrix(model, layout)
    v = torch.randn(layout.dim, generator=_gen(10), dtype=torch.float64)
    torch.testing.assert_close(curv.mv(v), H @ v, rtol=1e-12, atol=1e-14)
    for b in layout.blocks:
        pos = [0, b.size - 1]
        block = H[b.start : b.stop, b.start : b.stop]
        torch.testing.assert_close(curv.columns(b.index, pos), block[:, pos])


def test_group_update_refuses_blocks_over_the_memory_limit():
    model = two_layer_model()
    layout = ParameterLayout.from_model(model, block_size="model")
    curv, _ = lowrank_with_matrix(layout)
    w = layout.flatten(model).double()
    with pytest.raises(MemoryError, match="update='summed'"):
        update_weights(w, random_pruned(layout.dim, 8, 0), curv, "group", max_memory_gb=1e-9)
    with pytest.raises(ValueError, match=r"update must be one of \['none', 'summed', 'group'\]"):
        update_weights(w, random_pruned(layout.dim, 8, 0), curv, "exact")
