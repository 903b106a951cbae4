"""MiniBatchKMeans: count-weighted centres."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

from jobs.aggregate import weighted_mean
from jobs.merge.base import State, _count_merge, _ExplicitStateRule, _f64, _pick, _require_same, register_merge


@register_merge(MiniBatchKMeans)
class MiniBatchKMeansRule(_ExplicitStateRule):
    """MiniBatchKMeans: count-weighted mean of the centres.

    Centre ``k`` of partition ``i`` is the running mean of the points assigned
    to it, weighted by ``_counts``; the merge combines these running means
    exactly: ``sum_i(counts_i * c_i) - (m - 1) * counts_prev * c_prev`` over
    the summed counts. On the first round, when every partition initialised
    its own centres, each partition's centres are first matched to the first
    partition's (Hungarian assignment on squared distances), so that averaged
    centres describe the same cluster. The generator state of
    ``_random_state`` travels with the state, so sequential mode equals a
    serial ``partial_fit`` chain; ``labels_`` (of the last batch only) does
    not travel.
    """

    family = "clustering"
    fields = (
        "cluster_centers_", "_counts", "_n_since_last_reassign", "n_steps_", "inertia_",
        "n_features_in_", "_n_features_out", "_batch_size", "_init_size", "_tol", "_n_init",
    )

    def get_state(self, estimator: Any) -> State:
        state = _pick(estimator, self.fields)
        rs = getattr(estimator, "_random_state", None)
        if isinstance(rs, np.random.RandomState):
            name, keys, pos, has_gauss, cached = rs.get_state(legacy=True)
            state.update({"rng_keys": keys, "rng_pos": int(pos), "rng_has_gauss": int(has_gauss),
                          "rng_gauss": float(cached)})
        return state

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        state = dict(state)
        rng = {k: state.pop(k) for k in ("rng_keys", "rng_pos", "rng_has_gauss", "rng_gauss") if k in state}
        super().set_state(estimator, state)
        estimator._n_threads = _openmp_effective_n_threads()  # a property of this machine
        if len(rng) == 4:
            rs = np.random.RandomState()
            rs.set_state(("MT19937", np.asarray(rng["rng_keys"], dtype=np.uint32), int(rng["rng_pos"]),
                          int(rng["rng_has_gauss"]), float(rng["rng_gauss"])))
            estimator._random_state = rs
        return estimator

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        n_features = _require_same(states, "n_features_in_")
        centres = [_f64(s["cluster_centers_"]) for s in states]
        counts = [_f64(s["_counts"]) for s in states]
        if previous is None:
            ref = centres[0]
            for i in range(1, len(states)):
                order = _match_centres(ref, centres[i])
                centres[i], counts[i] = centres[i][order], counts[i][order]
            sums = sum(c[:, None] * x for c, x in zip(counts, centres))
            total = sum(counts)
        else:
            c_prev = _f64(previous["_counts"])
            x_prev = _f64(previous["cluster_centers_"])
            sums = c_prev[:, None] * x_prev
            total = c_prev.copy()
            for c, x in zip(counts, centres):
                sums = sums + (c[:, None] * x - c_prev[:, None] * x_prev)
                total = total + (c - c_prev)
        fallback = centres[-1] if previous is None else _f64(previous["cluster_centers_"])
        merged_centres = np.where(total[:, None] > 0, sums / np.where(total > 0, total, 1.0)[:, None], fallback)
        dtype = np.asarray(states[0]["cluster_centers_"]).dtype
        prev = previous or {}
        last = states[-1]
        merged: State = {
            "cluster_centers_": merged_centres.astype(dtype),
            "_counts": np.asarray(total, dtype=np.asarray(states[0]["_counts"]).dtype),
            "_n_since_last_reassign": int(max(int(s["_n_since_last_reassign"]) for s in states)),
            "n_steps_": int(_count_merge([s["n_steps_"] for s in states], prev.get("n_steps_"))),
            "inertia_": float(sum(float(s.get("inertia_", 0.0)) for s in states)),
            "n_features_in_": n_features,
        }
        for key in ("_n_features_out", "_batch_size", "_init_size", "_tol", "_n_init"):
            if key in states[0]:
                merged[key] = (previous or states[0])[key] if key in (previous or states[0]) else states[0][key]
        for key in ("rng_keys", "rng_pos", "rng_has_gauss", "rng_gauss"):
            if key in last:
                merged[key] = last[key]
        if "inertia_" not in states[0]:
            merged.pop("inertia_")
        return merged


def _match_centres(reference: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Order of ``centres`` that best matches ``reference`` (min total squared distance)."""
    cost = ((reference[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(reference), dtype=np.intp)
    order[rows] = cols
    return order
