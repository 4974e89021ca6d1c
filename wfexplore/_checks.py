"""Argument checks shared by the public functions: each error names the argument and a fix."""

from __future__ import annotations

import math
from collections.abc import Iterator


class ImpossibleSetting(ValueError):
    """A choice of settings that cannot be computed; the message says why and what to do."""


def positive_int(value, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")
    return value


def positive_float(value, name: str, hint: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}; {hint}")
    return float(value)


def one_of(value, name: str, valid: tuple) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")
    return value


def non_negative_float(value, name: str, hint: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}; {hint}")
    return float(value)


def check_reusable(data, name: str):
    """Refuse a one-shot iterator (a generator, ``iter(loader)``: ``iter(x) is x``) where
    ``data`` is read more than once; a list, a ``DataLoader`` or any re-iterable passes."""
    if isinstance(data, Iterator):
        raise ValueError(
            f"{name}: a one-shot iterator ({type(data).__name__}) is used up by its first pass, "
            f"but {name} is read more than once here; pass a list or a DataLoader"
        )
    if not hasattr(data, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of batches (a list or a DataLoader), "
            f"got {type(data).__name__}"
        )
    return data
