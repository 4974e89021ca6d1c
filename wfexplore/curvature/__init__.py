"""Curvature representations behind one interface, and how to estimate them."""

from wfexplore.curvature.base import Curvature, check_same_layout
from wfexplore.curvature.dense import DenseBlockCurvature
from wfexplore.curvature.diagonal import DiagonalCurvature
from wfexplore.curvature.estimate import FISHER_METHODS, estimate_fisher
from wfexplore.curvature.hessian import hessian_blocks
from wfexplore.curvature.identity import IdentityCurvature
from wfexplore.curvature.kfac import KFACCurvature
from wfexplore.curvature.lowrank import LowRankCurvature
from wfexplore.curvature.woodbury import woodbury_fisher

__all__ = [
    "FISHER_METHODS",
    "Curvature",
    "DenseBlockCurvature",
    "DiagonalCurvature",
    "IdentityCurvature",
    "KFACCurvature",
    "LowRankCurvature",
    "check_same_layout",
    "estimate_fisher",
    "hessian_blocks",
    "woodbury_fisher",
]
