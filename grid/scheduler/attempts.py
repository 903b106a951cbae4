"""One round of partition updates on one region: issue, wait, speculate, verify, re-issue.

A round of an ``average`` job needs one accepted update per partition. Nodes
are volunteers, so the region's scheduler does not simply wait for one task
per partition; :class:`RoundAttempts` runs the round as BOINC runs a
workunit and Spark runs a stage:

* **Issue.** Every partition update goes to a node that already holds the
  partition, with no task graph: the scheduler sends one ``grid_update``
  request per node per round (``grid/node/rounds.py``) carrying the state
  once and the list of partitions that node updates; the least-loaded holder
  gets each partition. An update that no holder can serve (a stock worker
  without the handler, a paused node, a partition whose holders all left, or
  a replica that must run on a node without the data) becomes a Dask task, as
  every update was before (``grid.scheduler.round-engine: tasks`` makes every
  update a task: one graph per round, placed by Dask next to the data). With
  ``verify=N`` each partition gets ``N`` updates on ``N`` independent nodes
  (holders of the partition first; see :func:`grid.scheduler.verify.independent`),
  in every round. When the region has fewer independent nodes than that, the
  round waits for them (the job's status says so) rather than accept fewer.
  With ``verify="adaptive"`` an update is replicated (to the adaptive
  quorum) unless the node it went to is trusted, and a trusted node's update
  still is with a probability never below a floor
  (:func:`grid.scheduler.verify.should_replicate`); the round reports the
  nodes whose updates it accepted unchecked, so that the job driver can roll
  back and replay what a node caught later touched.
* **Verify.** An update is accepted when ``N`` replicas agree within
  ``grid.scheduler.verify.rtol`` / ``atol``; a disagreement sends one more
  replica to a further node to settle it by majority, up to
  ``max-replicas``. Nodes in the minority are quarantined with the evidence.
* **Stragglers.** Once ``speculation.quantile`` of the partitions are done,
  a partition whose task has run longer than ``speculation.multiplier`` times
  the median completion time (and at least ``speculation.minimum``) gets a
  speculative copy on another node holding its data; the previous round's
  median sets the same deadline from the start of a round. The first valid
  answer wins and the others are cancelled. Updates are deterministic, so
  which copy wins never changes the model.
* **Lost tasks.** A task pinned to a node that left, or lost with a node just
  quarantined, is issued again elsewhere; a node that sends something that is
  not a grid update is quarantined and its task re-issued.

Every result is decoded and checked (``grid.wire``) before it is compared or
used. The counts (re-issues, speculative copies, extra replicas, quarantined
nodes) go into the round's metrics and from there into the job's history.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed import Future
from distributed.protocol.serialize import Serialized, deserialize
from distributed.worker import get_data_from_worker

from grid import config, wire
from grid.node.tasks import partition_update
from grid.scheduler import recovery
from grid.protocol.requests import ADAPTIVE
from grid.scheduler.verify import (
    AdaptiveSettings,
    Origin,
    Update,
    difference,
    independent,
    independent_count,
    quorum,
    should_replicate,
    spot_check_draw,
    verify_quorum,
)

if TYPE_CHECKING:
    from grid.scheduler.driver import RegionRun

logger = logging.getLogger("grid.driver")

#: how often one partition's update is re-issued after its tasks were lost or garbage
MAX_REISSUES = 3

#: values of grid.scheduler.round-engine
ROUND_ENGINES = ("direct", "tasks")

#: how often a round wakes up to look for tasks stuck on nodes that left (seconds)
POLL_SECONDS = 0.5


class _NodeCallFailed(Exception):
    """A dial-out node answered a call with an error of its own (not an update)."""


@dataclass
class NodeCall:
    """One partition update asked of a node directly (a ``grid_update`` request, no task)."""

    key: str  # names the attempt in logs and evidence; no task has it
    worker: str
    outcome: asyncio.Future  # the wire blob, or one of the outcomes below


@dataclass
class Declined:
    """The node did not run the update (paused, no handler, data moved): run it as a task."""

    why: str


@dataclass
class NodeLost:
    """The request failed on the way (the node left, the connection broke)."""

    error: BaseException


@dataclass
class NodeFailed:
    """The update raised on the node: an honest node would fail the same way."""

    text: str


@dataclass
class Attempt:
    """One task, or one node request, computing one partition's update."""

    future: Future | NodeCall
    worker: str | None  # the node it is pinned to; None: Dask places it
    started: float
    kind: str  # "first", "replica", "speculative" or "reissue"
    settled: bool = False  # its outcome (result, error, loss) has been taken


