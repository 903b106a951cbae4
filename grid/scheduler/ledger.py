"""The node ledger: one extension of the grid's scheduler plugin.

What a region's scheduler knows of each node's conduct, in one place:

* the work it did: tasks and round requests finished (``grid_info``'s
  ``tasks_done``), and the nodes that computed each grid task's result (the
  round engine blames only the sender of a bad result);
* what it did wrong: updates refused from it, and the region's count of
  verification rejects;
* its verification record (:class:`~grid.scheduler.verify.Reliability`) and
  who it is as independence counts it (:meth:`NodeLedger.origin_of`);
* the quarantine (:class:`~grid.scheduler.quarantine.Quarantine`): nodes that
  sent what no honest node sends, refused when they register again;
* nodes that said they have no round handler (asked again later).

It also makes the nodes' task reports harmless (:mod:`grid.scheduler.untrusted`)
and learns from them who finished what. The grid plugin creates it in its
``start`` and forwards its ``remove_worker`` hook; the round engine
(``grid/scheduler/attempts.py``, ``round_calls.py``) writes to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from distributed.comm import get_address_host

from grid import config
from grid.keys import GRID_PREFIX, is_partition
from grid.scheduler import recovery, untrusted
from grid.scheduler.quarantine import Quarantine
from grid.scheduler.verify import INDEPENDENCE, Origin, Reliability

if TYPE_CHECKING:
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.state import StateDir

logger = logging.getLogger("grid.scheduler")

#: a node that had no round handler is asked again after this long (seconds)
ROUNDS_RETRY_SECONDS = 60.0


class NodeLedger:
    """Work done, rejections, verification records and quarantine of one region's nodes.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        The region's grid plugin (its scheduler and access control are read here).
    """

    def __init__(self, plugin: "GridSchedulerPlugin") -> None:
        self.plugin = plugin
        self.scheduler = plugin.scheduler
        self.quarantine = Quarantine(self.scheduler, plugin.access)
        self.reliability = Reliability()
        #: grid task key -> nodes that computed it, in order
        self.result_workers: dict[str, list[str]] = {}
        self.verification_rejects = 0
        self.rejected: dict[str, int] = {}  # node address -> updates refused from it
        self.tasks_done: dict[str, int] = {}  # node address -> tasks and round requests it finished
        self.tasks_done_total = 0
        #: nodes that answered a round request as having no grid_update handler -> when (asked again later)
        self.nodes_without_rounds: dict[str, float] = {}
        #: set by an embedded grid, whose nodes all share this machine: "nodes" (else grid.scheduler.verify.independent)
        self.verify_independence: str | None = None

    def install(self) -> None:
        untrusted.install(self.scheduler, on_finished=self._result_from)
        self.quarantine.install(self.scheduler)  # refuses quarantined nodes at registration

    def load(self, state: "StateDir") -> int:
        """Take the quarantine and the verification records back from the state directory
        (the quarantine is saved there from now on); return how many nodes are quarantined."""
        self.quarantine.store = state
        n_quarantined = self.quarantine.load(state.load_json(self.quarantine.STATE_NAME))
        self.reliability.load(state.load_json(recovery.RELIABILITY, {}))
        return n_quarantined

    def remove_worker(self, worker: str) -> None:
        self.tasks_done.pop(worker, None)
        self.nodes_without_rounds.pop(worker, None)

    # --- work done ---------------------------------------------------------------------
    def count_update(self, worker: str | None) -> None:
        """Count one finished task or round request of ``worker`` (dashboard: tasks done)."""
        if worker:
            self.tasks_done[worker] = self.tasks_done.get(worker, 0) + 1
            self.tasks_done_total += 1

    def lacks_rounds(self, worker: str) -> bool:
        """Whether ``worker`` said lately that it has no ``grid_update`` handler.

        Asked again after ``ROUNDS_RETRY_SECONDS``: a plugin may reach a node
        after its first round request did."""
        since = self.nodes_without_rounds.get(worker)
        return since is not None and time.monotonic() - since < ROUNDS_RETRY_SECONDS

    def _result_from(self, key: Any, worker: str | None) -> None:
        self.count_update(worker)
        if isinstance(key, str) and key.startswith(GRID_PREFIX) and not is_partition(key) and worker:
            self.result_workers.setdefault(key, []).append(worker)

    def result_workers_of(self, key: str) -> list[str]:
        """The nodes that computed grid task ``key``, in order (a lost result is computed again)."""
        return self.result_workers.get(key, [])

    def release_futures(self, futures: list) -> None:
        """Drop the driver's hold on grid task results so the scheduler frees them."""
        for f in futures:
            self.result_workers.pop(f.key, None)
            f.release()

    def reject(self, worker: str) -> None:
        """Count an update of ``worker`` that verification refused."""
        self.verification_rejects += 1
        self.rejected[worker] = self.rejected.get(worker, 0) + 1

    # --- who a node is -------------------------------------------------------------------
    def independence(self) -> str:
        """What makes two nodes independent in a quorum here: ``"nodes"`` or ``"hosts-and-owners"``.

        ``grid.scheduler.verify.independent`` (an embedded grid says
        ``"nodes"`` itself: its nodes share one machine); ``auto`` is hosts and owners on
        a grid that checks certificates (community nodes are strangers), nodes
        on a plaintext one (an operator's own machines, or one laptop).
        """
        mode = self.verify_independence or config.choice("scheduler.verify.independent", INDEPENDENCE)
        if mode == "auto":
            return "hosts-and-owners" if self.plugin.access.active else "nodes"
        return mode

    def origin_of(self, address: str) -> Origin:
        """Who computed a result of the node at ``address``, as independence counts it.

        The host is the address its connection to this scheduler comes from,
        not the address it claims, so nodes of one machine share it; the owner
        is the one its certificate names (its certificate's name when it
        names none), so one volunteer's nodes share it.
        """
        identity = self.quarantine.identity_of(address)
        host = ""
        stream = self.scheduler.stream_comms.get(address)
        comm = getattr(stream, "comm", None)
        if comm is not None and not comm.closed():
            try:
                host = get_address_host(comm.peer_address)
            except ValueError:
                host = ""
        if not host:
            ws = self.scheduler.workers.get(address)
            host = ws.host if ws is not None else get_address_host(address)
        return Origin(node=identity, owner=self.plugin.access.owner_of(address) or identity, host=host)

    def node_state(self, ws: Any) -> str:
        """``active``, ``paused``, or ``unreachable``: a stock worker the scheduler cannot
        connect to gets neither data nor work (grid/scheduler/reach.py)."""
        if self.plugin.dial_out.reach.kind(ws.address) == "unreachable":
            return "unreachable"
        return "paused" if ws.status.name == "paused" else "active"

    def protocol_violation(self, identity: Any, peer: str, reason: str, evidence: dict) -> None:
        """A node's connection was closed for breaking the protocol (``grid.protocol.comm``):
        quarantine the node, with the evidence, and remove it."""
        evidence = {**evidence, "violation": reason}
        self.quarantine.add_identity(identity.name, peer, f"it broke the grid protocol: {reason}", evidence)
        for address in self.plugin.access.addresses_of(identity) & set(self.scheduler.workers):
            asyncio.ensure_future(
                self.scheduler.remove_worker(address=address, stimulus_id=f"grid-protocol-{time.time()}", close=True)
            )
