"""The embedded grid: one ``LocalCluster`` of worker processes per region."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import dask.config
from distributed import LocalCluster

from grid import config
from grid.node.rounds import STARTUP_INFORMATION, NodeRounds
from grid.dashboard.page import scheduler_plugins
from grid import names
from grid.spec import GridSpec, RegionSpec, TLSSpec


def check_regions(regions: Mapping[str, int]) -> dict[str, int]:
    """Validate ``{region: nodes}`` with errors that say what is allowed."""
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"regions must be a non-empty dict of region name to node count, got {regions!r}")
    out = {}
    for name, n in regions.items():
        if not names.is_region(name):
            raise ValueError(
                f"region name {name!r} is not allowed; use lowercase letters, digits and '-', "
                "starting with a letter"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"regions[{name!r}] must be a node count >= 0, got {n!r}")
        out[name] = n
    return out


class LocalGrid:
    """Schedulers (each with the grid plugin) and nodes of an embedded grid."""

    def __init__(
        self,
        regions: Mapping[str, int],
        *,
        threads_per_node: int | None = None,
        memory_limit: str | None = None,
        dashboard: bool | None = None,
        host: str = "127.0.0.1",
        processes: bool = True,
        tls: bool = False,
    ) -> None:
        regions = check_regions(regions)
        self.throwaway: Any = None  # the CA and certificates of a TLS local grid
        self._tmpdir: str | None = None
        tls_spec = None
        if tls:
            from grid.security.throwaway import make_throwaway_grid

            self._tmpdir = tempfile.mkdtemp(prefix="dask-grid-tls-")
            self.throwaway = make_throwaway_grid(self._tmpdir, {r: max(1, n) for r, n in regions.items()})
            client = self.throwaway.client
            tls_spec = TLSSpec(ca_file=str(self.throwaway.ca_file), cert=str(client.cert_path), key=str(client.key_path))
        threads = threads_per_node or int(config.get("local.threads-per-node"))
        memory = memory_limit or config.get("local.memory-limit")
        dashboard = config.get("local.dashboard") if dashboard is None else dashboard
        self.clusters: dict[str, LocalCluster] = {}
        try:
            for name, n in regions.items():
                crl = {"grid.scheduler.crl-file": str(self.throwaway.crl_file)} if tls else {}
                with config.scheduler_settings(), dask.config.set(crl):
                    security = self.throwaway.security(name, client="admin") if tls else None
                    self.clusters[name] = self._cluster(name, n, threads, memory, dashboard, host, processes, security)
        except BaseException:
            self.close()
            raise
        # each scheduler dials the other regions of this grid, and only those (grid.scheduler.region_share.RegionShare.peer_address)
        for name, cluster in self.clusters.items():
            plugin = cluster.scheduler.plugins.get("grid")
            if plugin is not None:
                plugin.region_share.peers.update({r: c.scheduler_address for r, c in self.clusters.items() if r != name})
                plugin.ledger.verify_independence = "nodes"  # every node runs on this machine, under one owner
        self.spec = GridSpec(
            regions={name: RegionSpec(name=name, address=c.scheduler_address) for name, c in self.clusters.items()},
            tls=tls_spec,
            source="<local>",
        )

    @staticmethod
    def _cluster(
        name: str, n: int, threads: int, memory: Any, dashboard: bool, host: str, processes: bool, security: Any
    ) -> LocalCluster:
        return LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=processes,
            protocol="tls://" if security else "tcp://",  # real sockets, also for threaded nodes
            security=security,
            memory_limit=memory,
            host=host,
            # ":0": a free port (the scheduler serves /health and /metrics there too)
            dashboard_address=":0",
            scheduler_kwargs={"plugins": scheduler_plugins(name), "dashboard": bool(dashboard)},
            plugins={NodeRounds()},  # each node serves round requests from its start (grid/node/rounds.py)
            startup_information=STARTUP_INFORMATION,  # registers as a grid node (grid.node.dial-out)
            silence_logs=logging.ERROR,
        )

    def scale(self, region: str, n: int) -> None:
        self.clusters[region].scale(n)

    def close(self) -> None:
        for cluster in self.clusters.values():
            try:
                cluster.close()
            except Exception:  # noqa: BLE001 - close the rest
                logging.getLogger("grid.local").debug("error closing cluster", exc_info=True)
        self.clusters = {}
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "LocalGrid":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
