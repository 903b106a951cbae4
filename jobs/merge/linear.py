"""Linear models of scikit-learn: sample-weighted mean of ``coef_``, ``intercept_`` and the SGD counters."""

from __future__ import annotations

from sklearn.linear_model import (
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
    Perceptron,
    SGDClassifier,
    SGDOneClassSVM,
    SGDRegressor,
)

from jobs.merge.base import MergeRule, register_merge


@register_merge(
    SGDClassifier,
    SGDRegressor,
    SGDOneClassSVM,
    Perceptron,
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
)
class LinearRule(MergeRule):
    """Linear models: weighted mean of ``coef_``, ``intercept_`` and ``t_``.

    ``n_iter_`` is an integer that every partition sets to the same value; the
    labels ``classes_`` and the feature count must agree across partitions.
    """

    family = "linear models"
