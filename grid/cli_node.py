"""``grid node``: its options, checked and turned into the arguments of :func:`grid.node.agent.run_node`.

The options mean what they mean for ``dask worker`` (the help text tells the
defaults that differ on a volunteer's machine); the grid's own say how the
node serves (community mode, dial-out, idle-only, CPU share, data roots).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import click
import dask.config

from grid import config
from grid.cli_options import security_from_options, tls_options
from grid.logs import setup_logging


def _node_data_settings(data_roots: tuple[str, ...], allow_private_urls: bool | None, community: bool) -> None:
    """Put the node's Files rules in its Dask config, which the Nanny hands to the worker process."""
    from jobs.data_roots import is_url, normalize_roots, roots_setting

    roots = list(data_roots) if data_roots else roots_setting(config.get("node.data-roots"))
    param = "--data-root" if data_roots else "grid.node.data-roots"
    try:
        normalized = normalize_roots(roots)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None
    for given, root in zip(roots, normalized):
        if not is_url(root) and not os.path.isdir(root):
            raise click.BadParameter(f"data root {given!r} is not a directory on this host", param_hint=param)
    # resolved here: the worker process must not reinterpret a relative root or a symlink later
    settings: dict[str, Any] = {"grid.node.data-roots": normalized}
    if allow_private_urls is not None:
        settings["grid.node.allow-private-urls"] = allow_private_urls
    dask.config.set(settings)
    log = logging.getLogger("grid.node")
    if roots:
        log.info("Files datasets are read only under %s", normalized)
    elif community:
        log.warning("no data roots: this community node refuses every Files dataset (name them with --data-root)")


def _split_ports(spec: str | None, n: int, option: str) -> list[Any]:
    """``dask worker``'s port spreading: one port or range per worker process from PORT or FIRST:LAST."""
    from distributed.utils import parse_ports

    try:
        ports = parse_ports(spec)
    except ValueError as exc:
        raise click.BadParameter(f"{spec!r} is not PORT or FIRST:LAST ({exc})", param_hint=option) from None
    if ports in ([0], [None]):
        return [ports[0]] * n
    if len(ports) < n:
        raise click.BadParameter(f"{spec!r} has {len(ports)} port(s) for {n} worker processes; give a range FIRST:LAST", param_hint=option)
    return [ports[i::n] if len(ports) > n else ports[i] for i in range(n)]


def _parse_resources(value: str | None) -> dict[str, float] | None:
    """``dask worker --resources``: "GPU=2 MEM=10e9" (or comma-separated)."""
    if not value:
        return None
    out: dict[str, float] = {}
    for item in value.replace(",", " ").split():
        key, sep, amount = item.partition("=")
        try:
            out[key] = float(amount) if sep and key else float("nan")
        except ValueError:
            out[key] = float("nan")
        if out[key] != out[key]:
            raise click.BadParameter(f"{item!r} is not NAME=AMOUNT; e.g. --resources \"GPU=2 MEM=10e9\"", param_hint="--resources")
    return out


NODE_HELP = """Run a node: Dask worker process(es) of one region. SIGTERM retires it gracefully.

`grid node install-systemd ...` writes its systemd unit instead.

\b
Community mode: on a TLS grid (--tls-* given or a tls:// scheduler) the node
runs only grid job functions by default, for its owner lends CPU, not a shell;
on plain TCP (private grids only) it runs any Dask task by default. Explicit
--community/--no-community wins. --allow-admin-tasks lets a TLS community node
run admins' plain Dask work (g.joblib(), g.client()) too.

\b
Stopping: SIGTERM/SIGINT retires every worker through the scheduler (data
copied off first, within grid.node.retire-timeout); when the scheduler does
not answer within seconds the node closes without it. A second signal exits
at once.

\b
Waiting for the scheduler: a node whose scheduler is not up yet, or goes
away, waits for it and joins again by itself under the same name and
options, trying after random delays that double up to a minute
(grid.node.reconnect). A signal ends the waiting node at once (status 0).
With --death-timeout it gives up after that many seconds without a
scheduler and exits with status 75, for systemd's Restart=on-failure.

\b
The worker options mean what they mean for `dask worker`, with the same
defaults except, for a volunteer's machine:
  --dashboard-address  127.0.0.1:0 (dask: :0): a node's dashboard is not
                       served on every interface of someone's machine
                       unless its owner says so (--dashboard-address :0).
  --nthreads           all cores / --nworkers as in dask, but only the
                       --cpu-share of them when that is given: more threads
                       than lent cores only contend.
  --name               HOST-PID (dask: the worker address); on TLS grids
                       the certificate name is the identity.
"""


