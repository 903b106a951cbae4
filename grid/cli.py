"""The ``grid`` command line (click, like distributed's ``dask`` command)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

import click
import dask.config

from grid import config  # noqa: F401  (registers defaults)

GRID_FILE_HELP = "Grid spec (YAML) to connect with; `grid up` writes one."


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _parse_regions(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in value.split(","):
        name, sep, n = item.strip().partition("=")
        if not sep or not n.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not NAME=NODES; e.g. --regions eu=2,us=2")
        out[name.strip()] = int(n)
    return out


def tls_options(fn: Any) -> Any:
    """--tls-ca-file/--tls-cert/--tls-key, as `grid certs issue` writes them."""
    fn = click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="This process's private key (PEM).")(fn)
    fn = click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False), help="This process's certificate (PEM) from `grid certs issue`.")(fn)
    fn = click.option("--tls-ca-file", default=None, type=click.Path(exists=True, dir_okay=False), help="The grid CA certificate; enables mutual TLS.")(fn)
    return fn


def _security(role: str, ca: str | None, cert: str | None, key: str | None) -> Any:
    """A distributed Security presenting one certificate in the slots ``role`` needs."""
    given = [x is not None for x in (ca, cert, key)]
    if not any(given):
        return None
    if not all(given):
        raise click.UsageError("TLS needs all three of --tls-ca-file, --tls-cert and --tls-key")
    from grid.security.identity import security_for

    return security_for(role, ca, cert, key)


def _connect(grid_file: str) -> Any:
    from grid import Grid

    try:
        return Grid.connect(grid_file)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="dask-grid")
def main() -> None:
    """dask-grid: a batch compute grid on Dask."""


@main.group(invoke_without_command=True)
@click.pass_context
@click.option("--region", default=None, help="Name of the region this scheduler serves (required).")
@click.option("--host", default=None, help="Address to listen on (default: all interfaces).")
@click.option("--port", default=8786, show_default=True, type=int, help="Scheduler port.")
@click.option(
    "--dashboard-address", default=None,
    help="Dask dashboard and /metrics address; 'none' disables it. Default ':8787' on plaintext grids and "
    "'127.0.0.1:8787' on TLS grids (the dashboard has no login: put an authenticating proxy in front).",
)
@click.option("--protocol", default=None, help="tcp or tls (default: from the address or tcp).")
@click.option("--scheduler-file", default=None, help="Write the scheduler's address (JSON) here once it listens.")
@click.option(
    "--peer", "peers", multiple=True, metavar="REGION=ADDRESS",
    help="Another region this scheduler trains jobs with (repeatable); on TLS grids it dials no other address (grid.scheduler.peers).",
)
@click.option("--crl-file", default=None, type=click.Path(dir_okay=False), help="Revocation list (`grid certs crl`) checked on every call.")
@click.option(
    "--state-dir", default=None, type=click.Path(file_okay=False),
    help="Keep the job registry, round checkpoints and results here, so jobs survive a restart (grid.scheduler.state-dir).",
)
@tls_options
def scheduler(
    ctx: click.Context, region: str | None, host: str | None, port: int, dashboard_address: str | None, protocol: str | None, scheduler_file: str | None,
    peers: tuple[str, ...], crl_file: str | None, state_dir: str | None, tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None,
) -> None:
    """Run the scheduler of one region (a Dask scheduler with the grid plugin).

    `grid scheduler install-systemd ...` writes its systemd unit instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    if region is None:
        raise click.UsageError("Missing option '--region'.")
    from grid.local import check_regions
    from grid.dashboard.page import scheduler_plugins
    from grid.scheduler.service import run_scheduler

    try:
        check_regions({region: 0})
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--region") from None
    _logging()
    security = _security("scheduler", tls_ca_file, tls_cert, tls_key)
    if security is not None:
        protocol = protocol or "tls"
    if crl_file:
        from grid.security.identity import CertError, RevocationList

        try:  # before anything starts: a list that is missing or not signed by the CA is named now
            RevocationList(crl_file, ca=tls_ca_file).serials()
        except CertError as exc:
            raise click.BadParameter(str(exc), param_hint="--crl-file") from None
        dask.config.set({"grid.scheduler.crl-file": crl_file})
    if state_dir:
        dask.config.set({"grid.scheduler.state-dir": os.path.abspath(state_dir)})
    if peers:
        parsed = {}
        for item in peers:
            name, sep, address = item.partition("=")
            if not sep or not address:
                raise click.BadParameter(f"{item!r} is not REGION=ADDRESS (e.g. us=tls://us.grid.example.org:8786)", param_hint="--peer")
            parsed[name] = address
        check_regions({name: 0 for name in parsed})
        dask.config.set({"grid.scheduler.peers": parsed})
    if dashboard_address is None:  # an unauthenticated page: on community grids, this machine only
        dashboard_address = "127.0.0.1:8787" if protocol == "tls" else ":8787"
    dash = None if dashboard_address.lower() == "none" else dashboard_address

    def ready(s: Any) -> None:
        if scheduler_file:
            tmp = scheduler_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"address": s.address, "region": region, "http_port": s.http_server.port}, f)
            os.replace(tmp, scheduler_file)  # readers never see a half-written file

    asyncio.run(
        run_scheduler(
            region, host=host, port=port, dashboard_address=dash, protocol=protocol, security=security, ready=ready,
            plugins=scheduler_plugins(region),  # the grid plugin, and the /grid page where Bokeh is
        )
    )


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


