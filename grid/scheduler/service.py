"""``grid scheduler``: a Dask scheduler carrying the grid plugin, until signalled."""

from __future__ import annotations

import logging
from typing import Any

from distributed import Scheduler

from grid import config
from grid.scheduler.plugin import GridSchedulerPlugin
from grid.signals import serve_until_signal

logger = logging.getLogger("grid.scheduler")


async def run_scheduler(
    region: str,
    *,
    host: str | None = None,
    port: int = 8786,
    dashboard_address: str | None = ":8787",
    security: Any = None,
    protocol: str | None = None,
    ready: Any = None,
    plugins: list | None = None,
) -> None:
    """Serve one region until SIGTERM/SIGINT.

    ``plugins``: the scheduler plugins to install (default: the grid plugin of
    ``region``); ``grid scheduler`` adds the dashboard's ``/grid`` page
    (:func:`grid.dashboard.page.scheduler_plugins`)."""
    with config.scheduler_settings():
        scheduler = Scheduler(
            host=host,
            port=port,
            dashboard_address=dashboard_address,
            dashboard=dashboard_address is not None,
            security=security,
            protocol=protocol,
            plugins=plugins if plugins is not None else [GridSchedulerPlugin(region=region)],
        )
    await scheduler
    logger.info("grid scheduler for region %s at %s", region, scheduler.address)
    await serve_until_signal(scheduler, ready)
    await scheduler.close(reason="grid-scheduler-stopped")
