import re

import pytest
import torch
from torch import nn

from wfexplore.models import DigitsCNN, DigitsMLP, resnet20, torchvision_model


def _weight_sizes(model: nn.Module) -> list[int]:
    return [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_digits_mlp_layers_and_output():
    model = DigitsMLP()
    assert [m.weight.shape for m in model if isinstance(m, nn.Linear)] == [
        (64, 64),
        (32, 64),
        (10, 32),
    ]
    assert sum(p.numel() for p in model.parameters()) == 6570
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_digits_mlp_hidden_widths_are_configurable():
    model = DigitsMLP(hidden=(16,))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [16, 10]
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_digits_cnn_is_small_and_uses_batchnorm():
    model = DigitsCNN()
    assert sum(p.numel() for p in model.parameters()) < 20_000
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert model(torch.rand(4, 1, 8, 8)).shape == (4, 10)


def test_resnet20_conv_and_linear_weight_sizes():
    model = resnet20()
    convs = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Stem, then three stages of three BasicBlocks (two 3x3 convs each); option A means no
    # 1x1 shortcut convolutions.
    assert convs == [432] + [2304] * 6 + [4608] + [9216] * 5 + [18432] + [36864] * 5
    assert _weight_sizes(model)[-1] == 640
    assert sum(_weight_sizes(model)) == 268_336


def test_resnet20_forward_and_downsampling_shortcut():
    model = resnet20(num_classes=7).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    block = model.layer2[0]
    x = torch.randn(1, 16, 32, 32)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (1, 32, 16, 16)
    # Option A: subsampled identity on the middle channels, zeros on the padded ones.
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "resnet20"])
def test_torchvision_model_builds_offline_with_num_classes(name):
    model = torchvision_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "n_params"),
    # The published ImageNet parameter counts of the torchvision architectures.
    [("resnet18", 11_689_512), ("ResNet50", 25_557_032), ("mobilenet_v2", 3_504_872)],
)
def test_torchvision_model_matches_published_sizes(name, n_params):
    model = torchvision_model(name)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_torchvision_model_loads_weights_file(tmp_path):
    torch.manual_seed(1)
    source = resnet20()
    path = tmp_path / "r20.pt"
    torch.save(source.state_dict(), path)
    loaded = torchvision_model("resnet20", num_classes=10, weights_path=path)
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_torchvision_model_rejects_mismatched_weights(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(resnet20(num_classes=10).state_dict(), path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        torchvision_model("resnet20", num_classes=100, weights_path=path)


def test_torchvision_model_missing_weights_names_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        torchvision_model("resnet18", weights_path=path)


def test_torchvision_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="mobilenet_v2, resnet18, resnet20, resnet50"):
        torchvision_model("vgg16")
