"""OBS saliencies in one frame: ρ_q = w_q² / (2 [C⁻¹]_qq) for any curvature C.

ρ_q is the increase of the quadratic model ½ δwᵀ C δw when weight q alone is removed and
the others are moved by the optimal compensating update δw = −(w_q / [C⁻¹]_qq) C⁻¹ e_q.
With C = I this is magnitude pruning (ρ = w²/2), with a diagonal C it is OBD
(ρ = ½ C_qq w², no other weight moves), with Fisher blocks it is WoodFisher and with
Kronecker-factored blocks K-FAC. Without the compensating update removing q costs
½ C_qq w_q² instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from wfexplore.curvature.base import AnyCurvature, as_damped
from wfexplore.params import ParameterLayout


def obs_saliency(weights: torch.Tensor, inverse_diag: torch.Tensor) -> torch.Tensor:
    """ρ_q = w_q² / (2 [C⁻¹]_qq), elementwise, in float64; refuses a non-positive diag(C⁻¹)."""
    inverse_diag = inverse_diag.to(device=weights.device, dtype=torch.float64)
    bad = ~(torch.isfinite(inverse_diag) & (inverse_diag > 0))
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"curvature: diag(C⁻¹) has {int(bad.sum())} non-positive or non-finite entries (first "
            f"at flat index {first}: {float(inverse_diag[first])!r}); C is not positive definite "
            "there, so OBS saliencies are undefined: increase the damping λ"
        )
    w = weights.to(torch.float64)
    return w * w / (2.0 * inverse_diag)


@dataclass
class Saliency:
    """Saliency of every analysed weight and the predicted loss increase of removing it alone.

    ``scores`` is ρ = w²/(2 diag(C⁻¹)), which is also ``predicted_delta_loss`` (removal with
    the OBS update); ``predicted_without_update`` is ½ diag(C) w² (removal, nothing else moves).
    """

    layout: ParameterLayout
    weights: torch.Tensor
    inverse_diag: torch.Tensor
    curvature_diag: torch.Tensor
    scores: torch.Tensor
    kind: str

    @property
    def predicted_delta_loss(self) -> torch.Tensor:
        return self.scores

    @property
    def predicted_without_update(self) -> torch.Tensor:
        return 0.5 * self.curvature_diag * self.weights**2

    def to_frame(self) -> pd.DataFrame:
        """One row per weight: parameter, flat index, position, w, [C⁻¹]_qq, saliency, δL."""
        names, positions = [], []
        for p in self.layout.parameters:
            names += [p.name] * p.numel
            grid = torch.stack(
                torch.meshgrid(*[torch.arange(s) for s in p.shape], indexing="ij"), -1
            ).reshape(p.numel, len(p.shape))
            positions += [tuple(row) for row in grid.tolist()]
        return pd.DataFrame(
            {
                "parameter": names,
                "index": range(self.layout.dim),
                "position": positions,
                "weight": self.weights.cpu().numpy(),
                "inverse_diag": self.inverse_diag.cpu().numpy(),
                "saliency": self.scores.cpu().numpy(),
                "predicted_delta_loss": self.scores.cpu().numpy(),
                "predicted_without_update": self.predicted_without_update.cpu().numpy(),
                "curvature": self.kind,
            }
        )

    def per_layer(self) -> pd.DataFrame:
        """Per parameter: count, and the min / median / mean / max saliency."""
        rows = []
        for p in self.layout.parameters:
            s = self.scores[p.offset : p.stop]
            rows.append(
                {
                    "parameter": p.name,
                    "numel": p.numel,
                    "min": float(s.min()),
                    "median": float(s.median()),
                    "mean": float(s.mean()),
                    "max": float(s.max()),
                }
            )
        return pd.DataFrame(rows)


def compute_saliency(
    weights: nn.Module | torch.Tensor,
    curvature: AnyCurvature,
    *,
    inverse_diag: torch.Tensor | None = None,
) -> Saliency:
    """Saliencies of the weights of a model (or a flat vector) under ``curvature`` C.

    A model must hold the parameters of ``curvature.layout`` with the same shapes.
    """
    curvature = as_damped(curvature)
    layout = curvature.layout
    if isinstance(weights, nn.Module):
        check_model_matches(weights, layout)
        flat = layout.flatten(weights)
    else:
        flat = weights
        if flat.shape != (layout.dim,):
            raise ValueError(f"weights: expected shape ({layout.dim},), got {tuple(flat.shape)}")
    flat = flat.detach().to(torch.float64)
    if inverse_diag is None:
        inverse_diag = curvature.inverse_diag()
    inverse_diag = inverse_diag.to(device=flat.device, dtype=torch.float64)
    scores = obs_saliency(flat, inverse_diag)
    diag = curvature.diag().to(device=flat.device, dtype=torch.float64)
    return Saliency(layout, flat, inverse_diag, diag, scores, curvature.kind)


def check_model_matches(model: nn.Module, layout: ParameterLayout) -> None:
    """Refuse a model that lacks the layout's parameters or holds them with other shapes."""
    params = dict(model.named_parameters())
    for p in layout.parameters:
        if p.name not in params:
            raise ValueError(
                f"the curvature was built for parameter {p.name!r}, which the model does not have "
                f"(it has {list(params)[:8]}…); estimate the curvature on this model"
            )
        if tuple(params[p.name].shape) != p.shape:
            raise ValueError(
                f"the curvature was built for {p.name} of shape {p.shape}, the model's has shape "
                f"{tuple(params[p.name].shape)}; estimate the curvature on this model"
            )


__all__ = ["Saliency", "check_model_matches", "compute_saliency", "obs_saliency"]
