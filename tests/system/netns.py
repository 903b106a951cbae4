"""A network lab for system tests: real processes on hosts behind a firewall, over an emulated WAN.

A :class:`Lab` builds, in Linux network namespaces, a small private network of
its own and removes all of it again on exit:

* a hub namespace holding a bridge, the lab's switch;
* one namespace per :meth:`Lab.host`, joined to the bridge by a veth pair and
  given an address of the lab's subnet (a random ``10.x.y.0/24`` no route or
  address of the machine uses). A ``firewalled`` host drops every new inbound
  connection, as a volunteer's machine behind NAT or a firewall does: only
  loopback and the replies to connections it opened itself get in, and it may
  connect out anywhere on the lab;
* one veth from the root namespace onto the bridge with the lab address
  ``10.x.y.1``, so the test process itself (a client, an observer) reaches every
  host at its ``ip``. The root namespace gets nothing else: no route beyond the
  subnet and no forwarding, so lab hosts never reach the machine's network.

Processes run in a host's namespace with ``ip netns exec`` and the caller's
environment, so ``python -m grid`` from the repository's virtual environment
works there as it does in the test process::

    from tests.system import netns

    with netns.Lab() as lab:
        sched = lab.host("sched")
        node = lab.host("node1", firewalled=True)
        p = lab.popen(sched, [sys.executable, "-m", "grid", "scheduler", "--host", sched.ip, ...])
        addr = lab.wan(node, target=f"{sched.ip}:8786", delay=0.05, jitter=0.01, loss=0.01)
        lab.run(node, [sys.executable, "-m", "grid", "node", "--scheduler", f"tcp://{addr}", ...], timeout=60)

:meth:`Lab.wan` gives a host a wide-area link to one ``target``: it returns an
address ``127.0.0.1:PORT``, valid inside that host's namespace, of a relay
running there that forwards to ``target`` with the given one-way delay in each
direction (bytes unchanged, so TLS runs end to end; the target sees the
connection come from the host's ``ip``). Where the kernel has ``tc`` netem the
delay and loss are put on the host's link instead (then they apply to all of
its traffic) and the relay only forwards; :attr:`Lab.netem` says which was used.

Names carry the owner's process id and a random suffix (namespaces
``gridlab-PID-SUFFIX-NAME``, the root namespace's veth ``glSUFFIX``), so labs of
concurrent test sessions never clash, and a lab whose owner died without
cleaning up is removed by the next one.

On exit of the ``with`` block, also when its body raised, every process started
with :meth:`Lab.popen`, :meth:`Lab.run` or :meth:`Lab.wan` gets SIGTERM and,
after ``term_timeout`` seconds, SIGKILL; then whatever else still runs in a lab
namespace is killed, and the namespaces and the root veth are deleted.

The lab needs root (``CAP_NET_ADMIN``), the ``ip`` tool and iptables
(``apt-get install -y iptables``); where it cannot be built, :class:`Lab` raises
:class:`LabUnavailable` saying why.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the relay script run inside a namespace by :meth:`Lab.wan` (stdlib only, so it runs by path)
RELAY = str(Path(__file__).with_name("relay.py"))

#: every lab namespace's name starts so: ``gridlab-PID-SUFFIX-NAME``
PREFIX = "gridlab"
_NS_NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-(.+)$")
_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

#: a firewalled host's filter table: new inbound connections are dropped, so a connect times out
_FIREWALL = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
"""

_netem_support: bool | None = None  # detected once per process


class LabUnavailable(RuntimeError):
    """This machine cannot build a network lab; the message says why and what to install or change."""


@dataclass(frozen=True)
class Host:
    """A host of a :class:`Lab`: a network namespace with one address on the lab's bridge.

    Attributes
    ----------
    name : str
        The name given to :meth:`Lab.host`.
    netns : str
        The namespace's name (for ``ip netns exec``).
    ip : str
        The host's IPv4 address on the lab network.
    firewalled : bool
        Whether new inbound connections are dropped.
    port : str
        The hub's end of the host's veth pair (netem shapes traffic towards the host there).
    """

    name: str
    netns: str
    ip: str
    firewalled: bool
    port: str


