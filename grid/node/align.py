"""Aligned partitions on the nodes.

Partitions that reach a node through Dask's comms (``Grid.scatter``, or a
replica copied from another node) are numpy arrays viewing the received
buffer at whatever offset their frame had, often not a multiple of 8: such
arrays are *unaligned*, and numpy's row gathers, the core of every minibatch,
run an order of magnitude slower on them (measured: ~15-50x). Copying the
partition once when it arrives costs one pass over it; re-aligning inside the
update task instead would cost that pass in every round.

:class:`AlignPartitions` is a worker plugin the grid's scheduler plugin
registers on every node of its region (``Scheduler.register_worker_plugin``,
so nodes that join later get it too). It only ever replaces a grid partition
held by the node with an aligned copy of the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from grid.keys import is_partition

#: the name the plugin is registered under
PLUGIN_NAME = "grid-align-partitions"


def aligned(value: Any) -> Any:
    """``value`` (an array or a tuple of arrays) with every unaligned ndarray copied to aligned memory."""
    if isinstance(value, np.ndarray) and not value.flags.aligned:
        return np.require(value, requirements="CA")
    if isinstance(value, tuple) and any(isinstance(v, np.ndarray) and not v.flags.aligned for v in value):
        return tuple(aligned(v) for v in value)
    return value


class AlignPartitions(WorkerPlugin):
    """Copy each grid partition that arrives unaligned into aligned memory, once."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "memory" or not is_partition(key):
            return
        data = self.worker.data
        if key in getattr(data, "fast", data):  # never unspill a partition from disk just to look at it
            value = data[key]
            fixed = aligned(value)
            if fixed is not value:
                data[key] = fixed
