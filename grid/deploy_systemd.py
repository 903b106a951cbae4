"""systemd units for a region's scheduler and for volunteer nodes.

The units are static files shipped in the package (``grid/deploy/systemd/``;
the repository's ``deploy/systemd/`` links to the same files), so operators
read and audit exactly what runs. ``grid scheduler|node install-systemd``
writes the unit verbatim, its environment file (``/etc/dask-grid/*.env``:
the settings operators edit, kept on a re-install unless ``--force``) and a
drop-in ``UNIT.d/50-grid.conf`` only for options that change what an
environment file cannot say: the ``grid`` path in ``ExecStart=``, ``User=``,
priority and CPU settings, the TLS and revocation list paths, the
environment file's own path. A re-install rewrites that drop-in, or removes
it when no option needs one; operators' own changes go in ``systemctl edit
UNIT`` (``override.conf``, read after it), which the installer never touches.

So this module renders only drop-ins and environment files. It stays one
module under its old import path rather than a package: what is left is one
idea (options, checked, turned into files), and the units are data, not
code. What the units do and why (sandbox, low priority, TLS through
``LoadCredential=``, the revocation list read in place, retiring on stop) is
said in their own comments and in docs/operations.md.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import click

from grid import names

#: where ``install-systemd`` writes units unless told otherwise
DEFAULT_TARGET_DIR = "/etc/systemd/system"
#: environment files (one per unit)
DEFAULT_ENV_DIR = "/etc/dask-grid"
#: TLS material: ``scheduler-REGION/`` and ``node/`` below it hold ca.pem, cert.pem, key.pem
DEFAULT_CREDENTIALS_DIR = "/etc/dask-grid/tls"
#: the ``grid`` executable of the recommended install (``python3 -m venv /opt/dask-grid``)
DEFAULT_GRID_EXECUTABLE = "/opt/dask-grid/bin/grid"
#: the grid's revocation list (``crl.pem`` of the CA directory) on a scheduler's host
DEFAULT_CRL_FILE = "/etc/dask-grid/crl.pem"

SCHEDULER_UNIT = "grid-scheduler@.service"
NODE_UNIT = "grid-node.service"
ENV_EXAMPLE = "grid.env.example"
#: the installer's drop-in; ``systemctl edit`` writes ``override.conf``, which sorts after it and wins
DROPIN = "50-grid.conf"
#: file names inside a credentials directory, which are also the credential ids in ``%d``
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/]+:\d{1,5}\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_SAFE_VALUE = re.compile(r"^[^\s'\"\\$%;#]*\Z")
_CPU_QUOTA = re.compile(r"^\d{1,5}%\Z")


# --- options ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommonOptions:
    """Options shared by the scheduler and node units.

    Parameters
    ----------
    grid_executable : str
        Absolute path of the ``grid`` command the unit runs.
    user : str or None
        Run as this existing system user; ``None`` uses ``DynamicUser=yes``.
    tls : bool
        Load ``ca.pem``, ``cert.pem``, ``key.pem`` with ``LoadCredential=`` and
        configure distributed for mutual TLS; ``False`` for a private test
        network only.
    credentials_dir : str
        Directory with one sub-directory of TLS files per unit, each as
        ``grid certs issue ROLE NAME --out DIR`` writes it: ``ca.pem``,
        ``NAME.pem``, ``NAME-key.pem``.
    cert_name : str or None
        ``NAME`` of the certificate files; ``None``: the node's name, else
        the host name (``%H``).
    env_dir : str
        Directory of the environment files.
    """

    grid_executable: str = DEFAULT_GRID_EXECUTABLE
    user: str | None = None
    tls: bool = True
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR
    cert_name: str | None = None
    env_dir: str = DEFAULT_ENV_DIR

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        for opt in ("grid_executable", "credentials_dir", "env_dir"):
            value = getattr(self, opt)
            if not os.path.isabs(value) or not _SAFE_VALUE.match(value):
                raise ValueError(f"{opt}={value!r} must be an absolute path without spaces, quotes, '$', '%', ';' or '#'")
        if self.user is not None and not _USER.match(self.user):
            raise ValueError(f"user={self.user!r} is not a valid system user name (lowercase, digits, '_', '-')")
        if self.cert_name is not None and not names.is_identity(self.cert_name):
            raise ValueError(f"cert_name={self.cert_name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        if self.user in ("root", "nobody"):
            raise ValueError(f"user={self.user!r} is not allowed: use a dedicated system user, or none for a DynamicUser")


@dataclass(frozen=True)
class SchedulerOptions(CommonOptions):
    """Options of ``grid-scheduler@.service`` and a region's environment file.

    Parameters
    ----------
    region : str
        Region of the environment file (the unit is a template for every region).
    host : str
        Address to listen on.
    port : int
        Scheduler port.
    dashboard_address : str
        Dask dashboard (``/health``, ``/metrics``, the Bokeh pages).
    stop_timeout : int
        Seconds systemd waits after ``SIGTERM`` before killing.
    crl_file : str
        The grid's revocation list, passed as ``--crl-file`` when ``tls`` is on;
        the unit does not start while it is missing or empty. Readable by the
        service's user (mode 0644: a CRL is public).
    """

    region: str = "eu"
    host: str = "0.0.0.0"
    port: int = 8786
    dashboard_address: str = "127.0.0.1:8787"
    stop_timeout: int = 60
    crl_file: str = DEFAULT_CRL_FILE

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        super().check()
        _check_region(self.region)
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} must be a port number 1..65535")
        for opt in ("host", "dashboard_address"):
            value = getattr(self, opt)
            if not value or not _SAFE_VALUE.match(value):
                raise ValueError(f"{opt}={value!r} must be a non-empty address without spaces or quotes")
        if self.stop_timeout < 1:
            raise ValueError(f"stop_timeout={self.stop_timeout!r} must be at least 1 second")
        if not os.path.isabs(self.crl_file) or not _SAFE_VALUE.match(self.crl_file):
            raise ValueError(f"crl_file={self.crl_file!r} must be an absolute path without spaces, quotes, '$', '%', ';' or '#'")
        if self.tls and _protect_home(self.grid_executable) == "yes" and self.crl_file.startswith(("/home/", "/root/", "/run/user/")):
            raise ValueError(f"crl_file={self.crl_file!r}: the unit hides home directories (ProtectHome=yes); use e.g. {DEFAULT_CRL_FILE}")

    @property
    def env_file(self) -> str:
        """This region's environment file."""
        return os.path.join(self.env_dir, f"scheduler-{self.region}.env")


