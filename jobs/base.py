"""The scikit-learn facade shared by the grid's job estimators.

A job estimator describes a training job (:meth:`GridJobMixin._job_request`)
and hands it to a grid; it learns the result back with
:meth:`GridJobMixin._load_result`. ``fit`` finds a grid the way a dask
``Client`` is found: the ``grid=`` argument, else the grid of an enclosing
``with grid:`` block (in any thread of the process, and in joblib's worker
processes for estimators sent there from the block), else the process's
embedded local grid (see ``grid.client.default_grid``).
"""

from __future__ import annotations

import sys
from typing import Any

from jobs.merge import State
from jobs.spec import resolve_class


class GridJobMixin:
    """Mixin for estimators whose ``fit`` runs as a grid job."""

    #: the job kind the scheduler's driver runs (see ``grid.scheduler.driver``)
    _job_kind = "partial_fit"

    # --- what subclasses provide -------------------------------------------------
    def _job_request(self) -> dict:  # pragma: no cover - abstract
        """Validate parameters and describe the job as plain data.

        Raises before any work is scheduled when a parameter is wrong.
        """
        raise NotImplementedError

    def _is_classifier(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_result(self, state: State, history: list[dict], request: dict) -> None:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _from_request(cls, request: dict) -> "GridJobMixin":  # pragma: no cover - abstract
        raise NotImplementedError

    def _needs_y(self) -> bool:
        """Whether ``fit`` needs a target (classifiers and regressors)."""
        return True

    def _check_fit_data(self, X: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any, Any]:
        """scikit-learn's checks of in-memory data, before any of it moves.

        Dask collections, file datasets and placed datasets are checked by the
        grid's data layer, partition by partition, instead.
        """
        import numpy as np
        import scipy.sparse as sp
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import _check_sample_weight, check_array, check_X_y

        in_memory = not hasattr(X, "__dask_graph__") and (
            sp.issparse(X) or isinstance(X, (np.ndarray, list, tuple)) or hasattr(X, "to_numpy")
            or hasattr(X, "__array__")
        )
        if not in_memory or hasattr(y, "__dask_graph__"):
            return X, y, sample_weight
        if y is None:
            if self._needs_y():
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
            return check_array(X, accept_sparse="csr", dtype=[np.float64, np.float32]), None, sample_weight
        X, y = check_X_y(X, y, accept_sparse="csr", dtype=[np.float64, np.float32], y_numeric=not self._is_classifier())
        if self._is_classifier():
            check_classification_targets(y)
            labels = np.unique(y)
            if labels.size < 2:
                raise ValueError(
                    f"Classifier can't train when only one class is present: y has the single class "
                    f"{labels.tolist()!r}; a classifier needs at least 2 classes"
                )
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        return X, y, sample_weight

    # --- scikit-learn entry point ------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, grid: Any = None, verbose: bool | int | None = None,
            **submit_kwargs: Any) -> "GridJobMixin":
        """Train on the grid and wait for the result.

        Parameters
        ----------
        X : array-like, sparse matrix, dask collection, or a dataset placed
            with ``Grid.scatter``
        y : array-like, optional
        grid : grid.Grid, optional
            Defaults to the grid of an enclosing ``with grid:`` block, else
            the embedded local grid of this process, started on first use.
        verbose : bool or int, optional
            Show a progress bar (round k/N, loss, samples/s) on stderr while
            waiting; defaults to the estimator's ``verbose`` parameter.
        **submit_kwargs
            Passed to :meth:`grid.Grid.submit` (e.g. ``regions=``).

        Returns
        -------
        self
        """
        from grid.client import default_grid  # lazy: jobs math never needs the runtime

        self._job_request()  # parameter errors first, before the data is looked at
        X, y, sample_weight = self._check_fit_data(X, y, submit_kwargs.pop("sample_weight", None))
        if sample_weight is not None:
            submit_kwargs["sample_weight"] = sample_weight
        g = default_grid(grid, recipe=self.__dict__.get("_grid_recipe"))
        job = g.submit(self, X, y, **submit_kwargs)
        if verbose if verbose is not None else getattr(self, "verbose", False):
            job.progress()
        fitted = job.result()
        self.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
        return self

    # --- reaching the grid from joblib's worker processes ------------------------------
    def __getstate__(self) -> dict:
        # GridSearchCV and cross_validate pickle a clone of the estimator to each
        # joblib worker process. Pickled inside a `with grid:` block, it carries how
        # to reach that grid (plain data), so its fit there uses the same grid.
        state = dict(super().__getstate__())  # type: ignore[misc]  # a copy: it may be __dict__ itself
        state.pop("_grid_recipe", None)
        client = sys.modules.get("grid.client")  # no grid imported: no grid can be current
        current = client.current_grid() if client is not None else None
        if current is not None:
            state["_grid_recipe"] = current.connection_recipe()
        return state


def job_estimator_from_request(request: dict) -> GridJobMixin:
    """Rebuild the unfitted job estimator that produced ``request``."""
    cls = resolve_class(request["facade"])
    return cls._from_request(request)