def _cmd(args: list[str], input: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a setup command; fail with its output, which names the problem."""
    proc = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _netns_names() -> list[str]:
    out = _cmd(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(netns: str) -> list[int]:
    proc = _cmd(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process still in ``netns``; wait until none is left (zombies do not count)."""
    deadline = time.monotonic() + timeout
    while pids := _netns_pids(netns):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of network namespace {netns} survived SIGKILL for {timeout}s")
        time.sleep(0.02)


def remove_stale() -> list[str]:
    """Delete the namespaces of labs whose owning process is gone; return their names.

    A test session killed with SIGKILL cannot clean up; the next lab does it.
    """
    removed = []
    for netns in _netns_names():
        m = _NS_NAME.match(netns)
        if m and not _alive(int(m.group(1))):
            _kill_netns(netns)
            _cmd(["ip", "netns", "delete", netns], check=False)
            removed.append(netns)
    return removed


def _check_machine() -> None:
    if not sys.platform.startswith("linux"):
        raise LabUnavailable(f"network namespaces need Linux; this is {sys.platform}")
    if os.geteuid() != 0:
        raise LabUnavailable("the network lab needs root (CAP_NET_ADMIN) to create namespaces; run the system tests as root")
    for tool, package in (("ip", "iproute2"), ("iptables-restore", "iptables"), ("ip6tables-restore", "iptables")):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"`{tool}` is not installed; install it with `apt-get install -y {package}`")


