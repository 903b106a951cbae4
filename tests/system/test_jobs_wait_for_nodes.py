"""Jobs wait for volunteers: a region without nodes, real `grid scheduler` and `grid node` processes.

* A job on ``jobs.data.Files`` data submitted before any node joined is
  queued on the scheduler, with the reason in ``g.jobs()``, and starts by
  itself when the first node joins; its model equals that of the same job
  submitted once the node is there. Cancelling such a queued job works.
* ``g.submit`` on in-memory data waits (client side) for the node, up to
  ``grid.jobs.wait-for-nodes``.
* ``g.scatter`` with no node fails after ``grid.jobs.wait-for-nodes`` seconds
  with the reason and one progress line; 0 fails at once.
"""

from __future__ import annotations

import threading
import time

import dask.config
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from jobs import PartialFit
from jobs.data import Files
from tests.system.procs import grid_processes, wait_nodes, write_npz_parts

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _estimator() -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=5)


def _row(g: Grid, job_id: str) -> dict:
    return next(j for j in g.jobs() if j["id"] == job_id)


def test_files_job_submitted_before_any_node_is_queued_and_starts_when_one_joins(tmp_path):
    X, y = make_classification(n_samples=2000, n_features=8, n_informative=4, random_state=0)
    files = Files(write_npz_parts(tmp_path, X, y, 4))
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        with Grid.connect({"regions": {"eu": address}}) as g, dask.config.set({"grid.jobs.wait-for-nodes": 300}):
            start = time.monotonic()
            early = g.submit(_estimator(), files)
            assert time.monotonic() - start < 10  # queued on the scheduler, not waited for here
            row = _row(g, early.id)
            assert row["status"] == "queued", row
            assert "has no nodes" in row["waiting"] and "starts when one joins" in row["waiting"], row
            assert early.info()["waiting"] == row["waiting"]

            dropped = g.submit(_estimator(), files)
            assert dropped.cancel() == "cancelled"
            assert _row(g, dropped.id)["status"] == "cancelled"

            # in-memory data waits on the client, up to grid.jobs.wait-for-nodes
            submitted: list = []
            waiter = threading.Thread(target=lambda: submitted.append(g.submit(_estimator(), X, y)), daemon=True)
            waiter.start()

            procs.node("eu", address, "n1", data_roots=(str(tmp_path),))
            fitted = early.result(timeout=300)
            history = early.history
            assert [h["round"] for h in history] == [1, 2, 3, 4, 5]
            assert "waiting" not in _row(g, early.id)

            waiter.join(timeout=120)
            assert submitted, "the in-memory submit did not return once the node joined"
            assert submitted[0].result(timeout=300).score(X, y) > 0.5

            wait_nodes(g, "eu", 1)
            later = g.submit(_estimator(), files).result(timeout=300)
        np.testing.assert_array_equal(fitted.estimator_.coef_, later.estimator_.coef_)
        np.testing.assert_array_equal(fitted.classes_, later.classes_)


def test_scatter_without_nodes_fails_after_wait_for_nodes_with_the_reason(capsys):
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        with Grid.connect({"regions": {"eu": address}}) as g:
            with dask.config.set({"grid.jobs.wait-for-nodes": 2}):
                start = time.monotonic()
                with pytest.raises(RuntimeError, match=r"region 'eu' has no nodes \(waited 2 s: grid.jobs.wait-for-nodes\); start one"):
                    g.scatter(X, y)
                waited = time.monotonic() - start
            line = capsys.readouterr().err
            with capsys.disabled():
                print(f"\ng.scatter without nodes failed {waited:.2f} s after it was called (wait-for-nodes 2)")
            assert 2 <= waited < 6
            assert "waiting for nodes: 0/1 needed nodes there (eu: 0" in line, line

            with dask.config.set({"grid.jobs.wait-for-nodes": 0}):  # as before: at once
                start = time.monotonic()
                with pytest.raises(RuntimeError, match=r"region 'eu' has no nodes; start one"):
                    g.scatter(X, y)
                assert time.monotonic() - start < 2
