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

A **dial-out** node (``grid node --dial-out``: behind NAT or a firewall) is
never dialed. Once it has registered, its scheduler offers it a *grid
channel* on its worker stream; the node opens that connection itself and the
same request reaches it there (``grid-call``, :mod:`grid.protocol.nodes`),
and the answer goes back on it. A channel that breaks while the node is
running is opened again. Such a node holds no Dask data of the grid's: the
call names, for each partition it should update and does not hold yet, a
token with which the node reads the partition from the region's store over a
connection it opens itself (``grid_store_read``); it keeps what it read for
later rounds until the scheduler says the dataset is gone (``grid-drop``).

Installed on every ``grid node`` and on the nodes of ``Grid.local``; the
scheduler also registers it on nodes that accept worker plugins, and
``dask worker --preload grid.node.rounds`` installs it on a stock worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.serialize import merge_and_deserialize
from distributed.worker import WORKER_ANY_RUNNING

from grid import config
from grid.node import tasks
from grid.node.align import aligned
from grid.node.community import TRUSTED_ROLES, is_tls_peer, peer_role
from grid.protocol.payload import check_payload
from grid.protocol.nodes import (
    CALL_KINDS,
    CALL_OP,
    CHANNEL_OFFER_OP,
    CHANNEL_OP,
    DROP_OP,
    REPLY_OP,
    STORE_READ_OP,
    UPDATE_OP,
    node_profile,
    split_partition,
)

logger = logging.getLogger("grid.node")

#: how long a dial-out node waits before opening a broken grid channel again, at first and at most
CHANNEL_RETRY_FIRST, CHANNEL_RETRY_MAX = 0.2, 5.0

#: the worker handler the scheduler calls (open nodes)
OP = UPDATE_OP
#: the name the plugin is registered under
PLUGIN_NAME = "grid-node-rounds"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_worker(worker: Any, function: Any, *args: Any) -> Any:
    """``function(*args)`` in a worker thread, with ``get_worker()`` answering ``worker`` as it
    does inside a task (several workers may share a process)."""
    try:
        from distributed.worker import _worker_cvar
    except ImportError:  # pragma: no cover - a distributed without it: get_worker() is then unset here
        return function(*args)
    token = _worker_cvar.set(worker)
    try:
        return function(*args)
    finally:
        _worker_cvar.reset(token)


def profile(worker: Any) -> dict:
    """The grid profile a node registers with (``startup_information``): whether it dials out.

    ``grid.node.dial-out`` is resolved by ``grid node`` before the worker starts
    (on for community nodes of TLS grids); unset means a private node."""
    return node_profile(bool(config.get("node.dial-out")))


#: the Worker keyword that sends the profile with the node's registration
STARTUP_INFORMATION = {"grid": profile}


