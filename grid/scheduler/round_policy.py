"""What a round of partition updates decides, kept apart from the calls that carry it out.

The one idea here: every choice the round engine
(:class:`~grid.scheduler.attempts.RoundAttempts`) makes, as plain data in and
a decision out. Nothing here awaits, sends, fetches or reads the scheduler:
the round engine gathers the facts (who holds a partition, who runs, how many
updates each node has this round, which results came in) and carries out the
decision. So each rule is tested without a cluster (``tests/unit/test_round_policy.py``).

* **Which node gets an update.** A partition's first update goes to the
  least-loaded node holding its data that serves node requests
  (:func:`holder`); ties go to the node holding fewer of the dataset's
  partitions (it has fewer other chances of work: e.g. a node that just
  joined), then by address, so the assignment is deterministic for a given
  placement. Where no node holds it, a dial-out node that can get it from
  the region's store takes it. A further copy (a replica, a speculative or
  re-issued copy) goes to the least-loaded node not used for the partition
  yet, holders first (:func:`choose_node`); a dial-out node only where it
  holds the data or can fetch it; with ``verify=N`` only a node independent
  of every node that computed or computes the partition (:func:`may_vote`,
  on :func:`grid.scheduler.verify.independent`). A paused node is the last
  resort: it runs the update when it resumes, or the deadline moves it on.
* **When an update is late.** Once ``speculation.quantile`` of the
  partitions are done, a partition whose task has run longer than
  ``speculation.multiplier`` times the median completion time (and at least
  ``speculation.minimum``) is late and gets a speculative copy, once; the
  previous round's median sets the same deadline from the start of a round
  (:meth:`Speculation.deadline`). Updates are deterministic, so which copy
  wins never changes the model.
* **When a replicated update is decided.** With ``verify=N`` an update is
  accepted once ``N`` results agree (:func:`grid.scheduler.verify.quorum`);
  the others are the minority. Without a quorum the round waits for the
  copies still running or waiting for a node, then settles the disagreement
  with one more replica (a majority), and fails the job at
  ``verify.max-replicas`` (:func:`settle`).
* **How often an update is issued again.** An update lost with its node, or
  whose node sent garbage, is issued again at most :data:`MAX_REISSUES` times.
* **What a node's answer means.** A node's answer to a round request says,
  for each partition it was asked for, whether the update came back, failed
  as it would on any node, was invalid, or was declined and must run
  elsewhere (:func:`read_reply`).

The comparison of replicas, the quorum and what makes two nodes independent
are :mod:`grid.scheduler.verify`'s; this module only decides what the round
does with them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grid import wire
from grid.scheduler.verify import Origin, Update, difference, independent, quorum

if TYPE_CHECKING:
    from distributed import Future

    from grid.scheduler.round_calls import NodeCall

#: how often one partition's update is re-issued after its tasks were lost or garbage
MAX_REISSUES = 3

#: how often a round wakes up to look for tasks stuck on nodes that left (seconds)
POLL_SECONDS = 0.5


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
        """Nodes this partition's update was issued to or came from."""
        return {a.worker for a in self.attempts if a.worker} | {w for w, _ in self.results if w}

    def voters(self) -> list[Origin]:
        """Origins of the nodes computing or having computed this partition.

        Origins are taken when a copy is issued, and only with ``verify > 1``:
        with one update per partition nobody votes, and the list is empty."""
        workers = {a.worker for a in self.pending if a.worker} | {w for w, _ in self.results if w}
        return [self.origins[w] for w in workers if w in self.origins]

    def may_reissue(self) -> bool:
        """Whether the update may be issued once more (:data:`MAX_REISSUES`)."""
        return self.reissues < MAX_REISSUES

    def stranded(self, workers: Collection[str]) -> list[Attempt]:
        """Pending attempts pinned to a node no longer among ``workers``: they would wait for it forever."""
        return [a for a in self.pending if a.worker is not None and a.worker not in workers]

    def is_late(self, deadline: float | None, elapsed: float) -> bool:
        """Whether this undecided partition should get its (one) speculative copy now."""
        return (
            self.accepted is None and deadline is not None and elapsed > deadline
            and not self.speculated and bool(self.pending)
        )


