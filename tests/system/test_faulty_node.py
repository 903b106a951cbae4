"""A faulty node on a real grid: verify=2 outvotes it, the median absorbs it.

Real `grid scheduler` and `grid node` processes. The fault is injected the way
the issue describes: the node's update function is replaced through
``client.run`` so that every update it sends is wrong (but well-formed).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from jobs import PartialFit
from tests.system.procs import GRID, grid_processes, wait_nodes

pytestmark = [pytest.mark.system, pytest.mark.slow]


def make_faulty(only_partition: int | None = None) -> str:
    """Run on a node: its partition updates come out shifted by +1 (all, or one partition's)."""
    import types

    import numpy as np

    import grid.node.tasks as tasks

    real = tasks.wire

    def encode(arrays, meta=None):  # noqa: ANN001, ANN202
        if meta is not None and "partition" in meta and only_partition in (None, meta["partition"]):
            arrays = {k: np.asarray(v) + 1.0 if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}
        return real.encode(arrays, meta)

    tasks.wire = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    tasks.wire.encode = encode
    return "faulty"


def test_verify_outvotes_a_faulty_node_and_median_absorbs_a_corrupt_partition(tmp_path) -> None:
    X, y = make_classification(n_samples=8000, n_features=10, n_informative=5, random_state=0)
    X, Xtest, y, ytest = X[:6000], X[6000:], y[:6000], y[6000:]
    est = lambda aggregate="mean": PartialFit(  # noqa: E731
        SGDClassifier(random_state=0), rounds=4, partition_rows=1200, aggregate=aggregate
    )  # 5 partitions
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        node = lambda name: procs.spawn(  # noqa: E731 - a volunteer's own machine: it accepts client.run
            [GRID, "node", "--region", "eu", "--scheduler", address, "--name", name, "--nthreads", "1", "--no-community"],
            f"node-{name}",
        )
        for name in ("n0", "n1", "n2"):
            node(name)
        spec = {"regions": {"eu": address}}
        with open(tmp_path / "grid.yaml", "w") as f:
            json.dump(spec, f)  # JSON is YAML
        with Grid.connect(spec) as g, Client(address, set_as_default=False) as operator:
            wait_nodes(g, "eu", 3)
            clean = g.submit(est(), X, y).result(timeout=120)
            clean_median = g.submit(est("median"), X, y).result(timeout=120)

            # --- one faulty node, verify=2 -------------------------------------------------------
            import cloudpickle

            cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the node cannot import the tests
            faulty = next(w["address"] for w in g.status()["eu"]["workers"] if w["name"] == "n0")
            assert operator.run(make_faulty, workers=[faulty]) == {faulty: "faulty"}
            job = g.submit(est(), X, y, verify=2)
            verified = job.result(timeout=180)
            np.testing.assert_allclose(verified.estimator_.coef_, clean.estimator_.coef_, rtol=0, atol=1e-12)
            status = g.status()["eu"]
            quarantined = {q["identity"]: q for q in status["quarantined"]}
            assert set(quarantined) == {"n0"}, quarantined
            evidence = quarantined["n0"]["evidence"]
            assert evidence["job"] == job.id and evidence["difference_in_tolerances"] > 1
            assert "n0" not in evidence["agreeing_nodes"] and len(evidence["agreeing_nodes"]) == 2
            assert "n0" not in {w["name"] for w in status["workers"]}
            printed = subprocess.run(
                [GRID, "status", "--grid", str(tmp_path / "grid.yaml")], capture_output=True, text=True, timeout=60
            )
            assert printed.returncode == 0, printed.stderr
            assert "n0" in printed.stdout and "quarantined" in printed.stdout and "disagreed" in printed.stdout

            # the quarantine holds across the node's restart (same node name)
            again = node("n0")
            assert again.wait(timeout=60) != 0, "a quarantined node was let back in"
            assert "quarantined" in procs.log(again), procs.log(again)[-3000:]

            # --- no replication, 1 of 5 partitions corrupt on every node, aggregate="median" ---------
            nodes = [w["address"] for w in g.status()["eu"]["workers"]]
            operator.run(make_faulty, 2, workers=nodes)
            robust = g.submit(est("median"), X, y).result(timeout=120)
            plain = g.submit(est("mean"), X, y).result(timeout=120)
    clean_accuracy = clean_median.score(Xtest, ytest)
    assert abs(robust.score(Xtest, ytest) - clean_accuracy) <= 0.01, (robust.score(Xtest, ytest), clean_accuracy)
    assert abs(robust.score(Xtest, ytest) - clean.score(Xtest, ytest)) <= 0.01
    # the corruption is real: the plain mean moves away from the clean model
    assert np.abs(plain.estimator_.coef_ - clean.estimator_.coef_).max() > 0.1
    print(
        f"\nfaulty-node figures: verify=2 model == clean (atol 1e-12); median accuracy {robust.score(Xtest, ytest):.4f} "
        f"vs clean median {clean_accuracy:.4f}, clean mean {clean.score(Xtest, ytest):.4f}, corrupted mean "
        f"{plain.score(Xtest, ytest):.4f}"
    )
