"""The observer certificate on a real TLS grid: it sees every job, and changes and reads nothing else.

A real `grid scheduler` (with a revocation list) and two `grid node`s. Alice,
a data scientist, has placed a dataset whose first rows are a secret and has
a finished job with a result; Bob has a job of his own. The operators'
dashboard holds an observer certificate. Oracles it cannot fool:

* the secret rows and Alice's fitted coefficients, as bytes, appear nowhere in
  anything the observer was sent (every reply, error and listing it received
  is kept and searched; the same search finds them in what Alice and an admin
  receive, so it would find a leak);
* a pickle whose unpickling creates a marker file, and a function that would
  create one, checked after an honest job ran (the scheduler read every
  earlier message);
* Alice's running job still finishes every round after the observer tried to
  cancel it, and the job listing gains nothing after it tried to submit.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import urllib.request

import numpy as np
import pytest
import yaml
from distributed import Client
from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.core import rpc
from distributed.protocol import ToPickle
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.dashboard.views import GridRPCView
from grid.keys import partition_key
from grid.security.certs import init_ca, issue, write_crl
from jobs import PartialFit
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes, tls_args, tls_spec

pytestmark = [pytest.mark.system, pytest.mark.slow]

#: rows of Alice's data that are her secret (random, so no other array holds their bytes)
SECRET_ROWS = 8


class Marker:
    """Creates its file when unpickled: the oracle of every code-execution attack."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_marker(path: str) -> str:
    """What the observer tries to run on the scheduler."""
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


