"""Nodes the scheduler cannot or must not dial: one extension of the grid's scheduler plugin.

A dial-out node (docs/architecture.md#dial-out-nodes) opens every connection
itself. This extension composes what serving such nodes takes:

* :class:`~grid.scheduler.reach.NodeReach`: which nodes are open, dial-out or
  unreachable (the connect-back check at registration);
* :class:`~grid.scheduler.channels.NodeChannels`: calls on the grid channel each node opened;
* :class:`~grid.scheduler.store.PartitionStore`: the region's partitions on the
  scheduler's disk, read by dial-out nodes with per-node tokens
  (``grid_store_read``, a handler this extension registers);
* the holders of each partition among dial-out nodes, topped up and balanced
  at the memory manager's pace (:func:`~grid.scheduler.store.plan_copies`), as
  the replica policy does for open nodes (``grid/scheduler/replicas.py``).

The grid plugin creates it in its ``start`` and forwards its ``add_worker`` /
``remove_worker`` hooks; placement (the datasets extension's scatter wrapper) and the
round engine (``grid/scheduler/attempts.py``) ask it who is which and how a
node gets a partition.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import dask
from dask.utils import parse_timedelta
from tornado.ioloop import PeriodicCallback

from grid import config
from grid.protocol.nodes import CHANNEL_OP, STORE_READ_OP
from grid.scheduler.channels import NodeChannels
from grid.scheduler.reach import CHECKING, OPEN, NodeReach
from grid.scheduler.store import PartitionStore, plan_copies

if TYPE_CHECKING:
    from grid.scheduler.plugin import GridSchedulerPlugin

logger = logging.getLogger("grid.scheduler")


class DialOutNodes:
    """Reachability, stream calls, the partition store and dial-out holders of one region.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        The region's grid plugin (its datasets, quarantine and access control are read here).
    """

    def __init__(self, plugin: "GridSchedulerPlugin") -> None:
        self.plugin = plugin
        self.scheduler = plugin.scheduler
        self.channels = NodeChannels(self.scheduler, owns=self._owns, open_timeout=channel_timeout())
        self.reach = NodeReach(self.scheduler, on_dial_out=self.channels.offer, connected=self.channels.is_open)
        self.store = PartitionStore(_store_dir(plugin.region), config.nbytes("scheduler.store-chunk"))
        self.prefetches: set[asyncio.Task] = set()
        interval = parse_timedelta(dask.config.get("distributed.scheduler.active-memory-manager.interval"))
        self.copies = PeriodicCallback(self.keep_store_copies, 1000 * float(interval))

    def install(self) -> None:
        self.reach.install()
        self.scheduler.handlers[CHANNEL_OP] = self.channels.open
        self.scheduler.handlers[STORE_READ_OP] = self.store_read
        self.copies.start()

    def close(self) -> None:
        self.copies.stop()
        self.reach.close()
        self.channels.uninstall()
        for task in self.prefetches:
            task.cancel()
        self.store.close()

    def add_worker(self, worker: str) -> None:
        self.reach.add_worker(worker)

    def remove_worker(self, worker: str) -> None:
        self.reach.remove_worker(worker)
        self.channels.remove_worker(worker)
        self.store.remove_node(worker)

    def _owns(self, comm: Any, worker: str) -> bool:
        """Whether the peer of ``comm`` is the node registered at ``worker`` (its certificate; any
        peer on a plaintext grid, which authenticates nobody)."""
        identity = self.plugin.access.identity(comm)
        if identity is None:
            return not self.plugin.access.active
        return identity.role == "node" and worker in self.plugin.access.addresses_of(identity)

    def serves(self, worker: str) -> bool:
        """Whether ``worker`` is a dial-out node that can take calls now (its channel is open)."""
        return self.reach.is_dial_out(worker) and self.reach.may_work(worker)

    def fetchable(self, key: str) -> bool:
        """Whether a node can fetch ``key`` now: the store has it and a dial-out node is there."""
        return self.store.has(key) and any(self.serves(ws.address) for ws in self.scheduler.running)

    def can_fetch(self, key: str) -> bool:
        """Whether a dial-out node can get partition ``key`` itself: from the store, or by reading its file."""
        return self.store.has(key) or key in self.plugin.datasets.store.sources

    def open_nodes(self) -> list[str] | None:
        """Where a grid task may run: nodes the scheduler can dial (a task's result is fetched from
        its node), or that it is still checking. None (anywhere) only where the region has no node
        yet: a task with no such node to go to waits for one instead of landing on a node whose
        result nobody could fetch."""
        nodes = [w for w in self.scheduler.workers if self.reach.kind(w) in (OPEN, CHECKING)]
        return nodes if self.scheduler.workers else None

    async def settled(self, workers: list[str]) -> None:
        """Wait until ``workers`` can be told apart and served: their connect-back checks ended,
        and the dial-out ones among them opened their grid channels (each wait bounded)."""
        await self.reach.settled(workers)
        await self.channels.settled(workers)

    def working_nodes(self) -> list[str]:
        """Nodes that may get grid data and work now: running (not paused, not retiring), and open
        or dialing out (not unreachable, not still being checked)."""
        return [ws.address for ws in self.scheduler.running if self.reach.may_work(ws.address)]

    def prefetch(self, node: str, keys: list[str]) -> None:
        """Grant dial-out ``node`` stored partitions and have it fetch them now (in the background).

        Once it holds them, a partition held more than ``grid.jobs.replicas``
        times is forgotten by its fullest dial-out holder (a move, not a copy)."""
        parts = [[key, spec] for key in keys if (spec := self.fetch_spec(node, key))]

        async def fetch() -> None:
            try:
                reply = await self.channels.call(node, "fetch", parts=parts)
            except OSError:
                for key, _ in parts:  # it left (its grants died with it) or its channel broke
                    self.store.forget(node, key)
                return
            failed = reply.get("failed") if isinstance(reply, dict) else None
            for key, text in failed or []:
                logger.warning("node %s could not fetch partition %s from the store: %s", node, key, str(text)[:200])
                self.store.forget(node, str(key))
            replicas = max(1, int(config.get("jobs.replicas")))
            for key, _ in parts:
                extra = self.store.held_by(key) - {node}
                if node in self.store.held_by(key) and len(self.partition_holders(key)) > replicas and extra:
                    fullest = max(extra, key=lambda n: (self.store.count_held(n), n))
                    self.store.forget(fullest, key)
                    self.channels.drop(fullest, [key])

        task = asyncio.ensure_future(fetch())
        self.prefetches.add(task)
        task.add_done_callback(self.prefetches.discard)

    def fetch_spec(self, node: str, key: str) -> dict | None:
        """How dial-out ``node`` gets partition ``key``, which it holds from now on: a token to
        read it from the store, the file to read itself (Files datasets), or None (it cannot)."""
        if self.store.has(key):
            return {"token": self.store.grant(node, key)}
        source = self.plugin.datasets.store.sources.get(key)
        if source is not None:
            self.store.grant(node, key)  # a holder like any other (the token reads nothing)
            return {"read": source}
        return None

    def partition_holders(self, key: str, running_only: bool = True) -> set[str]:
        """Nodes holding ``key``: open ones in Dask's memory, dial-out ones granted it; with
        ``running_only`` not the paused or retiring ones (they do not count as copies)."""
        ts = self.scheduler.tasks.get(key)
        who_has = ts.who_has if ts is not None and ts.who_has else ()
        held = {ws.address for ws in who_has if not running_only or ws.status.name == "running"}
        return held | {n for n in self.store.held_by(key) if n in self.scheduler.workers}

    def partitions_on(self, ws: Any) -> int:
        """How many partitions node ``ws`` holds: in Dask's memory, and granted from the store."""
        return len(ws.has_what) + self.store.count_held(ws.address)

    def keep_store_copies(self) -> None:
        """Every few seconds: dial-out nodes fetch the stored partitions that have too few holders
        (a holder left), and a node that joined takes partitions from the fullest holders."""
        nodes = [
            ws.address for ws in self.scheduler.running
            if self.serves(ws.address) and self.plugin.ledger.quarantine.identity_of(ws.address) not in self.plugin.ledger.quarantine
        ]
        keys = [k for d in self.plugin.datasets.store.datasets.values() for k in d.keys if self.can_fetch(k)]
        if not nodes or not keys:
            return
        holders = {k: self.partition_holders(k) for k in keys}
        load = {n: self.store.count_held(n) for n in nodes}
        by_node: dict[str, list[str]] = {}
        for node, key in plan_copies(keys, holders, nodes, max(1, int(config.get("jobs.replicas"))), load):
            by_node.setdefault(node, []).append(key)
        for node, node_keys in by_node.items():
            self.prefetch(node, node_keys)

    def store_read(self, comm: Any, key: str, token: str, offset: int = 0) -> dict:
        """One chunk of a stored partition, for the dial-out node the scheduler granted it to.

        The token names the node it was given to; on TLS the caller must present
        that node's certificate too, so a token a node passes on reads nothing."""
        node = self.store.grantee(token)
        identity = self.plugin.access.identity(comm)
        if identity is not None and identity.role == "node" and node not in self.plugin.access.addresses_of(identity):
            raise PermissionError(
                "no such partition for this token: a node reads only the partitions its scheduler gave it"
            )
        return self.store.read(key, token, offset)

    def drop_stored(self, keys: list[str]) -> None:
        """A dataset was dropped: remove its stored partitions and tell their dial-out holders."""
        by_node: dict[str, list[str]] = {}
        for key, nodes in self.store.drop(keys).items():
            for node in nodes:
                by_node.setdefault(node, []).append(key)
        for node, node_keys in by_node.items():
            self.channels.drop(node, node_keys)


def channel_timeout() -> float:
    """``grid.scheduler.channel-timeout``: how long a call waits for a dial-out node's channel."""
    seconds = config.seconds("scheduler.channel-timeout")
    if not seconds > 0:
        raise ValueError(
            f"grid.scheduler.channel-timeout must be a positive duration, got "
            f"{config.get('scheduler.channel-timeout')!r}; e.g. 10s"
        )
    return seconds


def _store_dir(region: str) -> str | None:
    """``grid.scheduler.store-dir``, else ``<state-dir>/store-<region>``, else None (a temporary directory)."""
    directory = config.get("scheduler.store-dir")
    if directory:
        return str(directory)
    state_dir = config.get("scheduler.state-dir")
    return os.path.join(str(state_dir), f"store-{region}") if state_dir else None
