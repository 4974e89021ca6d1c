import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, Subset

from tests.conftest import assert_same_state, model_state
from wfexplore.curvature import hessian_blocks
from wfexplore.curvature.plan import activation_bytes_of
from wfexplore.params import ParameterLayout


def autograd_hessian(model, loader, layout):
    """Reference: torch.autograd.functional.hessian of the mean loss on the flat weights."""
    xs = torch.cat([x for x, _ in loader])
    ys = torch.cat([y for _, y in loader])
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    was_training = model.training
    model.eval()

    def loss(w):
        merged = {**params, **layout.unflatten(w)}
        return F.cross_entropy(functional_call(model, (merged, buffers), (xs,)), ys)

    try:
        return torch.autograd.functional.hessian(loss, layout.flatten(params))
    finally:
        model.train(was_training)


@pytest.mark.parametrize("block_size", [9, "layer", "model"])
def test_hessian_blocks_equal_autograd_on_the_flat_weights(mlp, mlp_loader, block_size):
    layout = ParameterLayout.from_model(mlp, block_size=block_size)
    full = autograd_hessian(mlp, mlp_loader, layout)
    hess = hessian_blocks(mlp, mlp_loader, layout, basis_chunk=4, progress=False)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        torch.testing.assert_close(hess.block(b.index), full[rows, rows], rtol=0, atol=1e-13)


def test_hessian_of_a_batchnorm_cnn_in_eval_mode_and_state_untouched(bn_cnn, cnn_loader):
    bn_cnn.train()
    before = model_state(bn_cnn)
    layout = ParameterLayout.from_model(bn_cnn, block_size=40)
    hess = hessian_blocks(bn_cnn, cnn_loader, layout, progress=False)
    assert_same_state(before, model_state(bn_cnn))
    full = autograd_hessian(bn_cnn, cnn_loader, layout)
    for b in layout.blocks:
        rows = slice(b.start, b.stop)
        torch.testing.assert_close(hess.block(b.index), full[rows, rows], rtol=0, atol=1e-12)


def test_damped_hessian_inverse_matches_a_dense_inverse(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp, block_size="layer")
    hess = hessian_blocks(mlp, mlp_loader, layout, progress=False).damped(0.5)
    full = autograd_hessian(mlp, mlp_loader, layout)
    b = layout.blocks[0]
    block = full[b.start : b.stop, b.start : b.stop] + 0.5 * torch.eye(b.size, dtype=torch.float64)
    torch.testing.assert_close(
        hess.inverse_block(0), torch.linalg.inv(block), rtol=1e-9, atol=1e-12
    )


def test_num_examples_restricts_the_loss_to_the_first_examples(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp, block_size="layer")
    first = [(x[:10], y[:10]) for x, y in [next(iter(mlp_loader))]]
    hess = hessian_blocks(mlp, mlp_loader, layout, num_examples=10, progress=False)
    full = autograd_hessian(mlp, first, layout)
    torch.testing.assert_close(hess.block(1), full[30:, 30:], rtol=0, atol=1e-13)


def test_blocks_over_the_size_limit_are_refused_with_the_estimated_memory(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp, block_size="model")
    with pytest.raises(MemoryError, match=r"45 weights.*max_block_size=40"):
        hessian_blocks(mlp, mlp_loader, layout, max_block_size=40, progress=False)


def test_negative_damping_and_empty_data_are_refused(mlp, mlp_loader):
    layout = ParameterLayout.from_model(mlp)
    with pytest.raises(ValueError, match="damping"):
        hessian_blocks(mlp, mlp_loader, layout, progress=False).damped(-1.0)
    with pytest.raises(ValueError, match="data: the loader yielded no examples"):
        hessian_blocks(mlp, [], layout, progress=False)


def test_slicing_examples_and_basis_vectors_to_a_memory_budget_keeps_the_blocks(
    bn_cnn, cnn_loader, monkeypatch
):
    from wfexplore.curvature import hessian

    first = ParameterLayout.from_model(bn_cnn).names[0]
    layout = ParameterLayout.from_model(bn_cnn, names=[first], block_size=6)
    loader = DataLoader(Subset(cnn_loader.dataset, range(9)), batch_size=5)
    x = next(iter(loader))[0][:1]
    per_example = hessian.ACTIVATION_COPIES * activation_bytes_of(bn_cnn, x)
    monkeypatch.setattr(hessian, "PASS_ACTIVATION_BYTES", 4 * per_example)
    seen = []

    class Recording(hessian._HessianColumns):
        def __call__(self, basis):
            seen.append((basis.shape[0], [x.shape[0] for x, _ in self.batches]))
            return super().__call__(basis)

    monkeypatch.setattr(hessian, "_HessianColumns", Recording)
    sliced = hessian_blocks(bn_cnn, loader, layout, basis_chunk=2, progress=False)
    # passes of 2 basis vectors over slices of 2 examples: 5 + 4 examples → 2, 2, 1, 2, 2
    assert {k for k, _ in seen} <= {1, 2} and seen[0] == (2, [2, 2, 1, 2, 2])
    expected = autograd_hessian(bn_cnn, loader, layout)
    for b in layout.blocks:
        torch.testing.assert_close(
            sliced.block(b.index), expected[b.start : b.stop, b.start : b.stop],
            rtol=1e-9, atol=1e-12,
        )  # fmt: skip