class Observed:
    """The grid, its certificates, Alice's secret data and jobs, and everything the observer received."""

    def __init__(self, tmp: str, procs) -> None:
        self.tmp = tmp
        self.procs = procs
        self.ca = ca = init_ca(os.path.join(tmp, "ca"))
        out = os.path.join(tmp, "certs")
        sched = issue(ca, "scheduler", "sched-eu", region="eu", out=out)
        nodes = [issue(ca, "node", f"n{i}", region="eu", out=out) for i in range(2)]
        self.admin = issue(ca, "admin", "operator", out=out)
        self.alice = issue(ca, "client", "alice", out=out)
        self.bob = issue(ca, "client", "bob", out=out)
        self.observer = issue(ca, "observer", "ops-dashboard", out=out)
        write_crl(ca)
        _, self.address = procs.scheduler("eu", args=("--crl-file", str(ca.crl_path), *tls_args(ca, sched)))
        for cert in nodes:
            # open nodes: the oracle gathers alice's partitions from them through the scheduler,
            # which a dial-out node (its partitions in the region's store) would not serve
            procs.node("eu", self.address, cert.identity.name, args=(*tls_args(ca, cert), "--no-dial-out"), community=None)
        X, y = make_classification(n_samples=2000, n_features=8, random_state=1)
        secret = np.random.default_rng(int.from_bytes(os.urandom(8), "little")).uniform(-1e9, 1e9, (SECRET_ROWS, 8))
        X[:SECRET_ROWS] = secret
        self.X, self.y = X, y
        #: name -> bytes that must never reach the observer
        self.secrets = {f"secret row {i}": secret[i].tobytes() for i in range(SECRET_ROWS)}
        #: every reply, listing and error the observer was sent
        self.received: list = []

    def spec(self, cert) -> dict:
        return tls_spec(self.ca, cert, {"eu": self.address})

    def grid(self, cert) -> Grid:
        return Grid.connect(self.spec(cert))

    def marker(self, name: str) -> str:
        return os.path.join(self.tmp, f"MARKER-{name}")

    def keep(self, value):
        self.received.append(value)
        return value

    def leaks(self, received: list | None = None) -> list[str]:
        """The secrets whose bytes are in ``received`` (default: everything the observer received)."""
        blobs = []
        for item in self.received if received is None else received:
            try:
                blobs.append(pickle.dumps(item))
            except Exception:  # noqa: BLE001 - what does not pickle is searched as text
                blobs.append(repr(item).encode())
        blob = b"".join(blobs)
        return [name for name, secret in self.secrets.items() if secret in blob]

    def partition_keys(self) -> list[str]:
        name = self.data.regions["eu"]["dataset"]
        return [partition_key(name, i) for i in range(self.data.n_partitions)]

    def job_ids(self, cert) -> set[str]:
        with self.grid(cert) as g:
            return {j["id"] for j in g.jobs()}

    async def call(self, op: str, address: str | None = None, **kwargs):
        """One RPC of the observer: its reply, or the error it got (both kept)."""
        args = self.observer.security().get_connection_args("client")
        try:
            async with rpc(address or self.address, connection_args=args, timeout=30) as r:
                return self.keep(await getattr(r, op)(**kwargs))
        except Exception as exc:  # noqa: BLE001 - the refusal is what we test
            return self.keep(exc)

    async def on_stream(self, items: list, client: str) -> bool:
        """Register as a Dask client, send ``items`` on the stream; True when the scheduler closed on us."""
        comm = await connect(self.address, **self.observer.security().get_connection_args("client"))
        try:
            await comm.write({"op": "register-client", "client": client, "reply": False, "versions": {}})
            self.keep(await comm.read())  # the scheduler's welcome
            await comm.write(items)
            return await self.closed(comm)
        except (CommClosedError, OSError):
            return True
        finally:
            comm.abort()

    async def raw_send(self, address: str, msg, handshake: dict | None = None) -> bool:
        """Connect with the observer certificate and send ``msg``; True when the peer closed on us."""
        try:
            comm = await connect(address, handshake_overrides=handshake, **self.observer.security().get_connection_args("client"))
        except (CommClosedError, OSError) as exc:
            self.keep(repr(exc))
            return True  # refused during the handshake
        try:
            if msg is not None:
                await comm.write(msg)
            return await self.closed(comm)
        except (CommClosedError, OSError):
            return True
        finally:
            comm.abort()

    async def closed(self, comm, timeout: float = 30) -> bool:
        """Whether the peer closed ``comm`` (a read then fails); what it sent before is kept."""
        while True:
            try:
                self.keep(await asyncio.wait_for(comm.read(), timeout))
            except asyncio.TimeoutError:  # (a TimeoutError is an OSError too: test it first)
                return False
            except (CommClosedError, OSError):
                return True


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    with grid_processes() as procs:
        o = Observed(str(tmp_path_factory.mktemp("observer")), procs)
        with o.grid(o.admin) as admin:
            wait_for(lambda: len(admin.status()["eu"]["workers"]) == 2, timeout=90, what="2 nodes")
        with o.grid(o.alice) as g:
            o.data = g.scatter(o.X, o.y)  # alice's placed dataset, with the secret rows
            job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), o.data)
            o.coef = job.result(timeout=120).estimator_.coef_.copy()
            o.alice_job = job.id
        o.secrets["alice's model"] = o.coef.tobytes()
        with o.grid(o.bob) as g:
            job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), o.X[SECRET_ROWS:500], o.y[SECRET_ROWS:500])
            job.result(timeout=120)
            o.bob_job = job.id
        yield o


def still_serving(o: Observed) -> None:
    """Alice's next job on her data gives the same model: the scheduler read every earlier message."""
    with o.grid(o.alice) as g:
        coef = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), o.data).result(timeout=120).estimator_.coef_
    np.testing.assert_array_equal(coef, o.coef)


