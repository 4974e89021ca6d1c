"""The on-disk cache of experiment rows: one small JSON file per row (and packed masks beside
it), named by a SHA-256 of everything the row depends on, written atomically; an entry that
cannot be read is computed again, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wfexplore.pruning.fingerprints import (
    Unfingerprintable,
    callable_key,
    model_fingerprint,
    update_with_tensor,
)
from wfexplore.training import resolve_cache_folder


def model_fingerprint_or_none(model: nn.Module) -> str | None:
    """The model's fingerprint, or None where its state is not visible (a cache_key names it)."""
    try:
        return model_fingerprint(model)
    except Unfingerprintable:
        return None


def open_cache(cache, cache_key: str | None, what: str, model: nn.Module, **callables):
    """``(folder, seen)`` — the cache folder and the fingerprints of ``model`` and of the named
    ``callables`` (None stays None) — or None when ``cache`` is off, or when what determines
    the rows cannot be seen (a lambda, a closure) and no ``cache_key`` names it (a warning
    says that caching is off for this ``what``)."""
    folder = cache_folder(cache)
    if folder is None:
        return None
    if cache_key is not None and not isinstance(cache_key, str):
        raise TypeError(f"cache_key must be a string, got {type(cache_key).__name__}")
    try:
        seen = {"model": model_fingerprint(model)}
        seen.update(
            {name: None if fn is None else callable_key(fn, name) for name, fn in callables.items()}
        )
    except Unfingerprintable as err:
        if cache_key is None:
            warnings.warn(
                f"caching is off for this {what}: {err}, so a cached row could belong to "
                "another experiment; pass cache_key='<what the model and loss are>' to cache "
                "anyway, or cache=False to silence this",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        seen = {"model": model_fingerprint_or_none(model)}
    return folder, {**seen, "cache_key": cache_key}


def cache_folder(cache) -> Path | None:
    return resolve_cache_folder(cache, "sweeps")


def prefix_hashes(examples: list[tuple], counts: set[int]) -> dict[int, str]:
    xs = torch.cat([x for x, _ in examples]) if examples else torch.zeros(0)
    ys = torch.cat([y for _, y in examples]) if examples else torch.zeros(0)
    out = {}
    for n in counts:
        h = hashlib.sha256()
        update_with_tensor(h, xs[:n])
        update_with_tensor(h, ys[:n])
        out[n] = h.hexdigest()
    return out


ROW_COLUMNS = ("method", "update", "scope", "steps", "sparsity", "achieved_sparsity")
"""Columns every cached row holds; an entry without them is not a row of this sweep."""


def read_cached(folder: Path, key: str, keep_masks: bool = False) -> dict | None:
    """The cached row of ``key``, or None; an entry that cannot be read is recomputed."""
    path = folder / f"{key}.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        row = stored["row"] if isinstance(stored, dict) and stored.get("key") == key else None
        if not (isinstance(row, dict) and all(c in row for c in ROW_COLUMNS)):
            raise ValueError("not a sweep row")
        if keep_masks:
            if not stored.get("masks"):
                return None  # cached without its masks: pruned again, and stored with them
            row.update(_read_masks(folder / f"{key}.npz", stored["masks"]))
        return row
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(
            f"sweep cache: the entry {path} cannot be read ({type(err).__name__}: {err}); "
            "the point is computed again",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def write_cached(folder: Path, key: str, row: dict, masks: dict | None = None) -> None:
    """Store a row (and its packed masks) atomically; a failure to store is a warning."""
    shapes = None
    try:
        if masks:
            shapes = {name: list(keep.shape) for name, keep in masks["masks"].items()}
            packed = {
                f"{kind}/{name}": np.packbits(tensor.numpy().reshape(-1))
                for kind, by_name in masks.items()
                for name, tensor in by_name.items()
            }
            _atomic_write(folder, key, ".npz", lambda f: np.savez_compressed(f, **packed))
        entry = json.dumps({"key": key, "row": row, "masks": shapes}, default=str).encode()
        _atomic_write(folder, key, ".json", lambda f: f.write(entry))
    except OSError as err:
        warnings.warn(
            f"sweep cache: the row could not be stored in {folder} ({err}); the sweep goes on "
            "without caching it",
            RuntimeWarning,
            stacklevel=4,
        )


def _atomic_write(folder: Path, key: str, suffix: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=f"{suffix}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, folder / f"{key}{suffix}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_masks(path: Path, shapes: dict[str, list[int]]) -> dict[str, dict[str, torch.Tensor]]:
    """The ``masks`` and ``moved`` maps of a cached point (bits packed by :func:`write_cached`)."""
    out: dict[str, dict[str, torch.Tensor]] = {"masks": {}, "moved": {}}
    with np.load(path, allow_pickle=False) as stored:
        for kind in out:
            for name, shape in shapes.items():
                count = int(np.prod(shape))
                bits = np.unpackbits(stored[f"{kind}/{name}"], count=count).astype(bool)
                out[kind][name] = torch.from_numpy(bits).reshape(shape)
    return out
