"""``grid certs``: the grid certificate authority on the command line.

``grid/cli.py`` adds the :data:`certs` group to the ``grid`` command::

    grid certs init [--dir DIR] [--name NAME] [--days N]
    grid certs issue {scheduler|node|client|admin|observer} NAME [--dir DIR] [--region R] [--host H ...] [--days N] [--out DIR]
    grid certs revoke NAME_OR_SERIAL [--dir DIR] [--role ROLE] [--reason REASON]
    grid certs list [--dir DIR] [--json]
    grid certs crl [--dir DIR] [--days N]

``--dir`` defaults to the ``grid.security.ca-dir`` setting, else
``~/.config/dask-grid/ca``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from grid.security import authority, revocation
from grid.security.identity import CRL_FILE, ROLES, CertError, format_utc, load_revoked

DIR_HELP = "CA directory (default: grid.security.ca-dir, else ~/.config/dask-grid/ca)."


def _dir(value: str | None) -> Path:
    return Path(os.path.expanduser(value)) if value else authority.default_ca_dir()


def _fail(exc: BaseException) -> click.ClickException:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return click.ClickException(str(message))


_ERRORS = (CertError, ValueError, KeyError, OSError)


@click.group()
def certs() -> None:
    """The grid's certificate authority: create it, issue, revoke and list certificates.

    Every scheduler, node and client of a TLS grid holds a certificate from
    the grid CA; the certificate records the role (scheduler, node, client,
    admin, observer), the name and, for nodes, the region. See docs/security.md.
    """


@certs.command()
@click.option("--dir", "ca_dir", default=None, help=DIR_HELP)
@click.option("--name", default="dask-grid", show_default=True, help="The grid's name, recorded in every certificate.")
@click.option("--days", default=None, type=click.IntRange(min=1), help="CA lifetime in days (default: grid.security.days.ca, 1825).")
def init(ca_dir: str | None, name: str, days: int | None) -> None:
    """Create the grid CA (ECDSA P-256) and an empty revocation list."""
    directory = _dir(ca_dir)
    try:
        ca = authority.init_ca(directory, name=name, days=days)
    except (FileExistsError, *_ERRORS) as exc:
        raise _fail(exc) from None
    click.echo(f"created grid CA {ca.name!r} in {ca.directory} (valid until {format_utc(ca.not_after)})")
    width = len(str(ca.key_path))
    click.echo(f"  {str(ca.cert_path):<{width}}  give to every scheduler, node and client")
    click.echo(f"  {str(ca.key_path):<{width}}  keep secret; it never leaves this directory")
    click.echo(f"  {str(ca.crl_path):<{width}}  revocation list; give to every scheduler")
    click.echo(f"next: grid certs issue scheduler NAME --region REGION --host HOST --dir {ca.directory}")


@certs.command()
@click.argument("role", type=click.Choice(list(ROLES)))
@click.argument("name")
@click.option("--dir", "ca_dir", default=None, help=DIR_HELP)
@click.option("--region", default=None, help="Region of a node (required) or scheduler (optional).")
@click.option("--host", "hosts", multiple=True, help="DNS name or IP address of a scheduler or node; repeat for several.")
@click.option(
    "--localhost/--no-localhost",
    "include_localhost",
    default=None,
    help="Add localhost, 127.0.0.1 and ::1 (default: on for schedulers, off otherwise).",
)
@click.option("--days", default=None, type=click.IntRange(min=1), help="Lifetime in days (default: grid.security.days.<role>).")
@click.option("--out", default=None, help="Output directory (default: <CA dir>/<role>/<name>).")
@click.option(
    "--owner", default=None,
    help="Nodes: who runs the node. A volunteer's nodes share one owner and count once in a verify quorum.",
)
def issue(
    role: str,
    name: str,
    ca_dir: str | None,
    region: str | None,
    hosts: tuple[str, ...],
    include_localhost: bool | None,
    days: int | None,
    out: str | None,
    owner: str | None,
) -> None:
    """Issue a certificate for ROLE (scheduler, node, client, admin, observer) named NAME.

    An observer certificate is for the operators' dashboard: it sees every job
    and node of the grid and can change nothing.
    """
    try:
        issued = authority.issue(
            _dir(ca_dir),
            role,
            name,
            region=region,
            hosts=hosts,
            include_localhost=include_localhost,
            days=days,
            out=os.path.expanduser(out) if out else None,
            owner=owner,
        )
    except _ERRORS as exc:
        raise _fail(exc) from None
    ident = issued.identity
    assert ident.not_after is not None
    click.echo(f"issued {ident} serial {ident.serial_hex}, valid until {format_utc(ident.not_after)}")
    if issued.hosts:
        click.echo(f"  hosts: {', '.join(issued.hosts)}")
    click.echo(f"  certificate: {issued.cert_path}")
    click.echo(f"  key:         {issued.key_path}   (mode 0600; keep secret)")
    click.echo(f"  CA:          {issued.ca_path}")


@certs.command()
@click.argument("name_or_serial")
@click.option("--dir", "ca_dir", default=None, help=DIR_HELP)
@click.option("--role", default=None, type=click.Choice(list(ROLES)), help="Only certificates of this role.")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    type=click.Choice(list(revocation.REVOCATION_REASONS)),
    help="Why (superseded after a rotation, key-compromise after a leak, ...).",
)
def revoke(name_or_serial: str, ca_dir: str | None, role: str | None, reason: str) -> None:
    """Revoke every certificate named NAME_OR_SERIAL, or the one with that serial (hex).

    Then copy the CA's crl.pem to every scheduler.
    """
    directory = _dir(ca_dir)
    try:
        done = revocation.revoke(directory, name_or_serial, role=role, reason=reason)
    except _ERRORS as exc:
        raise _fail(exc) from None
    if not done:
        click.echo(f"{name_or_serial}: already revoked; nothing to do")
        return
    for ident in done:
        click.echo(f"revoked {ident} serial {ident.serial_hex}")
    click.echo(f"copy {directory / CRL_FILE} to every scheduler")


@certs.command("list")
@click.option("--dir", "ca_dir", default=None, help=DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(ca_dir: str | None, as_json: bool) -> None:
    """Every certificate issued from the CA, with its status."""
    directory = _dir(ca_dir)
    try:
        ca = authority.load_ca(directory, need_key=False)
        rows = revocation.list_certificates(ca)
        next_update = revocation.crl_next_update(ca)
    except _ERRORS as exc:
        raise _fail(exc) from None
    if as_json:
        out: dict[str, Any] = {
            "ca": str(ca.cert_path),
            "ca_not_after": ca.not_after.isoformat(),
            "crl_next_update": next_update.isoformat() if next_update else None,
            "certificates": [r.to_dict() for r in rows],
        }
        click.echo(json.dumps(out, indent=2))
        return
    crl = format_utc(next_update) if next_update else "missing"
    click.echo(f"CA {ca.name!r} {ca.cert_path}  valid until {format_utc(ca.not_after)}  CRL due {crl}")
    click.echo(f"{'role':<10} {'name':<24} {'region':<10} {'status':<14} {'valid until':<21} serial")
    for r in rows:
        i = r.identity
        until = format_utc(i.not_after) if i.not_after else ""
        click.echo(f"{i.role:<10} {i.name:<24} {i.region or '-':<10} {r.status:<14} {until:<21} {i.serial_hex}")


@certs.command()
@click.option("--dir", "ca_dir", default=None, help=DIR_HELP)
@click.option("--days", default=None, type=click.IntRange(min=1), help="Days until the next update (default: grid.security.crl-days, 90).")
@click.option("--empty", is_flag=True, help="Start an empty list if crl.pem is missing (it is written by init).")
def crl(ca_dir: str | None, days: int | None, empty: bool) -> None:
    """Sign the revocation list again with fresh dates; copy it to every scheduler."""
    try:
        path = revocation.write_crl(_dir(ca_dir), days=days, empty=empty)
        revoked = load_revoked(path)
        next_update = revocation.crl_next_update(path.parent)
    except _ERRORS as exc:
        raise _fail(exc) from None
    due = format_utc(next_update) if next_update else "?"
    click.echo(f"wrote {path}: {len(revoked)} revoked certificate(s), next update due {due}")
