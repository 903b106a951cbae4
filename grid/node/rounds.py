"""Round requests on a node: one call per node per round, no task graph.

A round of an ``average`` job runs one local update per partition. As Dask
tasks that costs a graph submission, a task per partition through the
scheduler's state machine, and a fetch per result. A node that already holds
the partitions needs none of it: :class:`NodeRounds` is a worker plugin that
adds one handler, ``grid_update``, to the node. The region's scheduler calls
it once per node per round with the job request, the global state (one copy
per node, not one per task) and the partitions that node should update; the
node runs :func:`grid.node.tasks.partition_update` on each of them in its
worker threads and answers with the wire blobs.

The node only ever reads partitions it already holds (``worker.data``) and
runs the grid's own update function, so the handler adds no way to run code
on a community node. A node without the handler (a stock ``dask worker``) or
one that is paused answers so, and the scheduler falls back to a task for
those partitions (``grid/scheduler/attempts.py``).

Installed on every ``grid node`` and on the nodes of ``Grid.local``; the
scheduler also registers it on nodes that accept worker plugins, and
``dask worker --preload grid.node.rounds`` installs it on a stock worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from grid.node import tasks
from grid.node.community import TRUSTED_ROLES, is_tls_peer, peer_role

logger = logging.getLogger("grid.node")

#: the worker handler the scheduler calls
OP = "grid_update"
#: the name the plugin is registered under
PLUGIN_NAME = "grid-node-rounds"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _update_as_worker(worker: Any, *args: Any) -> bytes:
    """:func:`grid.node.tasks.partition_update` in a worker thread, with ``get_worker()``
    answering ``worker`` as it does inside a task (several workers may share a process)."""
    try:
        from distributed.worker import _worker_cvar
    except ImportError:  # pragma: no cover - a distributed without it: get_worker() is then unset here
        return tasks.partition_update(*args)
    token = _worker_cvar.set(worker)
    try:
        return tasks.partition_update(*args)
    finally:
        _worker_cvar.reset(token)


async def update_partitions(
    worker: Any, request: dict, state: bytes | None, round_no: int, parts: list
) -> dict:
    """Update the partitions ``parts`` (``[key, index]`` pairs) from ``state``.

    Returns
    -------
    dict
        ``status`` ``"OK"`` with ``updates`` (``[index, blob]`` pairs, in the
        order of ``parts``), ``missing`` (indices of partitions this node does
        not hold), ``errors`` (``[index, text]`` of updates that raised) and
        ``invalid`` (``[index, text]`` of updates that were not wire bytes);
        or ``status`` ``"paused"`` when the node is paused (idle-only nodes)
        and runs nothing now.
    """
    if worker.status.name != "running":
        return {"status": "paused", "updates": [], "missing": [], "errors": []}
    loop = asyncio.get_running_loop()
    executor = worker.executors["default"]  # the node's worker threads: tasks and rounds share them
    data = worker.data
    held, missing = [], []
    for key, index in parts:
        if key in data:
            held.append((int(index), data[key]))
        else:
            missing.append(int(index))  # moved off meanwhile: the scheduler issues it elsewhere
    calls = [
        loop.run_in_executor(executor, _update_as_worker, worker, request, state, partition, round_no, index)
        for index, partition in held
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    updates, errors, invalid = [], [], []
    for (index, _), outcome in zip(held, outcomes):
        if isinstance(outcome, BaseException):
            errors.append([index, _error_text(outcome)])
        elif isinstance(outcome, bytes):
            updates.append([index, outcome])
        else:
            # never put anything but bytes in the reply: distributed pickles what msgpack cannot
            # encode, and the scheduler would unpickle it (docs/security.md, residual risk)
            invalid.append([index, f"the update of partition {index} is a {type(outcome).__name__}, not wire bytes"])
    return {"status": "OK", "updates": updates, "missing": missing, "errors": errors, "invalid": invalid}


class NodeRounds(WorkerPlugin):
    """Serve the scheduler's per-node round requests (``grid_update``)."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        async def grid_update(comm: Any, request: dict, state: bytes | None, round_no: int, parts: list) -> dict:
            # on TLS only the region's scheduler (or an admin) may spend this node's CPU; a
            # plaintext grid authenticates nobody, as for Dask's own get_data
            if is_tls_peer(comm) and peer_role(comm) not in TRUSTED_ROLES:
                raise PermissionError(
                    f"node {worker.name!r} takes round requests only from its scheduler (role 'scheduler' "
                    "or 'admin'); submit training through Grid.submit"
                )
            return await update_partitions(worker, request, state, round_no, parts)

        worker.handlers[OP] = grid_update

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop(OP, None)


def dask_setup(worker: Any) -> None:
    """``dask worker --preload grid.node.rounds``: serve round requests on a stock worker."""
    NodeRounds().setup(worker)
