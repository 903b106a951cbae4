"""`grid node` as an operator of `dask worker` runs it: real `grid scheduler` + `grid node` processes.

* Stopping: SIGTERM ends a node within seconds also when its scheduler's host is gone.
* Who may run plain Dask work: a plaintext node is private (any task) unless started with
  ``--community``; a community node refuses, and the node's reason reaches the client (its
  ``PermissionError`` (the scheduler's ``NodeRefusedTask``, made from the node's text), never a hang, also through
  ``g.joblib()``). On TLS a community node
  refuses an admin's plain task unless started with ``--allow-admin-tasks``, and a client
  certificate runs no plain task on either. Oracle for "ran": a marker file the task writes.
* The `dask worker` flags take effect: ports, addresses, resources, ``--nworkers``, ``--lifetime``.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from dask.system import CPU_COUNT

from grid import Grid
from grid.security.certs import init_ca, issue
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes, tls_args, tls_spec

pytestmark = [pytest.mark.system, pytest.mark.slow]

#: the bound on stopping a node whose scheduler does not answer
STOP_BOUND = 15


def workers_by_name(client) -> dict[str, dict]:
    return {w["name"]: dict(w, address=a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}


def wait_workers(client, names: set[str], timeout: float = 90) -> dict[str, dict]:
    wait_for(lambda: names <= set(workers_by_name(client)), timeout=timeout, what=f"nodes {sorted(names)}")
    return workers_by_name(client)


_TOUCH = '''
def touch(path):
    """A plain Dask task: proves it ran by writing ``path``."""
    with open(path, "w") as f:
        f.write("ran")
    return "ran"
'''
_namespace: dict = {"__name__": "__main__"}  # sent by value: the nodes cannot import this test module
exec(_TOUCH, _namespace)
touch = _namespace["touch"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_sigterm_stops_a_node_within_seconds_when_its_scheduler_is_gone():
    with grid_processes() as procs:
        scheduler, address = procs.scheduler("eu")
        node = procs.node("eu", address, "n1", community=None)
        impatient = procs.node("eu", address, "n2", community=None)
        with Grid.connect({"regions": {"eu": address}}) as g:
            wait_workers(g.client(), {"n1", "n2"})
        for proc in (node, impatient):
            wait_for(lambda: "joined region eu" in procs.log(proc), timeout=30, what="the nodes up")
        # a scheduler whose host vanished: connections neither close nor answer
        os.kill(scheduler.pid, signal.SIGSTOP)
        start = time.monotonic()
        node.send_signal(signal.SIGTERM)
        try:
            code = node.wait(timeout=60)
        finally:
            took = time.monotonic() - start
            print(f"node stopped {took:.1f} s after SIGTERM with its scheduler gone")
        assert code == 0, procs.log(node)
        assert took < STOP_BOUND, procs.log(node)
        assert "does not answer" in procs.log(node)
        # an operator who signals twice does not wait: the second signal ends it at once
        impatient.send_signal(signal.SIGTERM)
        wait_for(lambda: "node stopping on a signal" in procs.log(impatient), timeout=15, what="the node stopping")
        impatient.send_signal(signal.SIGTERM)
        assert impatient.wait(timeout=STOP_BOUND) == 1, procs.log(impatient)
        assert "second signal SIGTERM" in procs.log(impatient)


_PAUSE = '''
def pause(dask_worker):
    from distributed.core import Status
    dask_worker.status = Status.paused
    return str(dask_worker.status)
'''
exec(_PAUSE, _namespace)
pause = _namespace["pause"]


def test_sigterm_retires_a_paused_node_holding_data_within_seconds():
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        keeper = procs.node("eu", address, "keeper", community=None)
        paused = procs.node("eu", address, "paused", community=None)
        with Grid.connect({"regions": {"eu": address}}) as g:
            client = g.client()
            nodes = wait_workers(client, {"keeper", "paused"})
            wait_for(lambda: "joined region eu" in procs.log(paused), timeout=30, what="the node up")
            data = client.scatter(list(range(1000)), workers=[nodes["paused"]["address"]])
            assert client.run(pause, workers=[nodes["paused"]["address"]]) == {nodes["paused"]["address"]: "Status.paused"}
            start = time.monotonic()
            paused.send_signal(signal.SIGTERM)
            code = paused.wait(timeout=60)
            took = time.monotonic() - start
            print(f"paused node retired {took:.1f} s after SIGTERM")
            assert code == 0 and "retired" in procs.log(paused), procs.log(paused)
            assert took < STOP_BOUND
            # its data was copied off first
            assert client.gather(data, errors="raise") == list(range(1000))
            assert keeper.poll() is None


def test_plaintext_node_is_private_by_default_and_a_community_node_refuses_with_its_reason(tmp_path):
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        procs.node("eu", address, "private", community=None)
        procs.node("eu", address, "volunteer", community=True)
        spec = {"regions": {"eu": address}}
        with Grid.connect(spec) as g:
            client = g.client()
            nodes = wait_workers(client, {"private", "volunteer"})
            ran = client.submit(touch, str(tmp_path / "private"), workers=[nodes["private"]["address"]], pure=False)
            assert ran.result(timeout=60) == "ran" and (tmp_path / "private").exists()
            refused = client.submit(touch, str(tmp_path / "volunteer"), workers=[nodes["volunteer"]["address"]], pure=False)
            with pytest.raises(PermissionError, match=r"PermissionError.*runs in community mode"):
                refused.result(timeout=60)
            assert not (tmp_path / "volunteer").exists()


def test_joblib_on_a_community_node_fails_with_the_nodes_reason_not_a_hang():
    """scikit-learn through g.joblib() on a community node: every batch is refused, and the fit
    raises the node's reason (joblib's dask backend alone waits forever for refused batches)."""
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        procs.node("eu", address, "volunteer", community=True)
        spec = {"regions": {"eu": address}}
        with Grid.connect(spec) as g:
            wait_workers(g.client(), {"volunteer"})
        start = time.monotonic()
        fit = procs.python(
            f"""
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from grid import Grid
X, y = make_classification(n_samples=200, n_features=5, random_state=0)
with Grid.connect({spec!r}) as g:
    try:
        with g.joblib():
            GridSearchCV(LogisticRegression(), {{"C": [0.1, 1.0, 10.0]}}, cv=2, n_jobs=-1).fit(X, y)
        print("OUTCOME fitted", flush=True)
    except Exception as exc:
        print("OUTCOME", type(exc).__name__, isinstance(exc, PermissionError), exc, flush=True)
