"""Soak: 50 small jobs over 2 regions while a chaos loop SIGKILLs nodes and starts replacements.

Real processes: a `grid scheduler` per region (eu, us), 3 `grid node` per
region at the start. A chaos thread repeatedly SIGKILLs a random node and
starts a replacement in the same region, so each region keeps at least 2
nodes: a region is eligible for the next kill once all its nodes have joined
and its partitions have their 2 replicas again (the guarantee for in-memory
data); between kills it pauses a random 0.5-2 s.

The 50 jobs, several in flight at once:

* 40 ``PartialFit(SGDClassifier, mode="sequential")`` jobs (20 rounds) on their own
  in-memory data, from 2 client processes (20 each, 4 in flight per client);
  each is compared with the serial ``partial_fit`` loop (1e-12);
* 10 ``jobs.SGDClassifier`` (average mode, 60 rounds) jobs from this process, 5 on a
  shared ``jobs.data.Files`` dataset and 5 on a shared ``Grid.scatter``
  dataset; each is compared with the same job run on the undisturbed grid
  before the chaos started (1e-9).

Pass: 0 jobs lost (every id reaches ``done``), 0 wrong models. The figures
(jobs, kills, restarts, wall time) are printed and recorded as junit
properties.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.datasets import make_classification

from grid import Grid
from jobs import SGDClassifier
from jobs.data import Files
from tests.conftest import wait_for
from tests.system.chaos import node_names, replicas_complete, sigkill
from tests.system.procs import grid_processes, wait_nodes

pytestmark = [pytest.mark.system, pytest.mark.slow]

REGIONS = ("eu", "us")
CLIENTS = 2
SEQUENTIAL_PER_CLIENT = 20
IN_FLIGHT = 4
AVERAGE_JOBS = 10
SEQUENTIAL_ROUNDS = 20
AVERAGE_ROUNDS = 60

CLIENT = """
import json, sys
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier
from grid import Grid
from jobs import PartialFit
from jobs.data import partition

g = Grid.connect({spec!r})
out = []


def reference(X, y, j):
    ref = SGDClassifier(random_state=j)
    for _ in range({rounds}):
        for xp, yp, _ in partition(X, y, partition_rows=200).parts:
            ref.partial_fit(xp, yp, classes=[0, 1])
    return ref


seeds = [1000 * {client} + j for j in range({n_jobs})]
for start in range(0, len(seeds), {in_flight}):
    batch = []
    for j in seeds[start:start + {in_flight}]:
        X, y = make_classification(n_samples=1200, n_features=8, random_state=j)
        est = PartialFit(SGDClassifier(random_state=j), rounds={rounds}, mode="sequential", partition_rows=200)
        try:
            batch.append((g.submit(est, X, y), X, y, j))
        except Exception as exc:
            out.append({{"seed": j, "id": None, "status": "not submitted", "error": repr(exc)}})
    for job, X, y, j in batch:
        try:
            fitted = job.result(timeout=600)
        except Exception as exc:
            out.append({{"seed": j, "id": job.id, "status": job.status, "error": repr(exc)}})
            continue
        diff = float(np.abs(reference(X, y, j).coef_ - fitted.estimator_.coef_).max())
        out.append({{"seed": j, "id": job.id, "status": job.status, "diff": diff, "tol": 1e-12}})
    print("PROGRESS", len(out), flush=True)
