"""System test: `grid scheduler` SIGKILLed mid-job and restarted on the same state directory."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.errors import GridConnectionError
from grid.scheduler.recovery import LOST_REASON
from jobs import PartialFit
from jobs.data import Files
from tests.conftest import wait_for
from tests.system.procs import close_grid as _close
from tests.system.procs import free_port, grid_processes, wait_nodes, write_npz_parts

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROUNDS = 80
#: `grid node --death-timeout` of the nodes that must give up on their scheduler (systemd's case)
DEATH_TIMEOUT = 5


def _estimator(rounds: int) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=rounds)


def test_scheduler_sigkilled_mid_job_resumes_files_job_and_keeps_results(tmp_path):
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=5, random_state=0)
    files = Files(write_npz_parts(tmp_path, X, y, 4))
    state = tmp_path / "state"
    port = free_port()  # the scheduler restarts on it: clients and the job's placement keep its address
    durable = ("--state-dir", str(state))

    with grid_processes() as procs:
        scheduler, address = procs.scheduler("eu", port=port, args=durable)
        # nodes that give up on a dead scheduler (as under systemd with --death-timeout), so the restarted
        # scheduler is first seen without nodes; tests/system/test_node_reconnect.py covers nodes that wait
        old_nodes = [
            procs.node("eu", address, f"n{i}", data_roots=(str(tmp_path),), args=("--death-timeout", str(DEATH_TIMEOUT)))
            for i in (1, 2)
        ]
        spec = {"regions": {"eu": address}}
        g = Grid.connect(spec)
        try:
            wait_nodes(g, "eu", 2)
            clean = g.submit(_estimator(ROUNDS), files)
            reference = clean.result(timeout=300)  # finished before the kill: its result must stay fetchable
            in_memory = g.submit(_estimator(1_000_000), g.scatter(X, y))
            job = g.submit(_estimator(ROUNDS), files)
            checkpoint = state / "eu" / "checkpoints" / f"{job.id}.bin"
            wait_for(lambda: checkpoint.exists() and job.info()["rounds_done"] >= 5, timeout=120, what="5 checkpointed rounds")
            wait_for(lambda: in_memory.info()["rounds_done"] >= 1, timeout=60, what="the in-memory job running")
            before = job.history
            assert len(before) < ROUNDS, "the job finished before the kill; raise ROUNDS"

            # a client waiting on the job when its scheduler dies is told to reconnect
            errors: list[BaseException] = []

            def waiting() -> None:
                try:
                    job.wait()
                except BaseException as exc:  # noqa: BLE001 - checked below
                    errors.append(exc)

            waiter = threading.Thread(target=waiting, daemon=True)
            waiter.start()
            os.killpg(scheduler.pid, signal.SIGKILL)
            assert scheduler.wait(timeout=30) == -signal.SIGKILL
            waiter.join(timeout=120)
            assert not waiter.is_alive() and errors, "job.wait() did not notice its scheduler died"
            assert isinstance(errors[0], GridConnectionError) and "reconnect" in str(errors[0]), repr(errors[0])
        finally:
            _close(g)
        # nodes whose scheduler stayed away for their death timeout end with EX_TEMPFAIL (75), for
        # systemd's Restart=on-failure
        for node in old_nodes:
            assert node.wait(timeout=120) == 75, procs.log(node)
            assert f"for {DEATH_TIMEOUT}.0 s (--death-timeout)" in procs.log(node), procs.log(node)

        restarted = time.time()
        scheduler2, again = procs.scheduler("eu", port=port, args=durable, name="scheduler-eu-restarted")
        assert again == address
        listening = time.time()
        g2 = Grid.connect(spec)
        try:
            resumed = g2.job(job.id)
            info = resumed.info()
            k = info["rounds_done"]
            assert k >= 5 and info["status"] == "queued", info  # known from the checkpoint before any node is back
            assert len(info["history"]) == k

            lost = g2.job(in_memory.id)
            assert lost.status == "failed" and lost.info()["error"] == LOST_REASON

            np.testing.assert_array_equal(g2.job(clean.id).result(timeout=30).estimator_.coef_, reference.estimator_.coef_)

            nodes_started = time.time()
            for i in (3, 4):
                procs.node("eu", address, f"n{i}", data_roots=(str(tmp_path),))
            wait_nodes(g2, "eu", 2)
            fitted = resumed.result(timeout=300)
            history = resumed.history
        finally:
            _close(g2)

        # resumed from round k + 1: the rounds before were not run again
        assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
        m = min(k, len(before))
        assert [h["time"] for h in history[:m]] == [h["time"] for h in before[:m]]
        assert history[k]["time"] > restarted
        np.testing.assert_allclose(fitted.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-9)

        # and from a new process, as a user would after the restart
        fetcher = procs.python(
            f"""
import json
from grid import Grid
g = Grid.connect({spec!r})
est = g.job({job.id!r}).result(timeout=60)
print("COEF", json.dumps(est.estimator_.coef_.ravel().tolist()), flush=True)
g.close()
""",
            "fetcher",
        )
        assert fetcher.wait(timeout=120) == 0, procs.log(fetcher)
        line = [l for l in procs.log(fetcher).splitlines() if l.startswith("COEF")][0]
        np.testing.assert_array_equal(np.array(json.loads(line[5:])), fitted.estimator_.coef_.ravel())

        print(
            f"\nrestart timings: scheduler listening {listening - restarted:.2f}s after its start; "
            f"first resumed round (round {k + 1}) done {history[k]['time'] - restarted:.2f}s after it, "
            f"{history[k]['time'] - nodes_started:.2f}s after 2 new `grid node` processes were started; "
            f"{k} rounds checkpointed at the kill"
        )
        for line in procs.log(scheduler2).splitlines():  # when nodes joined, files were read, the job resumed
            if any(w in line for w in ("state directory", "Register worker", "read again", "resumes at round")):
                print(line)
