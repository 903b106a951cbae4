"""One round of partition updates on one region: issue, wait, speculate, verify, re-issue.

A round of an ``average`` job needs one accepted update per partition. Nodes
are volunteers, so the region's scheduler does not simply wait for one task
per partition; :class:`RoundAttempts` runs the round as BOINC runs a
workunit and Spark runs a stage. It takes each outcome as it arrives and
acts on it; what it decides (which node gets an update, when an update is
late, when replicas agree, how often an update is issued again, what a
node's answer means) is :mod:`grid.scheduler.round_policy`'s, and how an
update reaches a node and its outcome comes back (one ``grid_update``
request per node per round, or a Dask task) is
:mod:`grid.scheduler.round_calls`'s.

* **Issue.** Every partition update goes to a node that already holds the
  partition, as a request. An update that no request can serve (a stock
  worker without the handler, a paused node, a partition whose holders all
  left, or a replica that must run on a node without the data) becomes a Dask
  task, as every update was before (``grid.scheduler.round-engine: tasks``
  makes every update a task: one graph per round, placed by Dask next to the
  data). With ``verify=N`` each partition gets ``N`` updates on ``N``
  independent nodes, in every round. When the region has fewer independent
  nodes than that, the round waits for them (the job's status says so)
  rather than accept fewer. With ``verify="adaptive"`` an update is
  replicated (to the adaptive quorum) unless the node it went to is trusted,
  and a trusted node's update still is with a probability never below a
  floor (:func:`grid.scheduler.verify.should_replicate`); the round reports
  the nodes whose updates it accepted unchecked, so that the job driver can
  roll back and replay what a node caught later touched.
* **Verify.** Nodes in the minority of an accepted quorum are quarantined
  with the evidence, and every voter's record is kept
  (:class:`grid.scheduler.verify.Reliability`).
* **Stragglers.** A late update gets a speculative copy on another node
  holding its data. The first valid answer wins and the others are
  cancelled.
* **Lost tasks.** A task pinned to a node that left, or lost with a node just
  quarantined, is issued again elsewhere; a node that sends something that is
  not a grid update is quarantined and its task re-issued. A node request's
  sender is known; for a fetched task result each holder is asked on its own,
  so that only the node that sent the garbage is blamed.

Every result is decoded and checked (``grid.wire``) before it is compared or
used. The counts (requests, tasks, re-issues, speculative copies, extra
replicas, quarantined nodes) go into the round's metrics and from there into
the job's history.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from grid import config, wire
from grid.protocol.requests import ADAPTIVE
from grid.scheduler import recovery, round_policy
from grid.scheduler.round_calls import NodeCall, RoundCalls
from grid.scheduler.round_policy import (
    MAX_REISSUES,
    Attempt,
    Declined,
    NodeFailed,
    NodeLost,
    PartitionRound,
    Speculation,
)
from grid.scheduler.verify import (
    AdaptiveSettings,
    Update,
    difference,
    independent_count,
    should_replicate,
    spot_check_draw,
    verify_quorum,
)

if TYPE_CHECKING:
    from grid.scheduler.driver import RegionRun

logger = logging.getLogger("grid.driver")

#: values of grid.scheduler.round-engine
ROUND_ENGINES = ("direct", "tasks")


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
        self.ledger = run.plugin.ledger  # who computed what, who was refused, verification records, quarantine
        self.round_no = round_no
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
        self.direct = config.choice("scheduler.round-engine", ROUND_ENGINES) == "direct"
        self.started = time.monotonic()
        self.tend_at = self.started  # when the next look for late and lost tasks is due
        self.done_seconds: list[float] = []
        self.load: dict[str, int] = {}
        self.counts = {"reissued": 0, "speculative": 0, "replicas": 0, "quarantined": 0, "requests": 0, "tasks": 0}
        self.calls = RoundCalls(run, client, round_no, state_blob, self.counts, self.direct)  # carries out what is issued
        self.independence = self.ledger.independence() if self.verify > 1 else "nodes"
        self.waiting: str | None = None  # why this round waits, as the job's status says it
        self.speculation = Speculation.from_config(config.get("scheduler.speculation"))
        self.rtol, self.atol = float(ver["rtol"]), float(ver["atol"])
        self.max_replicas = max(self.verify, int(ver["max-replicas"]))
        self.partitions = [PartitionRound(pos, index, 1) for pos, index in enumerate(run.dataset.indices)]

    # --- the round ---------------------------------------------------------------------
    async def run_round(self) -> tuple[list[Update], dict[str, Any]]:
        """Return the accepted update of every partition (in partition order) and the counts.

        With ``verify="adaptive"`` the counts also say which node identities
        had an update accepted unchecked (``unverified_nodes``) and which
        were quarantined in this round (``caught``)."""
        getter: asyncio.Future | None = None
        try:
            self._issue_first()
            self.calls.flush()
            undecided = len(self.partitions)
            while undecided:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow the job's cancellation
                getter = getter or asyncio.ensure_future(self.calls.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=max(0.0, self.tend_at - time.monotonic()))
                if not done:
                    self._tend_if_due()
                    self.calls.flush()
                    await self.calls.cancel()
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
                        self.calls.drop(other)
                self._tend_if_due()
                self.calls.flush()
                await self.calls.cancel()
        finally:
            if getter:
                getter.cancel()
            await self.calls.close([a for pr in self.partitions for a in pr.pending])
            if self.waiting:  # a cancelled job waits no more
                self.plugin.jobs.note_waiting(self.run.job_id, None)
        self.run.last_round_seconds = list(self.done_seconds)
        if self.verify > 1:
            recovery.save_reliability(self.plugin)
        counts: dict[str, Any] = dict(self.counts)
        if self.adaptive is not None:
            counts["unverified"] = sum(len(v) for v in self.unverified.values())
            counts["unverified_nodes"] = sorted(self.unverified)
            counts["caught"] = sorted(set(self.caught))
        return [pr.accepted for pr in self.partitions], counts  # type: ignore[misc]

    # --- issuing tasks -------------------------------------------------------------------
    def _issue_first(self) -> None:
        if self.verify == 1 and self.direct:
            # each partition to its least-loaded holder, one request per node; the rest as tasks
            for pr in self.partitions:
                self._submit(pr, self._holder(pr), "first")
            return
        if self.verify == 1:
            # the common case: one graph for the whole round, Dask places each task by its data
            if self.calls.task_nodes() == []:
                raise RuntimeError(
                    f"job {self.run.job_id}: grid.scheduler.round-engine 'tasks' needs nodes the scheduler can dial, "
                    f"and region {self.plugin.region!r} has only dial-out or unreachable ones; use the 'direct' engine"
                )
            keys = [f"{self.prefix}-p{pr.index}" for pr in self.partitions]
            self.calls.map(self.partitions, keys, self.calls.task_nodes())
            return
        for pr in self.partitions:
            pr.needed = self.verify
            worker = self._choose(pr)
            if worker is None:
                pr.missing = self.verify  # issued when nodes join, and checked: no draw lets it go
                continue
            if self.adaptive is not None:
                identity = self.ledger.quarantine.identity_of(worker)
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
        return should_replicate(self.ledger.reliability.get(identity), self.adaptive, draw)

    def _holder(self, pr: PartitionRound) -> str | None:
        """The node ``pr``'s update goes to as a node request (:func:`round_policy.holder`), if any."""
        def fetchers() -> Iterator[str]:
            # no node holds it: a dial-out node fetches it from the region's store. A generator
            # function, so that the scan of every node runs only when the policy reads it (a
            # generator expression would list the nodes at once, for every partition of a round)
            yield from (w for w in self.dial_out.working_nodes() if self.calls.fetches(pr, w) and self.calls.can_call(w))

        return round_policy.holder(
            (w for w in self.calls.holders(pr) if self.calls.can_call(w)), fetchers(), self.load, self.holdings
        )

    @functools.cached_property
    def holdings(self) -> dict[str, int]:
        """Node -> how many of the dataset's partitions it holds (counted once per round)."""
        return collections.Counter(w for pr in self.partitions for w in self.calls.holders(pr))

    def _submit(self, pr: PartitionRound, worker: str | None, kind: str, task: bool = False) -> None:
        """Issue one update of ``pr`` to ``worker`` (None: where Dask places it), counting its load
        (:meth:`RoundCalls.issue <grid.scheduler.round_calls.RoundCalls.issue>` says how it goes)."""
        n = len(pr.attempts)
        key = f"{self.prefix}-p{pr.index}" + (f"-{kind[0]}{n}" if n else "")
        if worker:
            self.load[worker] = self.load.get(worker, 0) + 1
            if self.verify > 1:
                pr.origins[worker] = self.ledger.origin_of(worker)
        self.calls.issue(pr, worker, key, kind, task)

    def _choose(self, pr: PartitionRound) -> str | None:
        """The node a further copy of ``pr``'s update goes to (:func:`round_policy.choose_node`), if any."""
        used = pr.workers()
        for attempt in pr.pending:  # where Dask put the unpinned ones: a copy must go elsewhere
            task = self.plugin.scheduler.tasks.get(attempt.future.key)
            if task is not None and task.processing_on is not None:
                used.add(task.processing_on.address)
        workers, reach = self.plugin.scheduler.workers, self.dial_out.reach
        return round_policy.choose_node(
            self.dial_out.working_nodes(),
            (w for w in workers if reach.may_work(w)),  # paused ones too: read only when no usable node fits
            holders=self.calls.holders(pr),
            used=used,
            dial_out={w for w in workers if reach.is_dial_out(w)},
            fetchable=self.dial_out.can_fetch(self.run.dataset.keys[pr.position]),
            load=self.load,
            voters=pr.voters(),
            origin_of=self.ledger.origin_of,
            independence=self.independence,
        )

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
                self.plugin.jobs.note_waiting(self.run.job_id, None)
            return
        origins = [self.ledger.origin_of(w) for w in self.plugin.scheduler.workers if self.dial_out.reach.may_work(w)]
        reason = round_policy.waiting_reason(
            f"verify={self.verify}" if self.adaptive is None else "verify='adaptive'",
            self.verify, self.adaptive is not None, self.independence,
            independent_count(origins, self.independence), self.plugin.region, len(waiting), self.round_no,
        )
        if self.waiting is None:
            logger.info("job %s: %s", self.run.job_id, reason)
        if reason != self.waiting:
            self.waiting = reason
            self.plugin.jobs.note_waiting(self.run.job_id, reason)

    def _add_replica(self, pr: PartitionRound, kind: str = "replica") -> bool:
        worker = self._choose(pr)
        if worker is None:
            return False
        self._submit(pr, worker, kind)
        if kind == "replica":
            self.counts["replicas"] += 1
        return True

    def _reissue(self, pr: PartitionRound, attempt: Attempt, why: str) -> None:
        if not pr.may_reissue():
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
        if isinstance(outcome, Declined) and self.calls.is_dial_out(attempt.worker):
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
                f"node {self.ledger.quarantine.identity_of(attempt.worker or '')}: {outcome.text}"
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
            self.ledger.count_update(attempt.worker)
        else:
            computed_by = self.ledger.result_workers_of(attempt.future.key)
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
            blob, sender, guilty = await self.calls.probe(attempt.future.key)
        if guilty is not None and guilty in self.plugin.scheduler.workers:  # not one quarantined meanwhile
            # never quarantine the last node of a region: a fault everyone shares is ours, not theirs
            if len(self.plugin.scheduler.workers) <= 1:
                raise RuntimeError(
                    f"job {self.run.job_id}: an update for partition {pr.index} in round {self.round_no} was "
                    f"rejected ({exc}) and could not be re-issued"
                ) from None
            self.ledger.reject(guilty)
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

    def _add_result(self, pr: PartitionRound, worker: str | None, update: Update) -> None:
        if worker is not None:  # its identity now: a node that left has only its address
            pr.identities[worker] = self.ledger.quarantine.identity_of(worker)
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
        verdict = round_policy.settle(pr, self.rtol, self.atol, self.max_replicas)
        if verdict.action == round_policy.ACCEPT:
            group = verdict.group
            pr.accepted = pr.results[group[0]][1]
            reliability = self.ledger.reliability
            for i, (worker, update) in enumerate(pr.results):
                identity = pr.identities.get(worker) if worker else None
                if i in group:
                    if identity:
                        reliability.valid(identity)
                    continue
                if identity:
                    reliability.invalid(identity)
                if worker in self.plugin.scheduler.workers:  # not one quarantined meanwhile
                    self.ledger.reject(worker)
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
        if verdict.action == round_policy.FAIL:
            raise RuntimeError(
                f"job {self.run.job_id}: {len(pr.results)} replicas of partition {pr.index} in round {self.round_no} "
                f"do not include {pr.needed} that agree (differences from the first, in tolerances: "
                f"{[round(s, 3) for s in verdict.spread]}); add nodes or raise grid.scheduler.verify.max-replicas"
            )
        if verdict.action == round_policy.REPLICATE:  # every replica is in and no quorum: one more node settles it
            self._replicate(pr, 1)  # or waits for an independent node, if none is left now
        return False

    async def _quarantine(self, worker: str, reason: str, evidence: dict) -> None:
        self.counts["quarantined"] += 1
        self.caught.append(self.ledger.quarantine.identity_of(worker))
        await self.ledger.quarantine.add(worker, reason=reason, evidence=evidence)

    # --- stragglers and lost tasks ----------------------------------------------------------
    def _deadline(self) -> float | None:
        """Seconds after the round's start beyond which a task is late, if known yet."""
        previous = getattr(self.run, "last_round_seconds", None)
        return self.speculation.deadline(self.done_seconds, len(self.partitions), previous)

    def _tend_if_due(self) -> None:
        """Tend at most once per wake-up interval: a pass visits every partition, and
        doing it after every result would cost O(partitions^2) per round."""
        if time.monotonic() >= self.tend_at:
            self._tend()
            now = time.monotonic()
            self.tend_at = now + round_policy.next_wakeup(self._deadline(), now - self.started)

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
            for attempt in pr.stranded(workers):
                self.calls.drop(attempt)  # it would wait for its node forever
                self._reissue(pr, attempt, "lost")
            if pr.is_late(deadline, elapsed):
                pr.speculated = True
                if self._add_replica(pr, kind="speculative"):
                    self.counts["speculative"] += 1
                    logger.info(
                        "job %s round %d: partition %d is late (%.2fs > %.2fs); speculative copy issued",
                        self.run.job_id, self.round_no, pr.index, elapsed, deadline,
                    )
