"""The TLS options of the ``grid`` commands that run a grid process, and the ``Security`` they make.

``grid scheduler`` (:mod:`grid.cli`) and ``grid node`` (:mod:`grid.cli_node`)
take the files ``grid certs issue`` writes.
"""

from __future__ import annotations

from typing import Any

import click


def tls_options(fn: Any) -> Any:
    """--tls-ca-file/--tls-cert/--tls-key, as `grid certs issue` writes them."""
    fn = click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="This process's private key (PEM).")(fn)
    fn = click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False), help="This process's certificate (PEM) from `grid certs issue`.")(fn)
    fn = click.option("--tls-ca-file", default=None, type=click.Path(exists=True, dir_okay=False), help="The grid CA certificate; enables mutual TLS.")(fn)
    return fn


def security_from_options(role: str, ca: str | None, cert: str | None, key: str | None) -> Any:
    """A distributed Security presenting one certificate in the slots ``role`` needs."""
    given = [x is not None for x in (ca, cert, key)]
    if not any(given):
        return None
    if not all(given):
        raise click.UsageError("TLS needs all three of --tls-ca-file, --tls-cert and --tls-key")
    from grid.security.identity import security_for

    return security_for(role, ca, cert, key)
