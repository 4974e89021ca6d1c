"""Curvature representations behind one interface, and how to estimate them."""

from wfexplore.curvature.base import Curvature, DampedCurvature, check_same_layout
from wfexplore.curvature.dense import DenseBlockCurvature
from wfexplore.curvature.diagonal import DiagonalCurvature
from wfexplore.curvature.estimate import (
    REPRESENTATIONS,
    estimate_curvature,
    from_gradients,
    resolve_representation,
)
from wfexplore.curvature.gradient_files import GradientFile
from wfexplore.curvature.hessian import hessian_blocks
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.curvature.lowrank import LowRankCurvature
from wfexplore.curvature.woodbury import WoodburyCurvature

__all__ = [
    "REPRESENTATIONS",
    "Curvature",
    "DampedCurvature",
    "DenseBlockCurvature",
    "DiagonalCurvature",
    "GradientFile",
    "IdentityCurvature",
    "KFACCurvature",
    "LowRankCurvature",
    "WoodburyCurvature",
    "check_same_layout",
    "estimate_curvature",
    "from_gradients",
    "hessian_blocks",
    "resolve_representation",
]
