"""Calibration of the ensemble mean, per stage, on the calibration split: temperature scaling (default) or isotonic regression.

A stage's map is kept only where it lowers the expected calibration error on held-out rows
(:func:`calibration_helps`); otherwise that stage keeps the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

CalibrationMethod = Literal["temperature", "isotonic", "none"]


_P_CLIP = 1e-6  # probabilities are kept in [clip, 1 − clip] before taking logits


@dataclass(frozen=True)
class StageCalibration:
    """A monotone map from raw ensemble mean to calibrated probability, for one stage."""

    method: Literal["temperature", "isotonic", "identity"]  # identity: too few labels to fit
    temperature: float = 1.0  # p ↦ σ(logit(p) / T); T > 1 softens over-confident predictions
    knots_x: tuple[float, ...] = ()  # isotonic: raw-probability knots, increasing
    knots_y: tuple[float, ...] = ()  # isotonic: calibrated probability at each knot

    def apply(self, p: np.ndarray) -> np.ndarray:
        """(N,) raw probabilities → (N,) calibrated probabilities."""
        if self.method == "temperature":
            q = np.clip(p, _P_CLIP, 1 - _P_CLIP)
            return np.asarray(expit(logit(q) / self.temperature), dtype=p.dtype)
        if self.method == "isotonic":
            return np.interp(p, self.knots_x, self.knots_y).astype(p.dtype)
        return p


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The T in [e^-3, e^3] minimising the BCE of σ(logit(p) / T) against ``y`` (N,)."""
    z = logit(np.clip(p.astype(np.float64), _P_CLIP, 1 - _P_CLIP))
    y = y.astype(np.float64)

    def nll(log_t: float) -> float:
        zt = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y * zt))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def fit_stage_calibration(
    p: np.ndarray, y: np.ndarray, method: CalibrationMethod
) -> StageCalibration:
    """Fit ``method`` on raw probabilities ``p`` (N,) and labels ``y`` (N,), if it helps.

    Identity when ``method`` is "none", when the labels hold one class only (nothing to learn;
    the final stage is always accepted in its own right), or when the map does not lower the
    expected calibration error on held-out rows (:func:`calibration_helps`).
    """
    if method == "none" or len(np.unique(y)) < 2:
        return StageCalibration("identity")
    if not calibration_helps(p, y, method):
        return StageCalibration("identity")
    return _fit_map(p, y, method)


def calibration_helps(p: np.ndarray, y: np.ndarray, method: CalibrationMethod) -> bool:
    """Whether ``method`` lowers ECE on rows it was not fitted on: two-fold cross-fitting over
    the calibration rows (a fixed alternate split of the rows sorted by p), mean ECE of the
    fitted maps vs of the raw probabilities on the same held-out halves."""
    from asd_core.learning.assessment import ece  # a lazy import: calibration reads predictors

    order = np.argsort(p, kind="stable")
    halves = (order[0::2], order[1::2])
    if min(len(h) for h in halves) < 2:
        return False
    fitted, raw = [], []
    for fit_on, test_on in (halves, halves[::-1]):
        if len(np.unique(y[fit_on])) < 2:
            return False
        mapped = _fit_map(p[fit_on], y[fit_on], method).apply(p[test_on])
        fitted.append(ece(y[test_on], mapped))
        raw.append(ece(y[test_on], p[test_on]))
    return float(np.mean(fitted)) < float(np.mean(raw))


def _fit_map(p: np.ndarray, y: np.ndarray, method: CalibrationMethod) -> StageCalibration:
    if method == "temperature":
        return StageCalibration("temperature", temperature=fit_temperature(p, y))
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return StageCalibration(
        "isotonic",
        knots_x=tuple(float(v) for v in iso.X_thresholds_),
        knots_y=tuple(float(v) for v in iso.y_thresholds_),
    )


@dataclass(frozen=True)
class Calibration:
    """One :class:`StageCalibration` per stage head."""

    stages: tuple[StageCalibration, ...]

    def apply(self, p: np.ndarray, stages: np.ndarray) -> np.ndarray:
        """(N,) raw probabilities of rows on heads ``stages`` (N,) → calibrated (N,)."""
        if len(p) == 1:  # the online case: skip the grouping
            return self.stages[int(stages[0])].apply(p)
        out = p.copy()
        for k in np.unique(stages):
            rows = stages == k
            out[rows] = self.stages[int(k)].apply(p[rows])
        return out

    @classmethod
    def fit(
        cls,
        p: np.ndarray,
        y: np.ndarray,
        stages: np.ndarray,
        n_heads: int,
        method: CalibrationMethod,
    ) -> Calibration:
        """Fit each head's map on its own calibration rows."""
        return cls(
            tuple(
                fit_stage_calibration(p[stages == k], y[stages == k], method)
                for k in range(n_heads)
            )
        )

    @classmethod
    def identity(cls, n_heads: int) -> Calibration:
        return cls(tuple(StageCalibration("identity") for _ in range(n_heads)))
