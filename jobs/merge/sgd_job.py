"""The grid's own SGD (``jobs.SGDClassifier`` / ``jobs.SGDRegressor``): its merge and server rule.

The arithmetic lives in :mod:`jobs.sgd` (:mod:`jobs.sgd.server` for what the
scheduler applies); this module adapts it to the :class:`~jobs.merge.base.MergeRule`
protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jobs import sgd
from jobs.aggregate import weighted_mean
from jobs.merge.base import MergeRule, State, _f64


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
        coef = np.asarray(state["coef"])
        estimator._load_state(sgd.check_state(state, coef.shape[-1], coef.shape[0]))
        return estimator

    def merge(self, states, weights, aggregate=weighted_mean, previous=None):
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
        return sgd.server_update(previous, merged, request["estimator"]["params"], round_no)
