"""Losses: the negative gradient in the scores, the loss sum and hits, and a model's evaluation.

:func:`_neg_grad` runs once per minibatch in :func:`jobs.sgd.kernel.run_epochs`;
:func:`evaluate` scores a model on held-out rows with the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from jobs.sgd.data import Targets
from jobs.sgd.params import SGDConfig

#: curvature bound of each loss (max second derivative in the score), used to
#: size the default step as 1 / (curvature * data Lipschitz constant)
_CURVATURE = {
    "log_loss": 0.25,
    "multinomial": 0.5,
    "hinge": 1.0,  # not smooth; the same scale as squared error works well
    "modified_huber": 2.0,
    "squared_error": 1.0,
    "huber": 1.0,
}


def _neg_grad(cfg: SGDConfig, kind: str, Z: np.ndarray, T: np.ndarray,
              w: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """Negative gradient ``-dloss/dz`` of the (weighted) losses in the scores ``Z``.

    ``Z`` is a scratch array that may be overwritten. Returns
    ``(NG, loss_sum, hits)``: ``hits`` counts correct predictions for
    classifiers (weighted) and is the (weighted) sum of squared residuals for
    regressors. Written with as few numpy calls as possible: this runs once
    per minibatch.
    """
    loss = cfg.loss
    if kind == "regression":
        r = np.subtract(T, Z, out=Z)  # r = y - z = -dloss/dz for squared error
        if loss == "squared_error":
            if w is None:
                sq = float(np.dot(r, r))
                return r, 0.5 * sq, sq
            sq = float(np.dot(w * r, r))
            return np.multiply(r, w, out=r), 0.5 * sq, sq
        eps = cfg.epsilon
        a = np.abs(r)
        losses = np.where(a <= eps, 0.5 * r * r, eps * a - 0.5 * eps * eps)
        sq = float(np.dot(r, r) if w is None else np.dot(w * r, r))
        NG = np.clip(r, -eps, eps, out=r)
        if w is None:
            return NG, float(losses.sum()), sq
        return np.multiply(NG, w, out=NG), float(np.dot(w, losses)), sq
    if kind == "multinomial":
        n = Z.shape[0]
        rows = np.arange(n)
        hit_mask = Z.argmax(axis=1) == T
        Z -= Z.max(axis=1, keepdims=True)
        zy = Z[rows, T]
        P = np.exp(Z, out=Z)
        norm = P.sum(axis=1)
        losses = np.log(norm) - zy
        P /= -norm[:, None]  # P = -softmax
        P[rows, T] += 1.0  # NG = onehot - softmax
        if w is None:
            return P, float(losses.sum()), float(np.count_nonzero(hit_mask))
        P *= w[:, None]
        return P, float(np.dot(w, losses)), float(np.dot(w, hit_mask))
    if kind == "ovr":
        n, K = Z.shape
        hit_mask = Z.argmax(axis=1) == T
        Y = np.full((n, K), -1.0, dtype=Z.dtype)
        Y[np.arange(n), T] = 1.0
        NG, losses = _binary_neg_grad(cfg, Z, Y)
        losses = losses.sum(axis=1)
        if w is None:
            return NG, float(losses.sum()), float(np.count_nonzero(hit_mask))
        NG *= w[:, None]
        return NG, float(np.dot(w, losses)), float(np.dot(w, hit_mask))
    # binary, T in {-1, +1}
    NG, losses = _binary_neg_grad(cfg, Z, T)
    hits_mask = losses < (0.6931471805599453 if loss == "log_loss" else 1.0)  # margin > 0
    if w is None:
        return NG, float(losses.sum()), float(np.count_nonzero(hits_mask))
    NG *= w
    return NG, float(np.dot(w, losses)), float(np.dot(w, hits_mask))


def _binary_neg_grad(cfg: SGDConfig, Z: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(-dloss/dz, loss)`` of the binary losses with labels ``Y`` in {-1, +1}; overwrites ``Z``."""
    m = np.multiply(Z, Y, out=Z)  # margins
    loss = cfg.loss
    if loss == "log_loss":
        np.negative(m, out=m)
        losses = np.logaddexp(0.0, m)
        NG = expit(m, out=m)
        NG *= Y
    elif loss == "hinge":
        losses = np.maximum(0.0, 1.0 - m)
        NG = np.multiply(losses > 0.0, Y, dtype=Z.dtype)
    else:  # modified_huber
        one_minus = 1.0 - m
        losses = np.where(m >= 1.0, 0.0, np.where(m >= -1.0, one_minus * one_minus, -4.0 * m))
        NG = np.where(m >= 1.0, 0.0, np.where(m >= -1.0, 2.0 * one_minus, 4.0)).astype(Z.dtype, copy=False)
        NG *= Y
    return NG, losses


# --------------------------------------------------------------------------------------
# prediction helpers (shared with the facades)
# --------------------------------------------------------------------------------------
def decision_scores(coef: np.ndarray, intercept: np.ndarray, X: Any) -> np.ndarray:
    """``X @ coef.T + intercept`` as an (n, K) array."""
    Z = X @ np.asarray(coef).T
    Z = np.asarray(Z)
    return Z + np.asarray(intercept)


def evaluate(cfg: SGDConfig, coef: np.ndarray, intercept: np.ndarray, X: Any,
             targets: Targets, w: np.ndarray | None) -> dict[str, float]:
    """Mean loss and score (accuracy or R^2) of a model on a block of rows."""
    if X.shape[0] == 0:
        return {"loss": 0.0, "score": 0.0, "samples": 0.0}
    Z = decision_scores(coef, intercept, X).astype(np.float64)
    T = targets.values
    if targets.kind in ("binary", "regression"):
        Z = Z[:, 0]
        T = T.astype(np.float64)
    _, loss_sum, hits = _neg_grad(cfg, targets.kind, Z, T, None if w is None else w.astype(np.float64))
    weight = float(X.shape[0] if w is None else w.sum()) or 1.0
    if targets.kind == "regression":
        mean = np.average(T, weights=w) if w is not None and w.sum() > 0 else T.mean()
        ss_tot = float(np.sum((T - mean) ** 2) if w is None else np.dot(w, (T - mean) ** 2))
        score = 1.0 - hits / ss_tot if ss_tot > 0 else 0.0
    else:
        score = hits / weight
    return {"loss": loss_sum / weight, "score": float(score), "samples": float(X.shape[0])}
