"""Durable jobs in process: a region's scheduler stops and a new one on the same state directory takes over.

The system test (tests/system/test_scheduler_restart.py) SIGKILLs a real
`grid scheduler`; this one closes an in-process region gracefully (what
`systemctl restart` does) and checks what is on disk and what the new
scheduler makes of it.
"""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid, wire
from grid.errors import JobFailed
from grid.scheduler.recovery import LOST_REASON
from grid.scheduler.state import StateDir
from jobs import PartialFit
from jobs.data import Files
from tests.conftest import wait_for

ROUNDS = 120


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    X, y = make_classification(n_samples=2000, n_features=8, random_state=0)
    for i in range(4):
        np.savez(root / f"part-{i}.npz", X=X[500 * i : 500 * (i + 1)], y=y[500 * i : 500 * (i + 1)])
    return str(root / "part-*.npz"), X, y


def _local_grid(state_dir, nodes: int = 2) -> Grid:
    with dask.config.set({"grid.scheduler.state-dir": str(state_dir)}):
        return Grid.local(regions={"eu": nodes}, processes=False, dashboard=False)


def _stop_scheduler_then_close(g: Grid) -> None:
    """Stop the region's scheduler first, as `grid scheduler` does on SIGTERM, then the rest.

    (Grid.close alone would stop the nodes first, and a job whose nodes
    vanish fails for that reason before its scheduler stops.)
    """
    try:
        cluster = g._local.clusters["eu"]
        cluster.sync(cluster.scheduler.close)
    finally:
        # the cluster then tries to reach its closed scheduler: give up after 1 s, not 30
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            g.close()


def test_jobs_checkpoints_and_results_survive_a_scheduler_restart(tmp_path, npz_files):
    pattern, X, y = npz_files
    state = tmp_path / "state"

    g = _local_grid(state)
    try:
        clean = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=ROUNDS), Files(pattern))
        reference = clean.result(timeout=120)
        in_memory = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=100_000), g.scatter(X, y))
        job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=ROUNDS), Files(pattern))
        checkpoint = state / "eu" / "checkpoints" / f"{job.id}.bin"
        wait_for(lambda: checkpoint.exists() and job.info()["rounds_done"] >= 3, timeout=60, what="3 checkpointed rounds")
        wait_for(lambda: in_memory.info()["rounds_done"] >= 1, timeout=60, what="the in-memory job running")
        before = job.history
    finally:
        _stop_scheduler_then_close(g)

    # what the stopped scheduler left: every record, the running job's checkpoint, the finished job's result
    disk = StateDir(state, "eu")
    records = {r.id: r for r in disk.load_jobs()}
    assert records[clean.id].status == "done" and len(records[clean.id].history) == ROUNDS
    assert records[job.id].status == "running" and records[in_memory.id].status == "running"
    cp = disk.load_checkpoint(job.id)
    assert cp is not None and cp.rounds_done >= 3 and len(cp.history) == cp.rounds_done
    saved = disk.load_result(clean.id)
    assert saved is not None, "the finished job's result is not on disk"
    np.testing.assert_array_equal(wire.decode(saved)[0]["coef_"], reference.estimator_.coef_)  # the model it returned
    assert [d["paths"] for d in disk.load_datasets()] and all(d["job_owned"] for d in disk.load_datasets())

    g2 = _local_grid(state)
    try:
        info = g2.job(job.id).info()
        assert info["rounds_done"] == cp.rounds_done > 0  # known at once, from the checkpoint
        # the in-memory job cannot resume: failed with the reason, not restarted from scratch
        lost = g2.job(in_memory.id)
        assert lost.status == "failed" and lost.info()["error"] == LOST_REASON
        with pytest.raises(JobFailed, match="resubmit"):
            lost.result()
        # the finished job's result is still there
        again = g2.job(clean.id).result(timeout=10)
        np.testing.assert_array_equal(again.estimator_.coef_, reference.estimator_.coef_)
        # the Files job resumes from its checkpoint and ends with the clean run's model
        resumed = g2.job(job.id)
        fitted = resumed.result(timeout=180)
        history = resumed.history
        assert len(history) == ROUNDS and [h["round"] for h in history] == list(range(1, ROUNDS + 1))
        k = min(cp.rounds_done, len(before))
        assert [h["time"] for h in history[:k]] == [h["time"] for h in before[:k]]  # those rounds were not run again
        np.testing.assert_allclose(fitted.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-9)
        # finishing removed the checkpoint and the job-owned dataset's recipe; the record says done
        assert disk.load_checkpoint(job.id) is None
        assert {r.id: r.status for r in disk.load_jobs()}[job.id] == "done"
        wait_for(lambda: disk.load_datasets() == [], timeout=10, what="job-owned recipes forgotten")
    finally:
        g2.close()


def test_a_job_cancelled_while_waiting_for_its_files_is_cancelled_on_disk(tmp_path, npz_files):
    """A resumed job waits for nodes; cancelling it then ends it like any other job."""
    pattern, _, _ = npz_files
    state = tmp_path / "state"
    g = _local_grid(state)
    try:
        job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=100_000), Files(pattern))
        wait_for(lambda: job.info()["rounds_done"] >= 1, timeout=60, what="a round")
    finally:
        _stop_scheduler_then_close(g)
    g2 = _local_grid(state, nodes=0)  # no node: reading the files again waits
    try:
        again = g2.job(job.id)
        assert again.status == "queued"
        assert again.cancel() == "cancelled"
        assert {r.id: r.status for r in StateDir(state, "eu").load_jobs()}[job.id] == "cancelled"
    finally:
        g2.close()
