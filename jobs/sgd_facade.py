"""What ``jobs.SGDClassifier`` and ``jobs.SGDRegressor`` share: the facade of :mod:`jobs.sgd`.

:class:`_GridSGD` checks the parameters, describes the grid job, loads the
trained state back into scikit-learn's attributes, runs ``partial_fit`` with
the numpy kernel on the caller's machine and computes the decision scores.
The two public estimators (:mod:`jobs.sgd_estimators`) add only their
parameters and their predictions.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from jobs import sgd
from jobs.aggregate import AGGREGATORS
from jobs.base import GridJobMixin
from jobs.local import derive_seed
from jobs.merge import State
from jobs.partial_fit import _check_int
from jobs.spec import class_path, estimator_spec

#: scikit-learn's default ``max_iter``: left at it, ``rounds`` decides
_SKLEARN_MAX_ITER = 1000
#: the default of ``rounds``
_DEFAULT_ROUNDS = 10


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
