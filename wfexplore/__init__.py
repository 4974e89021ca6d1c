"""wfexplore: see second-order pruning at work.

Empirical-Fisher blocks and their inverses (WoodFisher), exact Hessian blocks beside
them, diagonal-dominance statistics and OBD/OBS saliencies, on any ``nn.Module``.
Submodules are imported on use, so that a page that needs no torch does not load it.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ParameterLayout", "__version__", "plan"]


def __getattr__(name: str):
    if name == "ParameterLayout":
        from wfexplore.params import ParameterLayout

        return ParameterLayout
    if name == "plan":
        from wfexplore.pruning.plan import plan

        return plan
    raise AttributeError(f"module 'wfexplore' has no attribute {name!r}")
