"""Community nodes behind a firewall train like open ones: they dial out, nothing dials them.

Real processes in Linux network namespaces (``tests/system/netns.py``): a TLS
`grid scheduler` on one host, `grid node`s on hosts whose firewall drops every
inbound connection (``tests/system/test_netns_lab.py`` shows that a stock Dask
worker there cannot receive a partition), and the test's client in the root
namespace. Community nodes of a TLS grid dial out by default: round requests
and answers travel on the connection each node opened, and partitions come
from the region's store over connections the node opens.

Every model is compared with the same job on an in-process open grid (1e-9).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.security.certs import init_ca, issue
from jobs import PartialFit
from jobs.data import Files
from tests.conftest import wait_for
from tests.system.procs import GRID, tls_args, tls_spec, write_npz_parts

pytestmark = [pytest.mark.system, pytest.mark.slow]

PORT = 8786


def _job(rounds: int = 3, rows: int = 1000) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=rounds, partition_rows=rows)


def _reference(X, y, rounds: int = 3, rows: int = 1000, scatter: bool = False) -> np.ndarray:
    """The model of the same job on an open in-process grid (on ``g.scatter`` data: its partitions)."""
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as local:
        data = (local.scatter(X, y),) if scatter else (X, y)
        return local.submit(_job(rounds, rows), *data).result(timeout=120).estimator_.coef_.copy()


class Region:
    """A TLS region in a lab: its scheduler on host ``sched``, nodes started on demand."""

    def __init__(self, lab, tmp_path) -> None:
        self.lab, self.tmp = lab, tmp_path
        self.ca = init_ca(str(tmp_path / "ca"))
        self.out = str(tmp_path / "certs")
        self.sched = lab.host("sched")
        self.address = f"tls://{self.sched.ip}:{PORT}"
        cert = issue(self.ca, "scheduler", "sched-eu", region="eu", out=self.out, hosts=[self.sched.ip])
        path = tmp_path / "scheduler.json"
        self.scheduler = lab.popen(
            self.sched,
            [GRID, "scheduler", "--region", "eu", "--host", self.sched.ip, "--port", str(PORT),
             "--dashboard-address", f"{self.sched.ip}:0", "--scheduler-file", str(path), *tls_args(self.ca, cert)],
            stdout=open(tmp_path / "scheduler.log", "wb"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: path.exists() or self.scheduler.poll() is not None, timeout=60, what="the scheduler")
        assert self.scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()
        assert json.loads(path.read_text())["address"] == self.address
        self.admin = issue(self.ca, "admin", "operator", out=self.out)
        self.alice = issue(self.ca, "client", "alice", out=self.out)
        self.nodes: dict[str, object] = {}

    def node(self, name: str, *extra: str, wan: dict | None = None, stock: bool = False, firewalled: bool = True):
        """Start a node on a host of its own, firewalled unless said; ``wan``: its link's delay, jitter and loss."""
        host = self.lab.host(name, firewalled=firewalled)
        cert = issue(self.ca, "node", name, region="eu", out=self.out)
        if wan:  # a relay in the node's own namespace delays what it sends and receives
            scheduler = "tls://" + self.lab.wan(host, target=f"{self.sched.ip}:{PORT}", **wan)
        else:
            scheduler = self.address
        if stock:  # a plain Dask worker, as an operator might start one by mistake
            args = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--name", name, "--nthreads", "1",
                    "--no-nanny", "--host", host.ip, "--tls-ca-file", str(self.ca.cert_path),
                    "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)]
        else:
            args = [GRID, "node", "--region", "eu", "--scheduler", scheduler, "--name", name, "--nthreads", "1",
                    "--memory-limit", "1GiB", "--host", host.ip, *extra, *tls_args(self.ca, cert)]
        log = open(self.tmp / f"node-{name}.log", "wb")
        self.nodes[name] = self.lab.popen(host, args, stdout=log, stderr=subprocess.STDOUT)
        return host

    def connect(self, who: str = "alice") -> Grid:
        return Grid.connect(tls_spec(self.ca, getattr(self, who), {"eu": self.address}))

    def log(self, name: str) -> str:
        return (self.tmp / f"node-{name}.log").read_text(errors="replace")


