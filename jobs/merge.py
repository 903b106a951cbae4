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


# ======================================================================================
# Helpers for exact merges of sufficient statistics
# ======================================================================================
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


# ======================================================================================
# The grid's own SGD (jobs.SGDClassifier / jobs.SGDRegressor)
# ======================================================================================
class SGDJobRule(MergeRule):
    """The grid's SGD: aggregated ``coef``/``intercept``, counted samples, server step.

    Registered for ``jobs.SGDClassifier`` and ``jobs.SGDRegressor`` by
    ``jobs.sgd_estimators`` (where those classes are defined, so that this
    module does not import them). ``coef``/``intercept`` go through the job's
    aggregator (weighted mean by default); the schedule counters are combined
    by :func:`jobs.sgd.merge_counters`; :meth:`server_update` applies the
    ``"adaptive"`` plateau rule and optional FedAvgM server momentum.
    """

    family = "grid SGD"

    def get_state(self, estimator: Any) -> State:
        return dict(getattr(estimator, "_sgd_state_", {}))

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        from jobs import sgd

        coef = np.asarray(state["coef"])
        estimator._load_state(sgd.check_state(state, coef.shape[-1], coef.shape[0]))
        return estimator

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        from jobs import sgd

        if not states:
            raise ValueError("no states to merge")
        shapes = {(np.shape(s["coef"]), np.shape(s["intercept"])) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"partition states disagree on the model shape: {sorted(shapes)}")
        merged: State = {
            "coef": aggregate([_f64(s["coef"]) for s in states], weights),
            "intercept": aggregate([_f64(s["intercept"]) for s in states], weights),
        }
        merged.update(sgd.merge_counters(list(states), list(weights)))
        return merged

    def server_update(self, previous, merged, request, round_no):
        from jobs import sgd

        return sgd.server_update(previous, merged, request["estimator"]["params"], round_no)


