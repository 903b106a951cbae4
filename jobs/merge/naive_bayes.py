"""Naive Bayes: exact merges of counts, means and variances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.naive_bayes import BernoulliNB, CategoricalNB, ComplementNB, GaussianNB, MultinomialNB

from jobs.aggregate import weighted_mean
from jobs.merge.base import (
    State,
    _count_merge,
    _ExplicitStateRule,
    _f64,
    _moments_add,
    _moments_merge,
    _moments_remove,
    _pick,
    _require_same,
    register_merge,
)


@register_merge(MultinomialNB, BernoulliNB, ComplementNB)
class DiscreteNBRule(_ExplicitStateRule):
    """Multinomial, Bernoulli and Complement NB: exact sum of class and feature counts.

    The state is the counts (``class_count_``, ``feature_count_``) plus the
    labels; ``set_state`` recomputes ``feature_log_prob_``, ``class_log_prior_``
    (and ComplementNB's ``feature_all_``) with the estimator's own smoothing
    code and parameters, so a merged model equals one serial fit.
    """

    family = "naive Bayes"
    fields = ("class_count_", "feature_count_", "classes_", "n_features_in_")

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        _require_same(states, "classes_")
        prev = previous or {}
        return {
            "class_count_": _count_merge([s["class_count_"] for s in states], prev.get("class_count_")),
            "feature_count_": _count_merge([s["feature_count_"] for s in states], prev.get("feature_count_")),
            "classes_": states[0]["classes_"],
            "n_features_in_": _require_same(states, "n_features_in_"),
        }

    def finish(self, estimator: Any) -> None:
        if isinstance(estimator, ComplementNB):
            estimator.feature_all_ = estimator.feature_count_.sum(axis=0)
        estimator._update_feature_log_prob(estimator._check_alpha())
        estimator._update_class_log_prior(class_prior=estimator.class_prior)


@register_merge(CategoricalNB)
class CategoricalNBRule(_ExplicitStateRule):
    """CategoricalNB: exact sum of per-feature category counts.

    ``category_count_`` (a list of (n_classes, n_categories_j) arrays) travels
    as flat fields ``category_count_0``, ``category_count_1``, ...; partitions
    that saw fewer categories are zero-padded before summing. Their widths can
    differ between partitions unless ``min_categories`` is set, so these
    fields are listed in :attr:`variable_shape`. ``n_categories_`` is taken
    from the last partition, as in a serial ``partial_fit`` chain.
    """

    family = "naive Bayes"
    fields = ("class_count_", "classes_", "n_features_in_", "n_categories_")

    def get_state(self, estimator: Any) -> State:
        state = _pick(estimator, self.fields)
        for j, counts in enumerate(getattr(estimator, "category_count_", [])):
            state[f"category_count_{j}"] = counts
        return state

    @property
    def variable_shape(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"category_count_*", "n_categories_"})

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        state = dict(state)
        n_features = int(state["n_features_in_"])
        estimator.category_count_ = [
            np.array(state.pop(f"category_count_{j}"), dtype=np.float64) for j in range(n_features)
        ]
        return super().set_state(estimator, state)

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        _require_same(states, "classes_")
        n_features = int(_require_same(states, "n_features_in_"))
        prev = previous or {}
        merged: State = {
            "class_count_": _count_merge([s["class_count_"] for s in states], prev.get("class_count_")),
            "classes_": states[0]["classes_"],
            "n_features_in_": n_features,
            "n_categories_": states[-1]["n_categories_"],
        }
        for j in range(n_features):
            key = f"category_count_{j}"
            arrays = [_f64(s[key]) for s in states]
            base = None if key not in prev else _f64(prev[key])
            width = max(a.shape[1] for a in arrays + ([base] if base is not None else []))
            pad = lambda a: np.pad(a, [(0, 0), (0, width - a.shape[1])])  # noqa: E731
            merged[key] = _count_merge([pad(a) for a in arrays], None if base is None else pad(base))
        return merged

    def finish(self, estimator: Any) -> None:
        estimator._update_feature_log_prob(estimator._check_alpha())
        estimator._update_class_log_prior(class_prior=estimator.class_prior)


@register_merge(GaussianNB)
class GaussianNBRule(_ExplicitStateRule):
    """GaussianNB: exact merge of per-class counts, means and variances (Chan et al.).

    The merged model equals ``GaussianNB().fit`` on all the partitions' rows:
    each state's own smoothing ``epsilon_`` is removed from ``var_``, the raw
    per-class moments are combined in partition order, and ``epsilon_`` is
    recomputed as ``var_smoothing * max(per-feature variance of all rows)``,
    that variance coming exactly from the class moments (law of total
    variance). Two extra fields make this work at any level of a
    hierarchical (partition, region, home) merge: ``var_smoothing_`` and
    ``carried_epsilon_`` — ``partial_fit`` removes the *new* batch's epsilon
    from the variances it continues from, so a node's state carries the
    previous state with variances off by (previous epsilon - new epsilon).
    Sequential mode keeps scikit-learn's ``partial_fit`` chain as it is.
    """

    family = "naive Bayes"
    fields = ("theta_", "var_", "class_count_", "class_prior_", "epsilon_", "classes_", "n_features_in_")

    def get_state(self, estimator: Any) -> State:
        state = super().get_state(estimator)
        # GaussianNB.partial_fit removes the *new* batch's epsilon from the variances
        # it continues from, so the loaded state lives on inside this one with its
        # variances off by (loaded epsilon - new epsilon): record that offset
        loaded = getattr(estimator, "_grid_loaded_epsilon", None)
        state["carried_epsilon_"] = 0.0 if loaded is None else float(loaded) - float(estimator.epsilon_)
        state["var_smoothing_"] = float(estimator.var_smoothing)  # lets the merge recompute epsilon_
        return state

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        state = dict(state)
        state.pop("carried_epsilon_", None)
        state.pop("var_smoothing_", None)
        super().set_state(estimator, state)
        estimator._grid_loaded_epsilon = float(estimator.epsilon_)
        return estimator

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        _require_same(states, "classes_")

        def moments(s: State, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            n = _f64(s["class_count_"])[:, None]
            return n, _f64(s["theta_"]), (_f64(s["var_"]) - eps) * n

        # each state's own rows: remove the previous state as it lives on inside it
        owns = []
        for s in states:
            mine = moments(s, float(s["epsilon_"]))
            if previous is not None:
                inside = moments(previous, float(previous["epsilon_"]) - float(s.get("carried_epsilon_", 0.0)))
                mine = _moments_remove(*mine, *inside)
            owns.append(mine)
        if previous is None:
            n, mean, ssd = _moments_merge(owns, None)
        else:
            n, mean, ssd = _moments_merge([moments(previous, float(previous["epsilon_"])), *owns], None)
        counts = n[:, 0]
        var = ssd / np.where(n > 0, n, 1.0)
        smoothing = float(_require_same(states, "var_smoothing_"))
        eps = smoothing * _max_total_variance(n, mean, ssd)
        first = states[0]
        empirical = np.allclose(
            _f64(first["class_prior_"]), _f64(first["class_count_"]) / max(_f64(first["class_count_"]).sum(), 1e-300)
        )
        total = counts.sum()
        prior = counts / total if empirical and total > 0 else _f64(first["class_prior_"])
        return {
            "theta_": mean,
            "var_": var + eps,
            "class_count_": counts,
            "class_prior_": prior,
            "epsilon_": eps,
            "classes_": first["classes_"],
            "n_features_in_": _require_same(states, "n_features_in_"),
            "carried_epsilon_": 0.0,
            "var_smoothing_": smoothing,
        }


def _max_total_variance(n: np.ndarray, mean: np.ndarray, ssd: np.ndarray) -> float:
    """Largest per-feature variance of all rows, from per-class (count, mean, ssd)."""
    acc = (n[0], mean[0], ssd[0])
    for c in range(1, n.shape[0]):
        acc = _moments_add(*acc, n[c], mean[c], ssd[c])
    total_n, _, total_ssd = acc
    if float(np.max(total_n)) <= 0:
        return 0.0
    return float(np.max(total_ssd / np.where(total_n > 0, total_n, 1.0)))
