"""Data belongs to the certificate that placed it; nodes cannot claim more than they are.

An in-process TLS grid (throw-away CA). The victim, alice, places rows that
hold a secret marker value; the attacker, bob, holds only a client
certificate of the same grid. Every oracle is data the attacker must not
get: the marker in a fitted model, alice's dataset and key names, node
addresses and names, quarantine evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pytest
from distributed import Worker
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import SGDRegressor

from grid import Grid
from grid.placement import PlacedData
from grid.scheduler.quarantine import QuarantineRecord
from grid.security.certs import issue
from jobs import PartialFit
from tests.conftest import wait_for

#: the secret value in alice's rows
MARKER = 123456.789
#: evidence of a quarantined node that only operators may read
EVIDENCE = "evidence-only-operators-read-3f1c"


@pytest.fixture(scope="module")
def tls_grid():
    g = Grid.local(regions={"eu": 2, "us": 1}, processes=False, dashboard=False, tls=True)
    try:
        yield g
    finally:
        g.close()


def connect_as(g: Grid, role: str, name: str) -> Grid:
    """A grid handle of another certificate of the same throw-away CA."""
    throwaway = g._local.throwaway
    cert = throwaway.admin if role == "admin" else issue(throwaway.ca, role, name)
    spec = {
        "regions": {r: s.address for r, s in g.spec.regions.items()},
        "tls": {"ca-file": str(throwaway.ca_file), "cert": str(cert.cert_path), "key": str(cert.key_path)},
    }
    return Grid.connect(spec)


def scheduler_of(g: Grid, region: str) -> Any:
    return g._local.clusters[region].scheduler  # processes=False: the scheduler lives in this process


def alice_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    X[::10] = MARKER  # 40 secret rows
    y = X[:, 0] * 0.5 + rng.normal(size=400) * 0.01
    return X, y


def leaked(model: Any) -> bool:
    """Whether a fitted model carries alice's marker (her data is N(0, 1) elsewhere)."""
    est = getattr(model, "estimator_", model)
    params = [getattr(est, a) for a in ("cluster_centers_", "coef_", "intercept_") if hasattr(est, a)]
    return any(np.abs(np.asarray(p, dtype=float)).max() > 1000 for p in params)


def fit_alice(g: Grid, data: PlacedData) -> np.ndarray:
    fitted = g.submit(PartialFit(SGDRegressor(random_state=0), rounds=2), data).result(timeout=60)
    return np.concatenate([fitted.estimator_.coef_.ravel(), np.ravel(fitted.estimator_.intercept_)])


def kmeans_on(g: Grid, name: str, region: str, partitions: int, rows: int) -> Any:
    """Train k-means on the dataset ``name`` of ``region`` (the attack's exfiltration)."""
    placed = PlacedData(
        name=name,
        regions={region: {"address": g.spec.regions[region].address, "dataset": name, "partitions": partitions, "rows": rows}},
        n_samples=rows,
        n_features=4,
        n_partitions=partitions,
        classes=None,
        supervised=False,
    )
    est = PartialFit(MiniBatchKMeans(n_clusters=4, random_state=0, n_init=1), rounds=3, mode="sequential")
    return g.submit(est, placed).result(timeout=60)


def call(g: Grid, region: str, op: str, **kwargs: Any) -> dict:
    client = g.client(region)
    return client.sync(getattr(client.scheduler, op), **kwargs)