@dataclass(frozen=True)
class NodeOptions(CommonOptions):
    """Options of ``grid-node.service`` and its environment file.

    Parameters
    ----------
    region : str
        Region to join.
    scheduler : str
        Scheduler address, ``tls://HOST:PORT`` (``tcp://`` only with ``tls=False``).
    nthreads : int
        Threads of the node.
    memory_limit : str
        Dask worker memory limit (``auto``, ``4GiB``, ...).
    name : str or None
        Node name (its identity); ``None`` uses the host name (``%H``).
    cpu_quota : str or None
        ``CPUQuota=`` (e.g. ``"50%"`` of one CPU; ``"200%"`` for two); ``None`` for no cap.
    cpu_weight : int
        ``CPUWeight=`` (systemd's default is 100; lower yields to other work).
    nice : int
        ``Nice=`` of the node's processes.
    retire_timeout : int
        Seconds the node waits for its data to be copied off when stopped
        (``grid.node.retire-timeout``); ``TimeoutStopSec`` is this plus 60.
    """

    region: str = "eu"
    scheduler: str = "tls://eu.grid.example.org:8786"
    nthreads: int = 1
    memory_limit: str = "auto"
    name: str | None = None
    cpu_quota: str | None = None
    cpu_weight: int = 20
    nice: int = 19
    retire_timeout: int = 60

    def check(self) -> None:
        """Raise ``ValueError`` naming the option and what is allowed."""
        super().check()
        _check_region(self.region)
        if not _ADDRESS.match(self.scheduler):
            raise ValueError(f"scheduler={self.scheduler!r} must look like tls://HOST:PORT (or tcp://HOST:PORT without TLS)")
        if self.tls and not self.scheduler.startswith("tls://"):
            raise ValueError(
                f"scheduler={self.scheduler!r}: with TLS the address must start with tls:// "
                "(pass --no-tls only on a private test network)"
            )
        if not self.tls and self.scheduler.startswith("tls://"):
            raise ValueError(f"scheduler={self.scheduler!r} is a TLS address but TLS is switched off")
        if not isinstance(self.nthreads, int) or self.nthreads < 1:
            raise ValueError(f"nthreads={self.nthreads!r} must be an integer >= 1")
        _check_memory_limit(self.memory_limit)
        if self.name is not None and not names.is_node_name(self.name):
            raise ValueError(f"name={self.name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
        if self.cpu_quota is not None and not _CPU_QUOTA.match(self.cpu_quota):
            raise ValueError(f"cpu_quota={self.cpu_quota!r} must be a percentage such as '50%' or '200%'")
        if not 1 <= self.cpu_weight <= 10000:
            raise ValueError(f"cpu_weight={self.cpu_weight!r} must be in 1..10000")
        if not -20 <= self.nice <= 19:
            raise ValueError(f"nice={self.nice!r} must be in -20..19")
        if self.retire_timeout < 1:
            raise ValueError(f"retire_timeout={self.retire_timeout!r} must be at least 1 second")

    @property
    def env_file(self) -> str:
        """The node's environment file."""
        return os.path.join(self.env_dir, "node.env")

    @property
    def stop_timeout(self) -> int:
        """``TimeoutStopSec``: retirement plus a minute to close."""
        return self.retire_timeout + 60


def _check_region(region: str) -> None:
    if not names.is_region(region):
        raise ValueError(f"region={region!r} is not allowed; use lowercase letters, digits and '-', starting with a letter")


def _check_memory_limit(value: str) -> None:
    from dask.utils import parse_bytes

    if value == "auto":
        return
    try:
        ok = _SAFE_VALUE.match(value) is not None and float(parse_bytes(value)) > 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"memory_limit={value!r} must be 'auto' or a size such as '4GiB'")


