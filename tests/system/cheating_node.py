"""``grid node --preload`` file of a cheating volunteer, for tests only.

Every partition update this node computes, whether the scheduler asks for it
directly or as a task, comes back with its float arrays shifted by +1: a
well-formed, plausible, wrong update. Two nodes started with it return the
same wrong update, as colluding nodes would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grid import wire
from grid.node import tasks


def dask_setup(worker: Any) -> None:
    honest = tasks.partition_update

    def partition_update(*args: Any, **kwargs: Any) -> bytes:
        arrays, meta = wire.decode(honest(*args, **kwargs))
        return wire.encode({k: v + 1.0 if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}, meta)

    tasks.partition_update = partition_update