def test_another_user_cannot_read_register_train_on_or_poison_a_dataset(tls_grid):
    X, y = alice_data()
    with connect_as(tls_grid, "client", "alice") as alice, connect_as(tls_grid, "client", "bob") as bob:
        data = alice.scatter(X, y, regions="eu", partition_rows=50)
        before = fit_alice(alice, data)
        dataset = scheduler_of(tls_grid, "eu").plugins["grid"].datasets.store.get(data.name)
        keys, rows, indices = list(dataset.keys), list(dataset.rows), list(dataset.indices)
        got: list[Any] = []
        refusals: list[str] = []

        def attempt(what: str, action: Any) -> None:
            try:
                got.append((what, action()))
            except Exception as exc:  # noqa: BLE001 - a refusal is the expected outcome
                refusals.append(f"{what}: {type(exc).__name__}: {exc}")

        # 1. learning alice's dataset and keys from grid_info: test_grid_info_shows_a_client_...
        # 2. the keys leaked anyway: register them as bob's own dataset and train on it
        theirs = f"data-{'b' * 32}"
        reply = call(bob, "eu", "grid_register_dataset", name=theirs, keys=keys, rows=rows, indices=indices,
                     n_features=4, classes=None, owner="bob", job_owned=False)
        if reply.get("status") == "OK":
            attempt("train on the re-registered keys", lambda: kmeans_on(bob, theirs, "eu", len(keys), sum(rows)))
        else:
            refusals.append(f"register: {reply.get('message')}")
        # 3. train on alice's dataset by name
        attempt("train on alice's dataset", lambda: kmeans_on(bob, data.name, "eu", len(keys), sum(rows)))
        # 4. write over alice's partitions with his own rows
        attempt("scatter over alice's keys", lambda: bob.client("eu").scatter({keys[0]: (np.zeros((50, 4)), np.zeros(50), None)}, hash=False))
        # 5. drop alice's dataset
        dropped = call(bob, "eu", "grid_drop_dataset", name=data.name)

        leaks = [what for what, out in got if leaked(out)]
        assert not leaks, f"bob got alice's rows through: {leaks}"
        assert data.name in {d["name"] for d in alice.status()["eu"]["datasets"]}, dropped
        # alice's data is intact: the same model as before the attack
        np.testing.assert_allclose(fit_alice(alice, data), before, rtol=0, atol=1e-12)
        # and every refusal said what is wrong and what to do
        assert dropped.get("status") != "OK" and "belongs to another user" in dropped["message"], dropped
        assert any(r.startswith("register:") and "not placed by 'bob'" in r and "Grid.scatter" in r for r in refusals), refusals
        assert any(r.startswith("train on alice's") and "belongs to another user" in r for r in refusals), refusals
        assert any(r.startswith("scatter over") and "not placed by 'bob'" in r for r in refusals), refusals
        alice.drop(data)


def test_grid_info_shows_a_client_its_own_jobs_and_datasets_and_node_counts_only(tls_grid):
    plugin = scheduler_of(tls_grid, "eu").plugins["grid"]
    plugin.ledger.quarantine.records["ghost-node"] = QuarantineRecord(
        "ghost-node", "tls://10.9.9.9:4242", "sent garbage", {"detail": EVIDENCE}
    )
    X, y = alice_data()
    try:
        with connect_as(tls_grid, "client", "alice") as alice, connect_as(tls_grid, "client", "bob") as bob, \
                connect_as(tls_grid, "admin", "admin") as admin:
            data = alice.scatter(X, y, regions="eu", partition_rows=100)
            job = alice.submit(PartialFit(SGDRegressor(random_state=0), rounds=1), data)
            job.result(timeout=60)
            full = admin.status()["eu"]
            # the admin sees everything, as before
            nodes = {w["address"] for w in full["workers"]} | {w["name"] for w in full["workers"]}
            assert len(full["workers"]) == 2 and all(w["address"].startswith("tls://") for w in full["workers"])
            assert {d["name"]: d["owner"] for d in full["datasets"]}[data.name] == "alice"
            assert "ghost-node" in {q["identity"] for q in full["quarantined"]}
            secrets = {data.name, "alice", EVIDENCE, "ghost-node", "10.9.9.9", job.id} | nodes
            for region in ("eu", "us"):
                reply = bob.status()[region]
                text = json.dumps(reply, default=str)
                assert not {s for s in secrets if s in text}, (region, {s for s in secrets if s in text})
            assert full["nodes"] == {"active": 2, "paused": 0, "unreachable": 0, "quarantined": 1}
            reply = bob.status()["eu"]
            assert reply["nodes"] == {"active": 2, "paused": 0, "unreachable": 0, "quarantined": 1} and reply["nthreads"] == full["nthreads"]
            assert not reply["workers"] and not reply["quarantined"] and not reply["datasets"]
            # Dask's own handlers name no node to a data scientist either
            raw = bob.client("eu")
            text = json.dumps([raw.scheduler_info(n_workers=-1), raw.ncores()], default=str)
            assert not {s for s in nodes if s in text}, {s for s in nodes if s in text}
            assert len(raw.scheduler_info(n_workers=-1)["workers"]) == 2
            # alice sees her own dataset and job
            mine = alice.status()["eu"]
            assert [d["name"] for d in mine["datasets"]] == [data.name] and mine["jobs"]["done"] >= 1
            assert not mine["workers"] and EVIDENCE not in json.dumps(mine, default=str)
            alice.drop(data)
    finally:
        plugin.ledger.quarantine.records.pop("ghost-node", None)