# --- the shipped units and the installer's drop-ins ----------------------------------------
def shipped_unit(name: str) -> str:
    """Text of a unit as the package ships it; ``install-systemd`` copies it verbatim.

    Parameters
    ----------
    name : str
        ``SCHEDULER_UNIT`` or ``NODE_UNIT``.

    Returns
    -------
    str
        The unit file (the same file as ``deploy/systemd/NAME`` of the repository).
    """
    if name not in (SCHEDULER_UNIT, NODE_UNIT):
        raise ValueError(f"unit {name!r} is not shipped: use {SCHEDULER_UNIT!r} or {NODE_UNIT!r}")
    path = resources.files("grid").joinpath("deploy").joinpath("systemd").joinpath(name)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the unit {name} is missing from this dask-grid install ({path}); reinstall dask-grid "
            "from a wheel or a clone of its repository, whose package data holds grid/deploy/systemd/"
        ) from None


def _unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Settings of one unit file (no drop-ins): section to key to values, in file order."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def _protect_home(executable: str) -> str:
    """``ProtectHome=yes`` unless the executable itself lives under a home directory."""
    for home in ("/home/", "/root/", "/run/user/"):
        if executable.startswith(home):
            return "read-only"
    return "yes"


class _DropIn:
    """The settings where the options differ from the shipped unit, by section (defaults: none)."""

    def __init__(self, unit: str) -> None:
        self.unit, self.shipped = unit, _unit_settings(shipped_unit(unit))
        self.sections: dict[str, list[str]] = {"Unit": [], "Service": []}
        self.why: dict[str, str] = {}  # the comment above the last lines of each section

    def get(self, section: str, key: str) -> list[str]:
        return self.shipped.get(section, {}).get(key, [])

    def add(self, section: str, key: str, values: list[str], why: str, reset: bool = True) -> None:
        """``key=`` each value unless the unit says the same; a list setting is reset first (``key=``)."""
        if self.get(section, key) == values:
            return
        if self.why.get(section) != why:
            self.sections[section].append(f"# {why}")
            self.why[section] = why
        self.sections[section] += [f"{key}="] * reset + [f"{key}={v}" for v in values]

    def environment(self, changes: Mapping[str, str | None], why: str) -> None:
        """``Environment=`` with new values (a later assignment wins) or, for ``None``, without a variable."""
        lines = [line.split() for line in self.get("Service", "Environment")]

        def new(assignment: str) -> str | None:
            var = assignment.partition("=")[0]
            return assignment if var not in changes else None if changes[var] is None else f"{var}={changes[var]}"

        wanted = [[n for a in line if (n := new(a)) is not None] for line in lines]
        if sum(map(len, wanted)) < sum(map(len, lines)):  # dropping one takes a reset and the rest again
            self.add("Service", "Environment", [" ".join(w) for w in wanted if w], why)
        else:
            changed = [n for line, w in zip(lines, wanted) for a, n in zip(line, w) if a != n]
            if changed:
                self.add("Service", "Environment", changed, why, reset=False)

    def common(
        self, opts: CommonOptions, command_why: str, replacements: Mapping[str, str], env_file: str, credentials: str, cert: str
    ) -> None:
        """What the options of both units change: command, environment file, TLS files, user, sandbox."""
        (command,) = self.get("Service", "ExecStart")
        command = command.replace(DEFAULT_GRID_EXECUTABLE + " ", opts.grid_executable + " ", 1)
        for old, new in replacements.items():
            command = command.replace(old, new)
        self.add("Service", "ExecStart", [command], command_why)
        self.add("Service", "EnvironmentFile", [env_file], "the environment file (--env-dir)")
        sources = (f"{credentials}/ca.pem", f"{credentials}/{cert}.pem", f"{credentials}/{cert}-key.pem")
        if opts.tls:
            creds = [f"{name}:{src}" for name, src in zip(TLS_FILES, sources)]
            why = "where the TLS files are (--credentials-dir) and their name (--cert-name, else a node's --name)"
            self.add("Service", "LoadCredential", creds, why)
        else:
            self.add("Service", "LoadCredential", [], "no TLS (--no-tls): for a private test network only")
        if opts.user is not None:
            for key, value in (("DynamicUser", "no"), ("User", opts.user), ("Group", opts.user)):
                self.add("Service", key, [value], "a dedicated, unprivileged system user (--user)", reset=False)
        home = _protect_home(opts.grid_executable)
        self.add("Service", "ProtectHome", [home], "the `grid` command lives in a home directory", reset=False)

    def text(self, command: str, edit: str) -> str | None:
        """The drop-in, or ``None`` when the options change nothing in the unit."""
        if not any(self.sections.values()):
            return None
        lines = [
            f"# {self.unit}.d/{DROPIN}: written by `{command}`",
            "# for the options that change the unit itself; a re-install rewrites or removes it.",
            f"# Your own changes: `systemctl edit {edit}` (override.conf, read after this file).",
        ]
        for section, body in self.sections.items():
            lines += ["", f"[{section}]", *body] if body else []
        return "\n".join(lines) + "\n"


