"""dask-grid: a batch compute grid on Dask.

>>> from grid import Grid
>>> with Grid.local(regions={"eu": 1, "us": 1}) as g:   # doctest: +SKIP
...     job = g.submit(PartialFit(SGDClassifier()), X, y)
"""

from grid import config  # noqa: F401  (registers the grid defaults with dask.config)
from grid import protocol

# tls:// comms of this process read untrusted peers through the grid's checks (grid/protocol)
protocol.install()
from grid.client import Grid, current_grid
from grid.errors import GridConnectionError, GridWarning, JobCancelled, JobFailed, RemoteError, UnknownRegion
from grid.job import Job
from grid.placement import PlacedData

__all__ = [
    "Grid",
    "Job",
    "PlacedData",
    "current_grid",
    "GridConnectionError",
    "UnknownRegion",
    "JobFailed",
    "JobCancelled",
    "RemoteError",
    "GridWarning",
]
