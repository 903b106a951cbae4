"""Merge rules: how the states of one estimator family are read, written and combined.

A *state* is a dict of named numpy arrays and numbers: everything a node needs
to continue training an estimator, and everything the scheduler needs to merge
several partition updates into one. States are plain numeric data, so they
travel in the grid's code-free wire format.

Rules live in one registry, open to users::

    from jobs.merge import MergeRule, register_merge

    @register_merge(MyEstimator)
    class MyRule(MergeRule):
        def merge(self, states, weights, aggregate):
            ...

:func:`rule_for` finds the rule of an estimator class by walking its MRO, so
a subclass inherits its parent's rule.

The protocol, the registry and the shared helpers are in
:mod:`jobs.merge.base`; each estimator family has its own module, imported
here one by one (importing a family module registers its rules):
:mod:`~jobs.merge.linear`, :mod:`~jobs.merge.sgd_job` (the grid's SGD; the
facades in ``jobs.sgd_estimators`` register it for their classes),
:mod:`~jobs.merge.naive_bayes`, :mod:`~jobs.merge.scalers`,
:mod:`~jobs.merge.kmeans`, :mod:`~jobs.merge.pca` and :mod:`~jobs.merge.mlp`.
"""

from __future__ import annotations

from jobs.merge.base import (
    MergeRule,
    NoMergeRule,
    State,
    register_merge,
    rule_for,
    state_rule,
    supported_families,
)
from jobs.merge.kmeans import MiniBatchKMeansRule
from jobs.merge.linear import LinearRule
from jobs.merge.mlp import MLPRule
from jobs.merge.naive_bayes import CategoricalNBRule, DiscreteNBRule, GaussianNBRule
from jobs.merge.pca import IncrementalPCARule
from jobs.merge.scalers import MaxAbsScalerRule, MinMaxScalerRule, StandardScalerRule
from jobs.merge.sgd_job import SGDJobRule

__all__ = [
    "CategoricalNBRule",
    "DiscreteNBRule",
    "GaussianNBRule",
    "IncrementalPCARule",
    "LinearRule",
    "MLPRule",
    "MaxAbsScalerRule",
    "MergeRule",
    "MiniBatchKMeansRule",
    "MinMaxScalerRule",
    "NoMergeRule",
    "SGDJobRule",
    "StandardScalerRule",
    "State",
    "register_merge",
    "rule_for",
    "state_rule",
    "supported_families",
]
