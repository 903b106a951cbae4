"""Scalers: exact merges of counts, moments and extrema."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler
from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature

from jobs.aggregate import weighted_mean
from jobs.merge.base import State, _count_merge, _ExplicitStateRule, _f64, _moments_merge, _require_same, register_merge


def _scalar_or_array(n: np.ndarray, like: Any) -> Any:
    """Counts back in scikit-learn's form: a scalar when equal for every feature."""
    n = np.asarray(n)
    integral = np.asarray(like).dtype.kind in "iu" or isinstance(like, (int, np.integer))
    if n.ndim and n.size and np.all(n == n.flat[0]):
        n = n.flat[0]
    if np.ndim(n) == 0:
        return int(round(float(n))) if integral else float(n)
    return n.astype(np.int64) if integral else n


@register_merge(StandardScaler)
class StandardScalerRule(_ExplicitStateRule):
    """StandardScaler: exact merge of counts, means and variances (Chan et al.).

    ``scale_`` is recomputed from ``var_`` by ``set_state`` with scikit-learn's
    own near-constant-feature rule.
    """

    family = "scalers"
    fields = ("n_samples_seen_", "mean_", "var_", "n_features_in_")

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        n_features = _require_same(states, "n_features_in_")
        has_mean = "mean_" in states[0]
        has_var = "var_" in states[0]

        def moments(s: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            n = np.broadcast_to(_f64(s["n_samples_seen_"]), (n_features,))
            mean = _f64(s["mean_"]) if has_mean else np.zeros(n_features)
            var = _f64(s["var_"]) if has_var else np.zeros(n_features)
            return n, mean, var * n

        parts = [moments(s) for s in states]
        prev = None if previous is None else moments(previous)
        n, mean, ssd = _moments_merge(parts, prev)
        merged: State = {
            "n_samples_seen_": _scalar_or_array(n, states[0]["n_samples_seen_"]),
            "n_features_in_": n_features,
        }
        if has_mean:
            merged["mean_"] = mean
        if has_var:
            merged["var_"] = ssd / np.where(n > 0, n, 1.0)
        return merged

    def finish(self, estimator: Any) -> None:
        # partial_fit needs numpy counts (it asks for their shape), the wire gives Python ones
        n = estimator.n_samples_seen_
        if not isinstance(n, np.ndarray):
            estimator.n_samples_seen_ = np.int64(n) if float(n).is_integer() and not isinstance(n, float) else np.float64(n)
        if not estimator.with_mean and not estimator.with_std:
            estimator.mean_ = None
            estimator.var_ = None
        elif not estimator.with_std:
            estimator.var_ = None
        if estimator.with_std:
            constant = _is_constant_feature(estimator.var_, estimator.mean_, estimator.n_samples_seen_)
            estimator.scale_ = _handle_zeros_in_scale(np.sqrt(estimator.var_), copy=False, constant_mask=constant)
        else:
            estimator.scale_ = None


@register_merge(MaxAbsScaler)
class MaxAbsScalerRule(_ExplicitStateRule):
    """MaxAbsScaler: exact (maximum of maxima, summed counts)."""

    family = "scalers"
    fields = ("max_abs_", "n_samples_seen_", "n_features_in_")

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        prev = previous or {}
        maxima = np.maximum.reduce([_f64(s["max_abs_"]) for s in states])
        return {
            "max_abs_": maxima.astype(np.asarray(states[0]["max_abs_"]).dtype),
            "n_samples_seen_": int(_count_merge([s["n_samples_seen_"] for s in states], prev.get("n_samples_seen_"))),
            "n_features_in_": _require_same(states, "n_features_in_"),
        }

    def finish(self, estimator: Any) -> None:
        estimator.scale_ = _handle_zeros_in_scale(estimator.max_abs_, copy=True)


@register_merge(MinMaxScaler)
class MinMaxScalerRule(_ExplicitStateRule):
    """MinMaxScaler: exact (minimum of minima, maximum of maxima, summed counts).

    ``data_range_``, ``scale_`` and ``min_`` are recomputed by ``set_state``
    with the estimator's ``feature_range``, as ``partial_fit`` computes them.
    """

    family = "scalers"
    fields = ("data_min_", "data_max_", "n_samples_seen_", "n_features_in_")

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        prev = previous or {}
        dtype = np.asarray(states[0]["data_min_"]).dtype
        return {
            "data_min_": np.minimum.reduce([np.asarray(s["data_min_"]) for s in states]).astype(dtype),
            "data_max_": np.maximum.reduce([np.asarray(s["data_max_"]) for s in states]).astype(dtype),
            "n_samples_seen_": int(_count_merge([s["n_samples_seen_"] for s in states], prev.get("n_samples_seen_"))),
            "n_features_in_": _require_same(states, "n_features_in_"),
        }

    def finish(self, estimator: Any) -> None:
        dtype = estimator.data_min_.dtype
        low = np.asarray(estimator.feature_range[0], dtype=dtype)
        high = np.asarray(estimator.feature_range[1], dtype=dtype)
        estimator.data_range_ = estimator.data_max_ - estimator.data_min_
        estimator.scale_ = (high - low) / _handle_zeros_in_scale(estimator.data_range_, copy=True)
        estimator.min_ = low - estimator.data_min_ * estimator.scale_