def _tls_variables(d: _DropIn) -> list[str]:
    """The distributed TLS variables the shipped unit sets (``DASK_DISTRIBUTED__COMM__...``)."""
    assignments = [a for line in d.get("Service", "Environment") for a in line.split()]
    return [a.partition("=")[0] for a in assignments if a.startswith("DASK_DISTRIBUTED__COMM__")]


def render_scheduler_dropin(opts: SchedulerOptions | None = None) -> str | None:
    """Text of ``grid-scheduler@.service.d/50-grid.conf`` for the given options.

    Parameters
    ----------
    opts : SchedulerOptions, optional
        Defaults to ``SchedulerOptions()``, for which the shipped unit needs no drop-in.

    Returns
    -------
    str or None
        The drop-in, or ``None`` when the shipped unit already says everything.
    """
    opts = opts or SchedulerOptions()
    opts.check()
    d = _DropIn(SCHEDULER_UNIT)
    if opts.tls:
        d.add("Unit", "AssertFileNotEmpty", [opts.crl_file], "the revocation list (--crl-file): no start without it")
    else:  # an empty assignment resets every Assert...= of the unit; it has only this one
        d.add("Unit", "AssertFileNotEmpty", [], "no TLS (--no-tls): for a private test network only")
        # a plaintext scheduler: distributed must not look for certificates that were never loaded
        tls_off = {"GRID_PROTOCOL": "tcp", **dict.fromkeys(_tls_variables(d), None)}
        d.environment(tls_off, "no TLS (--no-tls): for a private test network only")
    crl = {f" --crl-file {DEFAULT_CRL_FILE} ": f" --crl-file {opts.crl_file} " if opts.tls else " "}
    why = "the command line: this install's `grid` (--grid-executable) and revocation list (--crl-file, --no-tls)"
    env_file = os.path.join(opts.env_dir, "scheduler-%i.env")
    d.common(opts, why, crl, env_file, f"{opts.credentials_dir}/scheduler-%i", opts.cert_name or "%H")
    d.add("Service", "TimeoutStopSec", [f"{opts.stop_timeout}s"], "time to close before systemd kills", reset=False)
    return d.text("grid scheduler install-systemd", "grid-scheduler@REGION")


