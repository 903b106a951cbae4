"""A hand-started `grid node` waits for its scheduler and joins it again by itself.

Real `grid scheduler` and `grid node` processes, no systemd: a node whose
scheduler goes away keeps running, tries again with backoff, and rejoins the
scheduler restarted on the same address under the same name (the same
process: no new node was started); a `jobs.data.Files` job interrupted by the
restart finishes on those nodes with the uninterrupted run's model. While it
waits, SIGTERM ends the node within seconds (status 0), and with
``--death-timeout`` it gives up and exits 75 (EX_TEMPFAIL) for systemd.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from sklearn.datasets import make_classification

from grid import Grid
from jobs.data import Files
from tests.conftest import wait_for
from tests.system.chaos import node_names
from tests.system.procs import close_grid, free_port, grid_processes, wait_nodes, write_npz_parts
from tests.system.test_scheduler_restart import ROUNDS, _estimator

pytestmark = [pytest.mark.system, pytest.mark.slow]

#: how soon after the restarted scheduler listens its nodes must be back (backoff capped at 60 s, jittered)
REJOIN_BOUND = 60
#: how soon SIGTERM must end a node that waits for its scheduler
STOP_BOUND = 5


def _waiting(procs, node) -> bool:
    return "lost the scheduler" in procs.log(node) and "not reachable (attempt" in procs.log(node)


def test_node_rejoins_a_restarted_scheduler_under_its_name():
    port = free_port()
    with grid_processes() as procs:
        scheduler, address = procs.scheduler("eu", port=port)
        node = procs.node("eu", address, "n1")
        spec = {"regions": {"eu": address}}
        with Grid.connect(spec) as g:
            wait_nodes(g, "eu", 1)
            assert node_names(g, "eu") == {"n1"}
        wait_for(lambda: "joined region eu" in procs.log(node), timeout=60, what="the node up")
        scheduler.send_signal(signal.SIGTERM)  # an operator stops it (e.g. to upgrade it)
        assert scheduler.wait(timeout=60) == 0, procs.log(scheduler)
        wait_for(lambda: _waiting(procs, node), timeout=60, what="the node waiting for its scheduler")
        assert node.poll() is None, procs.log(node)

        _, again = procs.scheduler("eu", port=port, name="scheduler-eu-restarted")
        assert again == address
        listening = time.monotonic()
        g2 = Grid.connect(spec)
        try:
            wait_for(lambda: node_names(g2, "eu") == {"n1"}, timeout=REJOIN_BOUND, what="n1 back in eu")
            print(f"\nnode rejoined {time.monotonic() - listening:.1f} s after the restarted scheduler listened")
        finally:
            close_grid(g2)
        assert node.poll() is None, procs.log(node)  # the same process rejoined: nothing restarted it
        # the scheduler lists the worker a moment before the node logs that it joined
        wait_for(lambda: procs.log(node).count("joined region eu") == 2, timeout=30, what="the node's second join logged")
        log = procs.log(node)
        # one INFO line per attempt, nothing louder: after the one warning about the loss, none
        after_loss = log[log.index("lost the scheduler"):].splitlines()[1:]
        retries = [line for line in after_loss if "not reachable (attempt" in line]
        assert retries and all(" grid.node INFO " in line for line in retries), retries
        assert [line for line in after_loss if " grid.node WARNING " in line or " grid.node ERROR " in line] == []


def test_files_job_interrupted_by_a_scheduler_restart_finishes_on_the_rejoined_nodes(tmp_path):
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=5, random_state=0)
    files = Files(write_npz_parts(tmp_path, X, y, 4))
    port = free_port()
    durable = ("--state-dir", str(tmp_path / "state"))
    with grid_processes() as procs:
        scheduler, address = procs.scheduler("eu", port=port, args=durable)
        nodes = [procs.node("eu", address, f"n{i}", data_roots=(str(tmp_path),)) for i in (1, 2)]
        spec = {"regions": {"eu": address}}
        g = Grid.connect(spec)
        try:
            wait_nodes(g, "eu", 2)
            reference = g.submit(_estimator(ROUNDS), files).result(timeout=300)  # uninterrupted
            job = g.submit(_estimator(ROUNDS), files)
            checkpoint = tmp_path / "state" / "eu" / "checkpoints" / f"{job.id}.bin"
            wait_for(lambda: checkpoint.exists() and job.info()["rounds_done"] >= 5, timeout=120, what="5 checkpointed rounds")
            assert job.info()["rounds_done"] < ROUNDS, "the job finished before the kill; raise ROUNDS"
            killed = time.time()
            os.killpg(scheduler.pid, signal.SIGKILL)
            assert scheduler.wait(timeout=30) == -signal.SIGKILL
        finally:
            close_grid(g)
        for node in nodes:
            wait_for(lambda: _waiting(procs, node), timeout=60, what="the nodes waiting for their scheduler")

        procs.scheduler("eu", port=port, args=durable, name="scheduler-eu-restarted")
        g2 = Grid.connect(spec)
        try:
            wait_for(lambda: node_names(g2, "eu") == {"n1", "n2"}, timeout=REJOIN_BOUND, what="n1 and n2 back in eu")
            resumed = g2.job(job.id)
            fitted = resumed.result(timeout=300)
            history = resumed.history
        finally:
            close_grid(g2)
        assert all(node.poll() is None for node in nodes)  # the original processes did the rest of the job
        assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
        assert history[-1]["time"] > killed  # the last rounds ran after the restart
        np.testing.assert_allclose(fitted.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-9)


def test_sigterm_ends_a_node_waiting_for_its_scheduler_within_seconds():
    with grid_processes() as procs:
        scheduler, address = procs.scheduler("eu")
        node = procs.node("eu", address, "n1")
        wait_for(lambda: "joined region eu" in procs.log(node), timeout=90, what="the node up")
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait(timeout=30)
        wait_for(lambda: _waiting(procs, node), timeout=60, what="the node waiting for its scheduler")
        start = time.monotonic()
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=60)
        took = time.monotonic() - start
        print(f"\nwaiting node stopped {took:.2f} s after SIGTERM")
        assert code == 0, procs.log(node)  # a requested stop
        assert took < STOP_BOUND, procs.log(node)
        assert "stopped while waiting for the scheduler" in procs.log(node)


def test_death_timeout_without_a_scheduler_exits_75():
    port = free_port()  # nothing listens there
    with grid_processes() as procs:
        start = time.monotonic()
        node = procs.node("eu", f"tcp://127.0.0.1:{port}", "n1", args=("--death-timeout", "5"))
        code = node.wait(timeout=90)
        took = time.monotonic() - start
        print(f"\nnode with --death-timeout 5 and no scheduler exited {took:.1f} s after it was started")
        assert code == 75, procs.log(node)
        log = procs.log(node)
        assert "no scheduler answered" in log and "(--death-timeout)" in log, log
        # it waited the 5 s (with attempts in between), and not much longer than that plus its start-up
        assert 5 <= took < 5 + 30, log
        assert log.count("not reachable (attempt") >= 1, log
