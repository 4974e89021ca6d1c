"""Fingerprints of what determines a result: models, data and loss functions.

A fingerprint is a SHA-256 over everything it can see; where it cannot see everything
that changes a result (a lambda, a closure, an object of unknown state) it says so with
:class:`Unfingerprintable` instead of returning a hash that could match another experiment.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn

_SIMPLE = (str, bool, int, type(None))


class Unfingerprintable(TypeError):
    """What determines a result cannot be seen (the message names it)."""


def update_with_tensor(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _value_key(value, where: str):
    """A JSON-able key of a plain value; refuses values whose state it cannot see."""
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, numbers.Real):
        return repr(float(value)) if not math.isnan(value) else "nan"
    if isinstance(value, torch.Tensor):
        h = hashlib.sha256()
        update_with_tensor(h, value)
        return h.hexdigest()
    if isinstance(value, tuple | list):
        return [_value_key(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _value_key(v, where) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, torch.dtype | torch.device | torch.Size):
        return str(value)
    if callable(value):
        return callable_key(value, where)
    raise Unfingerprintable(f"{where} is a {type(value).__name__}, whose state is not visible")


def callable_key(fn, where: str = "loss_fn"):
    """What a callable computes: a named function, a ``functools.partial`` of one, or an
    ``nn.Module`` (a loss module) with its settings; a lambda or closure is refused."""
    if isinstance(fn, functools.partial):
        return {
            "partial": callable_key(fn.func, where),
            "args": _value_key(list(fn.args), where),
            "keywords": _value_key(dict(fn.keywords), where),
        }
    if isinstance(fn, nn.Module):
        return {"module": _qualified(type(fn)), "state": module_state_key(fn, where)}
    if inspect.isfunction(fn) or inspect.isbuiltin(fn) or isinstance(fn, type):
        name = getattr(fn, "__qualname__", "")
        if "<lambda>" in name or "<locals>" in name or getattr(fn, "__closure__", None):
            raise Unfingerprintable(
                f"{where} is {name or fn!r}, a lambda or closure whose captured values are not "
                "visible"
            )
        return _qualified(fn)
    raise Unfingerprintable(f"{where} is a {type(fn).__name__}, whose state is not visible")


def module_state_key(module: nn.Module, where: str) -> dict:
    """The plain (non-tensor-registry, non-private) attributes of every submodule."""
    out = {}
    for name, sub in module.named_modules():
        attrs = {
            k: _value_key(v, f"{where}: attribute {name + '.' if name else ''}{k}")
            for k, v in sorted(vars(sub).items())
            if not k.startswith("_") and k != "training"
        }
        out[name or "."] = {"class": _qualified(type(sub)), "attributes": attrs}
    return out


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the architecture (classes, plain attributes) and every state-dict tensor.

    Attributes a forward may read (a temperature, a flag) count; an attribute whose state
    is not visible raises :class:`Unfingerprintable`.
    """
    h = hashlib.sha256()
    h.update(repr(module_state_key(model, "model")).encode())
    h.update(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        update_with_tensor(h, tensor)
    return h.hexdigest()


def data_fingerprint(data: Iterable) -> str:
    """SHA-256 of every (inputs, targets) batch a loader yields (one pass)."""
    h = hashlib.sha256()
    for batch in data:
        update_with_tensor(h, batch[0])
        update_with_tensor(h, batch[1])
    return h.hexdigest()


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