def render_node_dropin(opts: NodeOptions | None = None) -> str | None:
    """Text of ``grid-node.service.d/50-grid.conf`` for the given options.

    Parameters
    ----------
    opts : NodeOptions, optional
        Defaults to ``NodeOptions()``, for which the shipped unit needs no drop-in.

    Returns
    -------
    str or None
        The drop-in, or ``None`` when the shipped unit already says everything.
    """
    opts = opts or NodeOptions()
    opts.check()
    d = _DropIn(NODE_UNIT)
    # the retirement's time goes here with TimeoutStopSec, not in the environment file (which a
    # re-install keeps): both change together, so systemd always waits longer than the node retires
    changes: dict[str, str | None] = {"DASK_GRID__NODE__RETIRE_TIMEOUT": f"{opts.retire_timeout}s"}
    changes.update({} if opts.tls else dict.fromkeys(_tls_variables(d), None))
    d.environment(changes, "the retirement's time (--retire-timeout)" + ("" if opts.tls else "; no TLS (--no-tls)"))
    why = "the command line: this install's `grid` (--grid-executable)"
    d.common(opts, why, {}, opts.env_file, f"{opts.credentials_dir}/node", opts.cert_name or opts.name or "%H")
    d.add("Service", "TimeoutStopSec", [f"{opts.stop_timeout}s"], "the retirement plus a minute to close (--retire-timeout)", reset=False)
    d.add("Service", "Nice", [str(opts.nice)], "priority of the node's processes (--nice)", reset=False)
    d.add("Service", "CPUWeight", [str(opts.cpu_weight)], "its share of a busy CPU (--cpu-weight)", reset=False)
    if opts.cpu_quota is not None:
        d.add("Service", "CPUQuota", [opts.cpu_quota], "a cap on the CPU it uses (--cpu-quota)", reset=False)
    return d.text("grid node install-systemd", "grid-node")


# --- environment files --------------------------------------------------------------------
def render_scheduler_env(opts: SchedulerOptions | None = None) -> str:
    """Text of ``scheduler-REGION.env``, the environment file of one region's scheduler.

    Parameters
    ----------
    opts : SchedulerOptions, optional
        Defaults to ``SchedulerOptions()``.

    Returns
    -------
    str
        The environment file.
    """
    opts = opts or SchedulerOptions()
    opts.check()
    protocol = "tls" if opts.tls else "tcp"
    lines = [
        f"# Environment of grid-scheduler@{opts.region}.service ({opts.env_file}).",
        "# After editing: systemctl restart grid-scheduler@" + opts.region,
        "",
        "# Listen address and port of the scheduler (nodes and clients connect here).",
        f"GRID_HOST={opts.host}",
        f"GRID_PORT={opts.port}",
        "# Dask dashboard: the Bokeh pages, /health (probes) and /metrics (Prometheus). It has no",
        "# login: keep it for operators (e.g. 127.0.0.1:8787 and an SSH tunnel, or a firewall).",
        f"GRID_DASHBOARD_ADDRESS={opts.dashboard_address}",
        "# tls (with the unit's credentials) or tcp (only with units installed --no-tls).",
        f"GRID_PROTOCOL={protocol}",
        "# Extra arguments of `grid scheduler`, split at spaces.",
        "#GRID_EXTRA_ARGS=",
        "",
    ]
    if opts.tls:
        lines += [
            f"# Revocation list: the unit passes --crl-file {opts.crl_file} and does not start without it.",
            "# After `grid certs revoke`, ship the CA's new crl.pem with a rename (the scheduler rereads",
            "# the file when it changes, no restart):",
            f"#   install -m 0644 crl.pem {opts.crl_file}.new && mv {opts.crl_file}.new {opts.crl_file}",
            "",
        ]
    lines += [
        "# Grid and Dask configuration, as DASK_GRID__SECTION__KEY / DASK_DISTRIBUTED__... variables:",
        "#DASK_GRID__SCHEDULER__MAX_UPDATE_BYTES=256MiB",
        "#DASK_GRID__SCHEDULER__FINISHED_JOBS_KEPT=1000",
        "#DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=300s",
        "",
    ]
    return "\n".join(lines)



def render_node_env(opts: NodeOptions | None = None) -> str:
    """Text of ``node.env``, the environment file of ``grid-node.service``.

    Parameters
    ----------
    opts : NodeOptions, optional
        Defaults to ``NodeOptions()``.

    Returns
    -------
    str
        The environment file.
    """
    opts = opts or NodeOptions()
    opts.check()
    lines = [
        f"# Environment of grid-node.service ({opts.env_file}).",
        "# After editing: systemctl restart grid-node   (the node retires first)",
        "",
        "# Region to join and its scheduler (required).",
        f"GRID_REGION={opts.region}",
        f"GRID_SCHEDULER={opts.scheduler}",
        "# Threads and memory this machine lends.",
        f"GRID_NTHREADS={opts.nthreads}",
        f"GRID_MEMORY_LIMIT={opts.memory_limit}",
        "# Node name (its identity on the grid; match the name in its certificate).",
        f"GRID_NODE_NAME={opts.name}" if opts.name else "#GRID_NODE_NAME=   (default: the host name)",
        "# Extra arguments of `grid node`, split at spaces (`grid node --help`), e.g. --no-dial-out",
        "# for a node its scheduler and the region's other nodes can connect to.",
        "#GRID_EXTRA_ARGS=",
        "",
    ]
    return "\n".join(lines)


