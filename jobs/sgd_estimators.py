"""``jobs.SGDClassifier`` and ``jobs.SGDRegressor``: the grid's partitioned SGD.

Thin scikit-learn facades over :mod:`jobs.sgd`. ``fit`` describes a job (an
allowlisted class, its plain parameters) and hands it to a grid: every round,
each partition runs local minibatch SGD from the current global parameters
(:func:`jobs.sgd.sgd_step`), and the scheduler reduces the updates with
:class:`jobs.merge.SGDJobRule`. ``partial_fit`` runs the same numpy kernel on
the caller's machine, for streaming, without any grid.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from jobs import sgd
from jobs.aggregate import AGGREGATORS
from jobs.base import GridJobMixin
from jobs.local import derive_seed
from jobs.merge import SGDJobRule, State, register_merge
from jobs.spec import class_path, estimator_spec


class _GridSGD(GridJobMixin, BaseEstimator):
    """Shared parameters, validation, job description and local ``partial_fit``."""

    _job_kind = "sgd"
    _classification = True

    # --- validation ----------------------------------------------------------------
    def _config(self) -> sgd.SGDConfig:
        return sgd.config_from_params(self.get_params(deep=False), classification=self._classification)

    def _n_rounds(self) -> int:
        """Rounds to run: ``max_iter`` (scikit-learn's name) or ``rounds`` (the grid's).

        ``max_iter`` at its default (scikit-learn's 1000) leaves the choice to
        ``rounds``; both set to different non-default values is an error.
        """
        _check_int("rounds", self.rounds, 1)
        _check_int("max_iter", self.max_iter, 1)
        if self.max_iter == _SKLEARN_MAX_ITER:
            return int(self.rounds)
        if self.rounds not in (_DEFAULT_ROUNDS, self.max_iter):
            raise ValueError(
                f"max_iter={self.max_iter!r} and rounds={self.rounds!r} disagree: both set the number of "
                "rounds (max_iter is scikit-learn's name for it). Set only one of them"
            )
        return int(self.max_iter)

    def _validate_job_params(self) -> sgd.SGDConfig:
        cfg = self._config()
        self._n_rounds()
        _check_int("local_epochs", self.local_epochs, 1)
        n_jobs = getattr(self, "n_jobs", None)
        if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral)):
            raise ValueError(f"n_jobs must be an integer or None (it has no effect on the grid), got {n_jobs!r}")
        if self.aggregate not in AGGREGATORS:
            raise ValueError(
                f"aggregate={self.aggregate!r} is not valid; choose one of {sorted(AGGREGATORS)}"
            )
        pr = self.partition_rows
        if pr != "auto" and (isinstance(pr, bool) or not isinstance(pr, numbers.Integral) or pr < 1):
            raise ValueError(f"partition_rows must be a positive integer or 'auto', got {pr!r}")
        sm = self.server_momentum
        if isinstance(sm, bool) or not isinstance(sm, numbers.Real) or not 0.0 <= float(sm) < 1.0:
            raise ValueError(f"server_momentum must be a real number in [0, 1), got {sm!r}")
        if not isinstance(self.warm_start, (bool, np.bool_)) and self.warm_start not in (0, 1):
            raise ValueError(f"warm_start must be True or False, got {self.warm_start!r}")
        v = self.verbose
        if not isinstance(v, (bool, np.bool_)) and (not isinstance(v, numbers.Integral) or v < 0):
            raise ValueError(f"verbose must be True, False or an integer >= 0 (> 0 shows a progress bar), got {v!r}")
        return cfg

    # --- the job ---------------------------------------------------------------------
    def _job_request(self) -> dict:
        cfg = self._validate_job_params()
        request = {
            "kind": self._job_kind,
            "facade": class_path(type(self)),
            "estimator": estimator_spec(self),
            "rounds": self._n_rounds(),
            "mode": "average",
            "aggregate": self.aggregate,
            "local_epochs": int(self.local_epochs),
            "partition_rows": self.partition_rows if self.partition_rows == "auto" else int(self.partition_rows),
            "seed": cfg.seed,
            "verbose": bool(self.verbose),
        }
        if self.tol is not None:
            # the driver stops after n_iter_no_change rounds without an improvement of tol
            request["stopping"] = {
                "tol": float(self.tol),
                "n_iter_no_change": int(self.n_iter_no_change),
                "metric": "val_loss" if self.early_stopping else "loss",
            }
        if self.warm_start and hasattr(self, "_sgd_state_"):
            # the driver starts round 0 from this state instead of zeros
            request["init_state"] = {
                k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else float(v))
                for k, v in self._sgd_state_.items()
                if k in sgd.STATE_KEYS
            }
        return request

    def _is_classifier(self) -> bool:
        return self._classification

    @classmethod
    def _from_request(cls, request: dict) -> "_GridSGD":
        return cls(**request["estimator"]["params"])

    def _load_result(self, state: State, history: list[dict], request: dict) -> None:
        classes = request.get("classes")
        if self._classification:
            self.classes_ = np.asarray(classes)
        n_features = request.get("n_features") or int(np.shape(state["coef"])[-1])
        n_outputs = 1 if not self._classification or len(self.classes_) == 2 else len(self.classes_)
        self._load_state(sgd.check_state(state, int(n_features), n_outputs))
        self.history_ = list(history)
        self.n_iter_ = len(history) * int(request.get("local_epochs", 1))

    def _load_state(self, state: State) -> None:
        # the state keeps the plain iterate (where training continues); with
        # ``average`` the model is the running average of sgd.average_update
        self._sgd_state_ = {k: state[k] for k in sgd.STATE_KEYS}
        averaged = bool(self.average) and float(state.get("avg_weight", 0.0)) > 0.0
        if averaged:
            self._sgd_state_.update({k: state[k] for k in sgd.AVERAGE_KEYS})
        coef = np.asarray(state["avg_coef" if averaged else "coef"], dtype=np.float64)
        intercept = np.asarray(state["avg_intercept" if averaged else "intercept"], dtype=np.float64)
        self.n_features_in_ = int(coef.shape[1])
        self.t_ = float(state["t"])
        if self._classification:
            self.coef_ = coef
            self.intercept_ = intercept
        else:
            self.coef_ = coef[0].copy()
            self.intercept_ = intercept.copy()

    # --- grid fit ------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, grid: Any = None,
            verbose: bool | int | None = None, **submit_kwargs: Any) -> "_GridSGD":
        """Train on the grid and wait for the result.

        Parameters
        ----------
        X : array-like, sparse matrix, dask collection, or a dataset placed
            with ``Grid.scatter``
        y : array-like
        sample_weight : array-like of shape (n_samples,), optional
            Per-row weights; travel with the partitions.
        grid : grid.Grid, optional
            Defaults to the grid of an enclosing ``with grid:`` block, else
            the embedded local grid of this process, started on first use.
        verbose : bool or int, optional
            Show a progress bar while waiting; defaults to the ``verbose`` parameter.
        **submit_kwargs
            Passed to :meth:`grid.Grid.submit` (e.g. ``regions=``).

        Returns
        -------
        self
        """
        self._validate_job_params()
        if not self.warm_start:
            for attr in ("_sgd_state_", "_partial_calls_", "coef_", "intercept_", "classes_", "n_iter_", "t_",
                         "history_", "n_features_in_"):
                self.__dict__.pop(attr, None)
        if sample_weight is not None:
            submit_kwargs["sample_weight"] = sample_weight
        return super().fit(X, y, grid=grid, verbose=verbose, **submit_kwargs)

    # --- local streaming -----------------------------------------------------------
    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> "_GridSGD":
        """One pass of the numpy SGD kernel over ``X`` on this machine (no grid).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like, optional
            All class labels; required on the first call of a classifier.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        cfg = self._config()
        first = not hasattr(self, "_sgd_state_")
        if self._classification and cfg.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' is not supported by partial_fit: the class frequencies "
                "of a stream are unknown. Pass a dict computed with "
                "sklearn.utils.class_weight.compute_class_weight, or use fit"
            )
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             reset=first, y_numeric=not self._classification)
        if self._classification:
            if first:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit")
                self.classes_ = np.unique(np.asarray(classes))
            elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
                raise ValueError(
                    f"classes={np.asarray(classes).tolist()!r} differs from the classes of the first "
                    f"call {self.classes_.tolist()!r}"
                )
        targets = sgd.encode_targets(cfg, y, self.classes_ if self._classification else None, X.dtype)
        w = sgd.sample_weights(cfg, targets, self.classes_ if self._classification else None,
                               sample_weight, X.shape[0], X.dtype)
        previous = sgd.init_state(X.shape[1], targets.n_outputs) if first else dict(self._sgd_state_)
        calls = int(getattr(self, "_partial_calls_", 0))
        rng = np.random.default_rng(derive_seed(cfg.seed, calls, 0))
        state, _ = sgd.run_epochs(cfg, previous, sgd.as_features(X), targets, w, rng, epochs=1)
        state["t0"] = state["t"]
        if cfg.average:  # one call is one round of the grid's averaged SGD
            state.update(sgd.average_update(cfg.average, previous, state, float(X.shape[0])))
        self._load_state(state)
        self._partial_calls_ = calls + 1
        self.n_iter_ = calls + 1
        return self

    # --- prediction ------------------------------------------------------------------
    def _scores(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        coef = np.atleast_2d(self.coef_)
        return sgd.decision_scores(coef, self.intercept_, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class SGDClassifier(ClassifierMixin, _GridSGD):
    """Linear classifier trained by the grid's partitioned minibatch SGD.

    Each round runs ``local_epochs`` of shuffled minibatch SGD on every
    partition from the current global parameters (on the nodes that hold the
    partitions), then the scheduler reduces the updates (``aggregate``) and
    optionally applies server momentum. Each minibatch step is one BLAS
    product forward and one backward: no per-sample Python loop.

    Parameters
    ----------
    loss : {"log_loss", "hinge", "modified_huber"}, default="log_loss"
        ``log_loss`` is logistic regression, a true multinomial softmax for
        more than two classes; ``hinge`` a linear SVM and ``modified_huber``
        a smoothed hinge (one-vs-rest for more than two classes).
    penalty : {"l2", "l1", "elasticnet"} or None, default="l2"
        L1 is applied after each minibatch by the cumulative truncated gradient
        (Tsuruoka et al., 2009), which keeps unused weights exactly zero.
    alpha : float, default=1e-4
        Regularisation strength.
    l1_ratio : float in [0, 1], default=0.15
        L1 share of ``alpha`` for ``penalty="elasticnet"``.
    epsilon : float, default=0.1
        Not used by the classification losses (kept for parity with the regressor).
    learning_rate : {"auto", "constant", "invscaling", "adaptive"}, default="auto"
        Every schedule steps in standardised coordinates (a preconditioner
        estimated from the data; the model keeps the original units).
        ``"auto"`` needs no tuning: a data-sized step
        ``1 / (curvature * Lipschitz constant)`` decayed as
        ``1 / (1 + eta * alpha * t / batch)`` with iterate averaging over the
        second half of each local epoch. See ``docs/training.md``.
    eta0 : float or None, default=None
        Base step size (in standardised coordinates); None sizes it from the data.
    power_t : float, default=0.5
        Exponent of ``"invscaling"``.
    max_iter : int, default=1000
        scikit-learn's name for ``rounds``: a value other than 1000 sets the
        number of rounds (one round is ``local_epochs`` passes over every
        partition, the grid's epoch). Left at 1000, ``rounds`` decides; both
        set to different values is an error.
    shuffle : bool, default=True
        Shuffle the rows of each partition every epoch, seeded from
        (``random_state``, round, partition), so the model never depends on
        how many nodes trained it. False visits the rows in partition order.
    n_jobs : int or None, default=None
        Accepted for compatibility with scikit-learn; no effect (each node
        uses its own threads; the grid decides the parallelism).
    random_state : int or None, default=None
        Seeds every random choice of the job together with (round, partition):
        shuffles, the rows sampled to size the step and the validation split.
        None seeds with 0, so a job is reproducible; a ``RandomState``
        instance is refused (it cannot travel to the nodes).
    average : bool or int, default=False
        Averaged SGD: ``coef_``/``intercept_`` become the sample-weighted mean
        of the global model at the end of every round, once ``t`` (samples
        seen) reaches ``average`` (``True`` is 1: from the first round).
        Training itself continues from the plain iterate. The average is
        computed by the scheduler from the aggregated models.
    rounds : int, default=10
        Rounds of (local SGD on every partition, reduction).
    local_epochs : int, default=1
        Passes over its partition that each node makes per round.
    batch_size : int or "auto", default="auto"
        Rows per minibatch; "auto" is ``n_partition_rows // 64`` clipped to [16, 512].
    tol : float or None, default=1e-3
        Improvement threshold of the ``"adaptive"`` schedule and of early stopping.
    n_iter_no_change : int, default=5
        Rounds without improvement before the adaptive step shrinks / training stops.
        The driver stops a job after this many rounds whose metric did not fall
        below the best so far minus ``tol``: the training loss of the round
        (classifiers: error rate; regressors: MSE), or ``val_loss`` with
        ``early_stopping=True``. ``tol=None`` runs all ``rounds``.
    validation_fraction : float in (0, 1), default=0.1
        Share of each partition held out (the same rows every round) when
        ``early_stopping=True``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of each partition and report its loss
        in each round's metrics (``val_loss``, ``start_val_loss``).
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes; "balanced" uses each partition's label counts.
    warm_start : bool, default=False
        Start ``fit`` from the current coefficients.
    fit_intercept : bool, default=True
    partition_rows : int or "auto", default="auto"
        Rows per data partition (never depends on how many nodes are up).
    aggregate : {"mean", "median", "trimmed_mean"}, default="mean"
        Reduction of the partition updates of coef/intercept.
    server_momentum : float in [0, 1), default=0.0
        FedAvgM server momentum on the round updates (0 switches it off).
    verbose : bool or int, default=0
        Show a progress bar while fitting (any value > 0); ``fit(...,
        verbose=True)`` does the same for one call.

    Attributes
    ----------
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_iter_ : int
        Epochs run (rounds times local epochs; partial_fit calls locally).
    t_ : float
        Samples processed.
    history_ : list of dict
        One record per round from the grid (loss, score, samples, seconds, ...).
    """

    _classification = True

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        penalty: str | None = "l2",
        alpha: float = 1e-4,
        l1_ratio: float = 0.15,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float | None = 1e-3,
        shuffle: bool = True,
        verbose: int = 0,
        epsilon: float = 0.1,
        n_jobs: int | None = None,
        random_state: int | None = None,
        learning_rate: str = "auto",
        eta0: float | None = None,
        power_t: float = 0.5,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 5,
        class_weight: Any = None,
        warm_start: bool = False,
        average: bool | int = False,
        rounds: int = 10,
        local_epochs: int = 1,
        batch_size: int | str = "auto",
        partition_rows: int | str = "auto",
        aggregate: str = "mean",
        server_momentum: float = 0.0,
    ) -> None:
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.average = average
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.partition_rows = partition_rows
        self.aggregate = aggregate
        self.server_momentum = server_momentum

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores: shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        Z = self._scores(X)
        return Z[:, 0] if Z.shape[1] == 1 else Z

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels."""
        Z = self._scores(X)
        idx = (Z[:, 0] > 0).astype(np.intp) if Z.shape[1] == 1 else Z.argmax(axis=1)
        return self.classes_[idx]

    def _check_proba(self) -> bool:
        if self.loss not in ("log_loss", "modified_huber"):
            raise AttributeError(
                f"probability estimates are not available for loss={self.loss!r}; "
                "use loss='log_loss' or 'modified_huber'"
            )
        return True

    @available_if(_check_proba)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (``log_loss``: logistic / softmax; ``modified_huber``:
        scikit-learn's ``(clip(score, -1, 1) + 1) / 2``, normalised)."""
        Z = self._scores(X)
        if self.loss == "log_loss":
            if Z.shape[1] == 1:
                p = expit(Z[:, 0])
                return np.column_stack([1.0 - p, p])
            return softmax(Z, axis=1)
        if Z.shape[1] == 1:
            p = (np.clip(Z[:, 0], -1.0, 1.0) + 1.0) / 2.0
            return np.column_stack([1.0 - p, p])
        P = (np.clip(Z, -1.0, 1.0) + 1.0) / 2.0
        norm = P.sum(axis=1)
        zero = norm == 0
        P[zero] = 1.0
        norm[zero] = P.shape[1]
        return P / norm[:, None]

    @available_if(_check_proba)
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class SGDRegressor(RegressorMixin, _GridSGD):
    """Linear regressor trained by the grid's partitioned minibatch SGD.

    Parameters are those of :class:`SGDClassifier` except:

    loss : {"squared_error", "huber"}, default="squared_error"
    epsilon : float, default=0.1
        Width of the quadratic zone of ``huber``.

    power_t : float, default=0.5
        Exponent of ``"invscaling"`` (and of the ``squared_error`` decay of
        ``"auto"``).

    and there are no ``class_weight`` and ``n_jobs``.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : ndarray of shape (1,)
    n_features_in_ : int
    n_iter_ : int
    t_ : float
    history_ : list of dict
    """

    _classification = False

    def __init__(
        self,
        loss: str = "squared_error",
        *,
        penalty: str | None = "l2",
        alpha: float = 1e-4,
        l1_ratio: float = 0.15,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float | None = 1e-3,
        shuffle: bool = True,
        verbose: int = 0,
        epsilon: float = 0.1,
        random_state: int | None = None,
        learning_rate: str = "auto",
        eta0: float | None = None,
        power_t: float = 0.5,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 5,
        warm_start: bool = False,
        average: bool | int = False,
        rounds: int = 10,
        local_epochs: int = 1,
        batch_size: int | str = "auto",
        partition_rows: int | str = "auto",
        aggregate: str = "mean",
        server_momentum: float = 0.0,
    ) -> None:
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.average = average
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.partition_rows = partition_rows
        self.aggregate = aggregate
        self.server_momentum = server_momentum

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets."""
        return self._scores(X)[:, 0]


register_merge(SGDClassifier, SGDRegressor)(SGDJobRule)


#: scikit-learn's default ``max_iter``: left at it, ``rounds`` decides
_SKLEARN_MAX_ITER = 1000
#: the default of ``rounds``
_DEFAULT_ROUNDS = 10


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


__all__ = ["SGDClassifier", "SGDRegressor"]