# ======================================================================================
# Naive Bayes: exact merges of counts, means and variances
# ======================================================================================
from sklearn.naive_bayes import (  # noqa: E402
    BernoulliNB,
    CategoricalNB,
    ComplementNB,
    GaussianNB,
    MultinomialNB,
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


# ======================================================================================
# Scalers: exact
# ======================================================================================
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler  # noqa: E402


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
        from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature

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
        from sklearn.preprocessing._data import _handle_zeros_in_scale

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
        from sklearn.preprocessing._data import _handle_zeros_in_scale

        dtype = estimator.data_min_.dtype
        low = np.asarray(estimator.feature_range[0], dtype=dtype)
        high = np.asarray(estimator.feature_range[1], dtype=dtype)
        estimator.data_range_ = estimator.data_max_ - estimator.data_min_
        estimator.scale_ = (high - low) / _handle_zeros_in_scale(estimator.data_range_, copy=True)
        estimator.min_ = low - estimator.data_min_ * estimator.scale_


# ======================================================================================
# MiniBatchKMeans: count-weighted centres
# ======================================================================================
from sklearn.cluster import MiniBatchKMeans  # noqa: E402


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
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

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
    from scipy.optimize import linear_sum_assignment

    cost = ((reference[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(reference), dtype=np.intp)
    order[rows] = cols
    return order


# ======================================================================================
# IncrementalPCA: merge of scatter matrices (exact for a full-rank model)
# ======================================================================================
from sklearn.decomposition import IncrementalPCA  # noqa: E402


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
        from sklearn.utils.extmath import svd_flip

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


# ======================================================================================
# MLP: parameter averaging
# ======================================================================================
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402


@register_merge(MLPClassifier, MLPRegressor)
class MLPRule(MergeRule):
    """MLPClassifier / MLPRegressor: sample-weighted averaging of the parameters.

    ``coefs_`` and ``intercepts_`` (lists) travel as flat fields ``coefs_0``,
    ``intercepts_0``, ...; so do the optimiser's moments (``opt_ms_j``,
    ``opt_vs_j`` for adam, ``opt_velocities_j`` for sgd), its step count and
    learning rate, so sequential mode continues exactly like a serial
    ``partial_fit`` chain. The merge averages parameters with the job's
    aggregator and optimiser moments with the weighted mean; ``t_`` (samples)
    is counted once per partition. ``loss_curve_`` is rebuilt as ``[loss_]``.
    """

    family = "neural networks"
    _scalars = ("n_iter_", "t_", "n_outputs_", "n_layers_", "loss_", "best_loss_",
                "_no_improvement_count", "n_features_in_")

    def get_state(self, estimator: Any) -> State:
        state = _pick(estimator, self._scalars + ("classes_",))
        for i, (c, b) in enumerate(zip(getattr(estimator, "coefs_", []), getattr(estimator, "intercepts_", []))):
            state[f"coefs_{i}"] = c
            state[f"intercepts_{i}"] = b
        opt = getattr(estimator, "_optimizer", None)
        if opt is not None:
            state["opt_learning_rate"] = float(opt.learning_rate)
            if hasattr(opt, "ms"):
                state["opt_t"] = int(opt.t)
                for j, (m, v) in enumerate(zip(opt.ms, opt.vs)):
                    state[f"opt_ms_{j}"] = m
                    state[f"opt_vs_{j}"] = v
            else:
                for j, v in enumerate(opt.velocities):
                    state[f"opt_velocities_{j}"] = v
        return state

    def set_state(self, estimator: Any, state: Mapping[str, Any]) -> Any:
        from sklearn.base import is_classifier
        from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
        from sklearn.preprocessing import LabelBinarizer

        state = dict(state)
        n_layers = sum(1 for k in state if k.startswith("coefs_"))
        estimator.coefs_ = [np.array(state.pop(f"coefs_{i}")) for i in range(n_layers)]
        estimator.intercepts_ = [np.array(state.pop(f"intercepts_{i}")) for i in range(n_layers)]
        opt = {k: state.pop(k) for k in list(state) if k.startswith("opt_")}
        for name, value in state.items():
            setattr(estimator, name, _restore(value))
        params = estimator.coefs_ + estimator.intercepts_
        if is_classifier(estimator):
            estimator._label_binarizer = LabelBinarizer().fit(estimator.classes_)
            estimator.out_activation_ = (
                "softmax" if estimator._label_binarizer.y_type_ == "multiclass" else "logistic"
            )
        else:
            estimator.out_activation_ = "exp" if getattr(estimator, "loss", "") == "poisson" else "identity"
        estimator.loss_curve_ = [estimator.loss_] if hasattr(estimator, "loss_") else []
        estimator.validation_scores_ = None
        estimator.best_validation_score_ = None
        estimator._best_coefs = [c.copy() for c in estimator.coefs_]
        estimator._best_intercepts = [b.copy() for b in estimator.intercepts_]
        if opt:
            if "opt_t" in opt and estimator.solver == "adam":
                o = AdamOptimizer(params, estimator.learning_rate_init, estimator.beta_1,
                                  estimator.beta_2, estimator.epsilon)
                o.t = int(opt["opt_t"])
                o.ms = [np.array(opt[f"opt_ms_{j}"]) for j in range(len(params))]
                o.vs = [np.array(opt[f"opt_vs_{j}"]) for j in range(len(params))]
            elif estimator.solver == "sgd":
                o = SGDOptimizer(params, estimator.learning_rate_init, estimator.learning_rate,
                                 estimator.momentum, estimator.nesterovs_momentum, estimator.power_t)
                o.velocities = [np.array(opt[f"opt_velocities_{j}"]) for j in range(len(params))]
            else:
                o = None
            if o is not None:
                o.learning_rate = float(opt["opt_learning_rate"])
                estimator._optimizer = o
        return estimator

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
        names = set(states[0])
        for s in states[1:]:
            if set(s) != names:
                raise ValueError(f"partition states disagree on their fields: {sorted(names ^ set(s))}")
        prev = previous or {}
        merged: State = {}
        for name in states[0]:
            values = [s[name] for s in states]
            first = values[0]
            if name.startswith(("coefs_", "intercepts_")):
                merged[name] = aggregate([_f64(v) for v in values], weights).astype(np.asarray(first).dtype)
            elif name.startswith("opt_") and np.ndim(first):
                merged[name] = weighted_mean([_f64(v) for v in values], weights).astype(np.asarray(first).dtype)
            elif name == "opt_t":
                merged[name] = int(max(int(v) for v in values))
            elif name == "opt_learning_rate":
                merged[name] = float(min(float(v) for v in values))
            elif name == "t_":
                merged[name] = int(_count_merge(values, prev.get("t_")))
            elif name == "loss_":
                merged[name] = float(weighted_mean([_f64(v) for v in values], weights))
            elif name == "best_loss_":
                merged[name] = float(min(float(v) for v in values))
            elif name in ("_no_improvement_count", "n_iter_"):
                merged[name] = int(min(int(v) for v in values))
            else:
                merged[name] = _require_same(states, name)
        return merged
