"""The trust boundary, attacked from outside with one certificate of the grid's CA each.

A real TLS grid (`grid scheduler` with a revocation list, two `grid node`s)
and attackers holding a node, client, revoked or other-region certificate and
stock distributed. Each attack has an oracle it cannot fool: a pickle whose
unpickling creates a marker file (checked after an honest job ran, so every
message sent before it was read), a victim's dataset that must still train
to the same model, the scheduler's memory.
"""

from __future__ import annotations

import asyncio
import os
import struct

import numpy as np
import psutil
import pytest
from distributed import Client, Worker
from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.core import rpc
from distributed.protocol import Serialize, ToPickle, serialize
from distributed.protocol.serialize import Serialized
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.keys import partition_key
from grid.security.certs import init_ca, issue, revoke, write_crl
from jobs import PartialFit
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes, tls_args, tls_spec

pytestmark = [pytest.mark.system, pytest.mark.slow]


class Marker:
    """Creates its file when unpickled: the oracle of every code-execution attack."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Boundary:
    """The grid under attack, its certificates and an honest user's reference model."""

    def __init__(self, tmp: str, procs) -> None:
        self.tmp = tmp
        self.ca = ca = init_ca(os.path.join(tmp, "ca"))
        out = os.path.join(tmp, "certs")
        self.sched = issue(ca, "scheduler", "sched-eu", region="eu", out=out)
        self.nodes = [issue(ca, "node", f"n{i}", region="eu", out=out) for i in range(2)]
        self.evil = {name: issue(ca, "node", name, region="eu", out=out) for name in ("evil-0", "evil-1", "evil-2", "evil-3")}
        self.other_region = issue(ca, "node", "n-us", region="us", out=out)
        self.revoked = issue(ca, "node", "gone", region="eu", out=out)
        self.admin = issue(ca, "admin", "operator", out=out)
        self.alice = issue(ca, "client", "alice", out=out)
        self.bob = issue(ca, "client", "bob", out=out)
        revoke(ca, "gone")
        write_crl(ca)
        self.procs = procs
        self.scheduler, self.address = procs.scheduler("eu", args=("--crl-file", str(ca.crl_path), *tls_args(ca, self.sched)))
        for i, cert in enumerate(self.nodes):
            procs.spawn([GRID, "node", "--region", "eu", "--scheduler", self.address, "--nthreads", "1", *self.tls(cert)], f"n{i}")
        self.X, self.y = make_classification(n_samples=4000, n_features=8, random_state=0)

    def tls(self, cert) -> tuple[str, ...]:
        return tls_args(self.ca, cert)

    def grid(self, cert) -> Grid:
        return Grid.connect(tls_spec(self.ca, cert, {"eu": self.address}))

    def marker(self, name: str) -> str:
        return os.path.join(self.tmp, f"MARKER-{name}")

    def honest_model(self, g: Grid, data=None) -> np.ndarray:
        est = PartialFit(SGDClassifier(random_state=0), rounds=2)
        job = g.submit(est, data) if data is not None else g.submit(est, self.X, self.y)
        return job.result(timeout=120).estimator_.coef_.copy()

    def quarantined(self) -> dict:
        with self.grid(self.admin) as g:
            return {q["identity"]: q for q in g.status()["eu"]["quarantined"]}

    def rss(self) -> int:
        return psutil.Process(self.scheduler.pid).memory_info().rss


@pytest.fixture(scope="module")
def boundary(tmp_path_factory):
    with grid_processes() as procs:
        b = Boundary(str(tmp_path_factory.mktemp("boundary")), procs)
        with b.grid(b.admin) as admin:
            wait_for(lambda: len(admin.status()["eu"]["workers"]) == 2, timeout=90, what="2 nodes")
        with b.grid(b.alice) as g:
            b.reference = b.honest_model(g)
            b.data = g.scatter(b.X, b.y)  # alice's placed dataset: the victim of the data attacks
            b.data_reference = b.honest_model(g, b.data)
        yield b


def still_serving(b: Boundary) -> None:
    """The honest user's next jobs give the same models: the scheduler read every earlier message."""
    with b.grid(b.alice) as g:
        np.testing.assert_array_equal(b.honest_model(g), b.reference)
        np.testing.assert_array_equal(b.honest_model(g, b.data), b.data_reference)


async def closed(comm, timeout: float = 30) -> bool:
    """Whether the peer closed ``comm`` (a read then fails)."""
    try:
        await asyncio.wait_for(comm.read(), timeout)
    except asyncio.TimeoutError:  # (a TimeoutError is an OSError too: test it first)
        return False
    except (CommClosedError, OSError):
        return True
    return False


