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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jobs.aggregate import Aggregator, weighted_mean

State = dict[str, Any]

_RULES: dict[type, "MergeRule"] = {}


class NoMergeRule(TypeError):
    """The estimator has no merge rule, so ``mode="average"`` cannot combine it."""


class MergeRule:
    """Base rule: generic state access plus a weighted merge of float arrays.

    ``get_state`` keeps every fitted attribute that is numeric data (arrays of
    numbers or labels, Python and numpy scalars); ``set_state`` writes them
    back. ``merge`` aggregates floating-point arrays with the job's aggregator
    and requires every other entry (labels, feature counts) to agree.
    """

    #: a short name of the family, used in error messages and docs
    family = "generic"

    def get_state(self, estimator: Any) -> State:
        params = set(estimator.get_params(deep=False))
        state: State = {}
        for name, value in vars(estimator).items():
            if name in params or name.startswith("__"):
                continue
            if isinstance(value, np.ndarray):
                if value.dtype.kind in "biufcUS":
                    state[name] = value
            elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
                state[name] = value.item() if isinstance(value, np.generic) else value
        return state

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        for name, value in state.items():
            setattr(estimator, name, value)
        return estimator

    def merge(
        self,
        states: Sequence[State],
        weights: Sequence[float],
        aggregate: Aggregator = weighted_mean,
    ) -> State:
        if not states:
            raise ValueError("no states to merge")
        names = set(states[0])
        for s in states[1:]:
            if set(s) != names:
                raise ValueError(
                    f"partition states disagree on their fields: {sorted(names ^ set(s))}"
                )
        merged: State = {}
        for name in states[0]:
            values = [s[name] for s in states]
            first = values[0]
            if self.is_averaged(name, first):
                out = aggregate([np.asarray(v, dtype=np.float64) for v in values], weights)
                merged[name] = float(out) if np.ndim(first) == 0 and not isinstance(first, np.ndarray) else out.astype(np.asarray(first).dtype, copy=False)
            else:
                for v in values[1:]:
                    if not _equal(first, v):
                        raise ValueError(
                            f"partition states disagree on {name!r}: {first!r} vs {v!r}"
                        )
                merged[name] = first
        return merged

    def server_update(self, previous: State | None, merged: State, request: Mapping[str, Any], round_no: int) -> State:
        """Turn the merged state of a round into the next global state.

        Called once per round on the home scheduler after the cross-region
        combine. The default keeps ``merged``; a rule may apply server-side
        momentum or another optimiser step here (FedAvgM-like).
        """
        return merged

    def is_averaged(self, name: str, value: Any) -> bool:
        """Whether ``name`` is combined by the aggregator (default: float data)."""
        return np.asarray(value).dtype.kind == "f"


def _equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(a == b))


def register_merge(*estimator_classes: type) -> Callable[[type], type]:
    """Class decorator: register a :class:`MergeRule` subclass for estimator classes."""
    if not estimator_classes:
        raise TypeError("register_merge needs at least one estimator class")

    def decorator(rule_cls: type) -> type:
        rule = rule_cls()
        for cls in estimator_classes:
            _RULES[cls] = rule
        return rule_cls

    return decorator


def rule_for(estimator: Any) -> MergeRule:
    """The merge rule of an estimator (instance or class).

    Raises
    ------
    NoMergeRule
        With the list of supported families and the advice to use sequential mode.
    """
    cls = estimator if isinstance(estimator, type) else type(estimator)
    for klass in cls.__mro__:
        if klass in _RULES:
            return _RULES[klass]
    raise NoMergeRule(
        f"{cls.__name__} has no merge rule, so mode='average' cannot combine its partition "
        f"updates. Supported families: {supported_families()}. Use mode='sequential' (exact "
        "serial partial_fit, one partition after another) or register a rule with "
        "jobs.merge.register_merge."
    )


def supported_families() -> list[str]:
    return sorted({f"{rule.family} ({cls.__name__})" for cls, rule in _RULES.items()})


def state_rule(estimator: Any) -> MergeRule:
    """The rule used to read and write state: the registered one, else the generic one."""
    try:
        return rule_for(estimator)
    except NoMergeRule:
        return _GENERIC


_GENERIC = MergeRule()


# --- linear models: sample-weighted mean of coef_, intercept_ and the SGD counters.
from sklearn.linear_model import (  # noqa: E402
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
    Perceptron,
    SGDClassifier,
    SGDOneClassSVM,
    SGDRegressor,
)


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
