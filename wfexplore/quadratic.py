r"""OBD and OBS on a quadratic loss around a trained optimum, small enough to see.

Around a minimum w* the loss is, to second order,

.. math:: L(w) = \tfrac12 (w - w^*)^\top H (w - w^*),

so L(w*) = 0 and the loss of any point is its increase δL. Removing weight q means moving
to the hyperplane w_q = 0. Three rules choose q and where to go:

- **magnitude**: the smallest |w*_q|, nothing else moves; its saliency w_q²/2 is the OBS
  saliency with identity curvature;
- **OBD** (Optimal Brain Damage): saliency ½ H_qq w_q², which assumes H diagonal; nothing
  else moves, so the point is w* with w_q set to 0 and its predicted δL is exact;
- **OBS** (Optimal Brain Surgeon): saliency ρ_q = w_q² / (2 [H⁻¹]_qq), the loss at the
  constrained minimum, reached by the update δw = −(w_q / [H⁻¹]_qq) H⁻¹ e_q.

The "best" weight is the one whose removal costs least when followed by the optimal update
of the others. It is computed here independently of H⁻¹ (from the reduced problem on the
remaining weights), and equals OBS's choice.

With two weights, H = [[h11, c√(h11 h22)], [c√(h11 h22), h22]] and [H⁻¹]_qq = 1/(H_qq(1−c²))
for both q: the OBS saliency is the OBD saliency times the same factor (1 − c²), so OBD and
OBS always remove the same weight, and OBD's loss is only that it does not update the other
weight. From three weights on the factor differs between weights and OBD can remove the
wrong one (:func:`obd_wrong_weight_example`). Magnitude pruning can pick the wrong weight
already with two (:func:`teaching_example`).

Plain numpy in float64; no plotting here (see :mod:`wfexplore.figures.teaching`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "RULES",
    "Quadratic",
    "QuadraticComparison",
    "RuleResult",
    "compare_rules",
    "obd_wrong_weight_example",
    "teaching_example",
    "two_weight_hessian",
]

RULES = ("magnitude", "obd", "obs")
RULE_LABELS = {"magnitude": "magnitude", "obd": "OBD", "obs": "OBS"}


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def two_weight_hessian(h11: float, h22: float, c: float) -> np.ndarray:
    """H = [[h11, c√(h11 h22)], [c√(h11 h22), h22]], curvatures h11, h22 > 0, |c| < 1."""
    h11 = _finite(h11, "h11")
    h22 = _finite(h22, "h22")
    c = _finite(c, "c")
    if h11 <= 0:
        raise ValueError(f"h11 must be positive (a curvature at a minimum), got {h11!r}")
    if h22 <= 0:
        raise ValueError(f"h22 must be positive (a curvature at a minimum), got {h22!r}")
    if not abs(c) < 1:
        raise ValueError(
            f"the correlation c must lie strictly between -1 and 1, got {c!r}; "
            "at |c| = 1 the Hessian is singular and the optimum is not unique"
        )
    off = c * math.sqrt(h11 * h22)
    return np.array([[h11, off], [off, h22]], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Quadratic:
    """L(w) = ½ (w − w*)ᵀ H (w − w*) with H symmetric positive definite.

    ``optimum`` is w* (length d ≥ 2), ``hessian`` is H (d×d). Both are copied into float64
    arrays and checked: finite, symmetric, positive definite.
    """

    optimum: np.ndarray
    hessian: np.ndarray

    def __post_init__(self) -> None:
        w = np.array(self.optimum, dtype=np.float64, copy=True).reshape(-1)
        h = np.array(self.hessian, dtype=np.float64, copy=True)
        if w.size < 2:
            raise ValueError(f"the optimum needs at least two weights, got {w.size}")
        if h.shape != (w.size, w.size):
            raise ValueError(
                f"the Hessian must be {w.size}×{w.size} to match the optimum, got {h.shape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(h).all()):
            raise ValueError("the optimum and the Hessian must contain finite numbers only")
        if not np.allclose(h, h.T, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(h).max()))):
            raise ValueError("the Hessian must be symmetric")
        try:
            np.linalg.cholesky(h)
        except np.linalg.LinAlgError:
            raise ValueError(
                "the Hessian must be positive definite (the optimum must be a strict minimum)"
            ) from None
        w.setflags(write=False)
        h.setflags(write=False)
        object.__setattr__(self, "optimum", w)
        object.__setattr__(self, "hessian", h)

    @classmethod
    def two_weight(cls, h11: float, h22: float, c: float, w1: float, w2: float) -> Quadratic:
        """The two-weight quadratic of the teacher (see :func:`two_weight_hessian`)."""
        hessian = two_weight_hessian(h11, h22, c)
        return cls(np.array([_finite(w1, "w1"), _finite(w2, "w2")]), hessian)

    @property
    def dim(self) -> int:
        return int(self.optimum.size)

    def loss(self, w: Sequence[float] | np.ndarray) -> float:
        """L(w), which is also δL = L(w) − L(w*) since L(w*) = 0."""
        delta = np.asarray(w, dtype=np.float64).reshape(-1) - self.optimum
        return float(0.5 * delta @ self.hessian @ delta)

    def loss_grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """L at (w1, w2) = (x[j], y[i]) of a two-weight quadratic, shape (len(y), len(x))."""
        if self.dim != 2:
            raise ValueError(f"loss_grid needs a two-weight quadratic, this one has {self.dim}")
        d1 = np.asarray(x, dtype=np.float64)[None, :] - self.optimum[0]
        d2 = np.asarray(y, dtype=np.float64)[:, None] - self.optimum[1]
        h = self.hessian
        return 0.5 * (h[0, 0] * d1**2 + 2 * h[0, 1] * d1 * d2 + h[1, 1] * d2**2)


@dataclass(frozen=True)
class RuleResult:
    """What one rule does: the weight it removes (0-based), its saliencies, where it goes."""

    rule: str
    removed: int
    saliencies: tuple[float, ...]
    point: tuple[float, ...]
    predicted_delta_loss: float
    actual_delta_loss: float

    @property
    def label(self) -> str:
        return RULE_LABELS[self.rule]

    @property
    def removed_name(self) -> str:
        """The removed weight as written in the text: ``"w1"``, ``"w2"``, ..."""
        return f"w{self.removed + 1}"


@dataclass(frozen=True)
class QuadraticComparison:
    """Magnitude, OBD and OBS on one quadratic, and the best possible single removal."""

    quadratic: Quadratic
    magnitude: RuleResult
    obd: RuleResult
    obs: RuleResult
    best: int
    best_costs: tuple[float, ...]

    @property
    def rules(self) -> tuple[RuleResult, RuleResult, RuleResult]:
        return (self.magnitude, self.obd, self.obs)

    @property
    def best_delta_loss(self) -> float:
        return self.best_costs[self.best]

    def picks_wrong_weight(self, rule: str) -> bool:
        """``rule``'s weight costs more than the best one, both followed by the optimal update.

        Ties (equal costs up to rounding) are not wrong.
        """
        removed = {r.rule: r.removed for r in self.rules}[rule]
        return self.best_costs[removed] > self.best_delta_loss * (1 + 1e-9) + 1e-300

    @property
    def obd_picks_wrong_weight(self) -> bool:
        """OBD removes a costlier weight than the best one (never with two weights)."""
        return self.picks_wrong_weight("obd")

    @property
    def magnitude_picks_wrong_weight(self) -> bool:
        return self.picks_wrong_weight("magnitude")

    def table(self) -> pd.DataFrame:
        """One row per rule: removed weight, saliency of each weight, predicted and actual δL."""
        rows = []
        for r in self.rules:
            row = {"rule": r.label, "removes": r.removed_name}
            row.update({f"saliency_w{i + 1}": s for i, s in enumerate(r.saliencies)})
            row["predicted_delta_loss"] = r.predicted_delta_loss
            row["actual_delta_loss"] = r.actual_delta_loss
            row["wrong_weight"] = self.picks_wrong_weight(r.rule)
            rows.append(row)
        return pd.DataFrame(rows)


def _pick(saliencies: np.ndarray) -> int:
    """The weight of least saliency; ties go to the lower index."""
    return int(np.argmin(saliencies))


def _without_update(quadratic: Quadratic, rule: str, saliencies: np.ndarray) -> RuleResult:
    q = _pick(saliencies)
    point = quadratic.optimum.copy()
    point[q] = 0.0
    return RuleResult(
        rule=rule,
        removed=q,
        saliencies=tuple(float(s) for s in saliencies),
        point=tuple(float(p) for p in point),
        predicted_delta_loss=float(saliencies[q]),
        actual_delta_loss=quadratic.loss(point),
    )


def _constrained_costs(quadratic: Quadratic) -> np.ndarray:
    """min L on w_q = 0 for each q, from the reduced problem on the other weights (no H⁻¹).

    With δ = w − w*, δ_q = −w*_q and the free weights F solving H_FF δ_F = −H_Fq δ_q, the
    cost is ½ w_q² (H_qq − H_qF H_FF⁻¹ H_Fq), the Schur complement of H_FF.
    """
    h, w = quadratic.hessian, quadratic.optimum
    costs = np.empty(quadratic.dim)
    for q in range(quadratic.dim):
        free = np.arange(quadratic.dim) != q
        schur = h[q, q] - h[q, free] @ np.linalg.solve(h[np.ix_(free, free)], h[free, q])
        costs[q] = 0.5 * w[q] ** 2 * schur
    return costs


def compare_rules(quadratic: Quadratic) -> QuadraticComparison:
    """Which weight magnitude, OBD and OBS remove, where they move and what it costs."""
    if not isinstance(quadratic, Quadratic):
        raise TypeError(
            f"compare_rules needs a Quadratic, got {type(quadratic).__name__}; "
            "build one with Quadratic.two_weight(h11, h22, c, w1, w2)"
        )
    w, h = quadratic.optimum, quadratic.hessian
    magnitude = _without_update(quadratic, "magnitude", 0.5 * w**2)
    obd = _without_update(quadratic, "obd", 0.5 * np.diag(h) * w**2)

    inverse = np.linalg.inv(h)
    inverse_diag = np.diag(inverse)
    obs_saliency = w**2 / (2.0 * inverse_diag)
    q = _pick(obs_saliency)
    point = w - (w[q] / inverse_diag[q]) * inverse[:, q]
    point[q] = 0.0  # exactly on the constraint (it is, up to rounding)
    obs = RuleResult(
        rule="obs",
        removed=q,
        saliencies=tuple(float(s) for s in obs_saliency),
        point=tuple(float(p) for p in point),
        predicted_delta_loss=float(obs_saliency[q]),
        actual_delta_loss=quadratic.loss(point),
    )
    costs = _constrained_costs(quadratic)
    return QuadraticComparison(
        quadratic=quadratic,
        magnitude=magnitude,
        obd=obd,
        obs=obs,
        best=_pick(costs),
        best_costs=tuple(float(x) for x in costs),
    )


def teaching_example() -> dict[str, float]:
    """The teacher's starting point: keyword arguments of :meth:`Quadratic.two_weight`.

    w2 is the smaller weight but sits in a steep direction, so magnitude pruning removes the
    wrong weight (δL 2.56 instead of 0.41); OBD and OBS both remove w1, and the strong
    correlation (c = 0.8) makes the OBS update of w2 worth almost two thirds of OBD's δL.
    """
    return {"h11": 1.0, "h22": 8.0, "c": 0.8, "w1": 1.5, "w2": 0.8}


def obd_wrong_weight_example() -> Quadratic:
    """Three weights where OBD removes the wrong one.

    w1 and w2 are strongly correlated (c = 0.95), w3 is independent of both. OBD's saliencies
    ½ H_qq w_q² = (0.5, 1.125, 0.32) make it remove w3 for δL 0.32, whereas removing w1 and
    moving w2 to compensate costs only w1² H_11 (1 − c²) / 2 ≈ 0.049, OBS's choice.
    """
    hessian = np.array([[1.0, 0.95, 0.0], [0.95, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return Quadratic(np.array([1.0, 1.5, 0.8]), hessian)
