"""Installing the systemd units: what an install writes where, writing it, and the commands.

``grid scheduler install-systemd`` and ``grid node install-systemd`` turn
their options (:mod:`grid.deploy.systemd_options`) into an
:class:`InstallPlan`: the shipped unit verbatim, its environment file (kept
on a re-install unless ``--force``) and the drop-in for the options, or the
removal of an earlier drop-in that no option needs now (the text of each is
:mod:`grid.deploy.systemd_files`). ``--dry-run`` prints the plan instead of
writing it. The installer never touches ``override.conf``, where operators'
own changes go.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import click

from grid.deploy.systemd_files import (
    DROPIN,
    NODE_UNIT,
    SCHEDULER_UNIT,
    render_node_dropin,
    render_node_env,
    render_scheduler_dropin,
    render_scheduler_env,
    shipped_unit,
)
from grid.deploy.systemd_options import (
    DEFAULT_CREDENTIALS_DIR,
    DEFAULT_CRL_FILE,
    DEFAULT_ENV_DIR,
    DEFAULT_GRID_EXECUTABLE,
    DEFAULT_TARGET_DIR,
    NodeOptions,
    SchedulerOptions,
)


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


__all__ = [
    "InstallPlan",
    "install_systemd_node",
    "install_systemd_scheduler",
    "node_plan",
    "running_grid_executable",
    "scheduler_plan",
]