# --- which node gets an update ---------------------------------------------------------
def holder(
    holders: Iterable[str], fetchers: Iterable[str], load: Mapping[str, int], holdings: Mapping[str, int]
) -> str | None:
    """The node a partition's update goes to as a node request, if any.

    Parameters
    ----------
    holders : iterable of str
        Nodes holding the partition's data that serve node requests now.
    fetchers : iterable of str
        Dial-out nodes that serve node requests and can get the data from
        the region's store; read only when ``holders`` is empty.
    load : mapping of str to int
        Updates issued to each node in this round so far.
    holdings : mapping of str to int
        How many of the dataset's partitions each node holds.

    Returns
    -------
    str or None
        The least-loaded candidate, ties to the one holding fewer partitions,
        then to the lowest address; None when there is no candidate (the
        update then runs as a task).
    """
    candidates = list(holders) or list(fetchers)
    if not candidates:
        return None
    return min(candidates, key=lambda w: (load.get(w, 0), holdings.get(w, 0), w))


def may_vote(origin: Origin, voters: Sequence[Origin], independence: str) -> bool:
    """Whether a node of ``origin`` is independent of every one of ``voters``.

    ``independence`` is ``"nodes"`` or ``"hosts-and-owners"`` (:func:`grid.scheduler.verify.independent`);
    with no voters, any node may vote."""
    return all(independent(origin, voter, independence) for voter in voters)


def choose_node(
    usable: Iterable[str],
    fallback: Iterable[str],
    *,
    holders: Collection[str],
    used: Collection[str],
    dial_out: Collection[str],
    fetchable: bool,
    load: Mapping[str, int],
    voters: Sequence[Origin] = (),
    origin_of: Callable[[str], Origin] | None = None,
    independence: str = "nodes",
) -> str | None:
    """The node a further copy of a partition's update goes to, if any.

    Parameters
    ----------
    usable : iterable of str
        Nodes that may get work now (running, not quarantined, reachable or dialing out).
    fallback : iterable of str
        Nodes that may get work once they resume (paused ones included);
        read only when no usable node fits.
    holders : collection of str
        Nodes holding the partition's data; they come first.
    used : collection of str
        Nodes the partition's update was issued to, ran on or came from: a
        copy must go elsewhere.
    dial_out : collection of str
        Dial-out nodes: no task can run on them, so one fits only where it
        holds the data or ``fetchable``.
    fetchable : bool
        Whether a dial-out node can get the partition itself (from the
        region's store, or by reading its file).
    load : mapping of str to int
        Updates issued to each node in this round so far.
    voters : sequence of Origin
        Origins of the nodes computing or having computed the partition
        (:meth:`PartitionRound.voters`); a candidate must be independent of each.
    origin_of : callable, optional
        A node's :class:`~grid.scheduler.verify.Origin`; needed when ``voters`` is not empty.
    independence : str
        ``"nodes"`` or ``"hosts-and-owners"`` (:func:`grid.scheduler.verify.independent`).

    Returns
    -------
    str or None
        The least-loaded fitting node, holders first, ties by address; None
        when no node fits (the copy waits for one).
    """

    def fits(w: str) -> bool:
        if w in used or (w in dial_out and w not in holders and not fetchable):
            return False
        return not voters or may_vote(origin_of(w), voters, independence)  # type: ignore[misc]

    candidates = [w for w in usable if fits(w)] or [w for w in fallback if fits(w)]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (w not in holders, load.get(w, 0), w))


# --- when an update is late ------------------------------------------------------------
@dataclass(frozen=True)
class Speculation:
    """``grid.scheduler.speculation``: when an update is late enough for a speculative copy.

    Parameters
    ----------
    enabled : bool
        False: no update is ever late.
    quantile : float
        Share of the round's partitions that must be done before this
        round's median completion time counts.
    multiplier : float
        An update is late after this times the median completion time.
    minimum : float
        Seconds before which no update is late.
    """

    enabled: bool = True
    quantile: float = 0.5
    multiplier: float = 3.0
    minimum: float = 2.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "Speculation":
        """Read the ``grid.scheduler.speculation`` section (``minimum`` may be a duration such as ``"2s"``)."""
        from dask.utils import parse_timedelta

        return cls(
            enabled=bool(section["enabled"]),
            quantile=float(section["quantile"]),
            multiplier=float(section["multiplier"]),
            minimum=float(parse_timedelta(section["minimum"])),
        )

    def deadline(
        self, done_seconds: Sequence[float], partitions: int, previous: Sequence[float] | None
    ) -> float | None:
        """Seconds after the round's start beyond which an update is late, if known yet.

        Parameters
        ----------
        done_seconds : sequence of float
            Seconds from the round's start to each partition decided so far.
        partitions : int
            Partitions in the round.
        previous : sequence of float or None
            The same for the previous round (empty or None in the first).

        Returns
        -------
        float or None
            ``max(minimum, multiplier * median)``, the median being the
            smaller of this round's (once ``quantile`` of the partitions are
            done) and the previous round's; None while neither is known, or
            when speculation is off.
        """
        if not self.enabled:
            return None
        candidates = []
        needed = max(1, math.ceil(self.quantile * partitions))
        if len(done_seconds) >= needed:
            candidates.append(statistics.median(done_seconds))
        if previous:
            candidates.append(statistics.median(previous))
        if not candidates:
            return None
        return late_after(min(candidates), self.multiplier, self.minimum)


