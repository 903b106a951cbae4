"""Helpers for the churn and soak tests: kill real nodes, start new ones, watch replicas."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL a `grid node` (its nanny and worker: the process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def rounds_done(job: Any) -> int:
    """Rounds the job finished so far (asks its home scheduler, without the history)."""
    return int(job._call("grid_job", history=False)["job"]["rounds_done"])


def node_names(grid: Any, region: str) -> set[str]:
    return {w["name"] for w in grid.status()[region]["workers"]}


def replicas_complete(grid: Any, region: str, replicas: int = 2) -> bool:
    """Every partition of every dataset of the region is on ``min(replicas, running nodes)`` nodes."""

    # defined here so cloudpickle ships it by value to the scheduler process
    def check(dask_scheduler: Any, replicas: int) -> bool:
        plugin = dask_scheduler.plugins["grid"]
        want = min(replicas, len(dask_scheduler.running))
        for dataset in list(plugin.datasets.store.datasets.values()):
            for key in dataset.keys:
                ts = dask_scheduler.tasks.get(key)
                if ts is None or len(ts.who_has or ()) < want:
                    return False
        return True

    return bool(grid.client(region).run_on_scheduler(check, replicas=replicas))


def tasks_done_by(grid: Any, region: str) -> dict[str, int]:
    """Grid tasks each node of the region finished (any job), by node name."""
    return {w["name"]: w["tasks_done"] for w in grid.status()[region]["workers"]}
