"""Private working copies of a caller's model.

:func:`private_copy` is ``copy.deepcopy`` made safe for the models people bring:

- modules under ``torch.nn.utils.prune`` (or the legacy ``weight_norm``), whose derived
  ``weight`` is a non-leaf tensor that ``deepcopy`` refuses, are copied and their derived
  tensor is recomputed on the copy from the copy's own parameters;
- the caller's forward, forward pre- and backward hooks are left behind, so that internal
  passes (under ``vmap``, with per-example shapes) never fire them; the hooks that *are* the
  computation (``torch.nn.utils.prune`` masks, legacy ``weight_norm`` / ``spectral_norm``)
  and ``torch.nn.utils.parametrize`` parametrisations are kept.

The caller's model is not touched: nothing is set, deleted or re-registered on it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["REPARAMETRISING_HOOKS", "is_reparametrising_hook", "private_copy"]

REPARAMETRISING_HOOKS: tuple[type, ...] = (torch_prune.BasePruningMethod, WeightNorm, SpectralNorm)
"""Forward pre-hooks that compute a module's tensor; a private copy keeps them."""

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_HOOK_SIDE_DICTS = {
    "_forward_pre_hooks": ("_forward_pre_hooks_with_kwargs",),
    "_forward_hooks": ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
}


def is_reparametrising_hook(hook: object) -> bool:
    """True for the hooks of ``torch.nn.utils.prune`` and the legacy weight/spectral norms."""
    return isinstance(hook, REPARAMETRISING_HOOKS)


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that internal passes may use freely.

    Parameters, buffers, modes and parametrisations are copied; derived tensors of
    reparametrising hooks (e.g. ``weight = weight_orig * weight_mask``) are recomputed on
    the copy; every other forward, forward pre- and backward hook is dropped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()  # deepcopy refuses non-leaf tensors
        _leave_hooks_behind(module, memo)
    work = copy.deepcopy(model, memo)
    with torch.no_grad():
        for module in work.modules():
            _recompute_derived(module)
    return work


def _leave_hooks_behind(module: nn.Module, memo: dict[int, object]) -> None:
    """Map the module's hook dicts, in ``memo``, to copies holding only reparametrising hooks."""
    for attr in _HOOK_DICTS:
        hooks = getattr(module, attr, None)
        if hooks is None:
            continue
        kept = OrderedDict(
            (key, copy.deepcopy(hook))
            for key, hook in hooks.items()
            if is_reparametrising_hook(hook)
        )
        memo[id(hooks)] = kept
        for side in _HOOK_SIDE_DICTS.get(attr, ()):
            extra = getattr(module, side, None)
            if extra is not None:
                memo[id(extra)] = OrderedDict((k, v) for k, v in extra.items() if k in kept)


def _recompute_derived(module: nn.Module) -> None:
    """Recompute the tensors that the kept pruning / weight-norm hooks derive on the copy."""
    if not module._backward_hooks:
        module._is_full_backward_hook = None
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            setattr(module, hook._tensor_name, hook.apply_mask(module))
        elif isinstance(hook, WeightNorm):
            setattr(module, hook.name, hook.compute_weight(module))
