"""``PartialFit``: train any scikit-learn estimator with ``partial_fit`` on the grid."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier, is_regressor
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from jobs.aggregate import AGGREGATORS
from jobs.base import GridJobMixin
from jobs.merge import State, rule_for, state_rule
from jobs.spec import build_estimator, class_path, estimator_spec

MODES = ("average", "sequential")


class PartialFit(GridJobMixin, MetaEstimatorMixin, BaseEstimator):
    """Fit a scikit-learn estimator with ``partial_fit`` over grid partitions.

    Parameters
    ----------
    estimator : estimator with ``partial_fit``
        The model to train; it is cloned, never modified.
    rounds : int, default=10
        Passes over the data. In ``"average"`` mode one round runs a local
        update on every partition from the current global state and merges
        the results on the scheduler; in ``"sequential"`` mode one round
        visits every partition in order.
    mode : {"average", "sequential"}, default="average"
        ``"average"`` merges partition updates with the estimator family's
        merge rule (``jobs.merge``); ``"sequential"`` equals a serial
        ``partial_fit`` loop over the same partitions in the same order.
    aggregate : {"mean", "median", "trimmed_mean"}, default="mean"
        How float parameters of partition updates are combined in average mode.
    local_epochs : int, default=1
        ``partial_fit`` calls per partition per round (average mode).
    partition_rows : int or "auto", default="auto"
        Rows per data partition; "auto" aims for 8 partitions of at least
        256 rows. Never depends on how many nodes are up.
    seed : int, default=0
        Seeds every random choice together with (round, partition) when the
        estimator's own ``random_state`` is None.
    verbose : bool, default=False
        Show a progress bar while fitting.

    Attributes
    ----------
    estimator_ : estimator
        The fitted scikit-learn estimator (usable without the grid).
    history_ : list of dict
        One record per round: loss, score, samples, seconds, bytes across regions.
    classes_ : ndarray
        For classifiers, the class labels.
    """

    _job_kind = "partial_fit"

    def __init__(
        self,
        estimator: Any,
        *,
        rounds: int = 10,
        mode: str = "average",
        aggregate: str = "mean",
        local_epochs: int = 1,
        partition_rows: int | str = "auto",
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.estimator = estimator
        self.rounds = rounds
        self.mode = mode
        self.aggregate = aggregate
        self.local_epochs = local_epochs
        self.partition_rows = partition_rows
        self.seed = seed
        self.verbose = verbose

    # --- job description ---------------------------------------------------------
    def _validate_params(self) -> None:  # noqa: D401 - scikit-learn's name
        est = self.estimator
        if est is None or not hasattr(est, "partial_fit"):
            raise TypeError(
                f"PartialFit needs an estimator with a partial_fit method; "
                f"{type(est).__name__} has none. Use an incremental estimator such as "
                "SGDClassifier, MultinomialNB or MiniBatchKMeans, or jobs.SGDClassifier."
            )
        _check_int("rounds", self.rounds, 1)
        _check_int("local_epochs", self.local_epochs, 1)
        _check_int("seed", self.seed, 0)
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not valid; choose one of {list(MODES)}")
        if self.aggregate not in AGGREGATORS:
            raise ValueError(
                f"aggregate={self.aggregate!r} is not valid; choose one of {sorted(AGGREGATORS)}"
            )
        if self.mode == "average":
            rule_for(est)  # raises NoMergeRule with the supported families

    def _job_request(self) -> dict:
        self._validate_params()
        return {
            "kind": self._job_kind,
            "facade": class_path(type(self)),
            "estimator": estimator_spec(self.estimator),
            "rounds": int(self.rounds),
            "mode": self.mode,
            "aggregate": self.aggregate,
            "local_epochs": int(self.local_epochs),
            "partition_rows": self.partition_rows if self.partition_rows == "auto" else int(self.partition_rows),
            "seed": int(self.seed),
            "verbose": bool(self.verbose),
        }

    def _is_classifier(self) -> bool:
        return is_classifier(self.estimator)

    def _needs_y(self) -> bool:
        return is_classifier(self.estimator) or is_regressor(self.estimator)

    @classmethod
    def _from_request(cls, request: dict) -> "PartialFit":
        return cls(
            build_estimator(request["estimator"]),
            rounds=request["rounds"],
            mode=request["mode"],
            aggregate=request["aggregate"],
            local_epochs=request["local_epochs"],
            partition_rows=request["partition_rows"],
            seed=request["seed"],
            verbose=request.get("verbose", False),
        )

    def _load_result(self, state: State, history: list[dict], request: dict) -> None:
        est = clone(self.estimator)
        state_rule(est).set_state(est, state)
        self.estimator_ = est
        self.history_ = list(history)
        self.n_rounds_ = len(history)
        if hasattr(est, "classes_"):
            self.classes_ = est.classes_
        if hasattr(est, "n_features_in_"):
            self.n_features_in_ = est.n_features_in_

    # --- delegation to the fitted estimator -------------------------------------
    def _fitted(self) -> Any:
        check_is_fitted(self, "estimator_")
        return self.estimator_

    @available_if(lambda self: hasattr(self.estimator, "predict"))
    def predict(self, X: Any) -> np.ndarray:
        """Predict with the fitted estimator."""
        return self._fitted().predict(X)

    @available_if(lambda self: hasattr(self.estimator, "predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities from the fitted estimator."""
        return self._fitted().predict_proba(X)

    @available_if(lambda self: hasattr(self.estimator, "decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """Decision function of the fitted estimator."""
        return self._fitted().decision_function(X)

    @available_if(lambda self: hasattr(self.estimator, "transform"))
    def transform(self, X: Any) -> Any:
        """Transform with the fitted estimator (scalers, PCA, clustering)."""
        return self._fitted().transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """The fitted estimator's own score."""
        est = self._fitted()
        if y is None:
            return est.score(X)
        return est.score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            inner = self.estimator.__sklearn_tags__()
            tags.estimator_type = inner.estimator_type
            tags.classifier_tags = inner.classifier_tags
            tags.regressor_tags = inner.regressor_tags
            tags.input_tags = inner.input_tags
            tags.target_tags = inner.target_tags
            tags.transformer_tags = inner.transformer_tags
        except AttributeError:
            pass
        return tags


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