""",
            "joblib-client",
        )
        assert fit.wait(timeout=120) == 0, procs.log(fit)
        print(f"joblib fit on a community node failed after {time.monotonic() - start:.1f} s")
        outcome = [line for line in procs.log(fit).splitlines() if line.startswith("OUTCOME")]
        assert outcome and outcome[0].startswith("OUTCOME NodeRefusedTask True"), procs.log(fit)
        assert "PermissionError" in outcome[0] and "runs in community mode" in outcome[0], procs.log(fit)


def test_tls_community_node_runs_admin_tasks_only_with_allow_admin_tasks(tmp_path):
    ca = init_ca(tmp_path / "ca")
    out = tmp_path / "certs"
    sched = issue(ca, "scheduler", "sched-eu", region="eu", out=out)
    strict, lenient = (issue(ca, "node", name, region="eu", out=out) for name in ("strict", "lenient"))
    admin = issue(ca, "admin", "operator", out=out)
    scientist = issue(ca, "client", "scientist", out=out)
    tls = lambda c: tls_args(ca, c)  # noqa: E731
    spec = lambda c, a: tls_spec(ca, c, {"eu": a})  # noqa: E731
    with grid_processes() as procs:
        _, address = procs.scheduler("eu", args=tls(sched))
        procs.node("eu", address, "strict", args=tls(strict), community=None)  # TLS: community by default
        procs.node("eu", address, "lenient", args=(*tls(lenient), "--allow-admin-tasks"), community=None)
        with Grid.connect(spec(admin, address)) as g:
            client = g.client()
            nodes = wait_workers(client, {"strict", "lenient"})
            refused = client.submit(touch, str(tmp_path / "strict"), workers=[nodes["strict"]["address"]], pure=False)
            with pytest.raises(PermissionError, match=r"PermissionError.*runs in community mode"):
                refused.result(timeout=60)
            ran = client.submit(touch, str(tmp_path / "lenient"), workers=[nodes["lenient"]["address"]], pure=False)
            assert ran.result(timeout=60) == "ran" and (tmp_path / "lenient").exists()
        # the allowance is an admin's: a client certificate still runs nothing on that node
        with Grid.connect(spec(scientist, address)) as g:
            client = g.client()
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the scheduler refuses the graph, or the node the task
                client.submit(touch, str(tmp_path / "scientist"), workers=[nodes["lenient"]["address"]], pure=False).result(timeout=60)
            assert not isinstance(caught.value, TimeoutError), caught.value
            with pytest.raises(PermissionError):
                client.run(touch, str(tmp_path / "scientist-run"), workers=[nodes["lenient"]["address"]])
        assert not (tmp_path / "scientist").exists() and not (tmp_path / "scientist-run").exists()


def consecutive_free_ports() -> tuple[int, int]:
    """Two free neighbouring ports, for a FIRST:LAST range."""
    for _ in range(50):
        (lo,) = free_ports(1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", lo + 1))
            except OSError:
                continue
        return lo, lo + 1
    raise RuntimeError("no two neighbouring free ports")


def test_dask_worker_flags_take_effect():
    first, last = consecutive_free_ports()
    (listen,) = free_ports(1)
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        # --nworkers 2 over a port range; no --nthreads: the cores shared out, as dask worker
        two = procs.spawn(
            [GRID, "node", "--region", "eu", "--scheduler", address, "--name", "two", "--nworkers", "2", "--host", "127.0.0.1",
             "--worker-port", f"{first}:{last}", "--memory-limit", "1GiB", "--resources", "GPU=2 MEM=10e9"],
            "node-two",
        )
        # the address it binds and the (different) one it advertises
        addressed = procs.node(
            "eu", address, "addressed", community=None,
            args=("--listen-address", f"tcp://0.0.0.0:{listen}", "--contact-address", f"tcp://127.0.0.1:{listen}"),
        )
        brief = procs.node("eu", address, "brief", community=None, args=("--lifetime", "4s"))
        with Grid.connect({"regions": {"eu": address}}) as g:
            client = g.client()
            nodes = wait_workers(client, {"two-0", "two-1", "addressed"})
            assert sorted(int(nodes[n]["address"].rsplit(":", 1)[1]) for n in ("two-0", "two-1")) == [first, last]
            assert all(nodes[n]["nthreads"] == max(1, CPU_COUNT // 2) for n in ("two-0", "two-1"))
            assert nodes["two-0"]["resources"] == {"GPU": 2.0, "MEM": 10e9}
            assert nodes["addressed"]["address"] == f"tcp://127.0.0.1:{listen}"
            assert client.submit(touch, os.devnull, resources={"GPU": 1}, pure=False).result(timeout=60) == "ran"
            # --lifetime: the node ends by itself, cleanly
            assert brief.wait(timeout=90) == 0, procs.log(brief)
            assert "lifetime" in procs.log(brief)
            assert two.poll() is None and addressed.poll() is None
