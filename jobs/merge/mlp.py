"""MLPClassifier / MLPRegressor: parameter averaging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
from sklearn.preprocessing import LabelBinarizer

from jobs.aggregate import weighted_mean
from jobs.merge.base import MergeRule, State, _count_merge, _f64, _pick, _require_same, _restore, register_merge


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
