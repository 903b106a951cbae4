"""Calls to dial-out nodes over the connection each node opened itself.

Every Dask worker keeps one batched stream to its scheduler, opened by the
worker when it registers; the scheduler already uses it to send tasks and
the worker to report them. A dial-out node (``grid/scheduler/reach.py``)
cannot be dialed, so the grid sends its calls on that stream
(:data:`~grid.protocol.nodes.CALL_OP`) and the node answers on it
(:data:`~grid.protocol.nodes.REPLY_OP`). An answer is taken only from the
stream of the node the call was sent to: distributed passes a stream
handler the address the stream is bound to, not an address the message
names, so no node can answer another node's call.

Why the worker's own stream and not a second, grid-only connection: it is
open for as long as the node is registered, it passes the trust boundary's
checks already (:mod:`grid.protocol.comm`), its loss is the node's removal
(which fails the node's pending calls here at once), and a call costs no
connection set-up: one message each way, batched with everything else the
node and the scheduler say (``distributed.worker.batched-stream`` interval,
2 ms by default). Bulk data (partitions) does not travel on it: a node reads
those from the store over connections of its own, so a big partition never
holds up another node's heartbeat or round.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from grid.protocol.nodes import CALL_OP, DROP_OP, REPLY_OP


class NodeLeft(OSError):
    """The node a call was sent to left (or its stream closed) before it answered."""


class NodeChannels:
    """Pending calls to dial-out nodes, keyed by call id."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[str, asyncio.Future]] = {}
        self.answered = 0  # answers taken (a node's own, to a call made to it)

    def install(self) -> None:
        self.scheduler.stream_handlers[REPLY_OP] = self._on_reply

    def uninstall(self) -> None:
        self.scheduler.stream_handlers.pop(REPLY_OP, None)
        for worker in {w for w, _ in self.pending.values()}:
            self.remove_worker(worker)

    def _stream(self, worker: str) -> Any:
        stream = self.scheduler.stream_comms.get(worker)
        if stream is None or stream.comm is None or stream.comm.closed():
            raise NodeLeft(f"node {worker} has no open connection to the scheduler")
        return stream

    async def call(self, worker: str, kind: str, **fields: Any) -> dict:
        """Send one call to ``worker`` on its own stream and wait for its answer."""
        stream = self._stream(worker)
        call_id = next(self.ids)
        answer = asyncio.get_running_loop().create_future()
        self.pending[call_id] = (worker, answer)
        try:
            stream.send({"op": CALL_OP, "call": call_id, "kind": kind, **fields})
            return await answer
        finally:
            self.pending.pop(call_id, None)

    def drop(self, worker: str, keys: list[str]) -> None:
        """Tell ``worker`` to forget stored partitions (best effort: a node that left holds nothing)."""
        try:
            self._stream(worker).send({"op": DROP_OP, "keys": list(keys)})
        except NodeLeft:
            pass

    def _on_reply(self, worker: str, call: int, reply: Any = None, **_: Any) -> None:
        entry = self.pending.get(call)
        if entry is None or entry[0] != worker or entry[1].done():
            return  # an answer to a call not made to this node (or already over): ignored
        self.answered += 1
        entry[1].set_result(reply)

    def remove_worker(self, worker: str) -> None:
        """Fail the pending calls of a node that left: the round issues them elsewhere."""
        for call_id, (w, answer) in list(self.pending.items()):
            if w == worker and not answer.done():
                answer.set_exception(NodeLeft(f"node {worker} left before it answered"))