def test_a_client_places_registers_and_trains_on_its_own_data(tls_grid):
    """The honest path: a client's own placed data registers, re-registers by another name and trains."""
    X, y = alice_data()
    with connect_as(tls_grid, "client", "carol") as carol:
        data = carol.scatter(X, y, partition_rows=100)  # both regions
        assert set(data.regions) == {"eu", "us"}
        for region in data.regions:
            assert [d["name"] for d in carol.status()[region]["datasets"]] == [data.name]
        fitted = carol.submit(PartialFit(SGDRegressor(random_state=0), rounds=1), data).result(timeout=60)
        assert np.isfinite(fitted.estimator_.coef_).all()
        # each partition has its replicas (the scheduler picked the nodes): two in eu, one in us
        sched = scheduler_of(tls_grid, "eu")
        keys = sched.plugins["grid"].datasets.store.get(data.name).keys
        assert all(len(sched.tasks[k].who_has) == 2 for k in keys)
        carol.drop(data)


@contextlib.contextmanager
def running_node(address: str, security: Any, **kwargs: Any) -> Iterator[dict]:
    """A node in a thread of its own until the block ends; ``{"address"}`` or ``{"error"}``."""
    box: dict = {}
    started = threading.Event()
    holder: dict = {}

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = asyncio.Event()
        try:
            async with Worker(address, security=security, death_timeout=10, **kwargs) as w:
                box["address"] = w.address
                started.set()
                await holder["stop"].wait()
        except Exception as exc:  # noqa: BLE001 - a refusal is what some tests expect
            box["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60), "the node neither started nor failed"
    try:
        yield box
    finally:
        if "stop" in holder and thread.is_alive():
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(60)
        assert not thread.is_alive(), "the node did not stop"


def test_a_node_claiming_64_threads_gets_no_more_than_its_capped_share(tls_grid):
    throwaway = tls_grid._local.throwaway
    greedy = issue(throwaway.ca, "node", "greedy-us", region="us", hosts=["127.0.0.1", "localhost"])
    X, y = alice_data()
    # cap = the honest nodes' one thread, so a fair split is even between eu (2 nodes) and us (2 nodes)
    with dask.config.set({"grid.scheduler.max-node-threads": 1}), running_node(
        tls_grid.spec.regions["us"].address, greedy.security(), nthreads=64, name="greedy"
    ) as node, connect_as(tls_grid, "client", "dave") as dave:
        assert "address" in node, node
        us = scheduler_of(tls_grid, "us")
        wait_for(lambda: node["address"] in us.workers, timeout=30, what="the greedy node")
        data = dave.scatter(X, y, partition_rows=50)  # 8 partitions over eu and us
        keys = set(us.plugins["grid"].datasets.store.get(data.name).keys) if "us" in data.regions else set()
        held = {ts.key for ts in us.workers[node["address"]].has_what} & keys
        eu_parts = data.regions.get("eu", {}).get("partitions", 0)
        dave.drop(data)
        assert len(held) <= 4 and eu_parts >= 4, f"the greedy node holds {len(held)} of 8 partitions: {data.regions}"
        assert us.workers[node["address"]].nthreads == 1  # what the scheduler believes
