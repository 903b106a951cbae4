"""Keep ``grid.jobs.replicas`` copies of every placed partition, through churn.

Why this exists: ``Grid.scatter`` (and ``grid_register_files``) put each
partition on ``grid.jobs.replicas`` nodes (default 2) so that a node that
vanishes loses no data. But distributed's Active Memory Manager runs its
default policy, ``ReduceReplicas``, every 2 s
(``distributed.scheduler.active-memory-manager``), and that policy drops every
"superfluous" replica of a key that no task is waiting for. Between rounds a
partition has no waiters, so a region's 2 replicas shrank to 1 within one AMM
cycle (measured: 8 of 8 partitions down to one holder 1.9 s after
``g.scatter`` on a 3-node region), and a single SIGKILL then lost data.

:class:`GridReplicas` replaces ``ReduceReplicas`` in the scheduler's AMM
(``scheduler.extensions["amm"]``), which keeps its interval and measure:

* every partition of a registered dataset (:class:`~grid.scheduler.datasets.DatasetStore`)
  is kept on ``grid.jobs.replicas`` nodes, or on every eligible node where the
  region has fewer. A missing replica is created on the running node that
  holds the fewest bytes of partitions. That is how a partition whose holder
  died gets its second copy back within one AMM cycle. A holder that is
  retiring (``closing_gracefully``) does not count, so its partitions are
  copied before it leaves.
* partitions are balanced: when moving a replica from its fullest holder to
  the emptiest running node lowers the fuller of the two, the policy copies
  it there and the next cycle drops the extra copy from the fullest holder.
  That is how a node that joins mid-job receives partitions, and with them
  work (Dask runs a partition's task on a node holding it). Copies come
  first, drops a cycle later, so balancing never leaves a partition with
  fewer copies.
* paused nodes (idle-only, memory) and quarantined nodes never receive a
  replica; replicas already on a paused node still count (the data is alive
  there) and are the first dropped when a partition has too many.
* extra replicas (e.g. a copy Dask made to run a task elsewhere) are dropped
  down to ``grid.jobs.replicas``, never below the nodes with a task waiting
  for the partition (counted as ``ReduceReplicas`` counts them);
* a grid partition (key ``grid-part-*``) that is not registered yet (between
  ``Grid.scatter``'s scatter and its registration) is left alone: reducing
  it then would leave one copy until the next cycle, and a node killed in
  that window lost the partition (seen once in 10 runs of the SIGKILL
  system test under load);
* every other key is treated exactly as ``ReduceReplicas`` treats it (this
  class subclasses it and filters out the dataset keys).

What remains: a *scattered* partition is lost if every holder vanishes within
one AMM cycle (both holders killed within ~2 s); the job then fails with the
reason. A ``jobs.data.Files`` partition is never lost: its read task keeps its
recipe, so the scheduler reads the file again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import ReduceReplicas, Suggestion, SuggestionGenerator
from distributed.core import Status

from grid import config
from grid.keys import is_partition

if TYPE_CHECKING:
    from grid.scheduler.plugin import GridSchedulerPlugin

logger = logging.getLogger("grid.replicas")



class GridReplicas(ReduceReplicas):
    """AMM policy: ``replicas`` copies of every dataset partition; ReduceReplicas for the rest.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        Its ``datasets`` name the partition keys and its ``quarantine`` the
        nodes that get no replica.
    replicas : int, optional
        Copies to keep; default ``grid.jobs.replicas``.
    reduce_others : bool
        Drop superfluous replicas of non-dataset keys (what the replaced
        ``ReduceReplicas`` did). False where the operator configured the AMM
        without ``ReduceReplicas``.
    """

    def __init__(self, plugin: "GridSchedulerPlugin", replicas: int | None = None, reduce_others: bool = True) -> None:
        self.plugin = plugin
        self.replicas = max(1, int(config.get("jobs.replicas") if replicas is None else replicas))
        self.reduce_others = reduce_others

    def __repr__(self) -> str:
        return f"GridReplicas(replicas={self.replicas}, region={self.plugin.region!r})"

    def _eligible(self, scheduler: Any) -> set:
        """Running nodes that may receive a replica (not paused, not quarantined), and that the
        scheduler can reach: a copy is made by the receiving node dialing a holder, and a dial-out
        node talks to no other node (it fetches from the region's store, grid/scheduler/store.py)."""
        reach = self.plugin.dial_out.reach
        running = {ws for ws in scheduler.running if reach.is_open(ws.address)}
        quarantine = self.plugin.ledger.quarantine
        if quarantine.records:
            running = {ws for ws in running if quarantine.identity_of(ws.address) not in quarantine}
        return running

    def _dataset_tasks(self, scheduler: Any) -> tuple[set, list]:
        keys: set = set()
        tasks = []
        for dataset in list(self.plugin.datasets.store.datasets.values()):
            for key in dataset.keys:
                if key in keys:
                    continue
                keys.add(key)
                ts = scheduler.tasks.get(key)
                if ts is not None and ts.state == "memory" and ts.who_has:
                    tasks.append(ts)  # lost ones, or ones being read again (Files), have nothing to copy yet
        return keys, tasks

    def run(self) -> SuggestionGenerator:
        scheduler = self.manager.scheduler
        keys, tasks = self._dataset_tasks(scheduler)
        if tasks:
            yield from self._keep_replicas(scheduler, tasks)
        if not self.reduce_others:
            return
        # ReduceReplicas for everything else, passing the AMM's answers through
        inner = super().run()
        try:
            suggestion = next(inner)
            while True:
                # a partition between its scatter and its dataset's registration is not
                # "superfluous" either: never reduce a grid partition below its placement
                key = suggestion.ts.key
                protected = key in keys or is_partition(key)
                choice = None if protected else (yield suggestion)
                suggestion = inner.send(choice)
        except StopIteration:
            pass

    def _keep_replicas(self, scheduler: Any, tasks: list) -> SuggestionGenerator:
        eligible = self._eligible(scheduler)
        # bytes of dataset partitions per node, kept up to date with the suggestions accepted
        loads = NodeLoads(scheduler.workers.values(), tasks, eligible)
        for ts in tasks:
            size = max(ts.nbytes, 1)
            pending_repl, pending_drop = self.manager.pending.get(ts, (set(), set()))
            # a holder that is retiring is about to leave: copy its partitions before it does
            staying = {ws for ws in ts.who_has if ws.status != Status.closing_gracefully}
            have = len(staying | pending_repl) - len(pending_drop & staying)
            # eligible nodes that hold it or are about to: the rest may receive a copy
            taken = {ws for ws in ts.who_has if ws in eligible} | {ws for ws in pending_repl if ws in eligible}
            free = len(eligible) - len(taken)
            target = min(self.replicas, have + free)
            waiting = len({w.processing_on or w for w in ts.waiters or ()})
            if have < target:
                for _ in range(target - have):
                    dest = loads.emptiest(exclude=taken)
                    if dest is None:
                        break
                    choice = yield Suggestion("replicate", ts, {dest})
                    if choice is None:
                        break  # try again next cycle
                    loads.add(choice, size)
                    taken.add(choice)
            elif have > max(self.replicas, waiting):
                for _ in range(have - max(self.replicas, waiting)):
                    _, pending_drop = self.manager.pending.get(ts, (set(), set()))
                    candidates = ts.who_has - pending_drop
                    if not candidates:
                        break
                    # paused or retiring holders first, then the fullest
                    worst = max(candidates, key=lambda ws: (ws.status != Status.running, loads[ws], ws.address))
                    choice = yield Suggestion("drop", ts, {worst})
                    if choice is None:
                        break
                    loads.add(choice, -size)
            elif free and not pending_repl and not pending_drop:
                # balance: move a replica from the fullest holder to the emptiest node (a node that
                # joined gets partitions, and with them work) when that lowers the fuller of the two
                source = max(ts.who_has, key=lambda ws: (loads[ws], ws.address))
                dest = loads.emptiest(exclude=taken)
                if dest is not None and loads[dest] + size < loads[source]:
                    choice = yield Suggestion("replicate", ts, {dest})
                    if choice is not None:  # the next cycle drops the extra copy from the fullest holder
                        loads.add(choice, size)
                        loads.add(source, -size)


class NodeLoads:
    """Bytes of dataset partitions per node, and the emptiest eligible node in O(log n).

    The replica policy asks for the emptiest node once per partition in each
    pass of the memory manager (every 2 s). A scan of every node each time
    cost partitions x nodes comparisons per pass: a million at 1,000 nodes,
    a quarter of the scheduler's time during rounds. A heap of (bytes,
    address) gives the same node (ties go to the lowest address); an entry
    whose node's bytes changed since it was pushed is stale and skipped.

    Parameters
    ----------
    workers : iterable of WorkerState
        Every node (their bytes are counted whether or not they are eligible).
    tasks : list of TaskState
        The dataset partitions in memory; each counts ``max(nbytes, 1)`` on each holder.
    eligible : set of WorkerState
        The nodes :meth:`emptiest` may return.
    """

    def __init__(self, workers: Any, tasks: list, eligible: set) -> None:
        self.load: dict = {ws: 0 for ws in workers}
        for ts in tasks:
            for ws in ts.who_has:
                self.load[ws] = self.load.get(ws, 0) + max(ts.nbytes, 1)
        self.eligible = eligible
        # (bytes, address, n, node): n keeps two entries of one node from ever comparing nodes
        self._pushed = itertools.count()
        self.heap = [(self.load.get(ws, 0), ws.address, next(self._pushed), ws) for ws in eligible]
        heapq.heapify(self.heap)

    def __getitem__(self, ws: Any) -> int:
        return self.load.get(ws, 0)

    def add(self, ws: Any, nbytes: int) -> None:
        """Count ``nbytes`` more (or fewer, when negative) on ``ws``."""
        self.load[ws] = self.load.get(ws, 0) + nbytes
        if ws in self.eligible:
            heapq.heappush(self.heap, (self.load[ws], ws.address, next(self._pushed), ws))

    def emptiest(self, exclude: set) -> Any:
        """The eligible node with the fewest bytes (then the lowest address) not in ``exclude``; None if none."""
        skipped = []
        found = None
        while self.heap:
            nbytes, _, _, ws = self.heap[0]
            if nbytes != self.load.get(ws, 0):
                heapq.heappop(self.heap)  # stale: its node's bytes changed since
            elif ws in exclude:
                skipped.append(heapq.heappop(self.heap))
            else:
                found = ws
                break
        for entry in skipped:
            heapq.heappush(self.heap, entry)
        return found


def install(plugin: "GridSchedulerPlugin", scheduler: Any) -> GridReplicas | None:
    """Put :class:`GridReplicas` in place of ``ReduceReplicas`` in the scheduler's AMM.

    Returns the policy, or None where the scheduler has no AMM extension.
    """
    amm = getattr(scheduler, "extensions", {}).get("amm")
    if amm is None:
        logger.warning("region %s: the scheduler has no active memory manager; partition replicas are not kept", plugin.region)
        return None
    replaced = [p for p in amm.policies if type(p) is ReduceReplicas]
    for p in replaced:
        amm.policies.discard(p)
    policy = GridReplicas(plugin, reduce_others=bool(replaced))
    amm.add_policy(policy)
    if not amm.running:
        logger.warning(
            "region %s: the active memory manager is not started "
            "(distributed.scheduler.active-memory-manager.start); partition replicas are not restored after churn",
            plugin.region,
        )
    return policy


def uninstall(scheduler: Any, policy: GridReplicas | None) -> None:
    amm = getattr(scheduler, "extensions", {}).get("amm")
    if amm is not None and policy is not None:
        amm.policies.discard(policy)
