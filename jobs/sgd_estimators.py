"""``jobs.SGDClassifier`` and ``jobs.SGDRegressor``: the grid's partitioned SGD.

Thin scikit-learn facades over :mod:`jobs.sgd`. ``fit`` describes a job (an
allowlisted class, its plain parameters) and hands it to a grid: every round,
each partition runs local minibatch SGD from the current global parameters
(:func:`jobs.sgd.sgd_step`), and the scheduler reduces the updates with
:class:`jobs.merge.SGDJobRule`. ``partial_fit`` runs the same numpy kernel on
the caller's machine, for streaming, without any grid. What both estimators
share (checks, the job, loading its result, ``partial_fit``) is
:class:`jobs.sgd_facade._GridSGD`; this module holds their parameters and
predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if

from jobs.merge import SGDJobRule, register_merge
from jobs.sgd_facade import _GridSGD


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


__all__ = ["SGDClassifier", "SGDRegressor"]
