"""Verified results: compare replicas of one partition update, find a quorum, track node records.

With ``verify=N`` a job runs each partition update on ``N`` distinct nodes and
accepts a result only when ``N`` of them agree (BOINC's *quorum*). Updates are
deterministic, so honest nodes on identical hardware agree bitwise; the
tolerances (``grid.scheduler.verify.rtol`` / ``atol``) absorb different CPUs and
BLAS builds. Nodes whose result disagrees with an accepted quorum are the
minority and get quarantined by the round engine.

:class:`Reliability` is BOINC's *adaptive replication*: a node with a long run
of results that agreed with a quorum is replicated less often, but never less
often than ``grid.scheduler.verify.replication-floor`` (random spot checks keep
a trusted node honest). Everything here is pure bookkeeping on the scheduler;
nothing a node sends is executed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jobs.plain import PlainDataError, check_plain

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


@dataclass
class NodeRecord:
    """One node's verification record (BOINC's host reliability)."""

    valid: int = 0  # results that agreed with an accepted quorum
    invalid: int = 0  # results that disagreed with one
    consecutive_valid: int = 0  # valid results since the last invalid one


class Reliability:
    """Verification records of the nodes of one region, by node identity.

    Parameters
    ----------
    trust_after : int
        A node with at least this many consecutive valid results is trusted:
        its updates are replicated with probability ``trust_after /
        consecutive_valid`` instead of always.
    floor : float
        The probability never falls below this (spot checks), in ``[0, 1]``.
    """

    def __init__(self, trust_after: int = 10, floor: float = 0.1) -> None:
        if trust_after < 1:
            raise ValueError(f"trust-after must be >= 1, got {trust_after}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"replication-floor must be between 0 and 1, got {floor}")
        self.trust_after = trust_after
        self.floor = floor
        self.records: dict[str, NodeRecord] = {}

    def get(self, identity: str) -> NodeRecord:
        return self.records.setdefault(identity, NodeRecord())

    def valid(self, identity: str) -> None:
        record = self.get(identity)
        record.valid += 1
        record.consecutive_valid += 1

    def invalid(self, identity: str) -> None:
        record = self.get(identity)
        record.invalid += 1
        record.consecutive_valid = 0

    def replication_probability(self, identity: str) -> float:
        """Probability that an update computed by this node is replicated."""
        streak = self.get(identity).consecutive_valid
        if streak < self.trust_after:
            return 1.0
        return max(self.floor, self.trust_after / streak)

    def should_replicate(self, identity: str, rng: random.Random) -> bool:
        """Whether to replicate this node's next update (draws from ``rng``)."""
        p = self.replication_probability(identity)
        return p >= 1.0 or rng.random() < p

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {identity: asdict(r) for identity, r in self.records.items()}

    def load(self, data: dict[str, Any]) -> None:
        """Restore records saved with :meth:`to_dict`; malformed entries are skipped."""
        for identity, fields in (data or {}).items():
            try:
                self.records[str(identity)] = NodeRecord(
                    valid=int(fields["valid"]), invalid=int(fields["invalid"]),
                    consecutive_valid=int(fields["consecutive_valid"]),
                )
            except (KeyError, TypeError, ValueError):
                continue


def check_request(request: dict, region: str, usable_nodes: int | None) -> None:
    """Reject a job request that is not plain data, or bad ``verify`` / ``partial_participation`` settings.

    Every place that accepts a job request calls this (``Grid.submit``
    before sending it, the scheduler's ``grid_submit`` and ``grid_attach``
    before registering or forwarding it), so a request that reaches a node
    holds nothing but plain data (:func:`jobs.plain.check_plain`).

    Raises
    ------
    jobs.plain.PlainDataError
        Naming the first field that is not plain data (a ``ValueError``).
    ValueError
        Naming the setting, the value and what is allowed, or that this
        region has too few nodes for the requested verification.
    """
    check_plain(request, "request")
    if not isinstance(request, dict):
        raise PlainDataError(f"a job request must be a dict, got {type(request).__name__}")
    verify = request.get("verify", 1)
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 1:
        raise ValueError(f"verify must be an integer >= 1 (nodes computing each update), got {verify!r:.80}")
    if not isinstance(request.get("partial_participation", False), bool):
        raise ValueError(
            f"partial_participation must be True or False, got {request.get('partial_participation')!r:.80}"
        )
    if verify > 1 and request.get("mode") == "sequential":
        raise ValueError(
            f"verify={verify} needs mode='average': a sequential job passes one state from node to node, "
            "so there is no independent update to compare; use mode='average' or verify=1"
        )
    if usable_nodes is not None and verify > 1 and verify > usable_nodes:
        raise ValueError(
            f"verify={verify} runs each update on {verify} distinct nodes, but region {region!r} has "
            f"{usable_nodes} node(s); add nodes or lower verify"
        )
