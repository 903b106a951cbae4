"""IncrementalPCA: merge of scatter matrices (exact for a full-rank model)."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import IncrementalPCA
from sklearn.utils.extmath import svd_flip

from jobs.aggregate import weighted_mean
from jobs.merge.base import State, _ExplicitStateRule, _f64, _moments_merge, _require_same, register_merge


@register_merge(IncrementalPCA)
class IncrementalPCARule(_ExplicitStateRule):
    """IncrementalPCA: merge of the centred scatter matrices, then one eigendecomposition.

    A state describes its rows' scatter as ``V.T @ diag(S**2) @ V`` (its
    ``n_components_`` kept components) around ``mean_``. The merge adds the
    partitions' scatter about a common origin (counting ``previous`` once),
    removes the merged mean and takes the top ``n_components_`` eigenpairs.
    ``mean_``, ``var_``, ``n_samples_seen_`` and ``explained_variance_ratio_``
    are exact. The components are exact when ``n_components_`` equals the
    number of features (or the data has at most that rank); otherwise each
    partition's discarded variance is lost, the same kind of truncation
    error a serial ``IncrementalPCA`` makes batch by batch (measured in
    ``docs/training.md``). ``noise_variance_`` is the mean variance left
    outside the kept components, from the exact total variance.
    """

    family = "decomposition"
    fields = (
        "components_", "singular_values_", "mean_", "var_", "n_samples_seen_", "explained_variance_",
        "explained_variance_ratio_", "noise_variance_", "n_components_", "n_features_in_",
    )

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        n_features = int(_require_same(states, "n_features_in_"))
        k = int(_require_same(states, "n_components_"))
        origin = _f64((previous or states[0])["mean_"])

        def raw(s: State) -> tuple[float, np.ndarray]:
            V = _f64(s["components_"])
            S = _f64(s["singular_values_"])
            n = float(s["n_samples_seen_"])
            shift = _f64(s["mean_"]) - origin
            return n, (V.T * S**2) @ V + n * np.outer(shift, shift)

        parts = [raw(s) for s in states]
        if previous is None:
            n = sum(p[0] for p in parts)
            R = sum(p[1] for p in parts)
        else:
            n0, R0 = raw(previous)
            n = n0 + sum(p[0] - n0 for p in parts)
            R = R0 + sum(p[1] - R0 for p in parts)

        def moments(s: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            cnt = np.full(n_features, float(s["n_samples_seen_"]))
            return cnt, _f64(s["mean_"]), _f64(s["var_"]) * cnt

        _, mean, ssd = _moments_merge([moments(s) for s in states], None if previous is None else moments(previous))
        var = ssd / n
        shift = mean - origin
        C = R - n * np.outer(shift, shift)
        C = (C + C.T) / 2.0
        eigval, eigvec = np.linalg.eigh(C)
        order = np.argsort(eigval)[::-1]
        eigval = np.clip(eigval[order], 0.0, None)
        Vt = np.ascontiguousarray(eigvec[:, order].T)
        _, Vt = svd_flip(None, Vt, u_based_decision=False)
        S = np.sqrt(eigval)
        explained = eigval / (n - 1)
        total_var = float(np.sum(var * n))
        if k < n_features:
            noise = max(0.0, (total_var / (n - 1) - float(explained[:k].sum())) / (n_features - k))
        else:
            noise = 0.0
        dtype = np.asarray(states[0]["components_"]).dtype
        return {
            "components_": Vt[:k].astype(dtype),
            "singular_values_": S[:k].astype(dtype),
            "mean_": mean,
            "var_": var,
            "n_samples_seen_": int(round(n)),
            "explained_variance_": explained[:k].astype(dtype),
            "explained_variance_ratio_": (eigval[:k] / total_var if total_var > 0 else np.zeros(k)).astype(dtype),
            "noise_variance_": float(noise),
            "n_components_": k,
            "n_features_in_": n_features,
        }