async def raw_send(address: str, cert, msg, handshake: dict | None = None) -> bool:
    """Connect with ``cert``, send ``msg`` after the handshake; True when the scheduler closed on us."""
    try:
        comm = await connect(address, handshake_overrides=handshake, **cert.security().get_connection_args("client"))
    except (CommClosedError, OSError):
        return True  # refused during the handshake
    try:
        if msg is not None:
            await comm.write(msg)
        return await closed(comm)
    except (CommClosedError, OSError):
        return True
    finally:
        comm.abort()


# --- 1. code execution in the scheduler ---------------------------------------------------
@pytest.mark.parametrize("who", ["bob", "evil-0", "revoked", "other-region"])
def test_a_pickle_in_the_handshake_never_runs(boundary, who):
    b = boundary
    cert = {"bob": b.bob, "evil-0": b.evil["evil-0"], "revoked": b.revoked, "other-region": b.other_region}[who]
    marker = b.marker(f"handshake-{who}")
    assert asyncio.run(raw_send(b.address, cert, None, handshake={"x": ToPickle(Marker(marker))}))
    still_serving(b)
    assert not os.path.exists(marker), "a pickle in the comm handshake was unpickled by the scheduler"


def test_a_pickle_in_a_handler_argument_never_runs_also_for_a_refused_handler(boundary):
    b = boundary
    for op in ("grid_info", "run_function", "grid_submit"):
        marker = b.marker(f"arg-{op}")
        assert asyncio.run(raw_send(b.address, b.bob, {"op": op, "reply": True, "x": ToPickle(Marker(marker))}))
        still_serving(b)
        assert not os.path.exists(marker), f"a pickle in an argument of {op!r} was unpickled"


def test_a_node_sending_a_pickle_on_its_stream_is_quarantined_and_it_never_runs(boundary):
    b = boundary
    marker = b.marker("keep-alive")
    assert asyncio.run(raw_send(b.address, b.evil["evil-1"], [{"op": "keep-alive", "x": ToPickle(Marker(marker))}]))
    still_serving(b)
    assert not os.path.exists(marker)
    record = b.quarantined()["evil-1"]
    assert "pickled object" in record["reason"] and record["evidence"]["violation"]


def test_a_node_answering_a_round_request_with_a_pickle_is_quarantined_and_it_never_runs(boundary):
    """n1 (through an admin, who may change a node) answers its round requests with a pickle,
    as an open node (grid_update) and as a dial-out node (grid-reply on its grid channel) would."""
    b = boundary
    marker = b.marker("grid-update-reply")
    with Client(b.address, security=b.admin.security(), set_as_default=False) as operator:
        n1 = sorted(operator.scheduler_info()["workers"])[-1]

        def poison(path, dask_worker=None):
            from distributed.protocol import ToPickle

            class Evil:
                def __reduce__(self):
                    return (open, (path, "w"))

            async def grid_update(comm, **kwargs):
                return {"status": "OK", "updates": [[i, ToPickle(Evil())] for _, i in kwargs["parts"]]}

            async def update(request, state, round_no, parts):  # a dial-out node answers on its grid channel
                return {"status": "OK", "updates": [[part[1], ToPickle(Evil())] for part in parts]}

            dask_worker.handlers["grid_update"] = grid_update
            dask_worker.plugins["grid-node-rounds"]._update = update
            return "poisoned"

        import sys

        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        assert operator.run(poison, marker, workers=[n1]) == {n1: "poisoned"}
    with b.grid(b.alice) as g:
        coef = b.honest_model(g)
    np.testing.assert_array_equal(coef, b.reference)  # n0 did the work again
    assert not os.path.exists(marker), "a pickle in a round reply was unpickled by the scheduler"
    quarantined = b.quarantined()
    name = next(iter(set(quarantined) & {"n0", "n1"}))
    assert "pickled object" in quarantined[name]["reason"]