async def update_partitions(
    worker: Any, request: dict, state: bytes | None, round_no: int, parts: list, stored: Any = None
) -> dict:
    """Update the partitions ``parts`` (``[key, index]`` pairs) from ``state``.

    ``stored`` maps keys to partitions the node read from its region's store
    (dial-out nodes); they are looked for after the worker's own data.

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
    stored = stored if stored is not None else {}
    held, missing = [], []
    for key, index, *_ in parts:
        if key in data:
            held.append((int(index), data[key]))
        elif key in stored:
            held.append((int(index), stored[key]))
        else:
            missing.append(int(index))  # moved off meanwhile: the scheduler issues it elsewhere
    calls = [
        loop.run_in_executor(executor, _as_worker, worker, tasks.partition_update, request, state, partition, round_no, index)
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

    def __init__(self) -> None:
        #: partitions read from the region's store (dial-out nodes): key -> partition
        self.stored: dict[str, Any] = {}
        self._fetching: dict[str, asyncio.Future] = {}
        self._calls: set[asyncio.Task] = set()
        self._channel_task: asyncio.Task | None = None
        self._channel: Any = None  # the open grid channel (dial-out nodes)
        self._channel_lock: asyncio.Lock | None = None

    def setup(self, worker: Any) -> None:
        self.worker = worker

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
        worker.stream_handlers[CHANNEL_OFFER_OP] = self._on_offer

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop(OP, None)
        # an offer may still come on the stream (the plugin goes before the node does): an
        # operation without a handler would close the node's connection to its scheduler
        worker.stream_handlers[CHANNEL_OFFER_OP] = lambda **_: None
        for task in [*self._calls, *([self._channel_task] if self._channel_task else [])]:
            task.cancel()
        if self._channel is not None:
            self._channel.abort()  # the scheduler fails the calls pending on it: they go elsewhere
        self.stored.clear()

    # --- the grid channel (dial-out nodes) -----------------------------------------------------
    def _on_offer(self, token: str, **_: Any) -> None:
        if self._channel_task is not None:
            self._channel_task.cancel()  # a new registration's offer replaces the old one
        self._channel_task = asyncio.ensure_future(self._keep_channel(token))

    def _serving(self) -> bool:
        stream = self.worker.batched_stream
        return self.worker.status in WORKER_ANY_RUNNING and stream is not None and not stream.closed()

    async def _keep_channel(self, token: str) -> None:
        """Open the grid channel the scheduler offered, serve its calls, and open it again if it
        breaks while this node is still registered (its worker stream is open)."""
        retry = CHANNEL_RETRY_FIRST
        while self._serving():
            try:
                comm = await connect(self.worker.scheduler.address, **self.worker.connection_args)
            except (OSError, asyncio.TimeoutError) as exc:
                logger.warning("node %s could not open its grid channel: %s", self.worker.address, exc)
            else:
                try:
                    if not await self._serve_channel(comm, token):
                        return  # refused: this token is no longer the node's
                except (CommClosedError, OSError):
                    pass
                finally:
                    if self._channel is comm:
                        retry = CHANNEL_RETRY_FIRST  # it was open until now: the next attempt comes soon
                    self._channel = None
                    comm.abort()
            if not self._serving():
                return
            await asyncio.sleep(retry)  # the retry's pace, not a wait for a condition
            retry = min(2 * retry, CHANNEL_RETRY_MAX)

    async def _serve_channel(self, comm: Any, token: str) -> bool:
        """Present ``token`` on ``comm``, then answer the calls that come on it until it closes
        (``CommClosedError``). False when the scheduler refused the channel."""
        await comm.write({"op": CHANNEL_OP, "worker": self.worker.address, "token": token})
        answer = await comm.read()
        if answer != "OK":
            text = answer.get("exception_text", answer) if isinstance(answer, dict) else answer
            logger.warning("the scheduler refused the grid channel of node %s: %s", self.worker.address, str(text)[:300])
            return False
        self._channel, self._channel_lock = comm, asyncio.Lock()
        while True:
            message = await comm.read()
            for item in message if isinstance(message, (list, tuple)) else (message,):
                op = item.get("op") if isinstance(item, dict) else None
                if op == CALL_OP:
                    # each call in its own task: a long round never holds up a drop or another call
                    task = asyncio.ensure_future(self._answer(comm, item))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
                elif op == DROP_OP:
                    for key in item.get("keys") or ():
                        self.stored.pop(key, None)

    async def _answer(self, comm: Any, call: dict) -> None:
        fields = {k: v for k, v in call.items() if k not in ("op", "call", "kind")}
        kind = call.get("kind", "update")
        try:
            if kind == "update":
                reply = await self._update(**fields)
            elif kind == "fetch":
                reply = await self._fetch_all(fields["parts"])
            elif kind == "describe":  # a Files partition this node read (its result cannot be fetched)
                partition = self.worker.data[fields["key"]]
                loop = asyncio.get_running_loop()
                reply = {"status": "OK", "blob": await loop.run_in_executor(None, tasks.describe_partition, partition)}
            else:
                reply = {"status": "error", "message": f"unknown call kind {kind!r}; this node serves {CALL_KINDS}"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the scheduler
            reply = {"status": "error", "message": _error_text(exc)}
        lock = self._channel_lock
        if comm is not self._channel or lock is None:
            return  # the channel it came on broke: the scheduler has issued the call elsewhere
        try:
            async with lock:  # one answer's frames together on the wire
                await comm.write({"op": REPLY_OP, "call": call.get("call"), "reply": reply})
        except (CommClosedError, OSError):
            pass

    async def _update(self, request: dict, state: bytes | None, round_no: int, parts: list) -> dict:
        wanted = [[key, spec] for key, _, spec in parts if spec and key not in self.worker.data]
        fetched = await self._fetch_all(wanted)
        reply = await update_partitions(self.worker, request, state, round_no, parts, self.stored)
        reply["unfetched"] = fetched["failed"]
        return reply

    async def _fetch_all(self, parts: list) -> dict:
        """Get partitions (``[key, spec]`` pairs) not held yet, concurrently: ``spec`` is
        ``{"token": ...}`` (read it from the store) or ``{"read": [path, options]}`` (a Files partition)."""
        keys = [key for key, _ in parts]
        outcomes = await asyncio.gather(*(self._fetch(key, spec) for key, spec in parts), return_exceptions=True)
        failed = [[k, _error_text(o)] for k, o in zip(keys, outcomes) if isinstance(o, BaseException)]
        return {"status": "OK", "held": [k for k, o in zip(keys, outcomes) if not isinstance(o, BaseException)], "failed": failed}

    async def _fetch(self, key: str, spec: dict) -> None:
        if key in self.stored:
            return
        pending = self._fetching.get(key)
        if pending is None:  # one read per partition, however many calls name it
            if "read" in spec:  # a Files partition: read as a read task would, under the node's data roots
                path, options = spec["read"]
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(
                    self.worker.executors["default"], _as_worker, self.worker, tasks.read_file_partition, path, options
                )
            else:
                call = self._read(key, spec["token"])
            pending = self._fetching[key] = asyncio.ensure_future(call)
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        self.stored[key] = await asyncio.shield(pending)

    async def _read(self, key: str, token: str) -> Any:
        """Read one stored partition in chunks, over the node's own connections to its scheduler."""
        read = getattr(self.worker.scheduler, STORE_READ_OP)
        buffer = bytearray()
        total = None
        while total is None or len(buffer) < total:
            reply = await read(key=key, token=token, offset=len(buffer))
            chunk, total = reply["data"], int(reply["total"])
            if not chunk and len(buffer) < total:
                raise OSError(f"the store sent no bytes of {key!r} at offset {len(buffer)} of {total}")
            buffer += chunk
        header, frames = split_partition(bytes(buffer))
        # a client serialized it: numpy arrays and plain values (a pickle only of plain data,
        # checked without unpickling, as the scheduler checks what a client sends)
        check_payload(header, frames)
        return aligned(merge_and_deserialize(header, frames, deserializers=("dask", "pickle", "msgpack")))


def dask_setup(worker: Any) -> None:
    """``dask worker --preload grid.node.rounds``: serve round requests on a stock worker."""
    NodeRounds().setup(worker)