# --- what the observer is for ----------------------------------------------------------------
def test_the_observer_sees_every_users_jobs_and_the_nodes(observed):
    o = observed
    with o.grid(o.observer) as g:
        jobs = {j["id"]: j for j in o.keep(g.jobs())}
        status = o.keep(g.status())["eu"]
        detail = o.keep(g.job(o.alice_job).info())
    assert jobs[o.alice_job]["owner"] == "alice" and jobs[o.alice_job]["status"] == "done"
    assert jobs[o.alice_job]["rounds_done"] == jobs[o.alice_job]["rounds"] == 2
    assert jobs[o.bob_job]["owner"] == "bob"
    assert status["jobs"]["done"] >= 2  # every user's jobs are counted, not only its own (none)
    assert {w["name"] for w in status["workers"]} == {"n0", "n1"}  # the node view an operator sees
    assert all(w["address"].startswith("tls://") for w in status["workers"])
    assert {d["owner"] for d in status["datasets"]} >= {"alice"}
    assert [h["round"] for h in detail["history"]] == [1, 2] and "loss" in detail["history"][-1]
    assert not o.leaks(), "job metadata carried alice's data or model"


def dashboard_view(o, cert) -> GridRPCView:
    """What the dashboard reads with ``cert``: the grid, and alice's job by id."""

    async def read() -> GridRPCView:
        view = GridRPCView.from_spec(o.spec(cert), timeout=30)
        try:
            await view.refresh()
            await view.refresh_job(o.alice_job)
        finally:
            await view.close()
        return view

    return asyncio.run(read())


def test_the_dashboard_with_an_observer_certificate_shows_every_job_and_node(observed):
    o = observed

    view = dashboard_view(o, o.observer)
    o.keep([view.info, view.jobs, view.details])
    assert view.errors == {}
    assert {o.alice_job, o.bob_job} <= {j["id"] for j in view.jobs}
    assert len(view.details[o.alice_job]["history"]) == 2
    assert {w["name"] for w in view.info["eu"]["workers"]} == {"n0", "n1"}
    assert not o.leaks()


def test_a_client_certificate_still_sees_only_its_own_jobs(observed):
    o = observed
    with o.grid(o.bob) as g:
        ids = {j["id"] for j in g.jobs()}
        status = g.status()["eu"]
    assert o.bob_job in ids and o.alice_job not in ids
    assert len(status["workers"]) == 0 and all(d["owner"] == "bob" for d in status["datasets"])

    view = dashboard_view(o, o.bob)
    assert {j["id"] for j in view.jobs} == {o.bob_job}
    assert o.alice_job not in view.details


def test_the_oracle_finds_the_secret_where_it_is(observed):
    """The search of what the observer received finds alice's rows and model where they are."""
    o = observed
    with Client(o.address, security=o.admin.security(), set_as_default=False) as operator:
        partitions = operator.sync(operator.scheduler.gather, keys=o.partition_keys())  # what `gather` would send
    assert partitions["status"] == "OK"
    found = o.leaks([partitions])
    assert all(f"secret row {i}" in found for i in range(SECRET_ROWS)), found
    with o.grid(o.alice) as g:
        client = g.client("eu")
        reply = client.sync(client.scheduler.grid_result, job_id=o.alice_job)
    assert "alice's model" in o.leaks([reply])


# --- what it must not do ---------------------------------------------------------------------
def test_the_observer_cannot_read_alices_result_or_data(observed):
    o = observed
    keys = o.partition_keys()
    dataset = o.data.regions["eu"]["dataset"]

    async def attack() -> dict:
        return {
            "grid_result": await o.call("grid_result", job_id=o.alice_job),
            "grid_wait": await o.call("grid_wait", job_id=o.alice_job, timeout=1),
            "gather": await o.call("gather", keys=keys),
            "who_has": await o.call("who_has", keys=keys),
            "get_metadata": await o.call("get_metadata", keys=keys),
            "register a dataset of her keys": await o.call(
                "grid_register_dataset", name="mine", keys=keys, rows=[1] * len(keys), indices=list(range(len(keys))),
                n_features=8, classes=[0, 1], owner="ops-dashboard", job_owned=False,
            ),
            "drop her dataset": await o.call("grid_drop_dataset", name=dataset),
            # a stream that desires her keys would pin them for a gather
            "desire her keys": await o.on_stream([{"op": "client-desires-keys", "keys": keys, "client": "obs-keys"}], "obs-keys"),
        }

    outcome = asyncio.run(attack())
    desired = outcome.pop("desire her keys")
    for what, reply in outcome.items():
        assert isinstance(reply, PermissionError), f"{what}: {reply!r:.300}"
        assert "observer certificate" in str(reply)
    assert desired, "the scheduler read a stream message desiring alice's keys"
    assert not o.leaks(), f"{o.leaks()} reached the observer"
    still_serving(o)  # alice's dataset is intact and hers


