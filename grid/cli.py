"""The ``grid`` command line (click, like distributed's ``dask`` command).

The ``grid`` group and its commands for a region's scheduler, a local grid
and a grid's users (``status``, ``jobs``, ``cancel``, ``demo``). ``grid node``
is :mod:`grid.cli_node`, ``grid certs`` :mod:`grid.security.cli`, ``grid
dashboard`` :mod:`grid.dashboard.app`; the TLS options they share
are :mod:`grid.cli_options`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from typing import Any

import click
import dask.config

from grid import config  # noqa: F401  (registers defaults)
from grid.cli_options import security_from_options, tls_options
from grid.logs import setup_logging

GRID_FILE_HELP = "Grid spec (YAML) to connect with; `grid up` writes one."


def _parse_regions(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in value.split(","):
        name, sep, n = item.strip().partition("=")
        if not sep or not n.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not NAME=NODES; e.g. --regions eu=2,us=2")
        out[name.strip()] = int(n)
    return out


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
    setup_logging()
    security = security_from_options("scheduler", tls_ca_file, tls_cert, tls_key)
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
    from grid.cli_node import node
    from grid.dashboard.app import dashboard
    from grid.deploy.systemd_install import install_systemd_node, install_systemd_scheduler
    from grid.security.cli import certs

    main.add_command(certs, "certs")
    main.add_command(dashboard, "dashboard")
    main.add_command(node, "node")
    scheduler.add_command(install_systemd_scheduler)
    node.add_command(install_systemd_node)


_add_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