print("RESULT", json.dumps(out), flush=True)
g.close()
"""


class Chaos(threading.Thread):
    """SIGKILL a random node and start a replacement, keeping at least 2 nodes per region; repeat.

    A region is eligible for a kill when all its nodes have joined (3 or more)
    and every partition of its datasets has its 2 replicas again, so a kill
    never takes the last copy of in-memory data (the guarantee for scattered
    data: docs/reliability.md#churn). Kills in the other region go on while a
    replacement starts.
    """

    def __init__(self, procs, spec, addresses, nodes, seed, data_roots=()):
        super().__init__(name="chaos", daemon=True)
        self.data_roots = data_roots  # replacement nodes read Files where the first ones do
        self.procs, self.spec, self.addresses, self.nodes = procs, spec, addresses, nodes
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.restarts = 0
        self.error: BaseException | None = None
        self.log: list[str] = []

    def _eligible(self, g) -> list[str]:
        out = []
        for region in REGIONS:
            ours = {n for n, (r, _) in self.nodes.items() if r == region}
            if len(ours) >= 3 and ours <= node_names(g, region) and replicas_complete(g, region):
                out.append(region)
        return out

    def run(self) -> None:
        try:
            with Grid.connect(self.spec) as g:
                while not self.stop.is_set():
                    eligible = wait_for(lambda: self.stop.is_set() or self._eligible(g), timeout=300, what="a region to kill in")
                    if self.stop.is_set():
                        break
                    region = self.rng.choice(eligible)
                    victim = self.rng.choice(sorted(n for n, (r, _) in self.nodes.items() if r == region))
                    sigkill(self.nodes.pop(victim)[1])
                    self.kills += 1
                    name = f"{region}-r{self.restarts + 1}"
                    self.nodes[name] = (region, self.procs.node(region, self.addresses[region], name, data_roots=self.data_roots))
                    self.restarts += 1
                    self.log.append(f"{time.strftime('%H:%M:%S')} killed {victim}, started {name}")
                    self.stop.wait(self.rng.uniform(0.5, 2.0))  # pacing of the chaos, not a wait for a condition
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_fifty_jobs_under_chaos_none_lost_none_wrong(tmp_path, record_property):
    started = time.monotonic()
    with grid_processes() as procs:
        schedulers = {r: procs.scheduler(r) for r in REGIONS}
        addresses = {r: address for r, (_, address) in schedulers.items()}
        spec = {"regions": addresses}
        nodes = {f"{r}{i}": (r, procs.node(r, addresses[r], f"{r}{i}", data_roots=(str(tmp_path),))) for r in REGIONS for i in (1, 2, 3)}
        with Grid.connect(spec) as g:
            for r in REGIONS:
                wait_nodes(g, r, 3)
            X, y = make_classification(n_samples=3000, n_features=10, random_state=7)
            for i in range(6):
                np.savez(tmp_path / f"part-{i}.npz", X=X[500 * i:500 * (i + 1)], y=y[500 * i:500 * (i + 1)])
            shared = {"files": g.scatter(Files(str(tmp_path / "part-*.npz"))), "scattered": g.scatter(X, y, partition_rows=500)}
            average = [("files" if k % 2 else "scattered", SGDClassifier(rounds=AVERAGE_ROUNDS, tol=None, random_state=k)) for k in range(AVERAGE_JOBS)]
            references = [g.submit(est, shared[kind]).result(timeout=300) for kind, est in average]
            setup = time.monotonic() - started

            chaos = Chaos(procs, spec, addresses, nodes, seed=20261125, data_roots=(str(tmp_path),))
            t0 = time.monotonic()
            chaos.start()
            try:
                clients = [
                    procs.python(
                        CLIENT.format(spec=spec, client=c, n_jobs=SEQUENTIAL_PER_CLIENT, in_flight=IN_FLIGHT, rounds=SEQUENTIAL_ROUNDS), f"client{c}"
                    )
                    for c in range(CLIENTS)
                ]
                results = []

                def run_average(k: int) -> dict:
                    kind, est = average[k]
                    try:
                        job = g.submit(est, shared[kind])
                    except Exception as exc:  # noqa: BLE001 - counted as lost
                        return {"seed": k, "id": None, "status": "not submitted", "error": repr(exc)}
                    try:
                        fitted = job.result(timeout=600)
                    except Exception as exc:  # noqa: BLE001
                        return {"seed": k, "id": job.id, "status": job.status, "error": repr(exc)}
                    diff = max(
                        float(np.abs(fitted.coef_ - references[k].coef_).max()),
                        float(np.abs(fitted.intercept_ - references[k].intercept_).max()),
                    )
                    return {"seed": k, "id": job.id, "status": job.status, "diff": diff, "tol": 1e-9}

                with ThreadPoolExecutor(3) as pool:
                    results.extend(pool.map(run_average, range(AVERAGE_JOBS)))
                for proc in clients:
                    assert proc.wait(timeout=900) == 0, procs.log(proc)
                    line = [l for l in procs.log(proc).splitlines() if l.startswith("RESULT")][0]
                    results.extend(json.loads(line[len("RESULT "):]))
            finally:
                chaos.stop.set()
                chaos.join(timeout=300)
            wall = time.monotonic() - t0

            lost = [r for r in results if r["status"] != "done"]
            wrong = [r for r in results if r["status"] == "done" and not r["diff"] <= r["tol"]]
            figures = {
                "jobs": len(results),
                "done": len(results) - len(lost),
                "lost": len(lost),
                "wrong": len(wrong),
                "kills": chaos.kills,
                "restarts": chaos.restarts,
                "wall_seconds": round(wall, 1),
                "setup_seconds": round(setup, 1),
                "max_diff_sequential": max((r["diff"] for r in results if r.get("tol") == 1e-12 and "diff" in r), default=None),
                "max_diff_average": max((r["diff"] for r in results if r.get("tol") == 1e-9 and "diff" in r), default=None),
            }
            for key, value in figures.items():
                record_property(key, value)
            print(f"\nsoak: {json.dumps(figures)}\n" + "\n".join(chaos.log))
            for r in lost + wrong:
                print("NOT OK", json.dumps(r))
            if lost or wrong or chaos.error:
                for r, (proc, _) in schedulers.items():
                    print(f"--- scheduler {r} (exit code {proc.poll()}) ---\n" + procs.log(proc)[-20000:])
            assert chaos.error is None, f"chaos loop failed: {chaos.error!r}\n" + "\n".join(chaos.log)
            assert len(results) == CLIENTS * SEQUENTIAL_PER_CLIENT + AVERAGE_JOBS
            assert len({r["id"] for r in results}) == len(results)
            assert not lost, lost
            assert not wrong, wrong
            assert chaos.kills >= 3, f"the chaos loop killed only {chaos.kills} node(s): {chaos.log}"
            with Grid.connect(spec) as g2:
                statuses = [j["status"] for j in g2.jobs()]
            assert statuses.count("done") == len(results) + AVERAGE_JOBS  # + the undisturbed references