def render_env_example() -> str:
    """Text of ``deploy/systemd/grid.env.example``: both environment files with defaults.

    Returns
    -------
    str
        The template, with the scheduler's and the node's sections.
    """
    s, n = SchedulerOptions(), NodeOptions()
    return "\n".join(
        [
            "# dask-grid environment files (template; `python -m grid.deploy_systemd deploy/systemd` writes it).",
            "#",
            "# `grid scheduler install-systemd --region REGION` writes the first section to",
            f"# {os.path.join(DEFAULT_ENV_DIR, 'scheduler-REGION.env')}; `grid node install-systemd` writes the",
            f"# second to {n.env_file}. Each unit reads only its own file.",
            "",
            f"# ==== {s.env_file} " + "=" * 20,
            render_scheduler_env(s),
            f"# ==== {n.env_file} " + "=" * 20,
            render_node_env(n),
        ]
    )


# --- installing ---------------------------------------------------------------------------
@dataclass
class InstallPlan:
    """Files to write, files to remove and directories to create for one unit.

    Parameters
    ----------
    files : dict
        Path to (text, mode, overwrite) for each file.
    directories : dict
        Path to mode of each directory to create when missing.
    removals : list of str
        Files to remove when present: a drop-in of an earlier install that no option needs now.
    next_steps : list of str
        What the operator does next.
    """

    files: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    directories: dict[str, int] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def dry_run(self) -> str:
        """Everything the plan would write or remove, as one text."""
        out = []
        for path, mode in self.directories.items():
            out.append(f"# mkdir -m {mode:o} -p {path}")
        for path, (text, mode, _) in self.files.items():
            out.append(f"# ---- {path} (mode {mode:o}) ----")
            out.append(text.rstrip("\n"))
        for path in self.removals:
            out.append(f"# rm -f {path}   (no option changes the unit)")
        out.append("# ---- next steps ----")
        out += [f"# {step}" for step in self.next_steps]
        return "\n".join(out) + "\n"

    def apply(self, force: bool = False) -> list[str]:
        """Create the directories, write the files and remove the stale ones.

        Parameters
        ----------
        force : bool
            Overwrite files marked as kept (the environment file) too.

        Returns
        -------
        list of str
            One line per action taken or skipped.
        """
        report = []
        for path, mode in self.directories.items():
            if not os.path.isdir(path):
                os.makedirs(path, mode=mode, exist_ok=True)
                os.chmod(path, mode)
                report.append(f"created {path}/ (mode {mode:o})")
        for path, (text, mode, overwrite) in self.files.items():
            if os.path.exists(path) and not (overwrite or force):
                report.append(f"kept {path} (exists; --force overwrites it)")
                continue
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            report.append(f"wrote {path}")
        for path in self.removals:
            if os.path.exists(path):
                os.remove(path)
                report.append(f"removed {path} (no option changes the unit)")
        return report


def _unit_files(plan: InstallPlan, target_dir: str, unit: str, dropin: str | None) -> None:
    """The shipped unit, verbatim, and the drop-in for the options (or the removal of an old one)."""
    plan.files[os.path.join(target_dir, unit)] = (shipped_unit(unit), 0o644, True)
    path = os.path.join(target_dir, f"{unit}.d", DROPIN)
    if dropin is None:
        plan.removals.append(path)
    else:
        plan.files[path] = (dropin, 0o644, True)


def scheduler_plan(opts: SchedulerOptions, target_dir: str = DEFAULT_TARGET_DIR) -> InstallPlan:
    """What installing the scheduler unit for ``opts.region`` writes.

    Parameters
    ----------
    opts : SchedulerOptions
        Options of the unit and of the region's environment file.
    target_dir : str
        Directory of the unit file (and of its drop-in directory).

    Returns
    -------
    InstallPlan
    """
    plan = InstallPlan()
    _unit_files(plan, target_dir, SCHEDULER_UNIT, render_scheduler_dropin(opts))
    plan.files[opts.env_file] = (render_scheduler_env(opts), 0o640, False)
    unit = f"grid-scheduler@{opts.region}.service"
    if opts.tls:
        creds = os.path.join(opts.credentials_dir, f"scheduler-{opts.region}")
        plan.directories[creds] = 0o700
        name = opts.cert_name or socket.gethostname()
        plan.next_steps.append(
            f"on the CA machine: grid certs issue scheduler {name} --region {opts.region} --host PUBLIC-DNS-NAME "
            f"--out DIR; copy DIR/ca.pem, DIR/{name}.pem and DIR/{name}-key.pem into {creds}/ "
            "(regular files, mode 0600, owned by root; not symlinks)"
        )
        plan.next_steps.append(
            f"copy the CA's revocation list: install -m 0644 CA_DIR/crl.pem {opts.crl_file} "
            "(the unit does not start without it; a new CA's list is empty)"
        )
    plan.next_steps += [f"systemctl daemon-reload && systemctl enable --now {unit}", f"journalctl -u {unit} -f"]
    return plan


