"""Mutual TLS, node admission, roles and community mode on an in-process TLS grid."""

from __future__ import annotations

import asyncio
import datetime as dt

import numpy as np
import pytest
from distributed import Client, Worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.node.community import CommunityMode
from grid.security.certs import init_ca, issue, revoke
from jobs import PartialFit
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def tls_grid():
    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False, tls=True)
    try:
        yield g
    finally:
        g.close()


def address(g: Grid, region: str = "eu") -> str:
    return g.spec.regions[region].address


def start_worker(addr: str, security: Security | None, plugins: tuple = (), name: str | None = None) -> str:
    """Start an in-process node, then close it; return 'ok' or the error that stopped it."""

    async def main() -> str:
        try:
            async with Worker(addr, security=security, nthreads=1, death_timeout=3, plugins=plugins, name=name):
                return "ok"
        except Exception as exc:  # noqa: BLE001 - the refusal is what we test
            return f"{type(exc).__name__}: {exc}"

    return asyncio.run(main())


def still_serving(g: Grid, classification_data) -> None:
    X, y = classification_data
    fitted = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), X, y).result(timeout=60)
    assert fitted.score(X, y) > 0.5


def node_security(cert) -> Security:
    return cert.security()


def test_a_node_with_a_good_certificate_joins(tls_grid):
    ca = tls_grid._local.throwaway.ca
    good = issue(ca, "node", "good-eu", region="eu")
    assert start_worker(address(tls_grid), node_security(good)) == "ok"


def test_bad_nodes_are_refused_and_the_scheduler_keeps_serving(tls_grid, classification_data, tmp_path):
    ca = tls_grid._local.throwaway.ca
    addr = address(tls_grid)
    foreign_ca = init_ca(tmp_path / "other-ca", name="someone-else")
    cases = {
        "no certificate": None,
        "another CA": node_security(issue(foreign_ca, "node", "intruder", region="eu")),
        "expired": node_security(
            issue(ca, "node", "old", region="eu", days=1, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10))
        ),
        "another region": node_security(issue(ca, "node", "n-us", region="us")),
        "a client certificate": Security(
            tls_ca_file=str(tls_grid._local.throwaway.ca_file),
            tls_worker_cert=str(tls_grid._local.throwaway.client.cert_path),
            tls_worker_key=str(tls_grid._local.throwaway.client.key_path),
            tls_client_cert=str(tls_grid._local.throwaway.client.cert_path),
            tls_client_key=str(tls_grid._local.throwaway.client.key_path),
            require_encryption=True,
        ),
    }
    revoked = issue(ca, "node", "revoked-node", region="eu")
    revoke(ca, "revoked-node")
    cases["revoked"] = node_security(revoked)
    before = tls_grid.status()["eu"]["nodes"]["active"]
    for what, security in cases.items():
        outcome = start_worker(addr, security)
        assert outcome != "ok", f"a node with {what} was admitted"
    assert tls_grid.status()["eu"]["nodes"]["active"] == before
    still_serving(tls_grid, classification_data)


def test_plaintext_connection_to_a_tls_scheduler_is_refused(tls_grid):
    plain = address(tls_grid).replace("tls://", "tcp://")
    with pytest.raises((OSError, TimeoutError)):
        Client(plain, timeout=3, set_as_default=False)


def client_grid(g: Grid, name: str) -> Grid:
    cert = issue(g._local.throwaway.ca, "client", name)
    spec = {
        "regions": {r: s.address for r, s in g.spec.regions.items()},
        "tls": {"ca-file": str(g._local.throwaway.ca_file), "cert": str(cert.cert_path), "key": str(cert.key_path)},
    }
    return Grid.connect(spec)


def test_a_client_sees_and_cancels_only_its_own_jobs(tls_grid, classification_data):
    X, y = classification_data
    with client_grid(tls_grid, "alice") as alice, client_grid(tls_grid, "bob") as bob:
        job = alice.submit(PartialFit(SGDClassifier(random_state=0), rounds=100_000), X, y)
        wait_for(lambda: job.info()["rounds_done"] >= 1, timeout=60, what="a round")
        assert job.info()["owner"] == "alice"  # the certificate name, not what the client claims
        with pytest.raises(PermissionError, match="another user"):
            bob.job(job.id)
        from grid.job import Job

        with pytest.raises(PermissionError):
            Job(bob, job.id).cancel()
        assert job.id not in {j["id"] for j in bob.jobs()}
        assert job.id in {j["id"] for j in alice.jobs()}
        assert job.status == "running"
        assert job.cancel() == "cancelled"


