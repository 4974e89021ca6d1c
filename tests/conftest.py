"""Small float64 models and data, and independent reference computations for the tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wfexplore.params import ParameterLayout


class Scale(nn.Module):
    """A custom module with a parameter that is not Conv/Linear (so not analysed by default)."""

    def __init__(self, width: int):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), Scale(5), nn.Linear(5, 3)).double()


def make_bn_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture
def bn_cnn() -> nn.Module:
    return make_bn_cnn()


def make_loader(inputs: torch.Tensor, classes: int, batch: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (inputs.shape[0],), generator=g)
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch, shuffle=False)


@pytest.fixture
def mlp_loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    return make_loader(torch.randn(48, 6, generator=g, dtype=torch.float64), 3)


@pytest.fixture
def cnn_loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    return make_loader(torch.randn(40, 1, 4, 4, generator=g, dtype=torch.float64), 4, batch=7)


def loop_gradients(
    model: nn.Module, loader: DataLoader, layout: ParameterLayout, m: int, b: int = 1
) -> torch.Tensor:
    """Reference: one ``loss.backward()`` per gradient sample, on a copy in eval mode."""
    import copy

    work = copy.deepcopy(model).eval()
    named = dict(work.named_parameters())
    xs = torch.cat([x for x, _ in loader])
    ys = torch.cat([y for _, y in loader])
    rows = []
    for n in range(m):
        work.zero_grad()
        sl = slice(n * b, (n + 1) * b)
        F.cross_entropy(work(xs[sl]), ys[sl]).backward()
        rows.append(torch.cat([named[name].grad.reshape(-1) for name in layout.names]))
    return torch.stack(rows)


def dense_block_fisher(gradients: torch.Tensor, layout: ParameterLayout, damping: float):
    """Reference: F_λ = (1/m) GᵀG + λI in float64 with off-block entries zeroed, and its inverse."""
    g = gradients.double()
    fisher = g.T @ g / g.shape[0] + damping * torch.eye(layout.dim, dtype=torch.float64)
    mask = torch.zeros_like(fisher, dtype=torch.bool)
    for b in layout.blocks:
        mask[b.start : b.stop, b.start : b.stop] = True
    fisher = torch.where(mask, fisher, torch.zeros_like(fisher))
    return fisher, torch.linalg.inv(fisher)


def model_state(model: nn.Module) -> tuple:
    """Everything a call must leave untouched: tensors (by value), modes, requires_grad."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    grads = tuple(p.grad is None for p in model.parameters())
    return tensors, modes, flags, grads


def assert_same_state(before: tuple, after: tuple) -> None:
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k


# --- servers for the browser tests (module scope: one per test module) -------------------------
@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small settings and a private model cache for every kernel the servers start."""
    cache = tmp_path_factory.mktemp("wfexplore-cache")
    return {"WFEXPLORE_SMALL": "1", "WFEXPLORE_CACHE_DIR": str(cache)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, kernel_env):
    """JupyterLab on a working copy of the shipped notebooks, as ``wfexplore lab`` makes it."""
    from tests.browser import lab_server
    from wfexplore.servers import copy_notebooks

    work = tmp_path_factory.mktemp("lab")
    copy_notebooks(work / "notebooks")
    with lab_server(work / "notebooks", work / "server", kernel_env) as server:
        yield server
