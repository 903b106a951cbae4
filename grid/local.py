"""The embedded grid: one ``LocalCluster`` of worker processes per region."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from distributed import LocalCluster

from grid import config
from grid.scheduler.plugin import GridSchedulerPlugin
from grid.spec import GridSpec, RegionSpec, REGION_NAME


def check_regions(regions: Mapping[str, int]) -> dict[str, int]:
    """Validate ``{region: nodes}`` with errors that say what is allowed."""
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"regions must be a non-empty dict of region name to node count, got {regions!r}")
    out = {}
    for name, n in regions.items():
        if not isinstance(name, str) or not REGION_NAME.match(name):
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
    ) -> None:
        regions = check_regions(regions)
        threads = threads_per_node or int(config.get("local.threads-per-node"))
        memory = memory_limit or config.get("local.memory-limit")
        dashboard = config.get("local.dashboard") if dashboard is None else dashboard
        self.clusters: dict[str, LocalCluster] = {}
        try:
            for name, n in regions.items():
                with config.scheduler_settings():
                    self.clusters[name] = self._cluster(name, n, threads, memory, dashboard, host, processes)
        except BaseException:
            self.close()
            raise
        self.spec = GridSpec(
            regions={name: RegionSpec(name=name, address=c.scheduler_address) for name, c in self.clusters.items()},
            source="<local>",
        )

    @staticmethod
    def _cluster(name: str, n: int, threads: int, memory: Any, dashboard: bool, host: str, processes: bool) -> LocalCluster:
        return LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=processes,
            protocol="tcp://",  # real sockets, also for threaded nodes
            memory_limit=memory,
            host=host,
            # ":0": a free port (the scheduler serves /health and /metrics there too)
            dashboard_address=":0",
            scheduler_kwargs={"plugins": [GridSchedulerPlugin(region=name)], "dashboard": bool(dashboard)},
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

    def __enter__(self) -> "LocalGrid":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
