"""The text of every file ``install-systemd`` writes.

The units are static files shipped in the package (``grid/deploy/systemd/``;
the repository's ``deploy/systemd/`` links to the same files), so operators
read and audit exactly what runs: :func:`shipped_unit` reads them as they
are. Everything else is rendered from the options
(:mod:`grid.deploy.systemd_options`): the environment file of each unit
(``/etc/dask-grid/*.env``: the settings operators edit) and a drop-in
``UNIT.d/50-grid.conf`` only for options that change what an environment
file cannot say: the ``grid`` path in ``ExecStart=``, ``User=``, priority
and CPU settings, the TLS and revocation list paths, the environment file's
own path. Operators' own changes go in ``systemctl edit UNIT``
(``override.conf``, read after the drop-in). What the units do and why
(sandbox, low priority, TLS through ``LoadCredential=``, the revocation list
read in place, retiring on stop) is said in their own comments and in
docs/operations.md.

``python -m grid.deploy.systemd_files deploy/systemd`` writes the
repository's ``deploy/systemd/grid.env.example``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from grid.deploy.systemd_options import (
    DEFAULT_CRL_FILE,
    DEFAULT_ENV_DIR,
    DEFAULT_GRID_EXECUTABLE,
    CommonOptions,
    NodeOptions,
    SchedulerOptions,
    protect_home,
)

SCHEDULER_UNIT = "grid-scheduler@.service"
NODE_UNIT = "grid-node.service"
ENV_EXAMPLE = "grid.env.example"
#: the installer's drop-in; ``systemctl edit`` writes ``override.conf``, which sorts after it and wins
DROPIN = "50-grid.conf"
#: file names inside a credentials directory, which are also the credential ids in ``%d``
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


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
        home = protect_home(opts.grid_executable)
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
            "# dask-grid environment files (template; `python -m grid.deploy.systemd_files deploy/systemd` writes it).",
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
    "DROPIN",
    "ENV_EXAMPLE",
    "NODE_UNIT",
    "SCHEDULER_UNIT",
    "TLS_FILES",
    "render_env_example",
    "render_node_dropin",
    "render_node_env",
    "render_scheduler_dropin",
    "render_scheduler_env",
    "shipped_unit",
    "write_examples",
]

if __name__ == "__main__":  # pragma: no cover - `python -m grid.deploy.systemd_files deploy/systemd`
    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "deploy/systemd"):
        print(written)
