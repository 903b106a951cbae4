"""Verified results: compare replicas of one partition update, find a quorum, track node records.

With ``verify=N`` a job runs each partition update on ``N`` independent nodes
and accepts a result only when ``N`` of them agree (BOINC's *quorum*), for
every update of every round: no node earns its way out of being checked.
Updates are deterministic, so honest nodes on identical hardware agree
bitwise; the tolerances (``grid.scheduler.verify.rtol`` / ``atol``) absorb
different CPUs and BLAS builds. Nodes whose result disagrees with an accepted
quorum are the minority and get quarantined by the round engine.

*Independent* (:class:`Origin`, :func:`independent`) is what a colluding
volunteer cannot fake cheaply: on community (TLS) grids two nodes are
independent when their certificates have different owners and they connect
from different hosts, so a volunteer running five nodes counts once in a
quorum; on private and embedded grids, where every node may share one host,
distinct nodes are independent (``grid.scheduler.verify.independent``).

``verify="adaptive"`` is the explicit, weaker choice: an update of a node
that has earned trust (:func:`trust_streak`) is replicated only with
probability :func:`replication_probability`, never below a floor, and the
draw (:func:`spot_check_draw`) is reproducible from the job, the round and
the partition (:func:`should_replicate`). What makes it safe is not here but
in the job driver: a node caught later rolls back and replays every round it
contributed an unchecked update to, or taints a job that already ended.

:class:`Reliability` keeps each node's record (results that agreed with a
quorum and that did not), shown on the dashboard and kept across restarts.
Everything here is pure bookkeeping on the scheduler; nothing a node sends is
executed.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from grid.protocol.requests import ADAPTIVE

#: an update as the round engine holds it: (arrays of the model state, metadata)
Update = tuple[dict[str, np.ndarray], dict[str, Any]]


def difference(a: Update, b: Update, rtol: float, atol: float) -> float:
    """How far two updates of the same partition are apart, in units of the tolerance.

    Returns the largest ``|x - y| / (atol + rtol * |y|)`` over every array and
    the sample count; ``<= 1`` means they agree. Arrays whose names or shapes
    differ are infinitely far apart.
    """
    (sa, ma), (sb, mb) = a, b
    if sa.keys() != sb.keys():
        return float("inf")
    worst = 0.0 if ma.get("samples") == mb.get("samples") else float("inf")
    for name, x in sa.items():
        y = sb[name]
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size == 0:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            ratio = np.abs(x - y) / (atol + rtol * np.abs(y))
        worst = max(worst, float(np.nanmax(np.where(np.isnan(ratio), np.inf, ratio))))
    return worst


def quorum(updates: list[Update], needed: int, rtol: float, atol: float) -> list[int] | None:
    """Indices of the first group of at least ``needed`` updates that agree, or ``None``.

    Updates are grouped greedily, each joining the first group whose first
    member it agrees with; the first group to reach ``needed`` members wins.
    Greedy grouping is exact when honest results are identical (the
    deterministic case) and conservative otherwise: a borderline result at
    worst costs one more replica.
    """
    groups: list[list[int]] = []
    for i, update in enumerate(updates):
        for group in groups:
            if difference(update, updates[group[0]], rtol, atol) <= 1.0:
                group.append(i)
                break
        else:
            groups.append([i])
    for group in groups:
        if len(group) >= needed:
            return group
    return None


#: ``grid.scheduler.verify.independent``: what makes two nodes independent in a quorum
INDEPENDENCE = ("auto", "nodes", "hosts-and-owners")


@dataclass(frozen=True)
class Origin:
    """Where a node's results come from, as far as independence goes.

    ``node`` is its identity (certificate name on TLS grids), ``owner`` who
    holds its certificate, ``host`` the address its connection comes from.
    """

    node: str
    owner: str
    host: str


def independent(a: Origin, b: Origin, mode: str) -> bool:
    """Whether results of ``a`` and ``b`` may count as two votes of one quorum.

    ``mode`` is ``"nodes"`` (distinct nodes) or ``"hosts-and-owners"``
    (distinct nodes of different owners on different hosts).
    """
    if a.node == b.node:
        return False
    if mode == "nodes":
        return True
    return a.owner != b.owner and a.host != b.host


def independent_count(origins: list[Origin], mode: str) -> int:
    """How many of ``origins`` can vote together: a greedy set of mutually independent ones.

    Exact for ``"nodes"``; a lower bound otherwise (what the message a
    waiting job shows needs, not an optimum).
    """
    chosen: list[Origin] = []
    for origin in sorted(origins, key=lambda o: (o.owner, o.host, o.node)):
        if all(independent(origin, other, mode) for other in chosen):
            chosen.append(origin)
    return len(chosen)


@dataclass
class NodeRecord:
    """One node's verification record (BOINC's host reliability)."""

    valid: int = 0  # results that agreed with an accepted quorum
    invalid: int = 0  # results that disagreed with one
    consecutive_valid: int = 0  # valid results since the last invalid one
    last_valid: float = 0.0  # wall time of the last valid result (0: none); trust decays from here


class Reliability:
    """Verification records of the nodes of one region, by node identity."""

    def __init__(self) -> None:
        self.records: dict[str, NodeRecord] = {}

    def get(self, identity: str) -> NodeRecord:
        return self.records.setdefault(identity, NodeRecord())

    def valid(self, identity: str, now: float | None = None) -> None:
        record = self.get(identity)
        record.valid += 1
        record.consecutive_valid += 1
        record.last_valid = time.time() if now is None else now

    def invalid(self, identity: str) -> None:
        record = self.get(identity)
        record.invalid += 1
        record.consecutive_valid = 0

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {identity: asdict(r) for identity, r in self.records.items()}

    def load(self, data: dict[str, Any]) -> None:
        """Restore records saved with :meth:`to_dict`; malformed entries are skipped."""
        for identity, fields in (data or {}).items():
            try:
                self.records[str(identity)] = NodeRecord(
                    valid=int(fields["valid"]), invalid=int(fields["invalid"]),
                    consecutive_valid=int(fields["consecutive_valid"]),
                    last_valid=float(fields.get("last_valid", 0.0)),  # records saved before trust decayed
                )
            except (KeyError, TypeError, ValueError):
                continue


@dataclass(frozen=True)
class AdaptiveSettings:
    """``grid.scheduler.verify.adaptive``: how ``verify="adaptive"`` spot-checks trusted nodes.

    Parameters
    ----------
    quorum : int
        Agreeing independent nodes a replicated update needs (>= 2).
    trust_after : float
        A node is trusted once its (decayed) run of consecutive valid
        results reaches this; until then every update of it is replicated.
        0 trusts every node from the start (``floor`` alone then sets the
        spot-check rate).
    floor : float
        The least probability with which a trusted node's update is
        replicated all the same (0 to 1).
    half_life : float
        Seconds after which an idle node's run of consecutive valid results
        counts half (0: trust never decays).
    """

    quorum: int = 2
    trust_after: float = 10.0
    floor: float = 0.1
    half_life: float = 3600.0

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "AdaptiveSettings":
        """Read the ``grid.scheduler.verify.adaptive`` section; the error names a bad key."""
        from dask.utils import parse_timedelta

        section = section or {}
        try:
            settings = cls(
                quorum=int(section.get("quorum", 2)),
                trust_after=float(section.get("trust-after", 10)),
                floor=float(section.get("floor", 0.1)),
                half_life=float(parse_timedelta(section.get("half-life", "1h") or 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"grid.scheduler.verify.adaptive: {exc}") from None
        if settings.quorum < 2:
            raise ValueError(f"grid.scheduler.verify.adaptive.quorum must be >= 2, got {settings.quorum}")
        if settings.trust_after < 0:
            raise ValueError(f"grid.scheduler.verify.adaptive.trust-after must be >= 0, got {settings.trust_after}")
        if not 0.0 <= settings.floor <= 1.0:
            raise ValueError(f"grid.scheduler.verify.adaptive.floor must be between 0 and 1, got {settings.floor}")
        if settings.half_life < 0:
            raise ValueError(f"grid.scheduler.verify.adaptive.half-life must be >= 0, got {settings.half_life}")
        return settings


def trust_streak(record: NodeRecord, now: float, half_life: float) -> float:
    """A node's run of consecutive valid results, halved per ``half_life`` seconds since its last one.

    Trust is earned one valid result at a time, lost at once (an invalid
    result resets the run to 0, :meth:`Reliability.invalid`) and fades while
    the node is away: a node back after a day starts almost from scratch.
    ``half_life`` 0 keeps the run as it is.
    """
    streak = float(record.consecutive_valid)
    if streak <= 0 or half_life <= 0 or record.last_valid <= 0:
        return streak
    idle = max(0.0, now - record.last_valid)
    return streak * 0.5 ** (idle / half_life)


def replication_probability(streak: float, settings: AdaptiveSettings) -> float:
    """How likely an update of a node with this (decayed) run of valid results is replicated.

    1 until the node is trusted (``streak < trust_after``); then
    ``max(floor, trust_after / streak)``, so the checks thin out as the run
    grows but never below ``floor``.
    """
    if streak < settings.trust_after:
        return 1.0
    if streak <= 0:  # trust_after 0: every node trusted from the start
        return settings.floor
    return min(1.0, max(settings.floor, settings.trust_after / streak))


def spot_check_draw(job_id: str, round_no: int, partition: int, salt: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on the job, the round, the partition and ``salt``.

    Seeded this way, a job run again with the same nodes makes the same
    decisions, whatever order the updates arrive in.
    """
    seed = [zlib.crc32(str(job_id).encode()), int(round_no), int(partition), int(salt)]
    return float(np.random.default_rng(seed).random())


def should_replicate(record: NodeRecord, settings: AdaptiveSettings, draw: float, now: float | None = None) -> bool:
    """Whether an update of the node with ``record`` must be checked by ``quorum - 1`` more nodes.

    Parameters
    ----------
    record : NodeRecord
        The node's verification record.
    settings : AdaptiveSettings
    draw : float
        A uniform number in [0, 1) (:func:`spot_check_draw`).
    now : float, optional
        Wall time (default: now), for the decay of trust.
    """
    now = time.time() if now is None else now
    p = replication_probability(trust_streak(record, now, settings.half_life), settings)
    return draw < p


def verify_quorum(verify: Any, settings: AdaptiveSettings | None = None) -> int:
    """Agreeing nodes a replicated update needs: ``verify`` itself, or the adaptive quorum."""
    if verify == ADAPTIVE:
        return (settings or AdaptiveSettings()).quorum
    return int(verify or 1)
