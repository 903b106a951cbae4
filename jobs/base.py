"""The scikit-learn facade shared by the grid's job estimators.

A job estimator describes a training job (:meth:`GridJobMixin._job_request`)
and hands it to a grid; it learns the result back with
:meth:`GridJobMixin._load_result`. ``fit`` finds a grid the way a dask
``Client`` is found: the ``grid=`` argument, else the grid of an enclosing
``with grid:`` block, else an embedded local grid started for this one fit.
"""

from __future__ import annotations

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

    # --- scikit-learn entry point ------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, grid: Any = None, **submit_kwargs: Any) -> "GridJobMixin":
        """Train on the grid and wait for the result.

        Parameters
        ----------
        X : array-like, sparse matrix, dask collection, or a dataset placed
            with ``Grid.scatter``
        y : array-like, optional
        grid : grid.Grid, optional
            Defaults to the grid of an enclosing ``with grid:`` block, else an
            embedded local grid is started for this call and closed after it.
        **submit_kwargs
            Passed to :meth:`grid.Grid.submit` (e.g. ``regions=``).

        Returns
        -------
        self
        """
        from grid.client import default_grid  # lazy: jobs math never needs the runtime

        with default_grid(grid) as g:
            job = g.submit(self, X, y, **submit_kwargs)
            if getattr(self, "verbose", False):
                job.progress()
            fitted = job.result()
        self.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
        return self


def job_estimator_from_request(request: dict) -> GridJobMixin:
    """Rebuild the unfitted job estimator that produced ``request``."""
    cls = resolve_class(request["facade"])
    return cls._from_request(request)
