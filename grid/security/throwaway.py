"""Throw-away grids: a CA and every certificate a local TLS grid needs, for tests and ``Grid.local(tls=True)``.

Nothing here runs on a real grid: operators create their CA with ``grid certs
init`` (:mod:`grid.security.certs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grid.security.authority import CA, LOCALHOST, IssuedCert, init_ca, issue


@dataclass(frozen=True)
class ThrowawayGrid:
    """The CA and certificates of a local TLS grid (see :func:`make_throwaway_grid`).

    Attributes
    ----------
    ca : CA
    schedulers : dict of str to IssuedCert
        One scheduler certificate per region (name ``scheduler-<region>``).
    nodes : dict of str to list of IssuedCert
        Node certificates per region (names ``node-<region>-<i>``).
    client : IssuedCert
        A data scientist's certificate (name ``client``).
    admin : IssuedCert
        An operator's certificate (name ``admin``).
    observer : IssuedCert or None
        A dashboard's read-only certificate (name ``observer``).
    """

    ca: CA
    schedulers: dict[str, IssuedCert]
    nodes: dict[str, list[IssuedCert]]
    client: IssuedCert
    admin: IssuedCert
    observer: IssuedCert | None = None

    @property
    def ca_file(self) -> Path:
        """``ca.pem``."""
        return self.ca.cert_path

    @property
    def crl_file(self) -> Path:
        """``crl.pem``."""
        return self.ca.crl_path

    def security(self, region: str, *, node: int = 0, client: str = "admin", **kwargs: Any) -> Any:
        """A ``Security`` with this region's scheduler, one node and a client certificate.

        Handy for a ``LocalCluster`` of one region, which uses one
        ``Security`` for its scheduler, its workers and its client.

        Parameters
        ----------
        region : str
        node : int
            Which of the region's node certificates fills the worker slot.
        client : {"admin", "client", "observer"}
            Which certificate fills the client slot.
        **kwargs
            More ``Security`` arguments.

        Returns
        -------
        distributed.security.Security
        """
        from distributed.security import Security

        if region not in self.schedulers:
            raise KeyError(f"no region {region!r} in this throw-away grid; it has {', '.join(self.schedulers)}")
        who = {"admin": self.admin, "client": self.client, "observer": self.observer}.get(client)
        if who is None:
            raise KeyError(f"no {client!r} certificate in this throw-away grid; choose 'admin', 'client' or 'observer'")
        sched, worker = self.schedulers[region], self.nodes[region][node]
        args: dict[str, Any] = {
            "tls_ca_file": str(self.ca_file),
            "tls_scheduler_cert": str(sched.cert_path),
            "tls_scheduler_key": str(sched.key_path),
            "tls_worker_cert": str(worker.cert_path),
            "tls_worker_key": str(worker.key_path),
            "tls_client_cert": str(who.cert_path),
            "tls_client_key": str(who.key_path),
            "require_encryption": True,
        }
        args.update(kwargs)
        return Security(**args)


def make_throwaway_grid(
    tmpdir: str | os.PathLike[str],
    regions: Iterable[str] | Mapping[str, int],
    *,
    name: str = "throwaway-grid",
    days: int = 7,
) -> ThrowawayGrid:
    """Create a CA and every certificate a local TLS grid needs.

    Parameters
    ----------
    tmpdir : path
        An empty (or new) directory; the CA goes to ``<tmpdir>/ca`` and the
        certificates below it.
    regions : iterable of str, or mapping of str to int
        Region names, or region name to number of nodes (one node
        certificate per node; at least one per region).
    name : str
        The grid's name in the certificates.
    days : int
        Lifetime of the CA and of every certificate.

    Returns
    -------
    ThrowawayGrid
    """
    counts = dict(regions) if isinstance(regions, Mapping) else {r: 1 for r in regions}
    if not counts:
        raise ValueError("make_throwaway_grid needs at least one region")
    ca = init_ca(Path(tmpdir) / "ca", name=name, days=days + 1)  # outlives its certificates
    schedulers = {}
    nodes: dict[str, list[IssuedCert]] = {}
    for region, n in counts.items():
        schedulers[region] = issue(ca, "scheduler", f"scheduler-{region}", region=region, days=days)
        nodes[region] = [
            issue(ca, "node", f"node-{region}-{i}", region=region, hosts=LOCALHOST, days=days)
            for i in range(max(1, int(n)))
        ]
    client = issue(ca, "client", "client", days=days)
    admin = issue(ca, "admin", "admin", days=days)
    observer = issue(ca, "observer", "observer", days=days)
    return ThrowawayGrid(ca, schedulers, nodes, client, admin, observer)
