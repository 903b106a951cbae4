"""The systemd units, run for real: exactly their command lines, signals and environment.

There is no systemd service manager in a test machine's container, so this
test plays its part for the few settings that decide what runs: it reads the
unit and its drop-ins (``UNIT.d/*.conf``, in name order, an empty assignment
resetting what came before), then ``ExecStart=``, ``Environment=``,
``EnvironmentFile=``, ``LoadCredential=``, ``KillSignal=``, ``KillMode=``,
``TimeoutStopSec=`` and ``AssertFileNotEmpty=`` (checked before the start, as
systemd does), expands specifiers and variables by systemd's rules (``${VAR}``
is one argument, a lone ``$VAR`` splits at whitespace), and starts those
argv's with that environment: one scheduler (``grid-scheduler@eu.service``) and two
nodes (``grid-node.service`` twice, each with its own environment file). The
units are the ones ``grid scheduler|node install-systemd --no-tls`` write:
the shipped units of ``deploy/systemd`` verbatim, and drop-ins for the
options; with those, their command lines, signals and stop settings are
checked to be the shipped ones but for this environment's ``grid`` (and no
revocation list without TLS).

A job runs on data placed with one replica, so each node holds partitions no
other node has. Stopping the first node the way systemd would (the unit's
``KillSignal`` to the main process only, as ``KillMode=mixed`` does) must
retire it through the scheduler: it exits 0, the scheduler logs the
retirement and drops the worker, and a second job on the same placed data
still finishes, which it could not if the node's partitions had been lost.

The TLS scheduler unit is run as shipped too: it does not start without the
grid's revocation list, and once started with it (its ``--crl-file``) it
refuses a revoked node, and a node revoked later once the new ``crl.pem`` is
renamed into place, without a restart.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from grid.deploy.systemd_install import install_systemd_node, install_systemd_scheduler
from tests.conftest import wait_for

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
GRID = str(Path(sys.executable).parent / "grid")
#: what systemd gives a service before the unit's own environment
SYSTEMD_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: machine-specific settings that must reach every Python process here (see the machine notes)
PASS_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --- a small reader of unit files, by systemd's rules -------------------------------------------
def unit_texts(unit_file: Path) -> list[str]:
    """The unit, then its drop-ins (``UNIT.d/*.conf`` beside it) in the order systemd reads them."""
    dropins = sorted((unit_file.parent / f"{unit_file.name}.d").glob("*.conf"), key=lambda p: p.name)
    return [unit_file.read_text(), *(p.read_text() for p in dropins)]


def parse_unit(texts: list[str], section_name: str = "Service") -> dict[str, list[str]]:
    """Settings of one section (``[Service]`` by default) of a unit and its drop-ins: key to values,
    in reading order; an empty assignment forgets the values before it (a list is reset, a single
    value goes back to its default), so a single-valued setting is its last value."""
    out: dict[str, list[str]] = {}
    for text in texts:
        section = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            if section != section_name:
                continue
            if value.strip():
                out.setdefault(key.strip(), []).append(value.strip())
            else:
                out.pop(key.strip(), None)
    return out


class AssertionNotMet(Exception):
    """systemd refused to start a unit: one of its ``Assert…=`` settings does not hold."""


def expand_specifiers(value: str, specifiers: dict[str, str]) -> str:
    """Replace ``%X`` specifiers; an unknown one is an error here, as it would be a surprise there."""

    def sub(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            raise AssertionError(f"specifier %{letter} in {value!r} is not emulated by this test")
        return specifiers[letter]

    return re.sub(r"%(.)", sub, value)


def parse_env_file(path: Path) -> dict[str, str]:
    """An ``EnvironmentFile=``: KEY=VALUE lines, comments, optional quotes."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {raw!r} is not KEY=VALUE"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def expand_command(command: str, env: dict[str, str]) -> list[str]:
    """``ExecStart=`` after specifiers: words; ``$VAR`` alone splits, ``${VAR}`` stays one argument."""
    argv: list[str] = []
    for word in shlex.split(command):
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:
            argv.extend(env.get(lone.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


@dataclass
class Service:
    """One unit instance as systemd would run it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    kill_signal: signal.Signals
    kill_mode: str
    stop_timeout: float
    log: Path
    #: files of ``AssertFileNotEmpty=``: systemd does not start the unit unless each is a non-empty file
    assert_not_empty: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    children: set[int] = field(default_factory=set)

    def start(self) -> None:
        for path in self.assert_not_empty:
            if not (os.path.isfile(path) and os.path.getsize(path) > 0):
                raise AssertionNotMet(f"{self.name}: start assertion failed: AssertFileNotEmpty={path} was not met")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            # a new session stands for the unit's cgroup: the final SIGKILL reaches all of it
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_children(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.children |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}

    def stop(self) -> int:
        """``systemctl stop``: KillSignal to the main process (KillMode=mixed), wait TimeoutStopSec."""
        assert self.proc is not None and self.kill_mode == "mixed"
        self.note_children()
        self.proc.send_signal(self.kill_signal)
        return self.proc.wait(timeout=self.stop_timeout)

    def kill_all(self) -> None:
        """What systemd does to a unit's leftovers: SIGKILL to every process of its cgroup."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def service_from_unit(
    unit_file: Path, *, name: str, instance: str, env_files: dict[str, Path], tmp: Path
) -> Service:
    """Read a unit and build the process systemd would start for it.

    ``env_files`` maps each ``EnvironmentFile=`` path (after specifiers) to the
    file this test wrote in its place.
    """
    texts = unit_texts(unit_file)
    settings = parse_unit(texts)
    unit_section = parse_unit(texts, "Unit")
    creds = tmp / "credentials" / name
    specifiers = {
        "i": instance,
        "I": instance,
        "n": name,
        "H": socket.gethostname(),
        "S": str(tmp / "state"),
        "C": str(tmp / "cache"),
        "d": str(creds),
    }
    env = dict(SYSTEMD_BASE_ENV)
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    for line in settings.get("Environment", []):
        for assignment in shlex.split(expand_specifiers(line, specifiers)):
            key, _, value = assignment.partition("=")
            env[key] = value
    for line in settings.get("EnvironmentFile", []):
        path = expand_specifiers(line, specifiers).lstrip("-")
        assert path in env_files, f"{unit_file.name} reads {path}; the test has no stand-in for it"
        env.update(parse_env_file(env_files[path]))
    for line in settings.get("LoadCredential", []):  # systemd copies each into %d
        cred_id, _, src = expand_specifiers(line, specifiers).partition(":")
        creds.mkdir(parents=True, exist_ok=True)
        (creds / cred_id).write_bytes(Path(src).read_bytes())
    for key, root in (("StateDirectory", "state"), ("CacheDirectory", "cache")):
        for line in settings.get(key, []):
            (tmp / root / expand_specifiers(line, specifiers)).mkdir(parents=True, exist_ok=True)
    (exec_start,) = settings["ExecStart"]
    timeout = settings["TimeoutStopSec"][-1]
    assert timeout.endswith("s"), timeout
    return Service(
        name=name,
        argv=expand_command(expand_specifiers(exec_start, specifiers), env),
        env=env,
        kill_signal=signal.Signals[settings["KillSignal"][-1]],
        kill_mode=settings["KillMode"][-1],
        stop_timeout=float(timeout[:-1]),
        log=tmp / "logs" / f"{name}.log",
        assert_not_empty=[expand_specifiers(v, specifiers) for v in unit_section.get("AssertFileNotEmpty", [])],
    )


# --- helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_services(condition: Callable[[], bool], timeout: float, what: str, services: list[Service]) -> None:
    """Wait for ``condition`` with :func:`tests.conftest.wait_for`; the failure carries the services' logs.

    Fails at once if a service exits meanwhile (with its log), and on a timeout
    with the last lines of every service's log.
    """

    def ready() -> bool:
        if condition():
            return True
        for s in services:
            if s.proc is not None and s.proc.poll() is not None:
                raise AssertionError(f"{s.name} exited with {s.proc.returncode} while waiting for {what}:\n{s.text()[-4000:]}")
        return False

    try:
        wait_for(ready, timeout=timeout, what=what, interval=0.2)
    except TimeoutError as exc:  # the services' logs say why, so the failure carries them
        logs = "\n".join(f"--- {s.name}\n{s.text()[-3000:]}" for s in services)
        raise TimeoutError(f"{exc}\n{logs}") from None


def install(command: object, args: list[str]) -> None:
    result = CliRunner().invoke(command, args, catch_exceptions=False)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output


def stop_settings(texts: list[str]) -> dict[str, list[str]]:
    """The settings that decide what runs and how it stops, after the drop-ins."""
    keys = ("ExecStart", "KillSignal", "KillMode", "TimeoutStopSec", "Restart", "Type")
    return {k: v for k, v in parse_unit(texts).items() if k in keys}


@pytest.fixture
def units(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Units written by the install-systemd commands (plaintext, this venv's grid)."""
    target = tmp_path / "units"
    env_dir = tmp_path / "etc"
    common = ["--target-dir", str(target), "--env-dir", str(env_dir), "--grid-executable", GRID, "--no-tls"]
    install(install_systemd_scheduler, ["--region", "eu", *common])
    install(install_systemd_node, ["--region", "eu", "--scheduler", "tcp://127.0.0.1:8786", *common])
    yield {"scheduler": target / "grid-scheduler@.service", "node": target / "grid-node.service", "env_dir": env_dir}


def test_units_start_run_a_job_and_retire_gracefully(units: dict[str, Path], tmp_path: Path) -> None:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import SGDClassifier

    from grid import Grid
    from jobs import PartialFit

    # The units under test are the shipped files, and with their drop-ins they run exactly the
    # shipped command lines and stop settings, but for this environment's `grid`.
    for role, shipped in (("scheduler", "grid-scheduler@.service"), ("node", "grid-node.service")):
        theirs = (ROOT / "deploy" / "systemd" / shipped).read_text()
        assert units[role].read_text() == theirs
        ours = stop_settings(unit_texts(units[role]))
        ours["ExecStart"] = [line.replace(GRID, "/opt/dask-grid/bin/grid") for line in ours["ExecStart"]]
        expected = stop_settings([theirs])
        if role == "scheduler":
            # the one difference: a plaintext scheduler has no certificates to check against a revocation list
            crl = " --crl-file /etc/dask-grid/crl.pem"
            assert sum(crl in line for line in expected["ExecStart"]) == 1
            expected["ExecStart"] = [line.replace(crl, "") for line in expected["ExecStart"]]
        assert ours == expected

    port, dash = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    envs = tmp_path / "test-env"
    envs.mkdir()
    (envs / "scheduler-eu.env").write_text(
        f"GRID_HOST=127.0.0.1\nGRID_PORT={port}\nGRID_DASHBOARD_ADDRESS=127.0.0.1:{dash}\nGRID_PROTOCOL=tcp\n"
        # the scheduler places every partition on one node only (it picks the nodes), so a node
        # retired by SIGTERM holds data nobody else has
        "DASK_GRID__JOBS__REPLICAS=1\n"
    )
    for n in ("a", "b"):
        (envs / f"node-{n}.env").write_text(
            f"GRID_REGION=eu\nGRID_SCHEDULER={address}\nGRID_NTHREADS=1\nGRID_MEMORY_LIMIT=1GiB\nGRID_NODE_NAME=node-{n}\n"
        )
    env_dir = units["env_dir"]
    scheduler = service_from_unit(
        units["scheduler"],
        name="grid-scheduler@eu.service",
        instance="eu",
        env_files={str(env_dir / "scheduler-eu.env"): envs / "scheduler-eu.env"},
        tmp=tmp_path,
    )
    nodes = [
        service_from_unit(
            units["node"], name=f"grid-node-{n}.service", instance="", env_files={str(env_dir / "node.env"): envs / f"node-{n}.env"}, tmp=tmp_path
        )
        for n in ("a", "b")
    ]
    assert scheduler.argv == [
        GRID, "scheduler", "--region", "eu", "--host", "127.0.0.1", "--port", str(port),
        "--dashboard-address", f"127.0.0.1:{dash}", "--protocol", "tcp",
    ]  # fmt: skip
    assert nodes[0].argv == [
        GRID, "node", "--region", "eu", "--scheduler", address, "--nthreads", "1",
        "--memory-limit", "1GiB", "--name", "node-a",
    ]  # fmt: skip
    assert scheduler.env["DASK_GRID__SCHEDULER__STATE_DIR"] == str(tmp_path / "state" / "dask-grid" / "scheduler-eu")
    assert nodes[0].env["DASK_GRID__NODE__RETIRE_TIMEOUT"] == "60s"
    assert nodes[0].stop_timeout > 60

    services = [scheduler, *nodes]
    g = None
    try:
        scheduler.start()
        wait_for_services(lambda: "grid scheduler for region eu at" in scheduler.text(), 60, "the scheduler to listen", [scheduler])
        # what the Helm chart's probes and Prometheus use, on the unit's dashboard address
        with urllib.request.urlopen(f"http://127.0.0.1:{dash}/health", timeout=10) as r:
            assert r.read() == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{dash}/metrics", timeout=10) as r:
            assert b"dask_scheduler_workers" in r.read()
        for node in nodes:
            node.start()
        g = Grid.connect({"regions": {"eu": address}})
        grid = g
        wait_for_services(lambda: len(grid.status()["eu"]["workers"]) == 2, 90, "two nodes to join", services)
        for node in nodes:
            node.note_children()
        names = {w["name"]: w["address"] for w in g.status()["eu"]["workers"]}
        assert set(names) == {"node-a", "node-b"}

        X, y = make_classification(n_samples=2000, n_features=8, random_state=0)
        data = g.scatter(X, y, partition_rows=250)  # each partition on one node only (the scheduler's setting)
        client = g.client("eu")
        who_has = client.who_has()
        on_a = [k for k, holders in who_has.items() if names["node-a"] in holders]
        assert on_a, f"no partition on node-a: {who_has}"
        assert all(len(h) == 1 for k, h in who_has.items() if k in on_a)

        first = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), data)
        model = first.result(timeout=120)
        assert first.status == "done" and len(first.history) == 2
        assert model.score(X, y) > 0.6

        # systemctl stop on node a: its partitions must move to node b first
        rc = nodes[0].stop()
        assert rc == 0, nodes[0].text()[-4000:]
        assert "retired from" in nodes[0].text() and "could not retire" not in nodes[0].text()
        assert "Retire worker" in scheduler.text()
        workers = g.status()["eu"]["workers"]
        assert [w["name"] for w in workers] == ["node-b"]
        holders = client.who_has(on_a)
        assert all(set(h) == {names["node-b"]} for h in holders.values()), holders

        second = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), data)
        second.result(timeout=120)
        assert second.status == "done"
        g.drop(data)

        assert nodes[1].stop() == 0, nodes[1].text()[-4000:]
        wait_for_services(lambda: not grid.status()["eu"]["workers"], 30, "node-b to leave", [scheduler])
        g.close()
        g = None
        assert scheduler.stop() == 0, scheduler.text()[-4000:]
        for s in services:
            assert not s.alive()
            for pid in s.children:
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (s.name, pid)
    finally:
        if g is not None:
            g.close()
        for s in services:
            s.kill_all()


def test_tls_scheduler_unit_serves_tls_and_refuses_revoked_nodes(tmp_path: Path) -> None:
    """The TLS unit as shipped: credentials loaded into %d, distributed configured from them,
    the revocation list required at start, checked on every call and reread when replaced."""
    from grid import Grid
    from grid.errors import GridConnectionError

    from grid.security.cli import certs

    creds, env_dir, target, ca = tmp_path / "tls", tmp_path / "etc", tmp_path / "units", tmp_path / "ca"
    crl = env_dir / "crl.pem"  # /etc/dask-grid/crl.pem of the shipped unit
    install(
        install_systemd_scheduler,
        ["--region", "eu", "--target-dir", str(target), "--env-dir", str(env_dir), "--credentials-dir", str(creds), "--grid-executable", GRID,
         "--crl-file", str(crl)],
    )  # fmt: skip
    # the shipped unit verbatim; the drop-in changes only the paths the options gave
    assert (target / "grid-scheduler@.service").read_text() == (ROOT / "deploy" / "systemd" / "grid-scheduler@.service").read_text()
    dropin = [parse_unit([(target / "grid-scheduler@.service.d" / "50-grid.conf").read_text()], s) for s in ("Unit", "Service")]
    assert set(dropin[0]) | set(dropin[1]) == {"AssertFileNotEmpty", "ExecStart", "EnvironmentFile", "LoadCredential"}
    assert (creds / "scheduler-eu").is_dir() and (creds / "scheduler-eu").stat().st_mode & 0o777 == 0o700
    # the certificates, as docs/operations.md says: `grid certs issue ... --out` straight into the unit's directory
    host = socket.gethostname()  # the unit names %H.pem / %H-key.pem
    install(certs, ["init", "--dir", str(ca), "--name", "test-grid"])
    install(certs, ["issue", "scheduler", host, "--region", "eu", "--host", "127.0.0.1", "--dir", str(ca), "--out", str(creds / "scheduler-eu")])
    install(certs, ["issue", "client", "alice", "--dir", str(ca), "--out", str(tmp_path / "client")])
    install(certs, ["issue", "admin", "operator", "--dir", str(ca), "--out", str(tmp_path / "client")])
    for name in ("n-ok", "n-gone", "n-late"):
        install(certs, ["issue", "node", name, "--region", "eu", "--dir", str(ca), "--out", str(tmp_path / "nodes")])
    install(certs, ["revoke", "n-gone", "--reason", "key-compromise", "--dir", str(ca)])

    port, dash = free_port(), free_port()
    (tmp_path / "scheduler-eu.env").write_text(
        f"GRID_HOST=127.0.0.1\nGRID_PORT={port}\nGRID_DASHBOARD_ADDRESS=127.0.0.1:{dash}\n"
    )
    scheduler = service_from_unit(
        target / "grid-scheduler@.service",
        name="grid-scheduler@eu.service",
        instance="eu",
        env_files={str(env_dir / "scheduler-eu.env"): tmp_path / "scheduler-eu.env"},
        tmp=tmp_path,
    )
    assert scheduler.argv[-4:] == ["--protocol", "tls", "--crl-file", str(crl)]
    assert scheduler.env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(tmp_path / "credentials" / "grid-scheduler@eu.service" / "ca.pem")
    # no revocation list: systemd does not start the unit (rather than a scheduler that would admit revoked nodes)
    with pytest.raises(AssertionNotMet, match=f"AssertFileNotEmpty={re.escape(str(crl))}"):
        scheduler.start()
    assert scheduler.proc is None
    ship_crl(ca / "crl.pem", crl)

    def node(name: str) -> Service:
        """`grid node` with its own certificate (the node unit's credentials, given as options)."""
        d = tmp_path / "nodes"
        argv = [GRID, "node", "--region", "eu", "--scheduler", f"tls://127.0.0.1:{port}", "--name", name, "--nthreads", "1",
                "--memory-limit", "1GiB", "--tls-ca-file", str(d / "ca.pem"), "--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}-key.pem")]  # fmt: skip
        env = {**SYSTEMD_BASE_ENV, **{k: os.environ[k] for k in PASS_THROUGH if k in os.environ}}
        return Service(name=name, argv=argv, env=env, kill_signal=signal.SIGTERM, kill_mode="mixed", stop_timeout=120, log=tmp_path / "logs" / f"{name}.log")

    def refused(name: str) -> bool:
        """The scheduler closed a connection of the node for its revoked certificate."""
        return any(f"certificate node '{name}' (region eu) was revoked" in line for line in scheduler.text().splitlines())

    nodes: list[Service] = []
    g = None
    try:
        scheduler.start()
        wait_for_services(lambda: "grid scheduler for region eu at tls://" in scheduler.text(), 60, "the TLS scheduler", [scheduler])
        client_dir = tmp_path / "client"
        g = Grid.connect(
            {
                "regions": {"eu": f"tls://127.0.0.1:{port}"},
                "tls": {"ca-file": str(client_dir / "ca.pem"), "cert": str(client_dir / "alice.pem"), "key": str(client_dir / "alice-key.pem")},
            }
        )
        assert g.status()["eu"]["address"] == f"tls://127.0.0.1:{port}"
        g.close()
        # an operator sees the nodes by name (a data scientist sees placeholders)
        g = Grid.connect(
            {
                "regions": {"eu": f"tls://127.0.0.1:{port}"},
                "tls": {"ca-file": str(client_dir / "ca.pem"), "cert": str(client_dir / "operator.pem"), "key": str(client_dir / "operator-key.pem")},
            }
        )
        grid = g

        def workers() -> set[str]:
            return {w["name"] for w in grid.status()["eu"]["workers"]}

        # a valid node joins; the revoked one is refused at registration and never counted
        for name in ("n-ok", "n-gone"):
            nodes.append(node(name))
            nodes[-1].start()
        wait_for_services(lambda: workers() == {"n-ok"} and refused("n-gone"), 90, "n-ok to join and n-gone to be refused", [scheduler, nodes[0]])
        # revoked after the scheduler started: the renamed-in crl.pem is reread, no restart
        install(certs, ["revoke", "n-late", "--dir", str(ca)])
        ship_crl(ca / "crl.pem", crl)
        nodes.append(node("n-late"))
        nodes[-1].start()
        wait_for_services(lambda: refused("n-late"), 90, "n-late to be refused", [scheduler, nodes[0]])
        assert workers() == {"n-ok"}
        assert "grid scheduler for region eu at" in scheduler.text() and scheduler.alive()  # the same process throughout
        g.close()
        g = None
        with pytest.raises(GridConnectionError):
            Grid.connect({"regions": {"eu": f"tcp://127.0.0.1:{port}"}}, timeout=3)
        for n in nodes:
            n.kill_all()
        assert scheduler.stop() == 0, scheduler.text()[-4000:]
    finally:
        if g is not None:
            g.close()
        for n in nodes:
            n.kill_all()
        scheduler.kill_all()


def ship_crl(source: Path, target: Path) -> None:
    """What docs/operations.md tells an operator: a world-readable copy, renamed into place."""
    tmp = target.with_name(target.name + ".new")
    tmp.write_bytes(source.read_bytes())
    tmp.chmod(0o644)
    os.replace(tmp, target)