@main.group(invoke_without_command=True, help=NODE_HELP)
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

    _logging()
    security = _security("node", tls_ca_file, tls_cert, tls_key)
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


@main.command()
@click.option("--regions", "regions_text", default="eu=2,us=1", show_default=True, help="Regions and nodes: NAME=NODES,...")
@click.option("--file", "grid_file", default="grid.yaml", show_default=True, help="Where to write the grid spec.")
@click.option("--threads-per-node", default=None, type=click.IntRange(min=1))
def up(regions_text: str, grid_file: str, threads_per_node: int | None) -> None:
    """Run a local grid in the foreground until Ctrl-C or SIGTERM."""
    from grid.local import LocalGrid

    regions = _parse_regions(regions_text)
    try:
        local = LocalGrid(regions, threads_per_node=threads_per_node)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--regions") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    try:
        local.spec.write(grid_file)
        click.echo(f"grid spec written to {os.path.abspath(grid_file)}")
        for name, cluster in local.clusters.items():
            grid_page = cluster.dashboard_link.rsplit("/", 1)[0] + "/grid"
            click.echo(
                f"region {name}: scheduler {cluster.scheduler_address}  nodes {len(cluster.workers)}  "
                f"dashboard {cluster.dashboard_link}  grid page {grid_page}"
            )
        click.echo(f"connect with: Grid.connect({grid_file!r})   grid dashboard: grid dashboard --grid {grid_file}   stop with Ctrl-C")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        click.echo("stopping the grid ...")
        local.close()
        if os.path.exists(grid_file):
            os.remove(grid_file)


@main.command()
@click.option("--grid", "grid_file", default="grid.yaml", show_default=True, help=GRID_FILE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(grid_file: str, as_json: bool) -> None:
    """Regions, nodes and their state."""
    g = _connect(grid_file)
    try:
        st = g.status()
    finally:
        g.close()
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    for region, info in st.items():
        jobs = ", ".join(f"{k} {v}" for k, v in info["jobs"].items() if v)
        counts = info.get("nodes") or {}  # a data scientist's certificate sees counts, not the nodes
        n_nodes = counts.get("active", 0) + counts.get("paused", 0) if counts else len(info["workers"])
        click.echo(f"region {region}  {info['address']}  nodes {n_nodes}  threads {info['nthreads']}  jobs: {jobs or 'none'}")
        for w in info["workers"]:
            click.echo(
                f"  {w['name']:<28} {w['state']:<12} {w.get('reach', ''):<9} threads {w['nthreads']}  cpu {w['cpu']:5.1f}%  "
                f"mem {w['memory'] / 2**20:8.1f} MiB  verified {w.get('verified', 0)}  {w['address']}"
            )
        for q in info.get("quarantined", []):
            click.echo(f"  {q['identity']:<28} {'quarantined':<12} {q['reason']}  (evidence: {json.dumps(q['evidence'], default=str)})")


@main.command()
@click.option("--grid", "grid_file", default="grid.yaml", show_default=True, help=GRID_FILE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def jobs(grid_file: str, as_json: bool) -> None:
    """Jobs on every region of the grid."""
    g = _connect(grid_file)
    try:
        rows = g.jobs()
    finally:
        g.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    click.echo(f"{'id':<20} {'status':<10} {'estimator':<22} {'round':>9} {'loss':>8} {'elapsed':>8}  owner")
    for j in rows:
        loss = "" if j["loss"] is None else f"{j['loss']:.4f}"
        click.echo(
            f"{j['id']:<20} {j['status']:<10} {j['estimator']:<22} {j['rounds_done']:>4}/{j['rounds']:<4} {loss:>8} {j['elapsed']:7.1f}s  {j['owner']}"
        )
        note = j.get("waiting") or j.get("error")
        if note:  # why it waits, or why it failed, under the job's line
            click.echo(f"{'':<20} {note}")


@main.command()
@click.argument("job_id")
@click.option("--grid", "grid_file", default="grid.yaml", show_default=True, help=GRID_FILE_HELP)
def cancel(job_id: str, grid_file: str) -> None:
    """Cancel a job by id."""
    g = _connect(grid_file)
    try:
        try:
            status_after = g.job(job_id).cancel()
        except (KeyError, Exception) as exc:  # noqa: BLE001 - print the reason, exit 1
            raise click.ClickException(str(exc)) from None
    finally:
        g.close()
    click.echo(f"{job_id}: {status_after}")


@main.command()
@click.option("--rows", default=1_000_000, show_default=True, type=click.IntRange(min=1000), help="Rows of the generated problem.")
@click.option("--regions", "regions_text", default="eu=2,us=1", show_default=True, help="Regions and nodes: NAME=NODES,...")
def demo(rows: int, regions_text: str) -> None:
    """What the grid is for, in under a minute, on an embedded 2-region grid.

    The grid's SGD against serial scikit-learn and lbfgs (time to the same
    test accuracy), a job across regions, an exact merge, a verified job.
    """
    from grid.demo import run_demo

    run_demo(rows=rows, regions=_parse_regions(regions_text))


def _add_subcommands() -> None:
    from grid.dashboard.app import dashboard
    from grid.deploy.systemd_install import install_systemd_node, install_systemd_scheduler
    from grid.security.cli import certs

    main.add_command(certs, "certs")
    main.add_command(dashboard, "dashboard")
    scheduler.add_command(install_systemd_scheduler)
    node.add_command(install_systemd_node)


_add_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
