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
        request = {
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
        warm = getattr(self, "_warm_state", None)
        if warm is not None:
            # partial_fit: the driver starts round 0 from this state instead of a fresh estimator
            request["init_state"] = warm
        return request

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

    # --- incremental training ----------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, classes: Any = None, sample_weight: Any = None, *,
                    grid: Any = None, verbose: bool | int | None = None, **submit_kwargs: Any) -> "PartialFit":
        """Run one round on ``X``, continuing from the fitted state (as scikit-learn's ``partial_fit``).

        The first call starts from a fresh clone of ``estimator``; every later
        call submits a one-round job whose initial state is the current
        ``estimator_`` (sent as plain numbers, ``init_state`` of the request).
        In ``mode="sequential"`` the calls therefore equal serial
        ``estimator.partial_fit`` calls on the same partitions in the same
        order; in ``mode="average"`` each call is one averaged round.

        Parameters
        ----------
        X : array-like, sparse matrix, dask collection, or a dataset placed
            with ``Grid.scatter``
        y : array-like, optional
        classes : array-like, optional
            All class labels. A round's classes are the labels of its data,
            so every call's ``y`` must hold all of them: ``classes`` is checked
            against them (an error names the missing labels).
        sample_weight : array-like of shape (n_samples,), optional
        grid : grid.Grid, optional
            As for :meth:`fit`.
        verbose : bool or int, optional
            Show a progress bar while waiting.
        **submit_kwargs
            Passed to :meth:`grid.Grid.submit` (e.g. ``regions=``).

        Returns
        -------
        self
        """
        self._validate_params()
        fitted = getattr(self, "estimator_", None)
        if fitted is not None and hasattr(fitted, "n_features_in_"):
            # scikit-learn's check, here rather than as a failed round on a node
            expected = int(np.asarray(fitted.n_features_in_))
            shape = getattr(X, "shape", None)
            got = shape[1] if shape is not None and len(shape) == 2 else getattr(X, "n_features", None)
            if got is not None and int(got) != expected:
                raise ValueError(
                    f"X has {int(got)} features, but {type(self).__name__} is expecting {expected} "
                    "features as input."
                )
        if classes is not None or (fitted is not None and hasattr(fitted, "classes_")):
            self._check_round_classes(y, classes, fitted)
        one = clone(self).set_params(rounds=1)
        if fitted is not None:
            one._warm_state = _plain_state(state_rule(fitted).get_state(fitted))
        if sample_weight is not None:
            submit_kwargs["sample_weight"] = sample_weight
        GridJobMixin.fit(one, X, y, grid=grid, verbose=verbose, **submit_kwargs)
        history = list(getattr(self, "history_", [])) + [
            dict(record, round=len(getattr(self, "history_", [])) + i + 1) for i, record in enumerate(one.history_)
        ]
        self.__dict__.update({k: v for k, v in vars(one).items() if k.endswith("_") and not k.startswith("_")})
        self.history_ = history
        self.n_rounds_ = len(history)
        return self

    def _check_round_classes(self, y: Any, classes: Any, fitted: Any) -> None:
        """The labels a round will train on must be the model's (see :meth:`partial_fit`)."""
        if y is None or hasattr(y, "__dask_graph__") or not hasattr(y, "__len__"):
            return  # placed or lazy data: its labels are checked on the grid
        present = np.unique(np.asarray(y))
        expected = np.unique(np.asarray(classes)) if classes is not None else np.asarray(fitted.classes_)
        if fitted is not None and hasattr(fitted, "classes_") and classes is not None:
            if not np.array_equal(expected, np.asarray(fitted.classes_)):
                raise ValueError(
                    f"classes={expected.tolist()!r} differs from the classes of the first call "
                    f"{np.asarray(fitted.classes_).tolist()!r}; pass the same classes or none"
                )
        if not np.array_equal(present, expected):
            missing = sorted(set(expected.tolist()) - set(present.tolist()))
            extra = sorted(set(present.tolist()) - set(expected.tolist()))
            raise ValueError(
                f"y of this partial_fit call has the labels {present.tolist()!r} but the model's classes are "
                f"{expected.tolist()!r} (missing {missing!r}, unknown {extra!r}): a grid round takes its "
                "classes from its data, so every call needs rows of every class. Batch the stream so "
                "each call holds all classes, or train it locally with the estimator's own partial_fit"
            )

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


def _plain_state(state: State) -> dict:
    """The numeric part of an estimator state as plain data (``init_state`` of a request).

    The driver restores every entry as a float64 array, so only numbers
    travel; the labels (``classes_``) come back from the round's data.
    """
    plain: dict = {}
    for name, value in state.items():
        if name == "classes_":
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            continue
        plain[name] = arr.astype(np.float64).tolist()
    return plain


def _check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) >= ``minimum``.

    Shared with the SGD estimators (:mod:`jobs.sgd_facade`).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