def test_the_observer_cannot_submit_a_job(observed):
    o = observed
    before = o.job_ids(o.admin)
    # its scatter of the job's data is refused at once, with the reason (not retried as if nodes left)
    with o.grid(o.observer) as g, pytest.raises(PermissionError, match="observer certificate"):
        g.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), o.X[SECRET_ROWS:400], o.y[SECRET_ROWS:400])
    request = PartialFit(SGDClassifier(random_state=0), rounds=1)._job_request()
    request.update(classes=[0, 1], n_features=8)
    placement = {"eu": {"address": o.address, "dataset": o.data.regions["eu"]["dataset"]}}
    reply = asyncio.run(o.call("grid_submit", request=request, placement=placement, owner="alice"))
    assert isinstance(reply, PermissionError) and "observer certificate" in str(reply)
    scatter = asyncio.run(o.call("scatter", data={"x": [1.0, 2.0]}, client="obs", broadcast=False, timeout=5))
    assert isinstance(scatter, PermissionError)
    assert o.job_ids(o.admin) == before, "a job appeared after the observer tried to submit"
    assert not o.leaks()


def test_the_observer_cannot_cancel_alices_job(observed):
    o = observed
    rounds = 40
    with o.grid(o.alice) as g:
        job = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=rounds), o.data)
        wait_for(lambda: job.status == "running", timeout=60, what="alice's job to run")

        async def attack() -> list:
            return [await o.call("grid_cancel", job_id=job.id), await o.call("grid_cancel", job_id=o.alice_job)]

        refused = asyncio.run(attack())
        assert job.status in ("running", "done"), "the job stopped after the observer tried to cancel it"
        job.result(timeout=240)
        info = job.info()
    assert all(isinstance(r, PermissionError) and "observer certificate" in str(r) for r in refused), refused
    assert info["status"] == "done" and info["rounds_done"] == rounds
    with o.grid(o.admin) as admin:
        assert admin.job(o.alice_job).status == "done"


def test_the_observer_cannot_run_a_function_on_the_scheduler(observed):
    o = observed
    ran = o.marker("run-on-scheduler")
    with Client(o.address, security=o.observer.security(), set_as_default=False) as dash:  # a Dask client connects
        with pytest.raises(PermissionError, match="observer certificate.*'run_function'"):
            dash.run_on_scheduler(write_marker, ran)
        with pytest.raises(PermissionError, match="observer certificate"):
            dash.run(write_marker, ran)  # on the nodes, through the scheduler's broadcast
        assert dash.sync(dash.scheduler.grid_info)["region"] == "eu"  # its connection stays usable for reads
    plugin = o.marker("scheduler-plugin")
    refused = asyncio.run(o.call("register_scheduler_plugin", plugin=pickle.dumps(Marker(plugin)), name="x", idempotent=False))
    assert isinstance(refused, PermissionError)
    graph = o.marker("update-graph")
    closed = asyncio.run(o.on_stream([{"op": "update-graph", "graph": ToPickle(Marker(graph)), "keys": ["x"], "client": "obs-g"}], "obs-g"))
    assert closed, "the scheduler read a task graph from an observer"
    still_serving(o)
    for marker in (ran, plugin, graph):
        assert not os.path.exists(marker), f"{os.path.basename(marker)}: the observer's code ran"


