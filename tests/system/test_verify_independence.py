"""On a TLS grid, two nodes of one host, or of one owner, never vote together in a ``verify`` quorum.

A real `grid scheduler` on TLS and real `grid node`s, each dialing the scheduler
through a relay that gives its connection a source address of its own
(``tests/system/relay.py``): that is its host, for the grid. Two colluding nodes
run on one host (127.0.0.2), or on two hosts with certificates of one owner,
and return the same wrong update (``tests/system/cheating_node.py``, loaded
with ``--preload``); they hold every partition. With ``verify=2`` the job waits, saying so, until independent
nodes (from 127.0.0.3 and 127.0.0.4) join; then the colluders are outvoted, the
model equals the clean one, and they are quarantined with the evidence.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.security.certs import init_ca, issue
from jobs import PartialFit
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes, tls_args, tls_spec
from tests.system.relay import relays

pytestmark = [pytest.mark.system, pytest.mark.slow]

CHEAT = os.path.join(os.path.dirname(__file__), "cheating_node.py")


def _job() -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=3, partition_rows=1000)


@pytest.mark.parametrize("collusion", ["one host", "one owner"])
def test_colluders_never_form_a_quorum(tmp_path, collusion: str) -> None:
    X, y = make_classification(n_samples=4000, n_features=8, random_state=0)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as local:
        clean = local.submit(_job(), local.scatter(X, y)).result(timeout=120).estimator_.coef_.copy()

    ca = init_ca(str(tmp_path / "ca"))
    out = str(tmp_path / "certs")
    sched = issue(ca, "scheduler", "sched-eu", region="eu", out=out)
    admin = issue(ca, "admin", "operator", out=out)
    alice = issue(ca, "client", "alice", out=out)

    with grid_processes() as procs, relays() as relay:
        _, address = procs.scheduler("eu", args=tls_args(ca, sched))
        port = address.rsplit(":", 1)[1]

        def node(name: str, host: str, *extra: str, owner: str | None = None) -> None:
            cert = issue(ca, "node", name, region="eu", out=out, owner=owner)
            via = relay.add(f"127.0.0.1:{port}", source=host)
            procs.spawn([GRID, "node", "--region", "eu", "--scheduler", f"tls://{via}", "--nthreads", "1",
                         "--memory-limit", "1GiB", *extra, *tls_args(ca, cert)], name)

        if collusion == "one host":
            node("mallory-a", "127.0.0.2", "--preload", CHEAT)
            node("mallory-b", "127.0.0.2", "--preload", CHEAT)
        else:  # two machines, but one volunteer's certificates
            node("mallory-a", "127.0.0.2", "--preload", CHEAT, owner="mallory")
            node("mallory-b", "127.0.0.5", "--preload", CHEAT, owner="mallory")
        with Grid.connect(tls_spec(ca, admin, {"eu": address})) as ops, Grid.connect(tls_spec(ca, alice, {"eu": address})) as g:
            wait_for(lambda: len(ops.status()["eu"]["workers"]) == 2, timeout=90, what="the 2 colluders")
            data = g.scatter(X, y)  # every partition lands on the colluders
            job = g.submit(_job(), data, verify=2)
            waiting = wait_for(lambda: job.info().get("waiting"), timeout=60, what="the job to say it waits")
            assert "verify=2 needs 2 independent nodes (nodes of different owners on different hosts)" in waiting
            assert "has 1 now" in waiting, waiting
            assert not job.history, "two nodes of one host accepted nothing together"

            node("honest-1", "127.0.0.3")
            node("honest-2", "127.0.0.4")
            fitted = job.result(timeout=180)
            quarantined = {q["identity"]: q for q in ops.status()["eu"]["quarantined"]}

    np.testing.assert_allclose(fitted.estimator_.coef_, clean, rtol=0, atol=1e-9)
    assert set(quarantined) & {"mallory-a", "mallory-b"}, quarantined
    for record in quarantined.values():
        assert set(record["evidence"]["agreeing_nodes"]) == {"honest-1", "honest-2"}, record
    assert not set(quarantined) & {"honest-1", "honest-2"}
