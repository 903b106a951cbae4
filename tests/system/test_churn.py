"""Churn: real `grid node` processes SIGKILLed mid-job and new ones started; the model does not change.

Regions eu and us start with 3 nodes each. A 2-region job runs; at rounds
drawn by a seeded RNG (waited for by condition on the job's ``rounds_done``)
3 original nodes are SIGKILLed (2 in one region, 1 in the other), and after
the first kill 2 new nodes start (one per region). The job finishes and its
model equals the undisturbed run's on the same grid to 1e-9; the new nodes
got partitions and work.

Two kinds of data:

* ``files`` (``jobs.data.Files``): nodes read their partitions; the read
  tasks keep their recipe, so even losing every holder of a partition at
  once costs only a re-read. Kills land with no pause at all.
* ``scattered`` (``Grid.scatter``): partitions exist only on nodes. The
  grid's replica policy restores the second copy within one AMM cycle
  (~2 s); the test waits for that between kills, which is the guarantee for
  in-memory data (docs/reliability.md#churn).
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from sklearn.datasets import make_classification

from grid import Grid
from jobs import SGDClassifier
from jobs.data import Files
from tests.conftest import wait_for
from tests.system.chaos import node_names, replicas_complete, rounds_done, sigkill, tasks_done_by
from tests.system.procs import grid_processes, wait_nodes

pytestmark = [pytest.mark.system, pytest.mark.slow]

REGIONS = ("eu", "us")
PARTITIONS = 12
ROWS = 1000
#: long enough that nodes started after the first kill join, receive partitions and work
#: before the job ends (a round of this job takes ~10-20 ms with round requests)
ROUNDS = 1500


@pytest.mark.parametrize("kind", ["files", "scattered"])
def test_nodes_killed_and_started_mid_job_leave_the_model_unchanged(kind, tmp_path):
    rng = random.Random(20261125)
    X, y = make_classification(n_samples=PARTITIONS * ROWS, n_features=20, n_informative=8, random_state=0)
    started = time.monotonic()
    with grid_processes() as procs:
        addresses = {r: procs.scheduler(r)[1] for r in REGIONS}
        nodes = {f"{r}{i}": (r, procs.node(r, addresses[r], f"{r}{i}", data_roots=(str(tmp_path),))) for r in REGIONS for i in (1, 2, 3)}
        with Grid.connect({"regions": addresses}) as g:
            for r in REGIONS:
                wait_nodes(g, r, 3)
            if kind == "files":
                for i in range(PARTITIONS):
                    sl = slice(ROWS * i, ROWS * (i + 1))
                    np.savez(tmp_path / f"part-{i:02d}.npz", X=X[sl], y=y[sl])
                data = g.scatter(Files(str(tmp_path / "part-*.npz")))
            else:
                data = g.scatter(X, y, partition_rows=ROWS)
            assert data.n_partitions == PARTITIONS and set(data.regions) == set(REGIONS)
            est = SGDClassifier(rounds=ROUNDS, tol=None, random_state=0)
            t0 = time.monotonic()
            reference = g.submit(est, data).result(timeout=600)
            undisturbed = time.monotonic() - t0

            # 3 kills at seeded random rounds: 2 in one region, 1 in the other
            heavy = rng.choice(REGIONS)
            victims = rng.sample([n for n, (r, _) in nodes.items() if r == heavy], 2)
            victims += rng.sample([n for n, (r, _) in nodes.items() if r != heavy], 1)
            rng.shuffle(victims)
            kill_rounds = sorted(rng.sample(range(5, ROUNDS // 4), 3))
            t0 = time.monotonic()
            job = g.submit(est, data)
            log = []
            for n, (at, victim) in enumerate(zip(kill_rounds, victims)):
                wait_for(lambda: rounds_done(job) >= at, timeout=300, what=f"round {at}")
                region, proc = nodes.pop(victim)
                sigkill(proc)
                log.append((rounds_done(job), f"killed {victim}"))
                if n == 0:  # 2 new nodes join mid-job, one per region
                    for r in REGIONS:
                        nodes[f"{r}-new"] = (r, procs.node(r, addresses[r], f"{r}-new", data_roots=(str(tmp_path),)))
                if kind == "scattered":
                    # the second copy of every partition is back before the next kill
                    wait_for(lambda: replicas_complete(g, region), timeout=60, what=f"replicas restored in {region}")
            # the new nodes joined, received partitions and then work while the job still ran
            for r in REGIONS:
                wait_for(lambda: f"{r}-new" in node_names(g, r), timeout=120, what=f"{r}-new joined")
                wait_for(lambda: tasks_done_by(g, r).get(f"{r}-new", 0) > 0 or job.status != "running",
                         timeout=300, what=f"{r}-new got work")
                assert tasks_done_by(g, r).get(f"{r}-new", 0) > 0, f"the job ended before {r}-new did any work: {log}"
            log.append((rounds_done(job), "new nodes did work"))
            fitted = job.result(timeout=600)
            churned = time.monotonic() - t0
            assert job.status == "done"
            info = job.info()
            assert info["rounds_done"] == ROUNDS and len(info["history"]) == ROUNDS
            assert log[-1][0] < ROUNDS, f"the job ended before the new nodes worked: {log}"
            np.testing.assert_allclose(fitted.coef_, reference.coef_, rtol=0, atol=1e-9)
            np.testing.assert_allclose(fitted.intercept_, reference.intercept_, rtol=0, atol=1e-9)
            # progress is counted in samples: every round trained on all of them, whoever was up
            assert {h["samples"] for h in info["history"]} == {float(PARTITIONS * ROWS)}
            survivors = {r: sorted(node_names(g, r)) for r in REGIONS}
            print(
                f"\nchurn[{kind}]: {ROUNDS} rounds, {PARTITIONS} partitions, kills at rounds {kill_rounds} "
                f"of {victims}; events {log}; nodes at the end {survivors}; undisturbed {undisturbed:.1f} s, "
                f"with churn {churned:.1f} s, test {time.monotonic() - started:.1f} s; "
                f"max |coef diff| {np.abs(fitted.coef_ - reference.coef_).max():.2e}"
            )
