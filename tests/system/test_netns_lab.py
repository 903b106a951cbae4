"""The network lab (``tests/system/netns.py``) really isolates its hosts.

Its firewall is real when a firewalled host cannot be dialled — by a raw TCP
connect or by a stock Dask scheduler sending it a partition — while the same
listener on an open host can, and the firewalled host itself can still dial
out. Its WAN link is real when an echo through it takes at least two one-way
delays and bytes come through unchanged. And nothing of a lab outlives it.

These tests fail, not skip, where the machine cannot build a lab: the system
tests of dial-out nodes need it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import wait_for
from tests.system import netns

pytestmark = pytest.mark.system

#: a TCP server: prints its port, then greets each connection with the peer's address and echoes
SERVER = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
def serve(conn, peer):
    with conn:
        conn.sendall(f"{peer[0]}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"""

#: a client of SERVER: ``host port connect_timeout rounds bulk_bytes``; prints what it saw as JSON
PROBE = r"""
import hashlib, json, os, socket, sys, threading, time
host, port, connect_timeout, rounds, bulk = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    s = socket.create_connection((host, port), timeout=connect_timeout)
except OSError as e:
    print(json.dumps({"error": type(e).__name__}))
    sys.exit(0)
s.settimeout(60)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def recv_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf
peer = b""
while not peer.endswith(b"\n"):
    peer += recv_exact(1)
rtts = []
for i in range(rounds):
    ping = os.urandom(16)
    t = time.monotonic()
    s.sendall(ping)
    assert recv_exact(16) == ping
    rtts.append(time.monotonic() - t)
sent = os.urandom(bulk)
sender = threading.Thread(target=s.sendall, args=(sent,))  # the echo comes back while we send
sender.start()
got = recv_exact(bulk)
sender.join()
print(json.dumps({"peer": peer.decode().strip(), "rtts": rtts, "same": hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()}))
"""


def serve(lab: netns.Lab, host: netns.Host) -> int:
    """Start SERVER on ``host``'s lab address; return its port once it listens."""
    proc = lab.popen(host, [sys.executable, "-c", SERVER, host.ip], stdout=subprocess.PIPE)
    return int(netns.read_line(proc, timeout=30))


def probe(lab: netns.Lab, host: netns.Host, ip: str, port: int, connect_timeout: float = 2.0, rounds: int = 1, bulk: int = 1024) -> dict:
    """Run PROBE in ``host`` against ``ip:port``; return what it printed."""
    done = lab.run(host, [sys.executable, "-c", PROBE, ip, str(port), str(connect_timeout), str(rounds), str(bulk)], timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def connect_from_root(ip: str, port: int, timeout: float = 2.0) -> str | None:
    """Connect from the test process; return the greeting line, or None if no connection was made."""
    try:
        s = socket.create_connection((ip, port), timeout=timeout)
    except OSError:  # timed out or refused
        return None
    with s:
        s.settimeout(30)
        return s.makefile("rb").readline().decode().strip()


def test_firewalled_host_cannot_be_dialled_but_dials_out(lab):
    sched = lab.host("sched")
    open_ = lab.host("open")
    node = lab.host("node1", firewalled=True)

    guarded = serve(lab, node)
    reachable = serve(lab, open_)

    # the listener in the firewalled host is up: its own host reaches it
    assert probe(lab, node, node.ip, guarded)["peer"] == node.ip
    # ... but neither another host nor the root namespace gets a connection (SYN dropped: timeout)
    assert probe(lab, sched, node.ip, guarded) == {"error": "TimeoutError"}
    assert connect_from_root(node.ip, guarded) is None
    # the same listener on an open host is reachable from both
    assert probe(lab, sched, open_.ip, reachable)["peer"] == sched.ip
    assert connect_from_root(open_.ip, reachable) == lab.root_ip

    # the firewalled host dials out and exchanges bytes both ways on its connection
    outbound = serve(lab, sched)
    seen = probe(lab, node, sched.ip, outbound, rounds=3, bulk=256 * 1024)
    assert seen["peer"] == node.ip
    assert seen["same"] is True
    assert len(seen["rtts"]) == 3


async def _register_and_scatter(address: str, n_workers: int, timeout: float) -> tuple[dict[str, str], dict[str, object]]:
    """Wait for ``n_workers``; scatter a value to each one alone.

    Returns the workers (name -> address) and, per name, the value read back with the
    workers holding it, or the error the scatter ended with.
    """
    from distributed import Client

    loop = asyncio.get_running_loop()
    results: dict[str, object] = {}
    async with Client(address, asynchronous=True, timeout=10) as client:
        deadline = loop.time() + 60
        # what a synchronous client's scheduler_info() reads
        while len(info := (await client.scheduler.identity(n_workers=-1))["workers"]) < n_workers:
            assert loop.time() < deadline, f"only {len(info)} of {n_workers} workers registered within 60s"
            await asyncio.sleep(0.1)
        workers = {w["name"]: addr for addr, w in info.items()}
        for name, worker in workers.items():
            value = f"partition of {name}".encode() * 100  # bytes: scattered as one value
            try:
                future = await asyncio.wait_for(client.scatter(value, workers=[worker]), timeout)
                held = await asyncio.wait_for(client.who_has([future]), timeout)
                results[name] = (await asyncio.wait_for(future.result(), timeout), held[future.key])
            except (OSError, asyncio.TimeoutError) as e:  # CommClosedError and timeouts are OSErrors
                results[name] = e
    return workers, results


def test_stock_dask_cannot_send_a_partition_to_a_firewalled_worker(lab):
    import dask

    sched = lab.host("sched")
    open_ = lab.host("open")
    node = lab.host("node1", firewalled=True)
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")

    with tempfile.TemporaryDirectory(prefix="grid-netns-") as workdir:
        path = os.path.join(workdir, "scheduler.json")
        with open(os.path.join(workdir, "scheduler.log"), "wb") as log:
            scheduler = lab.popen(
                sched,
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", sched.ip, "--port", "0",
                 "--no-dashboard", "--scheduler-file", path],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )
        wait_for(lambda: os.path.exists(path) or scheduler.poll() is not None, timeout=60, what="the dask scheduler")
        assert scheduler.poll() is None, open(os.path.join(workdir, "scheduler.log")).read()
        with open(path) as f:
            address = json.load(f)["address"]
        procs = [scheduler]
        for host in (open_, node):
            with open(os.path.join(workdir, f"worker-{host.name}.log"), "wb") as log:
                procs.append(lab.popen(
                    host,
                    [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", host.ip, "--name", host.name,
                     "--no-nanny", "--nthreads", "1", "--no-dashboard"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                ))
        with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
            workers, results = asyncio.run(_register_and_scatter(address, 2, timeout=30))
        for proc in procs:  # no graceful close: the scheduler would try to reach the firewalled worker
            lab.kill(proc)

    # both registered, each with its host's lab address (a firewalled host may dial out)
    assert workers[node.name].startswith(f"tcp://{node.ip}:")
    assert workers[open_.name].startswith(f"tcp://{open_.ip}:")
    # the open host's worker receives its partition, and holds it
    value, holders = results[open_.name]
    assert value == f"partition of {open_.name}".encode() * 100
    assert list(holders) == [workers[open_.name]]
    # the scheduler cannot deliver one to the firewalled worker: connecting to it times out
    error = results[node.name]
    assert isinstance(error, OSError), error
    assert isinstance(error, asyncio.TimeoutError) or workers[node.name] in str(error), error


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_wan_link_delays_each_direction_and_keeps_bytes(lab, loss):
    delay, jitter = 0.05, 0.01
    sched = lab.host("sched")
    node = lab.host("node1", firewalled=True)
    port = serve(lab, sched)

    addr = lab.wan(node, target=f"{sched.ip}:{port}", delay=delay, jitter=jitter, loss=loss)
    host, relay_port = addr.rsplit(":", 1)
    assert host == "127.0.0.1"
    seen = probe(lab, node, host, int(relay_port), rounds=20, bulk=1024 * 1024)

    assert seen["peer"] == node.ip  # the target sees the connection come from the host
    assert seen["same"] is True  # 1 MB of random bytes came back unchanged
    rtts = seen["rtts"]
    # every round trip crosses the link twice, each way at least delay - jitter
    assert min(rtts) >= 2 * (delay - jitter), rtts
    if loss == 0:
        # and at most delay + jitter each way, plus the machine's own slowness
        assert statistics.median(rtts) <= 2 * (delay + jitter) + 0.05, rtts
        assert max(rtts) <= 2 * (delay + jitter) + 0.5, rtts
    else:
        # 40 crossings at 30 % loss: some chunk waited a retransmission timeout (0.7**40 < 1e-6)
        assert max(rtts) >= 2 * (delay - jitter) + 0.2, rtts
        # a chunk waits at most one timeout per direction (those behind it wait with it, not after it)
        assert max(rtts) <= 2 * (delay + jitter + 0.2) + 0.5, rtts
    if lab.netem is False:
        # the delay comes from the relay, not from the link: the host's own traffic is not delayed
        direct = probe(lab, node, sched.ip, port, rounds=5, bulk=16)
        assert max(direct["rtts"]) < 2 * (delay - jitter), direct["rtts"]


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie that no one reaps does not run)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


