"""Offline data: scikit-learn's bundled digits, and torchvision datasets already on disk.

Nothing here downloads unless the caller passes ``download=True`` explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets, transforms

__all__ = [
    "DATASET_NAMES",
    "digits_as_images",
    "digits_datasets",
    "digits_loaders",
    "torchvision_dataset",
]


def digits_datasets(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Stratified train/test split of the 1,797 bundled 8×8 digits.

    Images are float32 of shape (N, 1, 8, 8) scaled to [0, 1]; labels are int64.
    The split depends only on ``test_fraction`` and ``seed``.
    """
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (
        TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
    )


def digits_as_images(
    size: int = 32, channels: int = 3, test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """The digits split of :func:`digits_datasets` shaped like CIFAR-10: each 8×8 image
    resized to ``size``×``size`` (bilinear) and repeated over ``channels``, standardised
    by the training split's mean μ and standard deviation σ, x ↦ (x − μ)/σ.

    A real, learnable ten-class task for image models (a CIFAR ResNet) that needs no
    download: a ResNet-20 reaches about 99 % test accuracy in three epochs.
    """
    train, test = digits_datasets(test_fraction=test_fraction, seed=seed)

    def resized(images: torch.Tensor) -> torch.Tensor:
        big = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
        return big.repeat(1, channels, 1, 1)

    x_train, x_test = resized(train.tensors[0]), resized(test.tensors[0])
    mean, std = x_train.mean(), x_train.std()
    return (
        TensorDataset((x_train - mean) / std, train.tensors[1]),
        TensorDataset((x_test - mean) / std, test.tensors[1]),
    )


def digits_loaders(
    batch_size: int = 64, test_fraction: float = 0.25, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled by a generator seeded with ``seed``) and test loader (in order)."""
    train, test = digits_datasets(test_fraction=test_fraction, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=batch_size, shuffle=False),
    )


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)


class _UnverifiedCIFAR10(datasets.CIFAR10):
    """CIFAR-10 that checks its files exist; torchvision skips the md5 check when it is None."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _mnist_missing(root: Path) -> list[Path]:
    processed = root / "MNIST" / "processed"
    if all((processed / name).is_file() for name in ("training.pt", "test.pt")):
        return []  # torchvision's legacy layout
    raw = root / "MNIST" / "raw"
    return [raw / name for name in _MNIST_FILES if not (raw / name).is_file()]


def _cifar10_missing(root: Path) -> list[Path]:
    folder = root / "cifar-10-batches-py"
    return [folder / name for name in _CIFAR10_FILES if not (folder / name).is_file()]


_SPECS: dict[str, dict[str, Any]] = {
    "mnist": {
        "mean": (0.1307,),
        "std": (0.3081,),
        "missing": _mnist_missing,
    },
    "cifar10": {
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "missing": _cifar10_missing,
    },
}

DATASET_NAMES: tuple[str, ...] = tuple(sorted(_SPECS))


def torchvision_dataset(
    name: str,
    root: str | Path,
    train: bool = True,
    download: bool = False,
    transform: Callable | None = None,
    *,
    verify_integrity: bool = True,
) -> Dataset:
    """Load MNIST or CIFAR-10 from ``root`` in torchvision's on-disk layout.

    Expected files: ``root/MNIST/raw/*-ubyte`` or ``root/cifar-10-batches-py/*``. The default
    ``transform`` is ``ToTensor`` followed by normalisation with the dataset's usual channel
    mean and std. ``verify_integrity=False`` skips torchvision's md5 check of the CIFAR-10
    files (MNIST's raw files carry no checksum), e.g. for a re-packed or reduced copy.
    """
    key = name.lower()
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    spec = _SPECS[key]
    root = Path(root).expanduser()
    if not download:
        missing = spec["missing"](root)
        if missing:
            raise FileNotFoundError(
                f"{name} data not found: missing {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + f". Put the {name} files under {root} in torchvision's layout,"
                " or pass download=True."
            )
    if transform is None:
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(spec["mean"], spec["std"])]
        )
    if key == "mnist":
        return datasets.MNIST(root, train=train, download=download, transform=transform)
    if not verify_integrity:
        return _UnverifiedCIFAR10(root, train=train, download=download, transform=transform)
    try:
        return datasets.CIFAR10(root, train=train, download=download, transform=transform)
    except RuntimeError as err:
        raise RuntimeError(
            f"{err} The files under {root / 'cifar-10-batches-py'} failed torchvision's md5"
            " check; pass verify_integrity=False to load them unverified."
        ) from err
