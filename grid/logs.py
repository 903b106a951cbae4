"""The grid's log output: what the ``grid`` commands print, and keeping distributed quiet.

:func:`setup_logging` is how ``grid scheduler`` and ``grid node`` log;
:func:`quiet_distributed` raises the level of distributed's loggers, for
output that is a report rather than a log (``grid demo``, the benchmarks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

#: distributed's package logger and the loggers of its busiest modules: those
#: distributed's own config may give a level of their own (so setting the package's is not enough)
DISTRIBUTED_LOGGERS: tuple[str, ...] = (
    "distributed", "distributed.scheduler", "distributed.worker", "distributed.core",
    "distributed.nanny", "distributed.client", "distributed.comm", "distributed.batched",
)


def setup_logging(level: str = "INFO") -> None:
    """Log records of every logger to stderr at ``level``, with time and logger name."""
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s")


def quiet_distributed(level: int = logging.ERROR, names: Iterable[str] = DISTRIBUTED_LOGGERS) -> dict[str, int]:
    """Set the loggers ``names`` (default: distributed's) to ``level``.

    distributed sets its loggers' levels from dask's config when it is first
    imported, which would undo an earlier call: this function imports it first.

    Parameters
    ----------
    level : int, default=logging.ERROR
        The new level; records below it are dropped.
    names : iterable of str, default=DISTRIBUTED_LOGGERS
        The loggers to set.

    Returns
    -------
    dict
        The previous level of each logger, to put back with
        ``logging.getLogger(name).setLevel(previous)``.
    """
    import distributed  # noqa: F401  (sets its levels once; after this, ours stay)

    previous: dict[str, int] = {}
    for name in names:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.setLevel(level)
    return previous
