"""``Job``: the client's handle on a grid job, valid from any process."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from grid import wire
from grid.errors import GridConnectionError, GridWarning, JobCancelled, JobFailed, check_reply
from grid.protocol.requests import FINISHED
from jobs.base import job_estimator_from_request

if TYPE_CHECKING:
    from grid.client import Grid

#: longest single wait on the scheduler; waits loop so Ctrl-C stays responsive
_WAIT_SLICE = 5.0


class Job:
    """A training job running on the grid.

    Obtained from :meth:`grid.Grid.submit` or, in any process, from
    :meth:`grid.Grid.job` with the job's id. The job runs in its home
    scheduler; this object only asks about it.
    """

    def __init__(self, grid: "Grid", job_id: str, estimator: Any = None) -> None:
        self.grid = grid
        self.id = job_id
        self.home = job_id.rsplit("-", 1)[0]
        self._estimator = estimator
        self._fitted: Any = None
        self._tainted: dict | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id}: {self.status}>"

    def _call(self, op: str, **kwargs: Any) -> dict:
        client = self.grid.client(self.home)
        try:
            reply = client.sync(getattr(client.scheduler, op), job_id=self.id, **kwargs)
        except OSError as exc:  # CommClosedError, refused, timed out: the scheduler went away
            raise GridConnectionError(
                f"job {self.id}: lost the connection to the scheduler of region {self.home!r} "
                f"({type(exc).__name__}: {exc}). A scheduler restarted with a state directory "
                f"(grid.scheduler.state-dir) keeps the job: reconnect with Grid.connect(spec) and "
                f"reattach with g.job({self.id!r})"
            ) from exc
        return check_reply(reply, f"job {self.id}")

    def info(self) -> dict:
        """Everything the home scheduler records about the job, with its history."""
        return self._call("grid_job")["job"]

    @property
    def status(self) -> str:
        """``"queued"``, ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``."""
        return self._call("grid_job", history=False)["job"]["status"]

    @property
    def history(self) -> list[dict]:
        """One dict per finished round: loss, score, samples, seconds, bytes across regions."""
        return self.info()["history"]

    def done(self) -> bool:
        return self.status in FINISHED

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job finishes or ``timeout`` seconds pass; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
            status = self._call("grid_wait", timeout=max(0.0, left))["job_status"]
            if status in FINISHED or (deadline is not None and time.monotonic() >= deadline):
                return status

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return the fitted estimator.

        Returns
        -------
        estimator
            A fitted copy of the submitted job estimator (for ``PartialFit``,
            its ``estimator_`` is the plain scikit-learn model). It is
            picklable and works without the grid.

        Raises
        ------
        TimeoutError, JobFailed, JobCancelled

        Warns
        -----
        grid.errors.GridWarning
            When the job ran with ``verify="adaptive"`` and a node that had
            updates accepted unchecked in it was caught cheating after the job
            ended: the model may hold its wrong updates. The warning names the
            node and its rounds; :meth:`rerun` trains it again without them.
        """
        if self._fitted is not None:
            try:  # a node may have been caught since the result was fetched
                self._tainted = self._call("grid_job", history=False)["job"].get("tainted")
            except Exception:  # noqa: BLE001 - the grid is gone or closed: the fitted model is still here
                pass  # say what was known
            self._warn_tainted(self._tainted)
            return self._fitted
        status = self.wait(timeout)
        if status not in FINISHED:
            raise TimeoutError(f"job {self.id} is still {status} after {timeout}s")
        reply = self._call("grid_result")
        if status == "failed":
            raise JobFailed(f"job {self.id} failed: {reply['error']}")
        if status == "cancelled":
            raise JobCancelled(f"job {self.id} was cancelled")
        request = reply["request"]
        estimator = self._estimator if self._estimator is not None else job_estimator_from_request(request)
        from sklearn.base import clone

        fitted = clone(estimator)
        state, _ = wire.decode(reply["state"])
        fitted._load_result(state, reply["history"], request)
        self._fitted = fitted
        self._tainted = reply.get("tainted")
        self._warn_tainted(self._tainted)
        return fitted

    def _warn_tainted(self, tainted: dict | None) -> None:
        if not tainted:
            return
        warnings.warn(
            f"job {self.id} is tainted: node {tainted.get('node')!r} (region {tainted.get('region')!r}) was caught "
            f"returning wrong updates after the job ended, and updates of it were accepted unchecked in round(s) "
            f"{tainted.get('rounds')} (verify='adaptive'); the model may be wrong. Train it again without that node: "
            f"job.rerun() (or job.rerun(verify=2) to check every update)",
            GridWarning,
            stacklevel=3,
        )

    def rerun(self, verify: int | str | None = None) -> "Job":
        """Submit this job again, with the same estimator, data and settings; return the new job.

        Meant for a tainted job (see :meth:`result`): the caught node is
        quarantined, so the new run does without it. Only the job's owner
        may rerun it.

        Parameters
        ----------
        verify : int or "adaptive", optional
            Replaces the job's ``verify`` setting (default: keep it).

        Raises
        ------
        ValueError
            When the job's data was its own (``g.submit(est, X, y)`` with
            in-memory data): it was freed when the job ended; submit again
            with the data, or place it with :meth:`grid.Grid.scatter` first.
        PermissionError
            When the job belongs to another user.
        """
        reply = self._call("grid_rerun", **({"verify": verify} if verify is not None else {}))
        return Job(self.grid, reply["id"], self._estimator)

    def cancel(self) -> str:
        """Stop the job (within one round) and free its tasks and data; return its status."""
        return self._call("grid_cancel")["job_status"]

    def progress(self, **kwargs: Any) -> None:
        """Show a progress bar until the job finishes (see :func:`grid.progress.progress`)."""
        from grid.progress import progress

        progress(self, **kwargs)
