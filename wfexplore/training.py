"""Train, evaluate and cache the default digits models."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._checks import check_reusable
from .data import digits_loaders
from .evaluation import evaluate_model
from .models import DigitsCNN, DigitsMLP

__all__ = [
    "DIGITS_KINDS",
    "cache_dir",
    "digits_model_path",
    "evaluate",
    "pretrained_digits_model",
    "resolve_cache_folder",
    "train_classifier",
]

# Bump when an architecture or its training recipe changes: old cache files are then ignored.
_CACHE_VERSION = "v1"

# kind -> (constructor, epochs); Adam with the default learning rate of train_classifier.
_DIGITS_RECIPES: dict[str, tuple[type[nn.Module], int]] = {
    "mlp": (DigitsMLP, 20),
    "cnn": (DigitsCNN, 10),
}
DIGITS_KINDS: tuple[str, ...] = tuple(_DIGITS_RECIPES)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def train_classifier(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place with Adam on the cross-entropy loss and return it.

    The module passed in is modified (its weights, and BatchNorm statistics if any) and left
    in train mode. Batches are moved to the model's device. Randomness drawn from torch's
    global generator (e.g. a loader without its own generator) is seeded with ``seed`` inside
    a forked RNG state, so the caller's global RNG is left untouched. With ``epochs > 1``,
    ``loader`` must be re-iterable (a one-shot iterator would train one epoch only).
    """
    if epochs > 1:
        check_reusable(loader, "loader")
    device = _device_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
        for _ in bar:
            total, count = 0.0, 0
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(targets)
                count += len(targets)
            bar.set_postfix(loss=total / max(count, 1))
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` over ``loader``, computed in eval mode
    (:func:`~wfexplore.evaluation.evaluate_model`); modes are restored afterwards."""
    return evaluate_model(model, loader, loss_fn=F.cross_entropy, name="loader")


def cache_dir() -> Path:
    """``$WFEXPLORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/wfexplore``, else ``~/.cache/wfexplore``.

    A variable that names an existing file (not a folder) is refused with its name.
    """
    for variable, suffix in (("WFEXPLORE_CACHE_DIR", ""), ("XDG_CACHE_HOME", "wfexplore")):
        value = os.environ.get(variable)
        if not value:
            continue
        if "\0" in value:
            raise ValueError(f"${variable} holds a NUL character; set it to a folder path")
        base = Path(value).expanduser()
        blocker = _file_in_the_way(base / suffix if suffix else base)
        if blocker is not None:
            raise NotADirectoryError(
                f"${variable}={value!r} does not lead to a folder: {blocker} is a file; set "
                f"${variable} to a folder (or unset it)"
            )
        return base / suffix if suffix else base
    return Path.home() / ".cache" / "wfexplore"


def _file_in_the_way(folder: Path) -> Path | None:
    """The first existing non-folder on the way to ``folder`` (``folder`` itself included)."""
    for part in [*reversed(folder.parents), folder]:
        if part.exists() and not part.is_dir():
            return part
    return None


def resolve_cache_folder(cache, subfolder: str) -> Path | None:
    """The folder a ``cache=`` argument means, created and writable, or None for no cache.

    ``True`` → ``cache_dir() / subfolder``; a path (str or ``os.PathLike``) → that folder;
    ``False`` or ``None`` → None. ``""``, numbers and other values are refused. A folder that
    cannot be created or written (no permission, a file in the way) is refused with a
    message naming ``cache=False`` as the way to run without a cache.
    """
    if cache is None or cache is False:
        return None
    if cache is True:
        folder = cache_dir() / subfolder
    elif isinstance(cache, (str, os.PathLike)):
        if not os.fspath(cache):
            raise ValueError(
                "cache='' names no folder; pass cache=True (the default folder), a folder "
                "path, or cache=False"
            )
        folder = Path(cache).expanduser()
    else:
        raise TypeError(
            f"cache must be True, False, None or a folder path, got {cache!r}; "
            "e.g. cache=True or cache='~/wfexplore-cache'"
        )
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise NotADirectoryError(
            f"cache folder {folder} cannot be used: {blocker} is a file; pass another folder, "
            "or cache=False to run without a cache"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            f"cache folder {folder} cannot be created ({type(err).__name__}: {err}); pass a "
            "writable folder, or cache=False to run without a cache"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cache folder {folder} is not writable; pass a writable folder, or cache=False to "
            "run without a cache"
        )
    return folder


def _check_kind(kind: str) -> str:
    key = kind.lower()
    if key not in _DIGITS_RECIPES:
        raise ValueError(
            f"unknown digits model kind {kind!r}; valid kinds: {', '.join(DIGITS_KINDS)}"
        )
    return key


def digits_model_path(kind: str = "mlp", cache: str | Path | None = None) -> Path:
    """Where ``pretrained_digits_model(kind)`` keeps its state dict."""
    key = _check_kind(kind)
    if cache is None:
        folder = cache_dir()
    elif isinstance(cache, (str, os.PathLike)) and os.fspath(cache):
        folder = Path(cache).expanduser()
    else:
        raise TypeError(f"cache must be a folder path or None (the default folder), got {cache!r}")
    return folder / f"digits-{key}-{_CACHE_VERSION}.pt"


def _fresh_model(key: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _DIGITS_RECIPES[key][0]()


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrained_digits_model(
    kind: str = "mlp",
    *,
    retrain: bool = False,
    cache: str | Path | None = None,
    progress: bool = True,
) -> nn.Module:
    """A digits model ("mlp" or "cnn") trained on the digits train split, in eval mode.

    The state dict is read from ``cache`` (default: ``cache_dir()``) when present; otherwise,
    or with ``retrain=True``, the model is trained with fixed seeds (a few seconds on a CPU)
    and saved atomically. A cache file that cannot be loaded is rebuilt with a warning; a
    cache that cannot be written (read-only, missing, a file in the way) leaves the trained
    model in hand, with a warning.
    """
    key = _check_kind(kind)
    path = digits_model_path(key, cache)
    model = _fresh_model(key)
    if path.is_file() and not retrain:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(f"expected a state dict, found {type(state).__name__}")
            model.load_state_dict(state)
            return model.eval()
        except Exception as err:  # any unreadable cache file is rebuilt, whatever the cause
            first_line = next(iter(str(err).splitlines()), "")[:200]
            reason = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
            warnings.warn(
                f"cached digits model {path} could not be loaded ({reason}); retraining it",
                stacklevel=2,
            )
            model = _fresh_model(key)
    train_loader, _ = digits_loaders(batch_size=64, seed=0)
    train_classifier(model, train_loader, epochs=_DIGITS_RECIPES[key][1], seed=0, progress=progress)
    try:
        _save_atomic(model.state_dict(), path)
    except OSError as err:
        warnings.warn(
            f"the trained digits model could not be cached at {path} ({type(err).__name__}: "
            f"{err}); it is returned, but will be trained again next time. Set "
            "$WFEXPLORE_CACHE_DIR or pass cache= with a writable folder",
            RuntimeWarning,
            stacklevel=2,
        )
    return model.eval()
