"""Aggregation of partition updates: pure, typed, deterministic functions.

Every function takes the updates of one array name as a sequence ordered by
partition index (the caller fixes that order, never arrival order) and the
sample weights in the same order, and returns one array. Summation runs in
that fixed order, so the result is the same bit for bit however many nodes
produced the updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Aggregator = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Sample-weighted mean, summed in the given order.

    Parameters
    ----------
    values : sequence of ndarray
        One array per partition, all of one shape.
    weights : sequence of float
        Non-negative weights (sample counts), not all zero.
    """
    w = _check(values, weights)
    total = float(sum(w))
    acc = np.zeros_like(np.asarray(values[0], dtype=np.float64))
    for value, weight in zip(values, w):
        acc += (weight / total) * np.asarray(value, dtype=np.float64)
    return acc


def median(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Coordinate-wise median (weights only validated: each update is one vote)."""
    _check(values, weights)
    return np.median(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)


def trimmed_mean(
    values: Sequence[np.ndarray], weights: Sequence[float], trim: float = 0.2
) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim`` share of highest and lowest values."""
    _check(values, weights)
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    stacked = np.sort(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)
    k = int(np.floor(trim * len(values)))
    kept = stacked[k : len(values) - k] if k else stacked
    return kept.mean(axis=0)


AGGREGATORS: dict[str, Aggregator] = {
    "mean": weighted_mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
}


def get_aggregator(name: str) -> Aggregator:
    """Look up an aggregator by name, with an error that lists the choices."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(
            f"aggregate={name!r} is not known; choose one of {sorted(AGGREGATORS)}"
        ) from None


def _check(values: Sequence[np.ndarray], weights: Sequence[float]) -> list[float]:
    if len(values) == 0:
        raise ValueError("cannot aggregate zero updates")
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} updates but {len(weights)} weights")
    w = [float(x) for x in weights]
    if any(x < 0 or not np.isfinite(x) for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {w}")
    shape = np.shape(values[0])
    for v in values[1:]:
        if np.shape(v) != shape:
            raise ValueError(f"updates have different shapes: {shape} and {np.shape(v)}")
    return w
