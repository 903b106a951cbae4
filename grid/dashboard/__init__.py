"""The grid dashboard: Bokeh components, the ``grid dashboard`` server and a scheduler's ``/grid`` page.

It reads only what the regional schedulers report through the grid's RPC
handlers (``grid_info``, ``grid_jobs``, ``grid_job``); see
``docs/dashboard.md``.
"""

from grid.dashboard.components import (
    GridComponent,
    GridHeader,
    JobProgress,
    JobsTable,
    NodesTable,
    RegionsTable,
    grid_layout,
    make_components,
)
from grid.dashboard.views import GridClientView, GridRPCView, GridView, Selection

__all__ = [
    "GridView",
    "GridClientView",
    "GridRPCView",
    "Selection",
    "GridComponent",
    "GridHeader",
    "RegionsTable",
    "NodesTable",
    "JobsTable",
    "JobProgress",
    "make_components",
    "grid_layout",
    "register_scheduler_page",
    "unregister_scheduler_page",
]


def __getattr__(name: str):  # lazy: the Bokeh server and click load only when asked for
    if name in ("register_scheduler_page", "unregister_scheduler_page"):
        from grid.dashboard import app

        return getattr(app, name)
    raise AttributeError(name)
