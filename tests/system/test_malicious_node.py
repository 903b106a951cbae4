"""A malicious node on a real TLS grid: its pickles never run, it is quarantined, the job finishes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.security.certs import init_ca, issue
from jobs import PartialFit
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes, tls_args, tls_spec

pytestmark = [pytest.mark.system, pytest.mark.slow]


def make_evil(marker: str, dask_worker=None):
    """Run on the node through an admin's client.run: every update it sends becomes a
    pickle whose unpickling would create ``marker``, and it ignores the serializers asked for."""
    import pickle
    import types

    import grid.node.tasks as tasks

    class Evil:
        def __reduce__(self):
            return (open, (marker, "w"))

    fake_wire = types.SimpleNamespace(**{k: getattr(tasks.wire, k) for k in dir(tasks.wire) if not k.startswith("__")})
    fake_wire.encode = lambda *a, **k: Evil()
    tasks.wire = fake_wire
    get_data = dask_worker.handlers["get_data"]

    async def pickling_get_data(comm, keys=(), who=None, serializers=None, **kw):
        return await get_data(comm, keys=keys, who=who, serializers=["pickle"], **kw)

    dask_worker.handlers["get_data"] = pickling_get_data
    pickle.dumps(Evil())  # it pickles fine: the danger is on the reading side
    return "evil"


def test_malicious_node_is_quarantined_and_its_payload_never_runs(tmp_path):
    ca = init_ca(tmp_path / "ca")
    sched = issue(ca, "scheduler", "sched-eu", region="eu", out=tmp_path / "certs")
    nodes = [issue(ca, "node", f"n{i}", region="eu", out=tmp_path / "certs") for i in range(3)]
    admin = issue(ca, "admin", "operator", out=tmp_path / "certs")
    scientist = issue(ca, "client", "scientist", out=tmp_path / "certs")
    marker = str(tmp_path / "MARKER")
    X, y = make_classification(n_samples=6000, n_features=10, random_state=0)
    with grid_processes() as procs:
        path = os.path.join(procs.workdir, "s.json")
        tls = lambda c: tls_args(ca, c)  # noqa: E731
        scheduler = procs.spawn(
            [GRID, "scheduler", "--region", "eu", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", path, *tls(sched)],
            "scheduler",
        )
        wait_for(lambda: os.path.exists(path) or scheduler.poll() is not None, timeout=60, what="scheduler")
        import json

        address = json.load(open(path))["address"]
        assert address.startswith("tls://")
        for i, cert in enumerate(nodes):
            procs.spawn([GRID, "node", "--region", "eu", "--scheduler", address, "--nthreads", "1", *tls(cert)], f"n{i}")
        spec = tls_spec(ca, scientist, {"eu": address})
        # the operator sees node names, addresses and quarantine records; a data scientist, counts only
        operator_spec = {**spec, "tls": {**spec["tls"], "cert": str(admin.cert_path), "key": str(admin.key_path)}}
        with Grid.connect(spec) as g, Grid.connect(operator_spec) as ops:
            wait_for(lambda: len(ops.status()["eu"]["workers"]) == 3, timeout=60, what="3 nodes")
            clean = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=3), X, y).result(timeout=120)
            with Client(address, security=admin.security(), set_as_default=False) as operator:
                import sys

                import cloudpickle

                cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the node cannot import the tests
                evil_address = next(w["address"] for w in ops.status()["eu"]["workers"] if w["name"] == "n0")
                assert operator.run(make_evil, marker, workers=[evil_address]) == {evil_address: "evil"}
            try:
                job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=3), X, y)
                fitted = job.result(timeout=180)
            except Exception:
                print(procs.log(scheduler)[-8000:])
                raise
            assert job.status == "done"
            # the re-issued updates are deterministic: the same model as the clean run
            np.testing.assert_allclose(fitted.estimator_.coef_, clean.estimator_.coef_, rtol=0, atol=1e-9)
            status = ops.status()["eu"]
            quarantined = {q["identity"]: q for q in status["quarantined"]}
            assert set(quarantined) == {"n0"}
            assert "invalid update" in quarantined["n0"]["reason"] and quarantined["n0"]["evidence"]["job"] == job.id
            assert "n0" not in {w["name"] for w in status["workers"]}
            assert status["verification_rejects"] >= 1
        assert not os.path.exists(marker), "a node's pickle was unpickled on the scheduler or the client"
