"""The grid page (``/grid``) on a scheduler's own Dask dashboard, as a scheduler plugin of its own.

Installed next to the grid plugin by ``grid scheduler`` and ``Grid.local``
(:func:`scheduler_plugins`), and only where Bokeh is importable, so that no
module of the scheduler side imports the dashboard: a scheduler without
Bokeh still runs jobs, it just has no ``/grid`` page.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("grid.dashboard")


class GridPage(SchedulerPlugin):
    """Serve ``/grid`` on the scheduler's dashboard while the scheduler runs.

    Parameters
    ----------
    region : str
        The scheduler's region.
    """

    name = "grid-page"

    def __init__(self, region: str) -> None:
        self.region = region
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        from grid.dashboard.app import register_scheduler_page

        self.scheduler = scheduler
        # after the grid plugin's start: the page reads this region through its handlers
        register_scheduler_page(scheduler, region=self.region)

    async def close(self) -> None:
        from grid.dashboard.app import unregister_scheduler_page

        if self.scheduler is not None:
            unregister_scheduler_page(self.scheduler)


def scheduler_plugins(region: str) -> list[SchedulerPlugin]:
    """The grid's scheduler plugins for ``region``: the runtime, then the page where Bokeh is."""
    from grid.scheduler.plugin import GridSchedulerPlugin

    plugins: list[SchedulerPlugin] = [GridSchedulerPlugin(region=region)]
    if importlib.util.find_spec("bokeh") is not None:
        plugins.append(GridPage(region))
    else:
        logger.info("bokeh is not installed: region %s serves no /grid page", region)
    return plugins
