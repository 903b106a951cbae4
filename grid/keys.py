"""Names of the grid's Dask keys, shared by the client, the scheduler and the nodes.

A data partition is the Dask key ``grid-part-{dataset}-{index}``; every grid
task key starts with ``grid-``. The replica policy, the nodes' alignment and
the scheduler's bookkeeping recognise partitions by this prefix, so it is
spelled here once. Partition keys are unguessable because dataset names are
(128 random bits, :func:`grid.placement.dataset_name`): on a TLS grid the
scheduler also records which certificate scattered each key and refuses a
dataset made of someone else's (``grid.scheduler.access``).
"""

from __future__ import annotations

from typing import Any

#: key prefix of every grid data partition
PARTITION_PREFIX = "grid-part-"
#: key prefix of every grid key (partitions and tasks)
GRID_PREFIX = "grid-"


def partition_key(dataset: str, index: int) -> str:
    """The Dask key of partition ``index`` of ``dataset``."""
    return f"{PARTITION_PREFIX}{dataset}-{index}"


def is_partition(key: Any) -> bool:
    """Whether ``key`` names a grid data partition."""
    return isinstance(key, str) and key.startswith(PARTITION_PREFIX)
