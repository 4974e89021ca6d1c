"""Argument checks shared by the public functions: each error names the argument and a fix."""

from __future__ import annotations

import math


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