def late_after(median: float, multiplier: float, minimum: float) -> float:
    """Seconds after which work that usually takes ``median`` seconds is late: ``multiplier``
    times that, never less than ``minimum``. The rule of speculative copies (:class:`Speculation`)
    and of partial participation (a region skipped for a round, ``grid/scheduler/driver.py``)."""
    return max(minimum, multiplier * median)


def next_wakeup(deadline: float | None, elapsed: float) -> float:
    """Seconds until the round next looks for late and lost updates.

    Every :data:`POLL_SECONDS` at most (lost updates are found by looking),
    sooner when the deadline falls before that, never sooner than 10 ms."""
    if deadline is None:
        return POLL_SECONDS
    late_at = deadline - elapsed
    return POLL_SECONDS if late_at <= 0 else max(0.01, min(POLL_SECONDS, late_at))


# --- when a replicated update is decided -----------------------------------------------
#: what :func:`settle` decides
ACCEPT, WAIT, REPLICATE, FAIL = "accept", "wait", "replicate", "fail"


@dataclass(frozen=True)
class Verdict:
    """What the results of a replicated partition update decide now (:func:`settle`).

    ``action`` is :data:`ACCEPT` (``group`` holds the indices of the agreeing
    results in ``PartitionRound.results``; every other result is in the
    minority), :data:`WAIT` (copies still run or wait for a node),
    :data:`REPLICATE` (one more replica settles it by majority) or
    :data:`FAIL` (``spread`` holds each result's difference from the first,
    in tolerances).
    """

    action: str
    group: tuple[int, ...] = ()
    spread: tuple[float, ...] = ()


def settle(pr: PartitionRound, rtol: float, atol: float, max_replicas: int) -> Verdict:
    """Decide a partition whose update needs ``pr.needed`` agreeing results.

    Parameters
    ----------
    pr : PartitionRound
        Its results so far, copies pending and copies waiting for a node.
    rtol, atol : float
        ``grid.scheduler.verify.rtol`` / ``atol``.
    max_replicas : int
        Copies of one update at most (``grid.scheduler.verify.max-replicas``).
    """
    updates = [u for _, u in pr.results]
    group = quorum(updates, pr.needed, rtol, atol) if len(updates) >= pr.needed else None
    if group is not None:
        return Verdict(ACCEPT, group=tuple(group))
    if pr.pending or pr.missing:
        return Verdict(WAIT)
    if len(pr.attempts) >= max_replicas:
        return Verdict(FAIL, spread=tuple(difference(u, updates[0], rtol, atol) for u in updates[1:]))
    return Verdict(REPLICATE)


def waiting_reason(
    setting: str, verify: int, adaptive: bool, independence: str, have: int, region: str, waiting: int, round_no: int
) -> str:
    """Why a round waits for independent nodes, as the job's status says it.

    ``setting`` is the job's ``verify`` as the user wrote it, ``have`` how
    many independent nodes the region has now, ``waiting`` how many
    partitions wait for one."""
    what = "nodes of different owners on different hosts" if independence == "hosts-and-owners" else "distinct nodes"
    update = "checked update" if adaptive else "update"
    return (
        f"waiting for nodes: {setting} needs {verify} independent nodes ({what}) for every {update}; "
        f"region {region!r} has {have} now ({waiting} partition(s) of round "
        f"{round_no} wait). It goes on by itself when nodes join."
    )


# --- what a node's answer means --------------------------------------------------------
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


def read_reply(worker: str, reply: Any) -> tuple[dict[int, Any], Any]:
    """What node ``worker``'s answer to a round request says of each partition it was asked for.

    Returns the outcome by global partition index (a wire blob, a
    :class:`NodeFailed`, a :class:`Declined` or a :class:`grid.wire.WireError`)
    and the outcome of every partition the answer does not name. ``None`` is
    how distributed answers an op without a handler: the node declines.
    """
    if reply is None:
        return {}, Declined("the node has no grid_update handler")
    if not isinstance(reply, dict) or reply.get("status") not in ("OK", "paused"):
        return {}, wire.WireError(f"node {worker} answered a round request with {str(reply)[:80]!r}")
    if reply["status"] == "paused":
        return {}, Declined("the node is paused")
    outcomes: dict[int, Any] = {}
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
        return {}, wire.WireError(f"node {worker} answered a malformed round reply ({exc})")
    return outcomes, wire.WireError(f"node {worker} did not answer for a partition it was asked for")