def test_a_pickle_from_the_observer_never_runs(observed):
    o = observed
    markers = {name: o.marker(f"pickle-{name}") for name in ("handshake", "grid_info", "grid_job", "stream")}

    async def attack() -> list[bool]:
        return [
            await o.raw_send(o.address, None, handshake={"x": ToPickle(Marker(markers["handshake"]))}),
            await o.raw_send(o.address, {"op": "grid_info", "reply": True, "x": ToPickle(Marker(markers["grid_info"]))}),
            await o.raw_send(o.address, {"op": "grid_job", "reply": True, "job_id": ToPickle(Marker(markers["grid_job"]))}),
            await o.on_stream([{"op": "heartbeat-client", "client": "obs-p", "x": ToPickle(Marker(markers["stream"]))}], "obs-p"),
        ]

    assert all(asyncio.run(attack())), "the scheduler kept a connection that sent it a pickle"
    still_serving(o)
    for name, marker in markers.items():
        assert not os.path.exists(marker), f"a pickle the observer sent in {name} was unpickled"


def test_the_observer_cannot_follow_every_topic_nor_release_keys(observed):
    o = observed
    # (print and warn, which every Dask client follows, are allowed: the Client above connected)
    assert asyncio.run(o.on_stream([{"op": "subscribe-topic", "topic": "all", "client": "obs-t"}], "obs-t"))
    assert asyncio.run(o.on_stream([{"op": "client-releases-keys", "keys": o.partition_keys(), "client": "obs-r"}], "obs-r"))
    still_serving(o)  # alice's partitions are still held


def test_the_observer_cannot_connect_to_a_node(observed):
    o = observed
    marker = o.marker("node")
    with o.grid(o.admin) as g:
        workers = [w["address"] for w in g.status()["eu"]["workers"]]
    assert len(workers) == 2
    keys = o.partition_keys()

    async def attack() -> list[bool]:
        out = []
        for w in workers:
            out.append(await o.raw_send(w, {"op": "get_data", "keys": keys, "who": None, "reply": True}))
            out.append(await o.raw_send(w, {"op": "get_data", "keys": ToPickle(Marker(marker)), "reply": True}))
            out.append(await o.raw_send(w, {"op": "run", "function": pickle.dumps(write_marker), "args": pickle.dumps((marker,)), "reply": True}))
        return out

    assert all(asyncio.run(attack())), "a node kept a connection from an observer"
    still_serving(o)
    assert not os.path.exists(marker)
    assert not o.leaks(), f"{o.leaks()} reached the observer from a node"


# --- `grid dashboard` ---------------------------------------------------------------------------
def run_dashboard(o: Observed, cert, name: str) -> tuple[object, str]:
    spec = os.path.join(o.tmp, f"{name}.yaml")
    with open(spec, "w") as f:
        yaml.safe_dump(o.spec(cert), f)
    proc = o.procs.spawn([GRID, "dashboard", "--grid", spec, "--port", "0"], name)
    wait_for(lambda: "grid dashboard: http" in o.procs.log(proc) or proc.poll() is not None, timeout=60, what=f"{name} to listen")
    match = re.search(r"grid dashboard: (http://\S+)", o.procs.log(proc))
    assert match, o.procs.log(proc)
    return proc, match.group(1)


def stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_grid_dashboard_with_a_client_certificate_works_and_warns_once(observed):
    o = observed
    proc, url = run_dashboard(o, o.bob, "dashboard-bob")
    try:
        for _ in range(2):  # two browser sessions, each with its own view of the grid
            with urllib.request.urlopen(url, timeout=30) as page:
                assert page.status == 200
        log = o.procs.log(proc)
    finally:
        stop(proc)
    assert log.count("client certificate of 'bob'") == 1, log
    assert "grid certs issue observer" in log


def test_grid_dashboard_with_an_observer_certificate_does_not_warn(observed):
    o = observed
    proc, url = run_dashboard(o, o.observer, "dashboard-observer")
    try:
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200
        log = o.procs.log(proc)
    finally:
        stop(proc)
    assert "client certificate" not in log and "observer certificate" not in log, log