# --- 2. borrowed identities on streams ------------------------------------------------------
def test_a_client_cannot_follow_every_topic_nor_speak_as_another_client(boundary):
    b = boundary

    async def attack() -> tuple[bool, bool, bool]:
        security = b.bob.security()
        # distributed lets a stream message's own `client` win over the connection's
        holder = f"grid-dataset-{b.data.regions['eu']['dataset']}"
        keys = [partition_key(b.data.regions["eu"]["dataset"], i) for i in range(b.data.n_partitions)]
        spoofed = await raw_send(
            b.address, b.bob,
            {"op": "register-client", "client": "bob-1", "reply": False, "versions": {}},
        )
        comm = await connect(b.address, **security.get_connection_args("client"))
        await comm.write({"op": "register-client", "client": "bob-2", "reply": False, "versions": {}})
        await comm.read()  # the scheduler's welcome
        await comm.write([{"op": "client-releases-keys", "keys": keys, "client": holder}])
        released = await closed(comm)
        comm = await connect(b.address, **security.get_connection_args("client"))
        await comm.write({"op": "register-client", "client": "bob-3", "reply": False, "versions": {}})
        await comm.read()
        await comm.write([{"op": "subscribe-topic", "topic": "all", "client": "bob-3"}])
        topics = await closed(comm)
        comm = await connect(b.address, **security.get_connection_args("client"))
        await comm.write({"op": "register-client", "client": "bob-4", "reply": False, "versions": {}})
        await comm.read()
        await comm.write([{"op": "update-graph", "client": "bob-4", "graph": {}, "keys": []}])
        graph = await closed(comm)
        return spoofed is False, released, topics and graph

    registered, released_refused, rest_refused = asyncio.run(attack())
    assert registered, "an honest registration was refused"
    assert released_refused, "a stream message naming another client was read"
    assert rest_refused, "a client followed every topic or sent a task graph"
    still_serving(b)  # alice's dataset is intact: the same model from it


def test_a_client_cannot_register_under_a_reserved_or_taken_id(boundary):
    b = boundary
    holder = f"grid-dataset-{b.data.regions['eu']['dataset']}"
    assert asyncio.run(raw_send(b.address, b.bob, {"op": "register-client", "client": holder, "reply": False, "versions": {}}))
    still_serving(b)


# --- 7. memory ------------------------------------------------------------------------------
def test_oversized_messages_are_refused_before_they_are_read(boundary):
    b = boundary
    before = b.rss()

    async def flood() -> list[bool]:
        async def one() -> bool:
            comm = await connect(b.address, **b.bob.security().get_connection_args("client"))
            stream = comm.stream
            # distributed's framing: 8 bytes of header length, then the header announcing 300 MB
            header = struct.pack("Q", 1) + struct.pack("Q", 300_000_000)
            await stream.write(struct.pack("Q", len(header)) + header)
            try:
                await stream.write(os.urandom(1 << 20))  # the first MB of it
            except Exception:  # noqa: BLE001 - closed under us already
                pass
            return await closed(comm)

        return await asyncio.gather(*(one() for _ in range(4)))

    assert all(asyncio.run(flood()))
    assert b.rss() - before < 100 * 2**20, f"the scheduler grew by {(b.rss() - before) / 2**20:.0f} MiB"
    still_serving(b)


# --- 8. a data scientist's code on volunteers' nodes ---------------------------------------
def test_a_client_cannot_get_a_pickle_to_a_node(boundary):
    b = boundary
    marker = b.marker("scatter")
    with b.grid(b.admin) as g:
        workers = [w["address"] for w in g.status()["eu"]["workers"]]
    with Client(b.address, security=b.bob.security(), set_as_default=False) as bob:
        # serialized here, never unpickled here (Client.scatter would tokenize, i.e. run, it)
        payload = Serialized(*serialize(Marker(marker)))
        with pytest.raises((CommClosedError, OSError)):
            bob.sync(bob.scheduler.scatter, data={"attack": payload}, workers=workers[:1], client=bob.id, broadcast=False)
    # ... nor directly: a node refuses data scientists' certificates
    for w in workers:
        assert asyncio.run(raw_send(w, b.bob, {"op": "get_data", "keys": ["x"], "x": ToPickle(Marker(marker)), "reply": True}))
    still_serving(b)
    assert not os.path.exists(marker), "a data scientist's pickle was unpickled on a node"


def test_a_job_request_carrying_a_pickle_never_reaches_a_node(boundary):
    b = boundary
    marker = b.marker("request")
    with Client(b.address, security=b.bob.security(), set_as_default=False) as bob:
        request = {"estimator": "sklearn.linear_model:SGDClassifier", "params": {"alpha": Serialize(Marker(marker))}}
        with pytest.raises((CommClosedError, OSError)):
            bob.sync(bob.scheduler.grid_submit, request=request, placement={}, owner="bob")
    still_serving(b)
    assert not os.path.exists(marker)