def _detect_netem(netns: str) -> bool:
    """Whether the kernel has the netem qdisc (tried once per process, on the hub's loopback)."""
    global _netem_support
    if _netem_support is None:
        added = _cmd(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
        _netem_support = added.returncode == 0 and shutil.which("tc") is not None
        if _netem_support:
            _cmd(["ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    return _netem_support


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of the root namespace's addresses and routes."""
    nets = []
    addrs = _cmd(["ip", "-4", "-o", "addr", "show"]).stdout
    for m in re.finditer(r"inet (\S+)", addrs):
        nets.append(ipaddress.ip_interface(m.group(1)).network)
    routes = _cmd(["ip", "-4", "route", "show", "table", "all"]).stdout
    for line in routes.splitlines():
        words = line.split()
        for word in words[:2]:  # "10.1.2.0/24 dev ...", "local 10.1.2.3 dev ...", "broadcast ..."
            try:
                nets.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
            break
    return [n for n in nets if n.prefixlen > 0]  # the default route overlaps everything


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """Read one line of ``proc``'s stdout (a pipe), failing after ``timeout`` seconds or at its end."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line from {proc.args} within {timeout}s (read so far: {line!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            # one byte at a time: nothing after the line is taken from the pipe
            byte = os.read(fd, 1)
            if not byte:
                raise EOFError(f"{proc.args} closed its output (exit {proc.poll()}) before a full line: {line!r}")
            line += byte
    return line.decode().strip()


class Lab:
    """A private network of namespaces for system tests; a context manager that removes it on exit.

    Parameters
    ----------
    netem : bool, optional
        Shape :meth:`wan` links with ``tc`` netem (True), with a delaying relay (False), or
        with netem where the kernel has it (None, the default).
    term_timeout : float
        Seconds the lab's processes get between SIGTERM and SIGKILL on exit.

    Attributes
    ----------
    subnet : ipaddress.IPv4Network
        The lab's network, a ``10.x.y.0/24``.
    root_ip : str
        The root namespace's (the test process's) address on the lab network.
    netem : bool
        Whether :meth:`wan` shapes links with netem (known once the lab is entered).
    hosts : dict of str to Host
        The hosts made so far.

    Raises
    ------
    LabUnavailable
        On entering, where the machine cannot build the lab.
    """

    def __init__(self, netem: bool | None = None, term_timeout: float = 5.0) -> None:
        self.suffix = "%06x" % random.SystemRandom().getrandbits(24)
        self.prefix = f"{PREFIX}-{os.getpid()}-{self.suffix}"
        self.hub = f"{self.prefix}-hub"
        self.root_link = f"gl{self.suffix}"
        self.term_timeout = term_timeout
        self._want_netem = netem
        self.netem: bool | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.root_ip: str | None = None
        self.hosts: dict[str, Host] = {}
        self._netns: list[str] = []  # created, in order
        self._procs: list[subprocess.Popen] = []
        self._wan: dict[str, tuple[float, float, float]] = {}
        self._entered = False

    # -- building --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        _check_machine()
        self._entered = True
        try:
            remove_stale()
            self._add_netns(self.hub)
            self._ip(self.hub, "link", "set", "lo", "up")
            self._ip(self.hub, "link", "add", "br0", "type", "bridge")
            self._ip(self.hub, "link", "set", "br0", "up")
            self._connect_root()
            detected = _detect_netem(self.hub)
            if self._want_netem and not detected:
                raise LabUnavailable("netem was asked for but this kernel has no netem qdisc (`tc qdisc add ... netem` fails); use netem=None")
            self.netem = detected if self._want_netem is None else self._want_netem
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_errors=exc_type is None)

    def _add_netns(self, netns: str) -> None:
        proc = _cmd(["ip", "netns", "add", netns], check=False)
        if proc.returncode != 0:
            raise LabUnavailable(f"cannot create a network namespace (`ip netns add {netns}`): {proc.stderr.strip()}")
        self._netns.append(netns)

    @staticmethod
    def _ip(netns: str, *args: str) -> None:
        _cmd(["ip", "-n", netns, *args])

    def _connect_root(self) -> None:
        """Choose the subnet and give the root namespace its veth onto the bridge.

        Under a machine-wide lock: the subnet is free once no route uses it, and the root
        veth's address adds the route that tells the next lab so.
        """
        lock = os.path.join(tempfile.gettempdir(), f"{PREFIX}.lock")
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            used = _used_networks()
            rng = random.SystemRandom()
            for _ in range(1000):
                subnet = ipaddress.IPv4Network(f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24")
                if not any(subnet.overlaps(n) for n in used):
                    break
            else:  # pragma: no cover - a machine routing nearly all of 10/8
                raise LabUnavailable("found no free 10.x.y.0/24 for the lab: the machine's routes cover 10.0.0.0/8")
            self.subnet = subnet
            self.root_ip = str(subnet[1])
            _cmd(["ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.hub])
            # no IPv6 on the root's lab link: the root namespace gets one IPv4 address and nothing else
            _cmd(["sysctl", "-q", "-w", f"net.ipv6.conf.{self.root_link}.disable_ipv6=1"], check=False)
            _cmd(["ip", "addr", "add", f"{self.root_ip}/24", "dev", self.root_link])
            _cmd(["ip", "link", "set", self.root_link, "up"])
        self._ip(self.hub, "link", "set", "root", "master", "br0", "up")

    def host(self, name: str, firewalled: bool = False) -> Host:
        """Add a host: a namespace on the lab's bridge with the next free address.

        Parameters
        ----------
        name : str
            Lower-case letters, digits and dashes; unique in the lab.
        firewalled : bool
            Drop every new inbound connection (IPv4 and IPv6); loopback, replies to the
            host's own connections and everything outbound pass.

        Returns
        -------
        Host
        """
        if not self._entered:
            raise RuntimeError("add hosts inside `with Lab() as lab:`")
        if not _HOST_NAME.match(name) or name == "hub":
            raise ValueError(f"host name {name!r}: use up to 32 lower-case letters, digits and dashes, and not 'hub'")
        if name in self.hosts:
            raise ValueError(f"the lab already has a host {name!r}")
        index = len(self.hosts) + 2  # .1 is the root namespace
        if index > 254:
            raise ValueError("a lab holds at most 253 hosts")
        netns = f"{self.prefix}-{name}"
        ip = str(self.subnet[index])
        port = f"h{index}"
        self._add_netns(netns)
        self._ip(self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._ip(self.hub, "link", "set", port, "master", "br0", "up")
        self._ip(netns, "link", "set", "lo", "up")
        _cmd(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"], check=False)
        self._ip(netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        self._ip(netns, "link", "set", "eth0", "up")
        if firewalled:
            _cmd(["ip", "netns", "exec", netns, "iptables-restore"], input=_FIREWALL)
            _cmd(["ip", "netns", "exec", netns, "ip6tables-restore"], input=_FIREWALL)
        host = Host(name=name, netns=netns, ip=ip, firewalled=firewalled, port=port)
        self.hosts[name] = host
        return host

    # -- processes -------------------------------------------------------------------------

    def popen(self, host: Host, args: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``args`` in ``host``'s namespace; ``kwargs`` go to :class:`subprocess.Popen`.

        The process gets the caller's environment (unless ``env`` is given) and a session of
        its own, so the lab can signal it and everything it started on exit.
        """
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *map(str, args)], **kwargs)
        proc._lab_own_session = kwargs["start_new_session"]  # type: ignore[attr-defined]
        self._procs.append(proc)
        return proc

    def run(self, host: Host, args: list[str], timeout: float = 60, input: str | bytes | None = None,
            check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``args`` in ``host``'s namespace to its end, like :func:`subprocess.run`.

        Output is captured as text unless ``stdout``/``stderr``/``text`` say otherwise. On
        ``timeout`` the process is killed and :class:`subprocess.TimeoutExpired` raised.
        """
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        proc = self.popen(host, args, **kwargs)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        self._procs.remove(proc)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def kill(self, proc: subprocess.Popen, timeout: float = 30) -> int:
        """SIGKILL ``proc`` (with its session) and reap it; return its exit status."""
        self._signal(proc, signal.SIGKILL)
        return proc.wait(timeout=timeout)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        if proc.poll() is not None and not getattr(proc, "_lab_own_session", False):
            return
        try:
            if getattr(proc, "_lab_own_session", False):
                os.killpg(proc.pid, sig)  # its session's group: the children it started too
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- wide-area links -------------------------------------------------------------------

    def wan(self, host: Host, target: str, delay: float, jitter: float = 0.0, loss: float = 0.0, timeout: float = 30) -> str:
        """Give ``host`` a wide-area link to ``target``; return the address to dial for it.

        Parameters
        ----------
        host : Host
            The host whose connections cross the link.
        target : str
            ``ip:port`` on the lab the link leads to.
        delay, jitter : float
            One-way delay in seconds, each direction, drawn uniformly from
            ``delay - jitter`` to ``delay + jitter``.
        loss : float
            Probability a chunk (netem: a packet) is lost; TCP delivers it one
            retransmission timeout (0.2 s) later.
        timeout : float
            Seconds to wait for the relay to listen.

        Returns
        -------
        str
            ``127.0.0.1:PORT``, valid inside ``host``'s namespace only: a relay there that
            forwards to ``target``. The target sees connections come from ``host.ip``.

        Notes
        -----
        With netem (:attr:`netem`) the delay is put on the host's link and so applies to all
        of its traffic; a host then has one set of link parameters, and asking for another
        raises ``ValueError``.
        """
        from tests.system.relay import Wan

        Wan(delay, jitter, loss)  # validates
        args = [sys.executable, RELAY, "--target", target]
        if self.netem:
            shape = (delay, jitter, loss)
            if self._wan.setdefault(host.name, shape) != shape:
                raise ValueError(f"host {host.name!r} already has a netem link {self._wan[host.name]}; with netem one link per host")
            netem = ["netem", "delay", f"{delay * 1000:.3f}ms", f"{jitter * 1000:.3f}ms", "loss", f"{loss * 100:.4f}%"]
            _cmd(["ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", *netem])
            _cmd(["ip", "netns", "exec", self.hub, "tc", "qdisc", "replace", "dev", host.port, "root", *netem])
        else:
            args += ["--delay", repr(delay), "--jitter", repr(jitter), "--loss", repr(loss)]
        relay = self.popen(host, args, stdout=subprocess.PIPE)
        try:
            return read_line(relay, timeout)
        except (TimeoutError, EOFError) as e:
            self.kill(relay)
            raise RuntimeError(f"the WAN relay in {host.name} did not start: {e}") from None

    # -- removing --------------------------------------------------------------------------

    def close(self, raise_errors: bool = True) -> None:
        """End every process of the lab and delete its namespaces and links (idempotent)."""
        errors: list[str] = []
        procs, self._procs = self._procs, []
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.term_timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            self._signal(proc, signal.SIGKILL)  # also the group of one that exited but left children
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                errors.append(f"process {proc.pid} ({proc.args}) survived SIGKILL")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        # whatever else runs in the lab (a child that left its session) goes too: a process
        # would keep its namespace alive after `ip netns delete`
        netns_list, self._netns = self._netns, []
        for netns in reversed(netns_list):
            try:
                _kill_netns(netns)
            except RuntimeError as e:
                errors.append(str(e))
        if self.root_link:
            _cmd(["ip", "link", "delete", self.root_link], check=False)
        for netns in reversed(netns_list):
            deleted = _cmd(["ip", "netns", "delete", netns], check=False)
            if deleted.returncode != 0:
                errors.append(f"`ip netns delete {netns}`: {deleted.stderr.strip()}")
        leftovers = self.leftovers()
        if leftovers:
            errors.append(f"left behind: {leftovers}")
        self._entered = False
        if errors and raise_errors:
            raise RuntimeError("the network lab was not removed cleanly: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """The lab's namespaces and root-namespace links that exist now (none after exit)."""
        names = [n for n in _netns_names() if n.startswith(self.prefix + "-")]
        links = _cmd(["ip", "-o", "link", "show"]).stdout
        names += [f"link {self.root_link}" for line in links.splitlines() if re.search(rf"\b{self.root_link}\b", line)]
        return names
