"""Model definitions: small digits models, CIFAR ResNet-20 and torchvision classifiers.

Nothing here downloads: torchvision models are built with ``weights=None`` and weights are
loaded only from a local file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
    "MODEL_NAMES",
    "resnet20",
    "torchvision_model",
]


class DigitsMLP(nn.Sequential):
    """MLP for 1×8×8 digits: Flatten, then Linear layers 64 → hidden… → num_classes with ReLUs.

    The default ``hidden=(64, 32)`` has 6,570 parameters.
    """

    def __init__(self, hidden: Sequence[int] = (64, 32), num_classes: int = 10) -> None:
        widths = [64, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class DigitsCNN(nn.Sequential):
    """Small CNN for 1×8×8 digits: two 3×3 conv + BatchNorm + ReLU, a 2×2 max-pool, two Linear.

    9,850 parameters with ``num_classes=10``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )


class _BasicBlock(nn.Module):
    """CIFAR BasicBlock with the option-A (parameter-free) shortcut of He et al. (2016).

    When the block downsamples, the shortcut takes every other pixel and zero-pads the new
    channels, so the only weights are the two 3×3 convolutions.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet for 3×32×32 inputs: a 3×3 stem, three stages of BasicBlocks (16/32/64 channels)."""

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            strides = [1 if i == 0 else 2] + [1] * (blocks_per_stage - 1)
            blocks = []
            for stride in strides:
                blocks.append(_BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> ResNetCIFAR:
    """CIFAR ResNet-20 (He et al. 2016, option-A shortcuts): 268,336 Conv/Linear weights."""
    return ResNetCIFAR(blocks_per_stage=3, num_classes=num_classes)


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": lambda n: torchvision.models.resnet18(weights=None, num_classes=n),
    "resnet20": resnet20,
    "resnet50": lambda n: torchvision.models.resnet50(weights=None, num_classes=n),
    "mobilenet_v2": lambda n: torchvision.models.mobilenet_v2(weights=None, num_classes=n),
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def torchvision_model(
    name: str, num_classes: int = 1000, weights_path: str | Path | None = None
) -> nn.Module:
    """Build ``name`` (one of ``MODEL_NAMES``) without downloading anything.

    With ``weights_path``, load a state dict saved by ``torch.save(model.state_dict(), path)``
    (read with ``weights_only=True``, strict key matching).
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    model = _BUILDERS[key](num_classes)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model