# --- 10. a node speaking as another node ------------------------------------------------------
def test_a_node_cannot_release_another_nodes_data(boundary):
    b = boundary
    with b.grid(b.admin) as g:
        victims = [w["address"] for w in g.status()["eu"]["workers"]]

    async def attack() -> None:
        async with Worker(b.address, security=b.evil["evil-2"].security(), nthreads=1, name="evil-2") as w:
            dataset_keys = [partition_key(b.data.regions["eu"]["dataset"], i) for i in range(b.data.n_partitions)]
            for victim in victims:
                for key in dataset_keys:
                    w.batched_stream.send({"op": "release-worker-data", "key": key, "worker": victim, "stimulus_id": "x"})
            await asyncio.wait_for(w.finished(), 30)  # the scheduler closes its stream

    try:
        asyncio.run(attack())
    except Exception:  # noqa: BLE001 - the worker may fail on the closed stream; the oracle is below
        pass
    still_serving(b)  # alice's partitions are all still known and held
    assert "evil-2" in b.quarantined()


# --- direct connections to nodes -------------------------------------------------------------
def test_a_node_reads_no_pickle_from_another_node(boundary):
    b = boundary
    marker = b.marker("node-to-node")
    with b.grid(b.admin) as g:
        workers = [w["address"] for w in g.status()["eu"]["workers"]]
    for w in workers:
        assert asyncio.run(raw_send(w, b.evil["evil-3"], {"op": "get_data", "keys": ToPickle(Marker(marker)), "reply": True}))
        # a node of another region may not even ask politely
        assert asyncio.run(raw_send(w, b.other_region, {"op": "get_data", "keys": ["x"], "reply": True}))
    still_serving(b)
    assert not os.path.exists(marker)


def test_an_admin_still_has_plain_dask(boundary):
    b = boundary
    with Client(b.address, security=b.admin.security(), set_as_default=False) as operator:
        assert operator.run_on_scheduler(lambda: "scheduler ran it") == "scheduler ran it"

        async def info() -> dict:
            async with rpc(b.address, connection_args=b.admin.security().get_connection_args("client")) as r:
                return await r.grid_info()

        assert asyncio.run(info())["region"] == "eu"


# --- 9. the scheduler dials only what its operator configured ---------------------------------
def test_the_scheduler_never_dials_an_address_a_request_names(boundary):
    """A job whose placement names a "region" at a listener the attacker runs (TLS with a node
    certificate of the grid, so the scheduler's TLS check would pass): refused before any
    connection, because the scheduler has no such peer."""
    import socket
    import threading

    b = boundary
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:  # any TCP connection counts, before TLS is even spoken
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            accepted.append(str(peer))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with b.grid(b.bob) as g, Client(b.address, security=b.bob.security(), set_as_default=False) as bob:
            data = g.scatter(b.X[:500], b.y[:500])  # bob's own dataset: he may train on it
            request = PartialFit(SGDClassifier(random_state=0), rounds=1)._job_request()
            request.update(verify=1, partial_participation=False, classes=[0, 1], n_features=b.X.shape[1])
            placement = {
                "eu": {"address": b.address, "dataset": data.regions["eu"]["dataset"]},
                "us": {"address": f"tls://127.0.0.1:{port}", "dataset": "anything"},
            }
            reply = bob.sync(bob.scheduler.grid_submit, request=request, placement=placement, owner="bob")
            g.drop(data)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert reply["status"] == "error" and "is not a peer of region 'eu'" in reply["message"], reply
    assert "--peer us=ADDRESS" in reply["message"]
    assert accepted == [], "the scheduler connected to an address a job request named"
    still_serving(b)


# --- honest paths ----------------------------------------------------------------------------
def test_a_stock_dask_worker_with_the_round_handler_joins_and_works(boundary):
    """`dask worker --preload grid.node.rounds` with a node certificate: a volunteer who runs
    stock Dask is read through the same checks and does its share honestly."""
    b = boundary
    cert = issue(b.ca, "node", "stock-0", region="eu", out=os.path.join(b.tmp, "certs"))
    dask = os.path.join(os.path.dirname(GRID), "dask")
    b.procs.spawn(
        [dask, "worker", b.address, "--preload", "grid.node.rounds", "--nthreads", "1", "--name", "stock-0",
         "--no-nanny", "--tls-ca-file", str(b.ca.cert_path), "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)],
        "stock-0",
    )
    with b.grid(b.admin) as ops:
        wait_for(lambda: any(w["name"] == "stock-0" for w in ops.status()["eu"]["workers"]), timeout=90, what="the stock worker")
        with b.grid(b.alice) as g:
            for _ in range(3):  # fresh job-owned data each time: the scheduler places some on the new node
                np.testing.assert_array_equal(b.honest_model(g), b.reference)
        status = ops.status()["eu"]
        stock = next(w for w in status["workers"] if w["name"] == "stock-0")
        assert stock["tasks_done"] > 0, stock
        assert "stock-0" not in {q["identity"] for q in status["quarantined"]}
