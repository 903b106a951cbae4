"""The merge rule protocol, its registry and the helpers the family rules share.

A *state* is a dict of named numpy arrays and numbers: everything a node needs
to continue training an estimator, and everything the scheduler needs to merge
several partition updates into one. States are plain numeric data, so they
travel in the grid's code-free wire format.

:class:`MergeRule` is the base rule (generic state access, a weighted merge of
float arrays); :func:`register_merge` files a rule under estimator classes and
:func:`rule_for` finds it by walking an estimator's MRO, so a subclass
inherits its parent's rule. The helpers below it (counts, Chan et al.
moments, explicit-field states) are what the exact merges of
:mod:`jobs.merge.naive_bayes`, :mod:`jobs.merge.scalers` and the other
family modules are built from.
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

    #: state fields whose shape may legitimately differ between partitions
    #: (e.g. CategoricalNB's per-feature category counts); the grid's layout
    #: check should allow these to vary
    variable_shape: frozenset[str] = frozenset()

    def merge(
        self,
        states: Sequence[State],
        weights: Sequence[float],
        aggregate: Aggregator = weighted_mean,
        previous: State | None = None,
    ) -> State:
        """Combine partition states (ordered by partition index) into one.

        Parameters
        ----------
        states : sequence of dict
            One state per partition (or per region), in a fixed order.
        weights : sequence of float
            Sample counts of the states, in the same order.
        aggregate : callable
            The job's aggregator for averaged float arrays.
        previous : dict, optional
            The global state every partition started this round from (None on
            the first round). Rules of count-based estimators need it to count
            each partition's new data once: ``previous + sum(state_i - previous)``.
        """
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
    """The registered rules as ``"family (EstimatorClass)"``, sorted (for error messages)."""
    return sorted({f"{rule.family} ({cls.__name__})" for cls, rule in _RULES.items()})


def state_rule(estimator: Any) -> MergeRule:
    """The rule used to read and write state: the registered one, else the generic one."""
    try:
        return rule_for(estimator)
    except NoMergeRule:
        return _GENERIC


_GENERIC = MergeRule()


# --------------------------------------------------------------------------------------
# helpers for exact merges of sufficient statistics
# --------------------------------------------------------------------------------------
def _f64(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _count_merge(values: Sequence[Any], previous: Any = None) -> np.ndarray:
    """``previous + sum(v_i - previous)`` in the given order (``sum(v_i)`` without previous).

    Each ``v_i`` is a count that started from ``previous`` on its partition,
    so every partition's new data is counted exactly once.
    """
    if previous is None:
        acc = _f64(values[0]).copy()
        for v in values[1:]:
            acc = acc + _f64(v)
        return acc
    prev = _f64(previous)
    acc = prev.copy()
    for v in values:
        acc = acc + (_f64(v) - prev)
    return acc


def _moments_add(na: np.ndarray, ma: np.ndarray, sa: np.ndarray,
                 nb: np.ndarray, mb: np.ndarray, sb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.: combine (count, mean, sum of squared deviations) of two disjoint sets.

    Counts broadcast against the means (e.g. shape (n_classes, 1) against
    (n_classes, n_features)). The formula is scikit-learn's own
    ``GaussianNB._update_mean_variance``, so an in-order merge reproduces a
    serial ``partial_fit`` chain to rounding.
    """
    n = na + nb
    safe = np.where(n > 0, n, 1.0)
    mean = np.where(na == 0, mb, np.where(nb == 0, ma, (nb * mb + na * ma) / safe))
    ssd = sa + sb + (nb * na / safe) * (ma - mb) ** 2
    return n, mean, ssd


def _moments_remove(n: np.ndarray, mean: np.ndarray, ssd: np.ndarray,
                    n0: np.ndarray, mean0: np.ndarray, ssd0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The moments of the rows that turned ``(n0, mean0, ssd0)`` into ``(n, mean, ssd)``."""
    nd = n - n0
    safe_d = np.where(nd > 0, nd, 1.0)
    safe = np.where(n > 0, n, 1.0)
    mean_d = np.where(nd > 0, mean + (n0 / safe_d) * (mean - mean0), 0.0)  # no large cancellation
    ssd_d = np.where(nd > 0, ssd - ssd0 - (n0 * nd / safe) * (mean0 - mean_d) ** 2, 0.0)
    return nd, mean_d, np.maximum(ssd_d, 0.0)


def _moments_merge(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine per-partition moments in order, each counted from ``previous`` once."""
    if previous is None:
        acc = parts[0]
        rest = parts[1:]
    else:
        acc = previous
        rest = [_moments_remove(*p, *previous) for p in parts]
    for p in rest:
        acc = _moments_add(*acc, *p)
    return acc


def _require_same(states: Sequence[State], name: str) -> Any:
    first = states[0][name]
    for s in states[1:]:
        if not _equal(first, s[name]):
            raise ValueError(f"partition states disagree on {name!r}: {first!r} vs {s[name]!r}")
    return first


def _pick(state: Any, names: Sequence[str]) -> State:
    out: State = {}
    for name in names:
        if hasattr(state, name):
            value = getattr(state, name)
            if value is None:
                continue
            if isinstance(value, np.generic):
                value = value.item()
            out[name] = value
    return out


class _ExplicitStateRule(MergeRule):
    """A rule whose state is an explicit list of fields plus recomputed derived attributes."""

    #: fitted attributes that make up the state
    fields: tuple[str, ...] = ()

    def get_state(self, estimator: Any) -> State:
        return _pick(estimator, self.fields)

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        for name, value in state.items():
            setattr(estimator, name, _restore(value))
        self.finish(estimator)
        return estimator

    def finish(self, estimator: Any) -> None:
        """Recompute the attributes derived from the state (hook)."""


def _restore(value: Any) -> Any:
    """Writable copies of arrays (wire buffers may be read-only)."""
    if isinstance(value, np.ndarray):
        return value.copy() if value.ndim else value.item()
    return value