def _keys_held(dask_scheduler) -> dict:
    """Node -> the keys Dask has on it (read on the scheduler, with an admin certificate)."""
    return {str(ws.name): sorted(str(ts.key) for ts in ws.has_what) for ws in dask_scheduler.workers.values()}


def _workers(ops: Grid) -> list[dict]:
    return ops.status()["eu"]["workers"]


def _wait_nodes(ops: Grid, n: int, reach: str = "dial-out", timeout: float = 90) -> list[dict]:
    return wait_for(
        lambda: (lambda ws: ws if len(ws) == n and all(w["reach"] == reach for w in ws) else None)(_workers(ops)),
        timeout=timeout, what=f"{n} {reach} nodes",
    )


def test_firewalled_nodes_train_on_every_kind_of_data(lab, tmp_path) -> None:
    X, y = make_classification(n_samples=4000, n_features=8, random_state=0)
    clean, clean_placed = _reference(X, y), _reference(X, y, scatter=True)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    pattern = write_npz_parts(str(files_dir), X, y, 4)

    region = Region(lab, tmp_path)
    for name in ("vol-a", "vol-b"):
        region.node(name, "--data-root", str(files_dir))
    with region.connect("admin") as ops, region.connect() as g:
        nodes = _wait_nodes(ops, 2)
        assert {w["state"] for w in nodes} == {"active"}
        start = time.monotonic()
        in_memory = g.submit(_job(), X, y).result(timeout=120).estimator_.coef_
        first_job = time.monotonic() - start
        data = g.scatter(X, y)
        scattered = g.submit(_job(), data).result(timeout=120).estimator_.coef_
        verified_job = g.submit(_job(), data, verify=2)
        verified = verified_job.result(timeout=120).estimator_.coef_
        from_files = g.submit(_job(), Files(pattern)).result(timeout=120).estimator_.coef_
        holders = {w["name"]: w["stored"] for w in _workers(ops)}
    np.testing.assert_allclose(in_memory, clean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(from_files, clean, rtol=0, atol=1e-9)  # the same 4 partitions, read by the nodes
    np.testing.assert_allclose(scattered, clean_placed, rtol=0, atol=1e-9)
    np.testing.assert_allclose(verified, clean_placed, rtol=0, atol=1e-9)
    assert all(n > 0 for n in holders.values()), holders  # both hold partitions of the placed dataset
    print(f"first job on 2 dial-out nodes: {first_job:.2f} s")


def test_a_killed_dial_out_node_is_replaced_mid_job(lab, tmp_path) -> None:
    X, y = make_classification(n_samples=40000, n_features=20, random_state=1)
    clean = _reference(X, y, rounds=25, rows=5000, scatter=True)
    region = Region(lab, tmp_path)
    region.node("vol-a")
    region.node("vol-b")
    with region.connect("admin") as ops, region.connect() as g:
        _wait_nodes(ops, 2)
        data = g.scatter(X, y)
        # verify=2: with one node left the job must wait for the new one, so the new node works in it
        job = g.submit(_job(rounds=25, rows=5000), data, verify=2)
        wait_for(lambda: len(job.history) >= 2, timeout=60, what="2 rounds")
        lab.kill(region.nodes["vol-a"])
        waiting = wait_for(lambda: job.info().get("waiting"), timeout=60, what="the job to wait for a second node")
        assert "has 1 now" in waiting, waiting
        region.node("vol-c")
        fitted = job.result(timeout=180).estimator_.coef_
        done = {w["name"]: w["tasks_done"] for w in _workers(ops)}
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    assert set(done) == {"vol-b", "vol-c"} and done["vol-c"] > 0, done


def test_a_dial_out_node_that_is_stopped_retires_at_once(lab, tmp_path) -> None:
    """SIGTERM (`systemctl stop`) retires a dial-out node that read Files partitions over its own
    connection, without waiting for copies that would have to be made by dialing it; the job goes on."""
    X, y = make_classification(n_samples=20000, n_features=20, random_state=4)
    clean = _reference(X, y, rounds=20, rows=5000)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    pattern = write_npz_parts(str(files_dir), X, y, 4)
    region = Region(lab, tmp_path)
    for name in ("vol-a", "vol-b", "vol-c"):
        region.node(name, "--data-root", str(files_dir))
    with region.connect("admin") as ops, region.connect() as g:
        _wait_nodes(ops, 3)
        job = g.submit(_job(rounds=20, rows=5000), Files(pattern))
        wait_for(lambda: len(job.history) >= 2, timeout=60, what="2 rounds")
        # a node that read file partitions: copies of them could only be made by dialing it
        holding = {w["name"]: w["stored"] for w in _workers(ops)}
        stopping = max(sorted(holding), key=lambda n: holding[n])
        assert holding[stopping] > 0, holding
        stopped = time.monotonic()
        region.nodes[stopping].send_signal(signal.SIGTERM)
        assert region.nodes[stopping].wait(timeout=90) == 0, region.log(stopping)
        seconds = time.monotonic() - stopped
        fitted = job.result(timeout=120).estimator_.coef_
        names = {w["name"] for w in _workers(ops)}
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    assert names == {"vol-a", "vol-b", "vol-c"} - {stopping}, names
    log = region.log(stopping)
    assert "retired from" in log and "could not retire" not in log, log  # retired, not timed out
    print(f"a dial-out node holding Files partitions retired and exited in {seconds:.2f} s")


def test_a_mixed_region_with_an_unreachable_stock_worker(lab, tmp_path) -> None:
    """Open, dial-out, claimed-open-but-firewalled and unreachable nodes in one region."""
    X, y = make_classification(n_samples=4000, n_features=8, random_state=2)
    clean = _reference(X, y, scatter=True)
    region = Region(lab, tmp_path)
    region.node("stock", stock=True)  # cannot be dialed, and cannot serve grid calls on its stream
    region.node("vol-a")  # a community node: dials out
    region.node("vol-b", "--no-dial-out")  # says it is open, but its firewall says otherwise
    region.node("private", "--no-dial-out", firewalled=False)  # an operator's open node: Dask's usual path
    expected = {"stock": "unreachable", "vol-a": "dial-out", "vol-b": "dial-out", "private": "open"}
    with region.connect("admin") as ops, region.connect() as g:
        status = wait_for(
            lambda: (lambda ws: ws if {w["name"]: w["reach"] for w in ws} == expected else None)(_workers(ops)),
            timeout=90, what=f"nodes found {expected}",
        )
        stock = next(w for w in status if w["name"] == "stock")
        assert stock["state"] == "unreachable"  # reported as such, not as gone or active
        assert ops.status()["eu"]["nodes"]["unreachable"] == 1
        start = time.monotonic()
        data = g.scatter(X, y)
        fitted = g.submit(_job(), data).result(timeout=120).estimator_.coef_
        verified = g.submit(_job(), data, verify=2).result(timeout=120).estimator_.coef_
        seconds = time.monotonic() - start
        after = {w["name"]: w for w in _workers(ops)}
        c = ops.client("eu")
        print("DEBUG", c.run_on_scheduler(lambda dask_scheduler: {str(ws.name): [str(ts.key) for ts in ws.has_what] for ws in dask_scheduler.workers.values()}))
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(verified, clean, rtol=0, atol=1e-9)
    assert after["stock"]["stored"] == 0 and after["stock"]["tasks_done"] == 0  # it got no data and no work
    assert all(after[n]["tasks_done"] > 0 for n in ("vol-a", "vol-b", "private")), after
    print(f"placement and two 3-round jobs beside an unreachable worker: {seconds:.2f} s")


def test_dial_out_nodes_over_a_slow_lossy_wan(lab, tmp_path) -> None:
    X, y = make_classification(n_samples=4000, n_features=8, random_state=3)
    clean = _reference(X, y, rounds=5, scatter=True)
    region = Region(lab, tmp_path)
    for name in ("vol-a", "vol-b"):
        # 50 ms +- 10 ms each way and 1% of chunks held back one retransmission timeout
        region.node(name, wan={"delay": 0.05, "jitter": 0.01, "loss": 0.01})
    with region.connect("admin") as ops, region.connect() as g:
        _wait_nodes(ops, 2)
        data = g.scatter(X, y)
        job = g.submit(_job(rounds=5), data)
        fitted = job.result(timeout=180).estimator_.coef_
        seconds = [h["seconds"] for h in job.history]
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    print("round seconds at 50 ms one-way node delay:", [round(s, 3) for s in seconds])