def node_plan(opts: NodeOptions, target_dir: str = DEFAULT_TARGET_DIR) -> InstallPlan:
    """What installing the node unit writes.

    Parameters
    ----------
    opts : NodeOptions
        Options of the unit and of its environment file.
    target_dir : str
        Directory of the unit file (and of its drop-in directory).

    Returns
    -------
    InstallPlan
    """
    plan = InstallPlan()
    _unit_files(plan, target_dir, NODE_UNIT, render_node_dropin(opts))
    plan.files[opts.env_file] = (render_node_env(opts), 0o640, False)
    if opts.tls:
        creds = os.path.join(opts.credentials_dir, "node")
        plan.directories[creds] = 0o700
        name = opts.cert_name or opts.name or socket.gethostname()
        plan.next_steps.append(
            f"on the CA machine: grid certs issue node {name} --region {opts.region} --out DIR; copy DIR/ca.pem, "
            f"DIR/{name}.pem and DIR/{name}-key.pem into {creds}/ (regular files, mode 0600, owned by root; not symlinks)"
        )
    plan.next_steps += ["systemctl daemon-reload && systemctl enable --now grid-node.service", "journalctl -u grid-node -f"]
    return plan


def running_grid_executable() -> str:
    """Absolute path of the ``grid`` command of this Python environment."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "grid")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("grid")
    return os.path.abspath(found) if found else DEFAULT_GRID_EXECUTABLE


def _check_user_exists(user: str | None) -> None:
    if user is None:
        return
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise click.ClickException(
            f"user {user!r} does not exist; create it (`useradd --system --no-create-home {user}`) "
            "or leave --user out to use a dynamic user"
        ) from None


def _run_plan(plan: InstallPlan, dry_run: bool, force: bool, user: str | None) -> None:
    if dry_run:
        click.echo(plan.dry_run(), nl=False)
        return
    _check_user_exists(user)
    try:
        for line in plan.apply(force=force):
            click.echo(line)
    except PermissionError as exc:
        raise click.ClickException(f"{exc}; run as root, or pass --target-dir/--env-dir you can write") from None
    click.echo("next:")
    for step in plan.next_steps:
        click.echo(f"  {step}")


def _common_options(func: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--grid-executable", default=None, help="Path of the `grid` command the unit runs [default: this environment's].", type=click.Path(dir_okay=False)),
        click.option("--user", default=None, help="Existing system user to run as [default: a DynamicUser]."),
        click.option("--no-tls", "no_tls", is_flag=True, help="No TLS credentials: for a private test network only."),
        click.option("--credentials-dir", default=DEFAULT_CREDENTIALS_DIR, show_default=True, help="Root-only directory with the units' TLS files."),
        click.option("--cert-name", default=None, help="NAME of the NAME.pem / NAME-key.pem certificate files [default: the node name, else the host name]."),
        click.option("--env-dir", default=DEFAULT_ENV_DIR, show_default=True, help="Directory of the environment files."),
        click.option("--target-dir", default=DEFAULT_TARGET_DIR, show_default=True, help="Directory of the unit files."),
        click.option("--force", is_flag=True, help="Overwrite an existing environment file."),
        click.option("--dry-run", is_flag=True, help="Print the files instead of writing them."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _common_kwargs(kwargs: Mapping[str, object]) -> dict[str, object]:
    return {
        "grid_executable": os.path.abspath(str(kwargs["grid_executable"])) if kwargs["grid_executable"] else running_grid_executable(),
        "user": kwargs["user"],
        "tls": not kwargs["no_tls"],
        "credentials_dir": os.path.abspath(str(kwargs["credentials_dir"])),
        "cert_name": kwargs["cert_name"],
        "env_dir": os.path.abspath(str(kwargs["env_dir"])),
    }


@click.command("install-systemd")
@click.option("--region", required=True, help="Region whose scheduler this host runs.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8786, show_default=True, type=click.IntRange(1, 65535), help="Scheduler port.")
@click.option("--dashboard-address", default="127.0.0.1:8787", show_default=True, help="Dashboard address (/health, /metrics); it has no login, so this machine only by default.")
@click.option(
    "--crl-file", default=DEFAULT_CRL_FILE, show_default=True,
    help="The grid's revocation list (TLS): passed as `grid scheduler --crl-file`; the unit does not start without it.",
)
@_common_options
def install_systemd_scheduler(region: str, host: str, port: int, dashboard_address: str, crl_file: str, **kwargs: object) -> None:
    """Write grid-scheduler@.service, the region's environment file and a drop-in for the options.

    The unit is the one dask-grid ships, verbatim; options it does not cover go to
    grid-scheduler@.service.d/50-grid.conf. Then `systemctl enable --now grid-scheduler@REGION`
    starts the region.
    """
    try:
        opts = SchedulerOptions(
            region=region, host=host, port=port, dashboard_address=dashboard_address, crl_file=os.path.abspath(crl_file),
            **_common_kwargs(kwargs),  # type: ignore[arg-type]
        )
        plan = scheduler_plan(opts, os.path.abspath(str(kwargs["target_dir"])))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _run_plan(plan, bool(kwargs["dry_run"]), bool(kwargs["force"]), opts.user)


@click.command("install-systemd")
@click.option("--region", required=True, help="Region to join.")
@click.option("--scheduler", "scheduler_address", required=True, help="Scheduler address, tls://HOST:8786.")
@click.option("--nthreads", default=1, show_default=True, type=click.IntRange(min=1), help="Threads this machine lends.")
@click.option("--memory-limit", default="auto", show_default=True, help="Memory limit, e.g. 4GiB, or 'auto'.")
@click.option("--name", default=None, help="Node name (its identity) [default: the host name].")
@click.option("--cpu-quota", default=None, help="Cap CPU use, e.g. 50% of one CPU or 200% for two [default: no cap].")
@click.option("--cpu-weight", default=20, show_default=True, type=click.IntRange(1, 10000), help="CPUWeight= (systemd's default is 100).")
@click.option("--nice", default=19, show_default=True, type=click.IntRange(-20, 19), help="Nice level.")
@click.option("--retire-timeout", default=60, show_default=True, type=click.IntRange(min=1), help="Seconds to copy data off when stopped.")
@_common_options
def install_systemd_node(
    region: str,
    scheduler_address: str,
    nthreads: int,
    memory_limit: str,
    name: str | None,
    cpu_quota: str | None,
    cpu_weight: int,
    nice: int,
    retire_timeout: int,
    **kwargs: object,
) -> None:
    """Write grid-node.service, its environment file and a drop-in for the options.

    The unit is the one dask-grid ships, verbatim; options it does not cover go to
    grid-node.service.d/50-grid.conf. Then `systemctl enable --now grid-node` joins
    this machine to the region; `systemctl stop grid-node` retires it gracefully.
    """
    try:
        opts = NodeOptions(
            region=region,
            scheduler=scheduler_address,
            nthreads=nthreads,
            memory_limit=memory_limit,
            name=name,
            cpu_quota=cpu_quota,
            cpu_weight=cpu_weight,
            nice=nice,
            retire_timeout=retire_timeout,
            **_common_kwargs(kwargs),  # type: ignore[arg-type]
        )
        plan = node_plan(opts, os.path.abspath(str(kwargs["target_dir"])))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _run_plan(plan, bool(kwargs["dry_run"]), bool(kwargs["force"]), opts.user)


def write_examples(directory: str | os.PathLike[str]) -> list[Path]:
    """(Re)generate the rendered files of ``deploy/systemd/`` (``grid.env.example``).

    Parameters
    ----------
    directory : path
        Usually ``deploy/systemd`` of a checkout.

    Returns
    -------
    list of Path
        The files written.
    """
    path = Path(directory) / ENV_EXAMPLE  # the units there are the package's own files, not rendered
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_env_example())
    return [path]


__all__ = [
    "NodeOptions",
    "SchedulerOptions",
    "install_systemd_node",
    "install_systemd_scheduler",
    "node_plan",
    "render_env_example",
    "render_node_dropin",
    "render_node_env",
    "render_scheduler_dropin",
    "render_scheduler_env",
    "scheduler_plan",
    "shipped_unit",
    "write_examples",
]

if __name__ == "__main__":  # pragma: no cover - `python -m grid.deploy_systemd deploy/systemd`
    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "deploy/systemd"):
        print(written)