@dataclass
class PartitionRound:
    """One partition's attempts and results in this round."""

    position: int  # position in the dataset's partition list
    index: int  # global partition index
    needed: int  # agreeing results needed (1, or verify)
    attempts: list[Attempt] = field(default_factory=list)
    results: list[tuple[str | None, Update]] = field(default_factory=list)  # (node address, update)
    identities: dict[str, str] = field(default_factory=dict)  # node address -> identity, taken on arrival
    accepted: Update | None = None
    reissues: int = 0
    speculated: bool = False
    missing: int = 0  # copies still to issue, waiting for an independent node
    origins: dict[str, Origin] = field(default_factory=dict)  # node address -> origin, taken when issued
    decided_for: str | None = None  # verify="adaptive": the node identity the spot-check draw let go unchecked

    @property
    def pending(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.settled]

    def workers(self) -> set[str]:
        return {a.worker for a in self.attempts if a.worker} | {w for w, _ in self.results if w}


def _consume(task: asyncio.Future) -> None:
    """Retrieve a finished fetch's exception so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value))


class RoundAttempts:
    """Runs one ``average``-mode round of one job on this region.

    Parameters
    ----------
    run : RegionRun
        The job's share of this region (request, dataset, plugin).
    client : distributed.Client
        The plugin's asynchronous client of this scheduler.
    round_no : int
    state_blob : bytes or None
        The global state the updates start from (grid wire format).
    """

    def __init__(self, run: "RegionRun", client: Any, round_no: int, state_blob: bytes | None) -> None:
        self.run = run
        self.plugin = run.plugin
        self.dial_out = run.plugin.dial_out  # who is dialed, and how a dial-out node gets a partition
        self.client = client
        self.round_no = round_no
        self.state_blob = state_blob
        ver = config.get("scheduler.verify")
        requested = run.request.get("verify", 1) or 1
        #: verify="adaptive": how trusted nodes are spot-checked; None for a fixed quorum
        self.adaptive = AdaptiveSettings.from_config(ver.get("adaptive")) if requested == ADAPTIVE else None
        self.verify = verify_quorum(requested, self.adaptive)  # agreeing nodes a replicated update needs
        #: verify="adaptive": node identity -> partitions whose update it computed and nobody checked
        self.unverified: dict[str, list[int]] = {}
        #: node identities quarantined in this round (verify="adaptive" reports them to the job driver)
        self.caught: list[str] = []
        self.prefix = f"grid-{run.job_id}-r{round_no}"
        self.queue: asyncio.Queue = asyncio.Queue()
        self.fetchers: list[asyncio.Task] = []
        self.futures: list[Future] = []
        self.to_cancel: list[Future | NodeCall] = []
        #: node requests of this round not sent yet: node -> [(partition, attempt)]; sent by _flush
        self.batch: dict[str, list[tuple[PartitionRound, Attempt]]] = {}
        self.calls: list[asyncio.Task] = []
        self.direct = config.choice("scheduler.round-engine", ROUND_ENGINES) == "direct"
        self.started = time.monotonic()
        self.tend_at = self.started  # when the next look for late and lost tasks is due
        self.done_seconds: list[float] = []
        self.load: dict[str, int] = {}
        self.counts = {"reissued": 0, "speculative": 0, "replicas": 0, "quarantined": 0, "requests": 0, "tasks": 0}
        self.independence = self.plugin.independence() if self.verify > 1 else "nodes"
        self.waiting: str | None = None  # why this round waits, as the job's status says it
        spec = config.get("scheduler.speculation")
        self.speculate = bool(spec["enabled"])
        self.quantile = float(spec["quantile"])
        self.multiplier = float(spec["multiplier"])
        self.minimum = _seconds(spec["minimum"])
        self.rtol, self.atol = float(ver["rtol"]), float(ver["atol"])
        self.max_replicas = max(self.verify, int(ver["max-replicas"]))
        parts = run.dataset
        self.partitions = [PartitionRound(pos, index, 1) for pos, index in enumerate(parts.indices)]

    # --- the round ---------------------------------------------------------------------
    async def run_round(self) -> tuple[list[Update], dict[str, Any]]:
        """Return the accepted update of every partition (in partition order) and the counts.

        With ``verify="adaptive"`` the counts also say which node identities
        had an update accepted unchecked (``unverified_nodes``) and which
        were quarantined in this round (``caught``)."""
        getter: asyncio.Future | None = None
        try:
            self._issue_first()
            self._flush()
            undecided = len(self.partitions)
            while undecided:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow the job's cancellation
                getter = getter or asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=max(0.0, self.tend_at - time.monotonic()))
                if not done:
                    self._tend_if_due()
                    self._flush()
                    await self._cancel()
                    continue
                pr, attempt, outcome = getter.result()
                getter = None
                attempt.settled = True
                if pr.accepted is not None:
                    continue  # a slower copy of a partition already decided
                if await self._handle(pr, attempt, outcome):
                    undecided -= 1
                    self.done_seconds.append(time.monotonic() - self.started)
                    for other in pr.pending:  # the first valid answer wins: stop the other copies
                        other.settled = True
                        self.to_cancel.append(other.future)
                self._tend_if_due()
                self._flush()
                await self._cancel()
        finally:
            for task in [*self.fetchers, *self.calls, *([getter] if getter else [])]:
                task.cancel()
            self.to_cancel.extend(f for pr in self.partitions for a in pr.pending for f in [a.future])
            await self._cancel()
            self.release()
            if self.waiting:  # a cancelled job waits no more
                self.plugin.note_waiting(self.run.job_id, None)
        self.run.last_round_seconds = list(self.done_seconds)
        if self.verify > 1:
            recovery.save_reliability(self.plugin)
        counts: dict[str, Any] = dict(self.counts)
        if self.adaptive is not None:
            counts["unverified"] = sum(len(v) for v in self.unverified.values())
            counts["unverified_nodes"] = sorted(self.unverified)
            counts["caught"] = sorted(set(self.caught))
        return [pr.accepted for pr in self.partitions], counts  # type: ignore[misc]

    async def _cancel(self) -> None:
        """Cancel the tasks no longer needed (their pending fetches then end too).

        A node request is not cancelled on the node: its answer, when it
        comes, is simply not used."""
        futures = [f for f in self.to_cancel if isinstance(f, Future)]
        self.to_cancel = []
        if futures:
            await self.client.cancel(futures, reason="grid: not needed any more")

    def release(self) -> None:
        futures, self.futures = self.futures, []
        self.plugin.release_futures(futures)

    # --- issuing tasks -------------------------------------------------------------------
    def _issue_first(self) -> None:
        parts = self.run.parts
        if self.verify == 1 and self.direct:
            # each partition to its least-loaded holder, one request per node; the rest as tasks
            for pr in self.partitions:
                self._submit(pr, self._holder(pr), "first")
            return
        if self.verify == 1:
            # the common case: one graph for the whole round, Dask places each task by its data
            if self._task_nodes() == []:
                raise RuntimeError(
                    f"job {self.run.job_id}: grid.scheduler.round-engine 'tasks' needs nodes the scheduler can dial, "
                    f"and region {self.plugin.region!r} has only dial-out or unreachable ones; use the 'direct' engine"
                )
            futures = self.client.map(
                partition_update,
                [self.run.request] * len(parts),
                [self.state_blob] * len(parts),
                parts,
                [self.round_no] * len(parts),
                self.run.dataset.indices,
                key=[f"{self.prefix}-p{pr.index}" for pr in self.partitions],
                workers=self._task_nodes(),
            )
            for pr, future in zip(self.partitions, futures):
                self._track(pr, Attempt(future, None, time.monotonic(), "first"))
            self.counts["tasks"] += len(futures)
            return
        for pr in self.partitions:
            pr.needed = self.verify
            worker = self._choose(pr)
            if worker is None:
                pr.missing = self.verify  # issued when nodes join, and checked: no draw lets it go
                continue
            if self.adaptive is not None:
                identity = self.plugin.quarantine.identity_of(worker)
                if not self._spot_check(pr, identity):
                    pr.needed, pr.decided_for = 1, identity
                    self._submit(pr, worker, "first")
                    continue
            self._submit(pr, worker, "first")
            self._replicate(pr, self.verify - 1, note=False)
        self._note_waiting()

    def _spot_check(self, pr: PartitionRound, identity: str, salt: int = 0) -> bool:
        """verify="adaptive": whether the update of ``pr`` by node ``identity`` must be replicated."""
        assert self.adaptive is not None
        draw = spot_check_draw(self.run.job_id, self.round_no, pr.index, salt)
        return should_replicate(self.plugin.reliability.get(identity), self.adaptive, draw)

    def _holder(self, pr: PartitionRound) -> str | None:
        """The least-loaded running node holding ``pr``'s data that serves node requests, if any.

        Ties go to the node holding fewer of the dataset's partitions (it has
        fewer other chances of work: e.g. a node that just joined), then by
        address, so the assignment is deterministic for a given placement."""
        holders = [w for w in self._holders(pr) if self._can_call(w)]
        if not holders:
            # no node holds it: a dial-out node fetches it from the region's store
            holders = [w for w in self._usable() if self._fetches(pr, w) and self._can_call(w)]
        if not holders:
            return None
        held = self.holdings
        return min(holders, key=lambda w: (self.load.get(w, 0), held.get(w, 0), w))

    @functools.cached_property
    def holdings(self) -> dict[str, int]:
        """Node -> how many of the dataset's partitions it holds (counted once per round)."""
        return collections.Counter(w for pr in self.partitions for w in self._holders(pr))

    def _holders(self, pr: PartitionRound) -> set[str]:
        """Nodes holding ``pr``'s data: in Dask's memory (open nodes), or granted it from the store (dial-out)."""
        return self.dial_out.partition_holders(self.run.dataset.keys[pr.position], running_only=False)

    def _is_dial_out(self, worker: str | None) -> bool:
        return worker is not None and self.dial_out.reach.is_dial_out(worker)

    def _fetches(self, pr: PartitionRound, worker: str) -> bool:
        """Whether dial-out node ``worker`` can get ``pr``'s data: from the region's store, or
        by reading its file (a Files dataset)."""
        return self._is_dial_out(worker) and self.dial_out.can_fetch(self.run.dataset.keys[pr.position])

    def _task_nodes(self) -> list[str] | None:
        """Where a Dask task of this round may run (:meth:`DialOutNodes.open_nodes`): None is anywhere,
        an empty list nowhere."""
        return self.dial_out.open_nodes()

    def _can_call(self, worker: str) -> bool:
        ws = self.plugin.scheduler.workers.get(worker)
        return (
            self.direct
            and ws is not None
            and ws.status.name == "running"
            and self.dial_out.reach.may_work(worker)
            and (self._is_dial_out(worker) or not self.plugin.lacks_rounds(worker))
        )

    def _submit(self, pr: PartitionRound, worker: str | None, kind: str, task: bool = False) -> None:
        """Issue one update of ``pr``: a node request where ``worker`` holds the data, else a task."""
        n = len(pr.attempts)
        key = f"{self.prefix}-p{pr.index}" + (f"-{kind[0]}{n}" if n else "")
        if worker:
            self.load[worker] = self.load.get(worker, 0) + 1
            if self.verify > 1:
                pr.origins[worker] = self.plugin.origin_of(worker)
        if worker and self._can_call(worker) and (
            self._fetches(pr, worker) or (not task and worker in self._holders(pr))
        ):
            call = NodeCall(key, worker, asyncio.get_running_loop().create_future())
            attempt = Attempt(call, worker, time.monotonic(), kind)
            self.batch.setdefault(worker, []).append((pr, attempt))
            self._track(pr, attempt)
            return
        if self._is_dial_out(worker):
            worker = None  # no task on a node the scheduler cannot dial: Dask places it on an open one
        nodes = [worker] if worker else self._task_nodes()
        if nodes == []:  # (distributed reads an empty list as "anywhere")
            raise RuntimeError(
                f"job {self.run.job_id}: no node of region {self.plugin.region!r} can run the update of partition "
                f"{pr.index}: no node holds or can fetch its data, and the scheduler cannot dial the others for a "
                "task's result; resubmit the job once open nodes have joined"
            )
        self.counts["tasks"] += 1
        future = self.client.submit(
            partition_update,
            self.run.request,
            self.state_blob,
            self.run.parts[pr.position],
            self.round_no,
            pr.index,
            key=key,
            workers=nodes,
            # a pinned task must run there: replicas of one update need distinct nodes
            allow_other_workers=False,
        )
        self._track(pr, Attempt(future, worker, time.monotonic(), kind))

    def _track(self, pr: PartitionRound, attempt: Attempt) -> None:
        pr.attempts.append(attempt)
        if isinstance(attempt.future, NodeCall):
            self.fetchers.append(asyncio.create_task(self._await_call(pr, attempt)))
            return
        self.futures.append(attempt.future)
        self.fetchers.append(asyncio.create_task(self._fetch(pr, attempt)))

    # --- node requests ---------------------------------------------------------------------
    def _flush(self) -> None:
        """Send the node requests issued since the last flush: one per node."""
        batch, self.batch = self.batch, {}
        for worker, items in batch.items():
            self.counts["requests"] += 1
            self.calls.append(asyncio.create_task(self._call_node(worker, items)))

    async def _call_node(self, worker: str, items: list[tuple[PartitionRound, Attempt]]) -> None:
        """One ``grid_update`` request; settles each item's outcome future."""
        from grid.node.rounds import OP

        outcomes: dict[int, Any] = {}
        store = self.dial_out.store
        try:
            if self._is_dial_out(worker):
                # never dialed: the request goes on the stream the node opened, saying for each
                # partition how the node gets it if it does not hold it yet (it holds it from now on)
                keys = [self.run.dataset.keys[pr.position] for pr, _ in items]
                reply = await self.dial_out.channels.call(
                    worker,
                    "update",
                    request=self.run.request,
                    state=self.state_blob,
                    round_no=self.round_no,
                    parts=[[key, pr.index, self.dial_out.fetch_spec(worker, key)] for key, (pr, _) in zip(keys, items)],
                )
                if isinstance(reply, dict) and reply.get("status") == "error":
                    raise _NodeCallFailed(str(reply.get("message"))[:200])
                if isinstance(reply, dict):
                    for key, _ in reply.get("unfetched") or []:
                        store.forget(worker, str(key))  # it could not read it: no holder there
            else:
                reply = await getattr(self.plugin.scheduler.rpc(worker), OP)(
                    request=self.run.request,
                    state=self.state_blob,
                    round_no=self.round_no,
                    parts=[[self.run.dataset.keys[pr.position], pr.index] for pr, _ in items],
                    # node results are msgpack'd wire blobs; refuse anything that unpickles
                    serializers=["msgpack"],
                    deserializers=["msgpack"],
                )
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError) as exc:  # the node left, or the connection broke
            reply, default = None, NodeLost(exc)
        except _NodeCallFailed as exc:  # e.g. the store could not be read: another node tries
            reply, default = None, Declined(f"the node could not serve the request: {exc}")
        except TypeError as exc:
            # the request or its answer did not go through msgpack: run it as a task, whose
            # fetch finds out which node (if any) sends garbage (_probe)
            reply, default = None, Declined(f"not msgpack: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. a node whose handler table refused the call
            reply, default = None, Declined(f"{type(exc).__name__}: {exc}")
        else:
            default = None
            if reply is None:  # distributed answers None to an op it has no handler for
                self.plugin.nodes_without_rounds[worker] = time.monotonic()
                default = Declined("the node has no grid_update handler")
            elif not isinstance(reply, dict) or reply.get("status") not in ("OK", "paused"):
                default = wire.WireError(f"node {worker} answered a round request with {str(reply)[:80]!r}")
            elif reply["status"] == "paused":
                default = Declined("the node is paused")
            else:
                try:
                    for index, blob in reply.get("updates") or []:
                        outcomes[int(index)] = blob
                    for index, text in reply.get("errors") or []:
                        outcomes[int(index)] = NodeFailed(str(text))
                    for index, text in reply.get("invalid") or []:
                        outcomes[int(index)] = wire.WireError(f"node {worker}: {text}")
                    for index in reply.get("missing") or []:
                        outcomes[int(index)] = Declined("the node no longer holds the partition")
                except (TypeError, ValueError) as exc:
                    default = wire.WireError(f"node {worker} answered a malformed round reply ({exc})")
                    outcomes = {}
                default = default or wire.WireError(f"node {worker} did not answer for a partition it was asked for")
        for pr, attempt in items:
            assert isinstance(attempt.future, NodeCall)
            if not attempt.future.outcome.done():
                attempt.future.outcome.set_result(outcomes.get(pr.index, default))

    async def _await_call(self, pr: PartitionRound, attempt: Attempt) -> None:
        assert isinstance(attempt.future, NodeCall)
        outcome = await attempt.future.outcome
        self.queue.put_nowait((pr, attempt, outcome))

    async def _fetch(self, pr: PartitionRound, attempt: Attempt) -> None:
        # shielded: the client batches concurrent fetches into one shared request, and
        # cancelling one waiter (the round ending) must not cancel that request for the others
        fetch = asyncio.ensure_future(attempt.future.result())
        fetch.add_done_callback(_consume)
        try:
            outcome: Any = await asyncio.shield(fetch)
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the round itself is over; the fetch ends when its future is cancelled
            outcome = exc  # the future was cancelled or lost: a result to replace
        except Exception as exc:  # noqa: BLE001 - the round decides what a failure means
            outcome = exc
        self.queue.put_nowait((pr, attempt, outcome))

    def _usable(self) -> list[str]:
        """Nodes that may get work now: running (not paused), not quarantined, reachable or dialing out."""
        reach = self.dial_out.reach
        return [addr for addr, ws in self.plugin.scheduler.workers.items() if ws.status.name == "running" and reach.may_work(addr)]

    def _choose(self, pr: PartitionRound, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
        """The least-loaded usable node not yet used for this partition, holders of its data first."""
        holders = self._holders(pr)
        used = pr.workers() | set(exclude)
        for attempt in pr.pending:  # where Dask put the unpinned ones: a copy must go elsewhere
            task = self.plugin.scheduler.tasks.get(attempt.future.key)
            if task is not None and task.processing_on is not None:
                used.add(task.processing_on.address)
        voters = self._voters(pr)

        def serves(w: str) -> bool:  # a dial-out node only where it holds the data or can fetch it
            return not self._is_dial_out(w) or w in holders or self._fetches(pr, w)

        candidates = [w for w in self._usable() if w not in used and serves(w) and self._may_vote(w, voters)]
        if not candidates:  # a paused node will run it when it resumes (or the deadline moves it on)
            candidates = [
                w for w in self.plugin.scheduler.workers
                if w not in used and self.dial_out.reach.may_work(w) and serves(w) and self._may_vote(w, voters)
            ]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (w not in holders, self.load.get(w, 0), w))

    def _voters(self, pr: PartitionRound) -> list[Origin]:
        """Origins of the nodes computing or having computed ``pr`` (verify > 1; none needed otherwise)."""
        if self.verify == 1:
            return []
        workers = {a.worker for a in pr.pending if a.worker} | {w for w, _ in pr.results if w}
        return [pr.origins[w] for w in workers if w in pr.origins]

    def _may_vote(self, worker: str, voters: list[Origin]) -> bool:
        """Whether ``worker`` is independent of every one of ``voters``."""
        if not voters:
            return True
        origin = self.plugin.origin_of(worker)
        return all(independent(origin, voter, self.independence) for voter in voters)

    def _replicate(self, pr: PartitionRound, copies: int, kind: str = "replica", note: bool = True) -> None:
        """Issue ``copies`` more updates of ``pr`` on independent nodes; those no node allows now
        wait (``pr.missing``) until nodes join, and the job's status says so unless ``note`` is False."""
        for _ in range(copies):
            if not self._add_replica(pr, kind):
                pr.missing += 1
        if note and pr.missing:
            self._note_waiting()

    def _fill_missing(self) -> None:
        """Issue the copies that waited for independent nodes, where nodes now allow it."""
        for pr in self.partitions:
            while pr.accepted is None and pr.missing and self._add_replica(pr, kind="first" if not pr.attempts else "replica"):
                pr.missing -= 1
        self._note_waiting()

    def _note_waiting(self) -> None:
        """Say in the job's status (and once in the log) why the round waits, or that it no longer does."""
        waiting = [pr for pr in self.partitions if pr.accepted is None and pr.missing]
        if not waiting:
            if self.waiting:
                self.waiting = None
                self.plugin.note_waiting(self.run.job_id, None)
            return
        origins = [self.plugin.origin_of(w) for w in self.plugin.scheduler.workers if self.dial_out.reach.may_work(w)]
        have = independent_count(origins, self.independence)
        what = "nodes of different owners on different hosts" if self.independence == "hosts-and-owners" else "distinct nodes"
        setting, update = (f"verify={self.verify}", "update") if self.adaptive is None else ("verify='adaptive'", "checked update")
        reason = (
            f"waiting for nodes: {setting} needs {self.verify} independent nodes ({what}) for every {update}; "
            f"region {self.plugin.region!r} has {have} now ({len(waiting)} partition(s) of round "
            f"{self.round_no} wait). It goes on by itself when nodes join."
        )
        if self.waiting is None:
            logger.info("job %s: %s", self.run.job_id, reason)
        if reason != self.waiting:
            self.waiting = reason
            self.plugin.note_waiting(self.run.job_id, reason)

    def _add_replica(self, pr: PartitionRound, kind: str = "replica") -> bool:
        worker = self._choose(pr)
        if worker is None:
            return False
        self._submit(pr, worker, kind)
        if kind == "replica":
            self.counts["replicas"] += 1
        return True

    def _reissue(self, pr: PartitionRound, attempt: Attempt, why: str) -> None:
        if pr.reissues >= MAX_REISSUES:
            raise RuntimeError(
                f"job {self.run.job_id}: the update of partition {pr.index} in round {self.round_no} was "
                f"{why} {MAX_REISSUES + 1} times and could not be re-issued"
            )
        pr.reissues += 1
        self.counts["reissued"] += 1
        if self.verify == 1:  # any node will do: a holder, else Dask places it by its data (quarantined nodes are gone)
            self._submit(pr, self._holder(pr), "reissue")
        else:  # copies must stay on independent nodes: wait for one if none is there
            self._replicate(pr, 1, kind="reissue")

    # --- results -------------------------------------------------------------------------
    async def _handle(self, pr: PartitionRound, attempt: Attempt, outcome: Any) -> bool:
        """Take one task's outcome; return True when the partition is decided."""
        if isinstance(outcome, (asyncio.CancelledError, NodeLost)):
            if not pr.pending:  # lost (e.g. with a node just quarantined) and no other copy runs
                self._reissue(pr, attempt, "lost")
            return False
        if isinstance(outcome, Declined) and self._is_dial_out(attempt.worker):
            # no task can run on a dial-out node: the update goes to another node
            logger.info("job %s round %d: dial-out node %s declined partition %d (%s)",
                        self.run.job_id, self.round_no, attempt.worker, pr.index, outcome.why)
            if not pr.pending:
                self._reissue(pr, attempt, "declined")
            return False
        if isinstance(outcome, Declined):  # the same update as a task (counted once: not a re-issue)
            logger.debug("job %s round %d: node %s declined partition %d (%s); running it as a task",
                         self.run.job_id, self.round_no, attempt.worker, pr.index, outcome.why)
            self._submit(pr, attempt.worker if self.verify > 1 else None, attempt.kind, task=True)
            return False
        if isinstance(outcome, NodeFailed):
            raise RuntimeError(
                f"job {self.run.job_id}: the update of partition {pr.index} in round {self.round_no} failed on "
                f"node {self.plugin.quarantine.identity_of(attempt.worker or '')}: {outcome.text}"
            )
        if isinstance(outcome, (TypeError, wire.WireError)):  # undecodable or not a grid update
            return await self._reject(pr, attempt, outcome)
        if isinstance(outcome, BaseException):
            # the node reports the task failed: an honest node would fail the same way
            raise outcome
        try:
            update = self.run.decode(outcome)
        except (TypeError, wire.WireError) as exc:
            return await self._reject(pr, attempt, exc)
        if isinstance(attempt.future, NodeCall):
            worker: str | None = attempt.worker  # it answered this request itself
            self.plugin.count_update(attempt.worker)
        else:
            computed_by = self.plugin.result_workers_of(attempt.future.key)
            worker = computed_by[-1] if computed_by else attempt.worker
        self._add_result(pr, worker, update)
        return await self._decide(pr)

    async def _reject(self, pr: PartitionRound, attempt: Attempt, exc: BaseException) -> bool:
        """A fetch brought garbage: find the node that sent it, quarantine it, use a good copy.

        A client's fetch does not say which node a result came from (and a
        result lost with a node is computed again elsewhere), so every node
        holding the key is asked on its own; only a node that itself sends
        garbage is blamed. Returns True when the partition is decided.
        """
        if isinstance(attempt.future, NodeCall):  # the node answered the request itself: blame is exact
            blob, sender, guilty = None, None, attempt.worker
        else:
            blob, sender, guilty = await self._probe(attempt.future.key)
        if guilty is not None and guilty in self.plugin.scheduler.workers:  # not one quarantined meanwhile
            # never quarantine the last node of a region: a fault everyone shares is ours, not theirs
            if len(self.plugin.scheduler.workers) <= 1:
                raise RuntimeError(
                    f"job {self.run.job_id}: an update for partition {pr.index} in round {self.round_no} was "
                    f"rejected ({exc}) and could not be re-issued"
                ) from None
            self.plugin.verification_rejects += 1
            self.plugin.rejected[guilty] = self.plugin.rejected.get(guilty, 0) + 1
            await self._quarantine(
                guilty,
                f"sent an invalid update ({type(exc).__name__}: {exc})",
                {"job": self.run.job_id, "round": self.round_no, "partition": pr.index, "task": str(attempt.future.key)},
            )
        if blob is not None:  # an honest holder had it
            self._add_result(pr, sender, self.run.decode(blob))
            return await self._decide(pr)
        if not pr.pending:
            self._reissue(pr, attempt, "rejected")
        return False

    async def _probe(self, key: str) -> tuple[Any, str | None, str | None]:
        """Ask each node holding ``key`` for it, one at a time, accepting msgpack only.

        Returns the first valid update, the node that sent it, and the first
        node that sent garbage (each ``None`` if there was none).
        """
        ts = self.plugin.scheduler.tasks.get(key)
        holders = sorted(ws.address for ws in ts.who_has) if ts is not None and ts.who_has else []
        guilty = None
        for worker in holders:
            try:
                response = await get_data_from_worker(self.plugin.scheduler.rpc, [key], worker, deserializers=["msgpack"])
            except TypeError:  # its answer could not even be read as msgpack
                guilty = guilty or worker
                continue
            except (OSError, ValueError):
                continue  # the node left meanwhile, or answered nothing usable
            data = response.get("data") if response.get("status") == "OK" else None
            if not isinstance(data, dict) or key not in data:
                continue  # busy, or it no longer holds the key: no evidence either way
            blob = data[key]
            try:
                if isinstance(blob, Serialized):  # the scheduler's comms leave payloads serialized
                    blob = deserialize(blob.header, blob.frames, deserializers=["msgpack"])
                self.run.decode(blob)
            except (TypeError, wire.WireError):  # pickles, dask frames, or not a grid update
                guilty = guilty or worker
                continue
            return blob, worker, guilty
        return None, None, guilty

    def _add_result(self, pr: PartitionRound, worker: str | None, update: Update) -> None:
        if worker is not None:  # its identity now: a node that left has only its address
            pr.identities[worker] = self.plugin.quarantine.identity_of(worker)
        pr.results.append((worker, update))

    async def _decide(self, pr: PartitionRound) -> bool:
        if pr.needed == 1 and self.adaptive is None:
            pr.accepted = pr.results[0][1]
            return True
        if pr.needed == 1:  # verify="adaptive", and the draw let this partition go unchecked
            worker, update = pr.results[-1]
            identity = pr.identities.get(worker) if worker else None
            if identity is None or (identity != pr.decided_for and self._spot_check(pr, identity, len(pr.attempts))):
                # another node computed it (a re-issue, a speculative copy) and its own draw says check it,
                # or nobody knows which node did: replicate it now, as for an untrusted node
                pr.needed = self.verify
                self._replicate(pr, self.verify - len(pr.results) - len(pr.pending))
                return False
            pr.accepted = update
            self.unverified.setdefault(identity, []).append(pr.index)
            return True
        updates = [u for _, u in pr.results]
        group = quorum(updates, pr.needed, self.rtol, self.atol) if len(updates) >= pr.needed else None
        if group is not None:
            pr.accepted = updates[group[0]]
            reliability = self.plugin.reliability
            for i, (worker, update) in enumerate(pr.results):
                identity = pr.identities.get(worker) if worker else None
                if i in group:
                    if identity:
                        reliability.valid(identity)
                    continue
                if identity:
                    reliability.invalid(identity)
                if worker in self.plugin.scheduler.workers:  # not one quarantined meanwhile
                    self.plugin.verification_rejects += 1
                    self.plugin.rejected[worker] = self.plugin.rejected.get(worker, 0) + 1
                    await self._quarantine(
                        worker,
                        f"its update disagreed with {len(group)} agreeing replicas",
                        {
                            "job": self.run.job_id, "round": self.round_no, "partition": pr.index,
                            "agreeing_nodes": [pr.identities.get(pr.results[j][0] or "", "?") for j in group],
                            "difference_in_tolerances": difference(update, pr.accepted, self.rtol, self.atol),
                            "rtol": self.rtol, "atol": self.atol,
                        },
                    )
            return True
        if pr.pending or pr.missing:
            return False
        # every replica is in and no quorum: settle it with one more node (a majority)
        if len(pr.attempts) >= self.max_replicas:
            spread = [difference(u, updates[0], self.rtol, self.atol) for u in updates[1:]]
            raise RuntimeError(
                f"job {self.run.job_id}: {len(updates)} replicas of partition {pr.index} in round {self.round_no} "
                f"do not include {pr.needed} that agree (differences from the first, in tolerances: "
                f"{[round(s, 3) for s in spread]}); add nodes or raise grid.scheduler.verify.max-replicas"
            )
        self._replicate(pr, 1)  # or wait for an independent node, if none is left now
        return False

    async def _quarantine(self, worker: str, reason: str, evidence: dict) -> None:
        self.counts["quarantined"] += 1
        self.caught.append(self.plugin.quarantine.identity_of(worker))
        await self.plugin.quarantine.add(worker, reason=reason, evidence=evidence)

    # --- stragglers and lost tasks ----------------------------------------------------------
    def _deadline(self) -> float | None:
        """Seconds after the round's start beyond which a task is late, if known yet."""
        if not self.speculate:
            return None
        candidates = []
        needed = max(1, math.ceil(self.quantile * len(self.partitions)))
        if len(self.done_seconds) >= needed:
            candidates.append(statistics.median(self.done_seconds))
        previous = getattr(self.run, "last_round_seconds", None)
        if previous:
            candidates.append(statistics.median(previous))
        if not candidates:
            return None
        return max(self.minimum, self.multiplier * min(candidates))

    def _next_wakeup(self) -> float:
        deadline = self._deadline()
        if deadline is None:
            return POLL_SECONDS
        late_at = deadline - (time.monotonic() - self.started)
        return POLL_SECONDS if late_at <= 0 else max(0.01, min(POLL_SECONDS, late_at))

    def _tend_if_due(self) -> None:
        """Tend at most once per wake-up interval: a pass visits every partition, and
        doing it after every result would cost O(partitions^2) per round."""
        if time.monotonic() >= self.tend_at:
            self._tend()
            self.tend_at = time.monotonic() + self._next_wakeup()

    def _tend(self) -> None:
        """Re-issue tasks pinned to nodes that left; speculate on late ones; issue copies that waited."""
        if self.verify > 1:
            self._fill_missing()
        workers = self.plugin.scheduler.workers
        deadline = self._deadline()
        elapsed = time.monotonic() - self.started
        for pr in self.partitions:
            if pr.accepted is not None:
                continue
            for attempt in pr.pending:
                if attempt.worker is not None and attempt.worker not in workers:
                    attempt.settled = True  # it would wait for its node forever
                    self.to_cancel.append(attempt.future)
                    self._reissue(pr, attempt, "lost")
            if deadline is not None and elapsed > deadline and not pr.speculated and pr.pending:
                pr.speculated = True
                if self._add_replica(pr, kind="speculative"):
                    self.counts["speculative"] += 1
                    logger.info(
                        "job %s round %d: partition %d is late (%.2fs > %.2fs); speculative copy issued",
                        self.run.job_id, self.round_no, pr.index, elapsed, deadline,
                    )
