"""evaluate_model: loss and accuracy, and what it says about non-finite outputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wfexplore.pruning import evaluate_model


def data(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_loss_and_accuracy_of_a_finite_model(mlp, mlp_loader):
    result = evaluate_model(mlp, mlp_loader)
    x, y = mlp_loader.dataset.tensors
    with torch.no_grad():
        out = mlp.eval()(x)
    assert result["loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-12)
    assert result["accuracy"] == pytest.approx(float((out.argmax(1) == y).double().mean()))


def test_non_finite_inputs_give_nan_loss_and_accuracy_with_a_warning_naming_the_loader(mlp):
    x = torch.randn(12, 6, dtype=torch.float64)
    x[[1, 5, 6]] = float("nan")
    with pytest.warns(RuntimeWarning, match="test_data: 3 of 12 examples have non-finite outputs"):
        result = evaluate_model(mlp, data(x, torch.zeros(12, dtype=torch.long)), name="test_data")
    assert math.isnan(result["loss"]) and math.isnan(result["accuracy"])


def test_a_non_finite_loss_from_finite_outputs_is_reported_too():
    model = nn.Linear(2, 1).double()
    y = torch.randn(8, 1, dtype=torch.float64)
    y[3] = float("inf")
    with pytest.warns(RuntimeWarning, match="eval_data: the loss is non-finite on 1 batch"):
        result = evaluate_model(
            model, data(torch.randn(8, 2, dtype=torch.float64), y), loss_fn=F.mse_loss
        )
    assert math.isnan(result["loss"])