#: ignores SIGTERM, starts a grandchild in a session of its own that ignores it too, prints both pids
STUBBORN = r"""
import os, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); signal.pause()"],
                         start_new_session=True, stdout=subprocess.PIPE)
child.stdout.readline()
print(os.getpid(), child.pid, flush=True)
signal.pause()
"""


@pytest.mark.parametrize("body_raises", [False, True])
def test_nothing_of_a_lab_outlives_it(body_raises):
    class BodyFailed(Exception):
        pass

    lab = netns.Lab(term_timeout=1.0)
    pids: list[int] = []
    try:
        with lab:
            sched = lab.host("sched")
            node = lab.host("node1", firewalled=True)
            port = serve(lab, sched)
            lab.wan(node, target=f"{sched.ip}:{port}", delay=0.01)
            stubborn = lab.popen(node, [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
            pids = [int(p) for p in netns.read_line(stubborn, timeout=30).split()]
            # the lab exists and its processes run in its namespaces
            assert f"{lab.prefix}-node1" in _netns_list()
            assert lab.root_link in _links()
            in_node = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout.split()
            assert set(map(str, pids)) <= set(in_node)
            all_pids = pids + [int(p) for ns in (sched.netns, node.netns)
                               for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
            if body_raises:
                raise BodyFailed
    except BodyFailed:
        assert body_raises
    else:
        assert not body_raises

    assert lab.suffix not in _netns_list() and lab.prefix not in _netns_list()
    assert lab.suffix not in _links()
    assert lab.leftovers() == []
    assert len(all_pids) >= 4  # server, relay, stubborn child and grandchild
    assert [p for p in all_pids if not _gone(p)] == []


def test_lab_unavailable_names_the_reason(monkeypatch, tmp_path):
    """Without iptables the lab refuses to start and says what to install (the system tests fail with it)."""
    os.symlink(shutil.which("ip"), tmp_path / "ip")
    monkeypatch.setenv("PATH", str(tmp_path))  # `ip` but no iptables
    before = _netns_list()
    with pytest.raises(netns.LabUnavailable, match=r"iptables-restore.*apt-get install -y iptables"):
        with netns.Lab():
            pass
    assert _netns_list() == before  # and it left nothing half-built
