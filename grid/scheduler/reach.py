"""Which nodes the scheduler may dial: the connect-back check at registration.

Volunteers' machines sit behind NAT routers and firewalls. A node behind one
registers and heartbeats normally (it opened that connection), but every
connection the grid opens *to* it hangs until a timeout: a scatter to it, a
round request, a result fetch, a replica copy it serves to another node. One
such node used to stall placement for every job of its region.

So when a node registers, the scheduler tries once to open a connection to
the address it advertises, bounded by ``grid.scheduler.node-connect-timeout``
(default 3 s), and records what it found:

``open``
    the scheduler reached it: Dask's usual data path (scatter, peer-to-peer
    replica copies, task results) and ``grid_update`` requests;
``dial-out``
    a grid node that said it dials out (``grid node --dial-out``; never
    checked, never dialed) or that could not be reached but serves grid calls:
    once it has opened its grid channel (``grid/scheduler/channels.py``) it
    gets round requests on that channel and fetches its partitions from the
    region's store (``grid/scheduler/store.py``);
``unreachable``
    a stock Dask worker that could not be reached: it gets no data and no grid
    work, and ``grid status`` and the dashboard say so;
``checking``
    the check has not ended yet: not used yet.

A thousand nodes may register within seconds (a scheduler restart, a
volunteer campaign). At most ``grid.scheduler.node-checks`` checks (32) are in
flight at once, and each one's timeout starts when its own connection attempt
does, so a registration storm queues checks instead of timing them out. A
stock worker found unreachable is checked again every
``grid.scheduler.node-recheck-interval`` (30 s) for as long as it stays: a
check that failed on a busy network, or a firewall opened later, does not
lose the node for good. A grid node found unreachable is served as dial-out
and is not checked again (its partitions and calls already travel that way).

The same timeout bounds every connection the scheduler opens through its
connection pool (to nodes, and to peer regions), so a node that stops
answering costs a round seconds, not distributed's default 30 s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from distributed.comm import connect

from grid import config
from grid.protocol.nodes import profile_of

logger = logging.getLogger("grid.scheduler")

OPEN, DIAL_OUT, UNREACHABLE, CHECKING = "open", "dial-out", "unreachable", "checking"


class NodeReach:
    """The reachability of every node of one region.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The region's scheduler.
    on_dial_out : callable, optional
        Called with a node's address when it is found to be a dial-out node.
    connected : callable, optional
        ``connected(worker)``: whether a dial-out node can take calls now (its
        grid channel is open); a dial-out node gets no data and no work before.
    """

    def __init__(
        self, scheduler: Any, on_dial_out: Callable[[str], None] | None = None, connected: Callable[[str], bool] | None = None
    ) -> None:
        self.scheduler = scheduler
        self.on_dial_out = on_dial_out if on_dial_out is not None else (lambda worker: None)
        self.connected = connected if connected is not None else (lambda worker: True)
        self.timeout = config.seconds("scheduler.node-connect-timeout")
        if not self.timeout > 0:
            raise ValueError(
                f"grid.scheduler.node-connect-timeout must be a positive duration, got "
                f"{config.get('scheduler.node-connect-timeout')!r}; e.g. 3s"
            )
        self.in_flight = config.get("scheduler.node-checks")
        if not isinstance(self.in_flight, int) or isinstance(self.in_flight, bool) or self.in_flight < 1:
            raise ValueError(
                f"grid.scheduler.node-checks must be a whole number of checks of at least 1, got {self.in_flight!r}; e.g. 32"
            )
        self.recheck = config.seconds("scheduler.node-recheck-interval")
        if not self.recheck > 0:
            raise ValueError(
                f"grid.scheduler.node-recheck-interval must be a positive duration, got "
                f"{config.get('scheduler.node-recheck-interval')!r}; e.g. 30s"
            )
        self.kinds: dict[str, str] = {}
        self.checks: dict[str, asyncio.Task] = {}  # first checks, until their verdict
        self.rechecks: dict[str, asyncio.Task] = {}  # unreachable stock workers, checked again
        self._slots: asyncio.Semaphore | None = None  # made on the scheduler's loop, at the first check

    def install(self) -> None:
        # the scheduler's own pool opens every connection to nodes: a node behind a firewall
        # costs this long, not distributed's default of 30 s
        self.scheduler.rpc.timeout = self.timeout

    def add_worker(self, worker: str) -> None:
        ws = self.scheduler.workers.get(worker)
        profile = profile_of(getattr(ws, "extra", None))
        if profile.get("dial-out"):
            self._set(worker, DIAL_OUT, new=True)  # it said so: never dial it, not even to check
            return
        self.kinds[worker] = CHECKING
        self.checks[worker] = asyncio.ensure_future(self._check(worker, bool(profile.get("calls"))))

    def remove_worker(self, worker: str) -> None:
        self.kinds.pop(worker, None)
        for tasks in (self.checks, self.rechecks):
            task = tasks.pop(worker, None)
            if task is not None:
                task.cancel()

    def close(self) -> None:
        for tasks in (self.checks, self.rechecks):
            for task in tasks.values():
                task.cancel()
            tasks.clear()

    async def _check(self, worker: str, serves_calls: bool) -> None:
        try:
            error = await self._connect(worker)
        finally:
            self.checks.pop(worker, None)
        if error is None:
            self._set(worker, OPEN)
        elif serves_calls:
            logger.warning(
                "node %s cannot be reached from the scheduler (%s); it is served over its own connection (dial-out)",
                worker, error,
            )
            self._set(worker, DIAL_OUT)
        else:
            logger.warning(
                "node %s cannot be reached from the scheduler (%s); it is given no data and no work, and checked "
                "again every %g s", worker, error, self.recheck,
            )
            if self._set(worker, UNREACHABLE):
                self.rechecks[worker] = asyncio.ensure_future(self._recheck(worker))

    async def _recheck(self, worker: str) -> None:
        """Check an unreachable stock worker again at the re-check interval until it can be reached."""
        try:
            while self.kinds.get(worker) == UNREACHABLE:
                await asyncio.sleep(self.recheck)  # the re-check's pace, not a wait for a condition
                if await self._connect(worker) is None and self._set(worker, OPEN):
                    logger.info("node %s can be reached now; it gets data and work", worker)
        finally:
            self.rechecks.pop(worker, None)

    async def _connect(self, worker: str) -> str | None:
        """Open and close one connection to ``worker``; what went wrong, or None."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.in_flight)
        async with self._slots:  # the timeout runs from the attempt, not from the queue
            try:
                comm = await connect(worker, timeout=self.timeout, **self.scheduler.connection_args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS failed: not reachable
                return f"{type(exc).__name__}: {exc}"
        comm.abort()
        return None

    def _set(self, worker: str, kind: str, new: bool = False) -> bool:
        """Record ``kind`` for a node still registered (it may have left meanwhile), or ``new``."""
        if worker not in self.kinds and not new:
            return False
        self.kinds[worker] = kind
        if kind == DIAL_OUT:
            self.on_dial_out(worker)
        return True

    def kind(self, worker: str) -> str:
        """``open``, ``dial-out``, ``unreachable`` or ``checking`` (unknown nodes: ``unreachable``)."""
        return self.kinds.get(worker, UNREACHABLE)

    def is_open(self, worker: str) -> bool:
        return self.kinds.get(worker) == OPEN

    def is_dial_out(self, worker: str) -> bool:
        return self.kinds.get(worker) == DIAL_OUT

    def may_work(self, worker: str) -> bool:
        """Whether ``worker`` may get grid data and work: open, or dial-out with its channel open."""
        kind = self.kinds.get(worker)
        return kind == OPEN or (kind == DIAL_OUT and self.connected(worker))

    async def settled(self, workers: Any = None) -> None:
        """Wait for the checks of ``workers`` (default: all) to end; each is bounded by the timeout."""
        pending = [t for w, t in list(self.checks.items()) if workers is None or w in workers]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout + 1)

    def counts(self) -> dict[str, int]:
        out = {OPEN: 0, DIAL_OUT: 0, UNREACHABLE: 0, CHECKING: 0}
        for kind in self.kinds.values():
            out[kind] += 1
        return out
