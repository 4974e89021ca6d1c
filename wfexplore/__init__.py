"""wfexplore: see second-order pruning at work.

Empirical-Fisher blocks and their inverses (WoodFisher), exact Hessian blocks beside
them, diagonal-dominance statistics and OBD/OBS saliencies, on any ``nn.Module``.
"""

from wfexplore.params import ParameterLayout

__version__ = "0.1.0"
__all__ = ["ParameterLayout", "__version__"]