@click.group(invoke_without_command=True, help=NODE_HELP)
@click.pass_context
@click.option("--region", default=None, help="Region to join; must match the scheduler's (required).")
@click.option("--scheduler", "scheduler_address", default=None, help="Scheduler address, e.g. tcp://host:8786 (required).")
@click.option("--nthreads", default=None, type=click.IntRange(min=1), help="Threads per worker process  [default: cores (times --cpu-share) / --nworkers]")
@click.option(
    "--nworkers", default="1", show_default=True,
    help="Worker processes; negative: CPU_COUNT + 1 + N; 'auto': processes and threads from the core count (as dask worker).",
)
@click.option("--memory-limit", default="auto", show_default=True, help="Memory limit per worker process, e.g. 4GiB, 0.5 (of the host's memory), 0 (none) or 'auto'.")
@click.option("--name", default=None, help="Node name; default HOST-PID, NAME-i with --nworkers (on TLS grids the certificate name is the identity).")
@click.option("--community/--no-community", default=None, help="Run only grid job functions (a node owner lends CPU, not a shell)  [default: on TLS grids]")
@click.option(
    "--allow-admin-tasks", is_flag=True, default=False,
    help="Community node of a TLS grid: also run plain Dask tasks, which only admin certificates can submit there (g.joblib(), g.client()).",
)
@click.option(
    "--dial-out/--no-dial-out", default=None,
    help="Open every connection from this node, accept none (behind NAT or a firewall): rounds and partitions "
    "come over connections it opens to its scheduler  [default: grid.node.dial-out, else on for community nodes of TLS grids]",
)
@click.option("--idle-only/--no-idle-only", default=None, help="Pause while other processes use the host's CPU (default: grid.node.idle.enabled).")
@click.option("--cpu-share", default=None, type=click.FloatRange(min=0, min_open=True, max=1), help="Share of the host's cores this node may use (0 < x <= 1).")
@click.option(
    "--data-root", "data_roots", multiple=True, metavar="DIR_OR_URL_PREFIX",
    help="Read Files datasets only under this directory or URL prefix (repeatable; replaces grid.node.data-roots). "
    "A community node without one reads no files.",
)
@click.option(
    "--allow-private-urls/--no-allow-private-urls", default=None,
    help="Fetch Files URLs whose host is loopback, link-local or private (default: grid.node.allow-private-urls).",
)
@click.option("--host", default=None, help="Serving host, an IP visible to the scheduler and other nodes (see --listen-address, --contact-address).")
@click.option("--listen-address", default=None, help="Address the worker binds, e.g. tcp://0.0.0.0:9000 (one worker process only).")
@click.option("--contact-address", default=None, help="Address the worker advertises to the scheduler and other nodes, e.g. tcp://203.0.113.5:9000 (needs --listen-address).")
@click.option("--worker-port", default=None, help="Worker port, default random; FIRST:LAST spreads a range over --nworkers.")
@click.option("--nanny-port", default=None, help="Nanny port, default random; FIRST:LAST spreads a range over --nworkers.")
@click.option("--resources", default=None, help='Abstract resources of each worker process for task constraints, e.g. "GPU=2 MEM=10e9".')
@click.option("--lifetime", default=None, help="Shut the worker down after this duration, e.g. 1h (retiring it first).")
@click.option("--lifetime-stagger", default=None, help="Random amount by which to stagger --lifetime.")
@click.option("--lifetime-restart/--no-lifetime-restart", default=None, help="Restart the worker after --lifetime instead of ending.")
@click.option("--preload", multiple=True, help='Module or file each worker process loads, e.g. "foo.bar" or "/path/to/foo.py" (repeatable).')
@click.option("--dashboard-address", default="127.0.0.1:0", show_default=True, help="Where the worker serves its dashboard; ':0' for every interface.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True, help="Serve the worker's dashboard.")
@click.option(
    "--death-timeout", default=None,
    help="Seconds to wait for a scheduler (at start, or after it went away) before exiting with status 75  [default: wait until stopped]",
)
@tls_options
def node(
    ctx: click.Context, region: str | None, scheduler_address: str | None, nthreads: int | None, nworkers: str, memory_limit: str,
    name: str | None, community: bool | None, allow_admin_tasks: bool, dial_out: bool | None, idle_only: bool | None, cpu_share: float | None,
    data_roots: tuple[str, ...], allow_private_urls: bool | None, host: str | None, listen_address: str | None,
    contact_address: str | None, worker_port: str | None, nanny_port: str | None, resources: str | None, lifetime: str | None,
    lifetime_stagger: str | None, lifetime_restart: bool | None, preload: tuple[str, ...], dashboard_address: str,
    dashboard: bool, death_timeout: str | None, tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if region is None or scheduler_address is None:
        raise click.UsageError("Missing option '--region' or '--scheduler'.")
    from dask.utils import parse_timedelta

    try:
        death_seconds = None if death_timeout is None else float(parse_timedelta(death_timeout, default="seconds"))
    except (ValueError, KeyError):
        raise click.BadParameter(f"{death_timeout!r} is not a duration; e.g. --death-timeout 60 or 5min", param_hint="--death-timeout") from None
    if death_seconds is not None and death_seconds <= 0:
        raise click.BadParameter("must be more than 0 seconds (leave it out to wait until stopped)", param_hint="--death-timeout")
    from dask.system import CPU_COUNT
    from distributed.comm import get_address_host_port

    from grid.node.agent import run_node

    setup_logging()
    security = security_from_options("node", tls_ca_file, tls_cert, tls_key)
    tls = security is not None or scheduler_address.startswith("tls://")
    if community is None:
        community = tls  # plain TCP is for private grids; a volunteer's node speaks TLS
    if allow_admin_tasks and community and not tls:
        raise click.UsageError(
            "--allow-admin-tasks needs a TLS grid: on plain TCP no certificate proves an admin. "
            "Use --no-community for a private node that runs any Dask task."
        )
    if dial_out is None:
        dial_out = config.get("node.dial-out")
    if dial_out is None:
        # a volunteer's machine (community mode on a TLS grid) is behind NAT until proven otherwise
        dial_out = community and tls
    # the worker process reads it when it registers (grid.node.rounds.profile)
    dask.config.set({"grid.node.dial-out": bool(dial_out)})
    # --nworkers, --nthreads and the address options as `dask worker` reads them
    if nworkers == "auto":
        from distributed.deploy.utils import nprocesses_nthreads

        n_workers, auto_threads = nprocesses_nthreads()
        nthreads = nthreads or auto_threads
    else:
        try:
            n_workers = int(nworkers)
        except ValueError:
            raise click.BadParameter(f"{nworkers!r} is not a number or 'auto'", param_hint="--nworkers") from None
        if n_workers < 0:
            n_workers = CPU_COUNT + 1 + n_workers
    if n_workers <= 0:
        raise click.BadParameter("there must be at least one worker process", param_hint="--nworkers")
    if contact_address and not listen_address:
        raise click.UsageError("--contact-address needs --listen-address (the address the worker binds)")
    if listen_address and n_workers > 1:
        raise click.UsageError("--listen-address names one address: it cannot be used with --nworkers above 1")
    if listen_address and (worker_port or host):
        raise click.UsageError("--listen-address already names host and port: drop --worker-port and --host")
    try:
        if listen_address:
            listen_host, port = get_address_host_port(listen_address, strict=True)
            host, worker_port = (f"[{listen_host}]" if ":" in listen_host else listen_host), str(port)
        if contact_address:
            get_address_host_port(contact_address, strict=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen-address/--contact-address") from None
    if nthreads is None:
        cores = max(1, int(CPU_COUNT * cpu_share)) if cpu_share is not None else CPU_COUNT
        nthreads = max(1, cores // n_workers)
    worker_ports = _split_ports(worker_port, n_workers, "--worker-port")
    nanny_ports = _split_ports(nanny_port, n_workers, "--nanny-port")
    _node_data_settings(data_roots, allow_private_urls, community)
    from grid.node.idle import apply_process_limits, idle_plugin

    plugins: tuple = ()
    try:
        if idle_only if idle_only is not None else config.get("node.idle.enabled"):
            plugins = (idle_plugin(cpu_share=cpu_share),)
        elif cpu_share is not None:
            apply_process_limits(cpu_share=cpu_share)  # the worker process inherits it
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    nanny_kwargs: dict[str, Any] = dict(
        host=host, contact_address=contact_address or listen_address, listen_address=listen_address,
        resources=_parse_resources(resources), lifetime=lifetime, lifetime_stagger=lifetime_stagger,
        lifetime_restart=lifetime_restart, preload=list(preload), dashboard=dashboard, dashboard_address=dashboard_address,
    )
    nanny_kwargs = {k: v for k, v in nanny_kwargs.items() if v is not None}
    try:
        code = asyncio.run(
            run_node(
                scheduler_address, region, nthreads=nthreads, memory_limit=memory_limit, name=name,
                security=security, community=community, allow_admin_tasks=allow_admin_tasks, plugins=plugins,
                nworkers=n_workers, worker_kwargs=[{"worker_port": w, "port": n} for w, n in zip(worker_ports, nanny_ports)],
                death_timeout=death_seconds, **nanny_kwargs,
            )
        )
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