class NoopPlugin(WorkerPlugin):
    name = "noop"


def test_code_execution_needs_an_admin_certificate(tls_grid):
    throwaway = tls_grid._local.throwaway
    addr = address(tls_grid)
    with Client(addr, security=throwaway.client.security(), set_as_default=False) as client:
        with pytest.raises(PermissionError, match="admin certificate"):
            client.run_on_scheduler(lambda: 1)
        with pytest.raises(PermissionError, match="admin certificate"):
            client.run(lambda: 1)
        with pytest.raises(PermissionError, match="admin certificate"):
            client.register_plugin(NoopPlugin())
    with Client(addr, security=throwaway.admin.security(), set_as_default=False) as admin:
        assert admin.run_on_scheduler(lambda: 41 + 1) == 42
        assert list(admin.run(lambda: "hi").values()) == ["hi"]
        admin.register_plugin(NoopPlugin())


def test_a_client_task_graph_is_refused(tls_grid):
    throwaway = tls_grid._local.throwaway
    with Client(address(tls_grid), security=throwaway.client.security(), set_as_default=False) as client:
        future = client.submit(np.sum, [1, 2, 3])
        with pytest.raises(Exception):
            future.result(timeout=10)


def test_a_community_node_refuses_an_arbitrary_function(tls_grid):
    throwaway = tls_grid._local.throwaway
    cert = issue(throwaway.ca, "node", "community-eu", region="eu")

    async def main() -> str:
        async with Worker(address(tls_grid), security=cert.security(), nthreads=1, plugins=(CommunityMode(),)) as w:
            async with Client(address(tls_grid), security=throwaway.admin.security(), asynchronous=True) as admin:
                future = admin.submit(sum, [1, 2], workers=[w.address], allow_other_workers=False, pure=False)
                try:
                    await future
                except Exception as exc:  # noqa: BLE001
                    return f"{type(exc).__name__}: {exc}"
                return "ran"

    outcome = asyncio.run(main())
    # the scheduler rebuilds the node's refusal from its text: a PermissionError the admin can catch
    assert outcome.startswith("NodeRefusedTask") and "community mode" in outcome and "refused" in outcome, outcome


def test_round_requests_on_tls_come_only_from_the_scheduler(tls_grid, classification_data):
    """Jobs on TLS run as round requests, and a client certificate cannot send one to a node."""
    from distributed.core import rpc

    from grid.node.rounds import OP

    X, y = classification_data
    job = tls_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), X, y)
    job.result(timeout=60)
    assert all(h["requests"] >= 1 and h["tasks"] == 0 for h in job.history), job.history
    throwaway = tls_grid._local.throwaway
    with Client(address(tls_grid), security=tls_grid._local.throwaway.admin.security(), set_as_default=False) as admin:
        node = next(iter(admin.scheduler_info(n_workers=-1)["workers"]))

    async def ask(security: Security) -> str:
        async with rpc(node, connection_args=security.get_connection_args("client")) as r:
            try:
                await getattr(r, OP)(request={}, state=None, round_no=0, parts=[])
            except Exception as exc:  # noqa: BLE001 - the refusal is what we test
                return f"{type(exc).__name__}: {exc}"
            return "served"

    # another node may connect (partition copies) but not send round requests
    other_node = issue(throwaway.ca, "node", "other-node", region="eu")
    refused = asyncio.run(ask(other_node.security()))
    assert refused.startswith("PermissionError") and "only from its scheduler" in refused, refused
    # a data scientist's certificate may not even connect to a node (grid.protocol.comm)
    refused = asyncio.run(ask(throwaway.client.security()))
    assert refused.startswith("CommClosedError"), refused
    assert asyncio.run(ask(throwaway.admin.security())) == "served"
