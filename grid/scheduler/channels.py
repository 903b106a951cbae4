"""Calls to dial-out nodes over a grid channel each node opened itself.

A dial-out node (``grid/scheduler/reach.py``) cannot be dialed. Once it has
registered, the scheduler offers it a channel on its worker stream
(:data:`~grid.protocol.nodes.CHANNEL_OFFER_OP`, with a random token made for
this registration); the node opens one more connection to its scheduler and
presents the token (:data:`~grid.protocol.nodes.CHANNEL_OP`). On that
connection the scheduler writes its calls (:data:`~grid.protocol.nodes.CALL_OP`,
:data:`~grid.protocol.nodes.DROP_OP`) and the node its answers
(:data:`~grid.protocol.nodes.REPLY_OP`).

Who may open a node's channel: whoever presents the token of the node's
current registration, which only ever travelled on the node's own worker
stream; on TLS grids the connection must also present the certificate that
node registered with. An answer is taken only from the channel of the node the
call was sent to (the channel is bound to one node when it opens; the call id
an answer names is checked against it), so no node can answer another node's
call. On TLS, the trust boundary (:mod:`grid.protocol.comm`) reads the
channel as it reads every node connection: sizes capped, no pickle, and
nothing but answers after the opening (:mod:`grid.protocol.messages`).

Why a channel of its own and not the worker stream the node keeps anyway:
distributed's batched stream costs the scheduler two event-loop wake-ups, a
timeout and an exception per message it sends (its background sender is a
coroutine that waits for a message, then for its send interval). A round
sends one call to each node, so at 1,000 dial-out nodes that sender was the
scheduler's largest cost. Here a call is one write, from the task that
makes it, on a connection only the grid writes to, as a request to an open
node is (docs/scale.md). A closed channel fails the node's pending calls at
once (the round issues them elsewhere) and the node opens it again; the
node's removal closes it. Bulk data (partitions) does not travel on it: a node
reads those from the store over connections of its own, so a big partition
never holds up another node's round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any, Callable

from distributed.comm.core import CommClosedError
from distributed.core import Status

from grid.protocol.nodes import CALL_OP, CHANNEL_OFFER_OP, DROP_OP, REPLY_OP

logger = logging.getLogger("grid.scheduler")


class NodeLeft(OSError):
    """The node a call was sent to left (or its channel closed) before it answered."""


class NodeChannels:
    """The grid channels of a region's dial-out nodes, and the calls pending on them.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The region's scheduler (its worker streams carry the channel offers).
    owns : callable, optional
        ``owns(comm, worker)``: whether the certificate of the peer of ``comm``
        is the one ``worker`` registered with (always true on plaintext grids).
    open_timeout : float
        How long a call waits for a node's channel to open (or open again).
    """

    def __init__(self, scheduler: Any, owns: Callable[[Any, str], bool] | None = None, open_timeout: float = 10.0) -> None:
        self.scheduler = scheduler
        self.owns = owns if owns is not None else (lambda comm, worker: True)
        self.open_timeout = open_timeout
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[str, asyncio.Future]] = {}
        self.answered = 0  # answers taken (a node's own, to a call made to it)
        #: node -> the token of its current registration's channel offer
        self.tokens: dict[str, str] = {}
        #: node -> its open channel, and the lock that keeps one message's frames together
        self.comms: dict[str, tuple[Any, asyncio.Lock]] = {}
        #: node -> resolved when its channel opens (calls made before wait on it)
        self.opened: dict[str, asyncio.Future] = {}
        self._sends: set[asyncio.Task] = set()

    def uninstall(self) -> None:
        for worker in list(self.tokens):
            self.remove_worker(worker)

    # --- opening -------------------------------------------------------------------------
    def offer(self, worker: str) -> None:
        """Offer dial-out node ``worker`` a channel, on its worker stream."""
        stream = self.scheduler.stream_comms.get(worker)
        if stream is None or worker in self.tokens:
            return
        token = secrets.token_urlsafe(32)
        try:
            stream.send({"op": CHANNEL_OFFER_OP, "token": token})
        except CommClosedError:
            return  # it is leaving (the check that found it dial-out outlived its stream)
        self.tokens[worker] = token

    def is_open(self, worker: str) -> bool:
        return worker in self.comms

    async def open(self, comm: Any, worker: str, token: str) -> Any:
        """Handler :data:`~grid.protocol.nodes.CHANNEL_OP`: take ``comm`` as ``worker``'s channel
        and read the node's answers on it until it closes.

        Raises
        ------
        PermissionError
            The token is not the one offered to ``worker`` (or ``worker`` was offered none:
            it is not a registered dial-out node), or on TLS the certificate is not ``worker``'s.
        """
        expected = self.tokens.get(worker)
        if expected is None or not secrets.compare_digest(expected.encode(), str(token).encode()):
            raise PermissionError(
                f"no grid channel was offered to {worker!r} with this token: a dial-out node opens its channel "
                "with the token its scheduler sent on its own worker stream"
            )
        if not self.owns(comm, worker):
            raise PermissionError(f"the grid channel of {worker!r} is opened with that node's own certificate only")
        previous = self.comms.pop(worker, None)
        if previous is not None:  # the node opened it again (its old connection broke): the new one counts
            previous[0].abort()
            self._fail(worker, f"node {worker} opened its grid channel again before it answered")
        lock = asyncio.Lock()
        self.comms[worker] = (comm, lock)
        waiter = self.opened.pop(worker, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        try:
            async with lock:
                await comm.write("OK")
            while True:
                message = await comm.read()
                for item in message if isinstance(message, (list, tuple)) else (message,):
                    if isinstance(item, dict) and item.get("op") == REPLY_OP:
                        self._on_reply(worker, item.get("call"), item.get("reply"))
        except (CommClosedError, OSError):
            pass
        finally:
            if self.comms.get(worker, (None,))[0] is comm:
                del self.comms[worker]
                self._fail(worker, f"the grid channel of node {worker} closed before it answered")
            comm.abort()
        return Status.dont_reply

    def _waiter(self, worker: str) -> asyncio.Future:
        waiter = self.opened.get(worker)
        if waiter is None:
            waiter = self.opened[worker] = asyncio.get_running_loop().create_future()
        return waiter

    async def settled(self, workers: Any) -> None:
        """Wait until the offered channels of ``workers`` are open, at most ``open_timeout``."""
        waiters = [self._waiter(w) for w in workers if w in self.tokens and w not in self.comms]
        if waiters:
            await asyncio.wait(waiters, timeout=self.open_timeout)

    async def _channel(self, worker: str) -> tuple[Any, asyncio.Lock]:
        """``worker``'s open channel, waiting up to ``open_timeout`` for it to open."""
        entry = self.comms.get(worker)
        if entry is not None:
            return entry
        if worker not in self.tokens:
            raise NodeLeft(f"node {worker} is not a registered dial-out node")
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter(worker)), self.open_timeout)
        except asyncio.TimeoutError:
            raise NodeLeft(f"node {worker} did not open its grid channel within {self.open_timeout:g} s") from None
        entry = self.comms.get(worker)
        if entry is None:
            raise NodeLeft(f"the grid channel of node {worker} closed")
        return entry

    # --- calls ---------------------------------------------------------------------------
    async def call(self, worker: str, kind: str, **fields: Any) -> dict:
        """Send one call to ``worker`` on its channel and wait for its answer."""
        comm, lock = await self._channel(worker)
        call_id = next(self.ids)
        answer = asyncio.get_running_loop().create_future()
        self.pending[call_id] = (worker, answer)
        try:
            try:
                async with lock:
                    await comm.write({"op": CALL_OP, "call": call_id, "kind": kind, **fields})
            except (CommClosedError, OSError) as exc:
                raise NodeLeft(f"the grid channel of node {worker} closed: {exc}") from None
            return await answer
        finally:
            self.pending.pop(call_id, None)

    def drop(self, worker: str, keys: list[str]) -> None:
        """Tell ``worker`` to forget stored partitions (best effort: a node that left holds nothing)."""
        entry = self.comms.get(worker)
        if entry is None:
            return  # no channel: it reads the store again only with a new grant

        async def send() -> None:
            comm, lock = entry
            try:
                async with lock:
                    await comm.write({"op": DROP_OP, "keys": list(keys)})
            except (CommClosedError, OSError):
                pass

        task = asyncio.ensure_future(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _on_reply(self, worker: str, call: Any, reply: Any = None) -> None:
        entry = self.pending.get(call) if isinstance(call, int) else None
        if entry is None or entry[0] != worker or entry[1].done():
            return  # an answer to a call not made to this node (or already over): ignored
        self.answered += 1
        entry[1].set_result(reply)

    # --- leaving -------------------------------------------------------------------------
    def _fail(self, worker: str, why: str) -> None:
        for call_id, (w, answer) in list(self.pending.items()):
            if w == worker and not answer.done():
                answer.set_exception(NodeLeft(why))

    def remove_worker(self, worker: str) -> None:
        """A node left: close its channel and fail its pending calls (the round issues them elsewhere)."""
        self.tokens.pop(worker, None)
        entry = self.comms.pop(worker, None)
        if entry is not None:
            entry[0].abort()
        waiter = self.opened.pop(worker, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a call waiting for the channel finds none, and says the node left
        self._fail(worker, f"node {worker} left before it answered")
