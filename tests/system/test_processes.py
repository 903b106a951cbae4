"""System tests: real `grid scheduler` and `grid node` processes, killed for real."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from tests.conftest import wait_for
from tests.integration.reference import ATOL, assert_same_model, fedavg
from tests.system.procs import grid_processes, wait_nodes

pytestmark = [pytest.mark.system, pytest.mark.slow]

DATA = """
import numpy as np
from sklearn.datasets import make_classification
X, y = make_classification(n_samples=6000, n_features=10, n_informative=5, random_state={seed})
"""


def test_job_outlives_its_submitter_and_is_fetched_by_id_elsewhere():
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        procs.node("eu", address, "n1")
        procs.node("eu", address, "n2")
        spec = {"regions": {"eu": address}}
        with Grid.connect(spec) as g:
            wait_nodes(g, "eu", 2)
        submitter = procs.python(
            DATA.format(seed=0)
            + f"""
from sklearn.linear_model import SGDClassifier
from grid import Grid
from jobs import PartialFit
g = Grid.connect({spec!r})
job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=30), X, y)
print(job.id, flush=True)
g.close()
""",
            "submitter",
        )
        assert submitter.wait(timeout=120) == 0, procs.log(submitter)
        job_id = procs.log(submitter).strip().splitlines()[-1]
        fetcher = procs.python(
            f"""
import json
from grid import Grid
g = Grid.connect({spec!r})
est = g.job({job_id!r}).result(timeout=120)
model = {{"coef": est.estimator_.coef_.tolist(), "intercept": est.estimator_.intercept_.tolist(), "rounds": len(est.history_)}}
print("MODEL", json.dumps(model), flush=True)
g.close()
""",
            "fetcher",
        )
        assert fetcher.wait(timeout=180) == 0, procs.log(fetcher)
        line = [l for l in procs.log(fetcher).splitlines() if l.startswith("MODEL")][0]
        model = json.loads(line[len("MODEL "):])
        assert model["rounds"] == 30
        # the job the submitter left behind trained the model of the same job run in this process
        X, y = make_classification(n_samples=6000, n_features=10, n_informative=5, random_state=0)
        reference = fedavg(SGDClassifier(random_state=0), X, y, rounds=30)
        np.testing.assert_allclose(model["coef"], reference.coef_, rtol=0, atol=ATOL)
        np.testing.assert_allclose(model["intercept"], reference.intercept_, rtol=0, atol=ATOL)


def test_ten_jobs_from_three_client_processes():
    with grid_processes() as procs:
        _, eu = procs.scheduler("eu")
        _, us = procs.scheduler("us")
        procs.node("eu", eu, "eu1")
        procs.node("us", us, "us1")
        spec = {"regions": {"eu": eu, "us": us}}
        with Grid.connect(spec) as g:
            wait_nodes(g, "eu", 1)
            wait_nodes(g, "us", 1)
        clients = []
        for c, n_jobs in enumerate([4, 3, 3]):
            clients.append(
                procs.python(
                    f"""
import json
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier
from grid import Grid
from jobs import PartialFit
from jobs.data import partition
g = Grid.connect({spec!r})
jobs = []
for j in range({n_jobs}):
    X, y = make_classification(n_samples=2000, n_features=8, random_state=100 * {c} + j)
    jobs.append((g.submit(PartialFit(SGDClassifier(random_state=j), rounds=3, mode="sequential"), X, y), X, y, j))
out = []
for job, X, y, j in jobs:
    est = job.result(timeout=300)
    ref = SGDClassifier(random_state=j)
    for _ in range(3):
        for xp, yp, _ in partition(X, y).parts:
            ref.partial_fit(xp, yp, classes=[0, 1])
    out.append({{"id": job.id, "diff": float(np.abs(ref.coef_ - est.estimator_.coef_).max())}})
print("RESULT", json.dumps(out), flush=True)
g.close()
""",
                    f"client{c}",
                )
            )
        results = []
        for proc in clients:
            assert proc.wait(timeout=400) == 0, procs.log(proc)
            line = [l for l in procs.log(proc).splitlines() if l.startswith("RESULT")][0]
            results.extend(json.loads(line[len("RESULT "):]))
        assert len(results) == 10
        assert len({r["id"] for r in results}) == 10
        assert all(r["diff"] <= 1e-12 for r in results), results
        with Grid.connect(spec) as g:
            statuses = [j["status"] for j in g.jobs()]
        assert statuses.count("done") == 10


def test_sigkill_of_a_node_does_not_fail_the_job_and_sigterm_retires():
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        nodes = [procs.node("eu", address, f"n{i}") for i in range(3)]
        spec = {"regions": {"eu": address}}
        from jobs import PartialFit

        X, y = make_classification(n_samples=20000, n_features=20, random_state=0)
        with Grid.connect(spec) as g:
            wait_nodes(g, "eu", 3)
            reference = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=20), X, y).result(timeout=120)
            job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=20), X, y)
            wait_for(lambda: job.info()["rounds_done"] >= 3, timeout=60, what="3 rounds")
            os.kill(nodes[0].pid, signal.SIGKILL)  # the nanny; its worker follows
            os.killpg(nodes[0].pid, signal.SIGKILL)
            fitted = job.result(timeout=180)
            assert job.status == "done"
            np.testing.assert_allclose(fitted.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-9)
            wait_nodes(g, "eu", 2)
            # SIGTERM: the node retires through the scheduler and exits cleanly
            data = g.scatter(X, y)
            nodes[1].send_signal(signal.SIGTERM)
            assert nodes[1].wait(timeout=60) == 0, procs.log(nodes[1])
            assert "retired" in procs.log(nodes[1])
            wait_nodes(g, "eu", 1)
            # its partitions were copied off first: a job on the placed data still runs
            again = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), data).result(timeout=120)
            assert_same_model(again, fedavg(SGDClassifier(random_state=0), X, y, rounds=2))
