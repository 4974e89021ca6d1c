import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from wfexplore.data import digits_datasets, digits_loaders, torchvision_dataset

# --- digits -------------------------------------------------------------------------------


def test_digits_split_shapes_dtypes_and_range():
    train, test = digits_datasets()
    x_tr, y_tr = train.tensors
    x_te, y_te = test.tensors
    assert len(train) + len(test) == 1797
    assert len(test) == 450  # ceil(0.25 * 1797)
    assert x_tr.shape == (len(train), 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    both = torch.cat([x_tr, x_te])
    assert both.min() == 0.0 and both.max() == 1.0
    # The scaling is exactly /16: every pixel is a multiple of 1/16.
    assert torch.equal(both * 16, (both * 16).round())


def test_digits_split_keeps_every_image_once():
    train, test = digits_datasets()
    bunch = load_digits()
    ours = torch.cat([train.tensors[0], test.tensors[0]]).reshape(-1, 64).numpy() * 16
    ours_sorted = ours[np.lexsort(ours.T[::-1])]
    theirs = bunch.data.astype(np.float32)
    theirs_sorted = theirs[np.lexsort(theirs.T[::-1])]
    np.testing.assert_array_equal(ours_sorted, theirs_sorted)


def test_digits_split_is_stratified():
    train, test = digits_datasets(test_fraction=0.25)
    full = Counter(load_digits().target.tolist())
    test_counts = Counter(test.tensors[1].tolist())
    train_counts = Counter(train.tensors[1].tolist())
    for label, n in full.items():
        assert train_counts[label] + test_counts[label] == n
        assert abs(test_counts[label] - 0.25 * n) <= 1


def test_digits_split_is_deterministic_per_seed():
    a_train, a_test = digits_datasets(seed=3)
    b_train, b_test = digits_datasets(seed=3)
    c_train, _ = digits_datasets(seed=4)
    assert torch.equal(a_train.tensors[0], b_train.tensors[0])
    assert torch.equal(a_test.tensors[1], b_test.tensors[1])
    assert not torch.equal(a_train.tensors[0], c_train.tensors[0])


def test_digits_test_fraction_sets_test_size():
    train, test = digits_datasets(test_fraction=0.5)
    assert len(test) == 899 and len(train) == 898


def test_digits_loaders_shuffle_train_reproducibly_and_keep_test_order():
    train_a, test_a = digits_loaders(batch_size=32, seed=1)
    train_b, _ = digits_loaders(batch_size=32, seed=1)
    train_c, _ = digits_loaders(batch_size=32, seed=2)
    first_a = next(iter(train_a))
    first_b = next(iter(train_b))
    assert first_a[0].shape == (32, 1, 8, 8) and first_a[1].shape == (32,)
    assert torch.equal(first_a[1], first_b[1])
    # Split and shuffle both differ with seed 2.
    assert not torch.equal(first_a[0], next(iter(train_c))[0])
    # The train loader does reshuffle between epochs.
    assert not torch.equal(first_a[1], next(iter(train_a))[1])
    dataset_order = test_a.dataset.tensors[1]
    assert torch.equal(torch.cat([y for _, y in test_a]), dataset_order)


# --- torchvision datasets on fake files ---------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the MNIST idx format (magic 0x0000080N, big-endian dims)."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


def _fake_cifar10(root: Path, per_batch: int = 3) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, 10, per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return batches


def test_mnist_loads_fake_files_with_default_normalisation(tmp_path):
    arrays = _fake_mnist(tmp_path)
    train = torchvision_dataset("MNIST", tmp_path, train=True)
    test = torchvision_dataset("mnist", str(tmp_path), train=False)
    assert len(train) == 6 and len(test) == 4
    image, label = test[2]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label == int(arrays["t10k-labels-idx1-ubyte"][2])
    expected = (arrays["t10k-images-idx3-ubyte"][2] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)


def test_custom_transform_replaces_default(tmp_path):
    arrays = _fake_mnist(tmp_path)
    data = torchvision_dataset("mnist", tmp_path, transform=np.asarray)
    image, _ = data[0]
    np.testing.assert_array_equal(image, arrays["train-images-idx3-ubyte"][0])


def test_cifar10_loads_fake_batches_unverified(tmp_path):
    batches = _fake_cifar10(tmp_path)
    train = torchvision_dataset("cifar10", tmp_path, train=True, verify_integrity=False)
    test = torchvision_dataset("CIFAR10", tmp_path, train=False, verify_integrity=False)
    assert len(train) == 15 and len(test) == 3
    assert train.classes[0] == "airplane" and train.class_to_idx["truck"] == 9
    image, label = test[1]
    assert image.shape == (3, 32, 32)
    assert label == batches["test_batch"]["labels"][1]
    raw = batches["test_batch"]["data"][1].reshape(3, 32, 32) / 255.0
    mean = np.array([0.4914, 0.4822, 0.4465])[:, None, None]
    std = np.array([0.2470, 0.2435, 0.2616])[:, None, None]
    np.testing.assert_allclose(image.numpy(), (raw - mean) / std, atol=1e-5)
    # Train batches are concatenated in order data_batch_1..5.
    assert train.targets[3:6] == batches["data_batch_2"]["labels"]


def test_cifar10_verification_rejects_files_with_wrong_checksums(tmp_path):
    _fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="verify_integrity=False"):
        torchvision_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("mnist", Path("MNIST", "raw", "train-images-idx3-ubyte")),
        ("cifar10", Path("cifar-10-batches-py", "data_batch_1")),
    ],
)
def test_missing_files_raise_file_not_found_naming_path_and_fix(tmp_path, name, missing):
    with pytest.raises(FileNotFoundError) as info:
        torchvision_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path / missing) in message
    assert "download=True" in message


def test_one_missing_cifar_file_is_named(tmp_path):
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        torchvision_dataset("cifar10", tmp_path, verify_integrity=False)


def test_unknown_dataset_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="cifar10, mnist") as info:
        torchvision_dataset("imagenet", tmp_path)
    assert "imagenet" in str(info.value)


def test_digits_as_images_are_the_digits_resized_and_standardised():
    from wfexplore.data import digits_as_images

    small_train, small_test = digits_datasets()
    train, test = digits_as_images(size=32, channels=3)
    x, y = train.tensors
    assert x.shape == (len(small_train), 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, small_train.tensors[1]) and torch.equal(test.tensors[1], small_test[:][1])
    assert torch.equal(x[:, 0], x[:, 2])  # the grey image in every channel
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    # each 4×4 patch of the 32×32 image averages back to (an affine map of) its 8×8 pixel
    raw = small_train.tensors[0][:, :, 1:-1, 1:-1].flatten()
    back = torch.nn.functional.avg_pool2d(x[:, :1], 4)[:, :, 1:-1, 1:-1].flatten()
    assert float(torch.corrcoef(torch.stack([raw, back]))[0, 1]) > 0.95
    # still a ten-class task a nearest-centroid rule separates
    centroids = torch.stack([x[y == c].flatten(1).mean(0) for c in range(10)])
    xt, yt = test.tensors
    guess = torch.cdist(xt.flatten(1), centroids).argmin(1)
    assert float((guess == yt).float().mean()) > 0.85
