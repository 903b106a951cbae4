"""Quarantine: nodes that sent what no honest node sends get no more work.

A node lands here when its answer to a grid task breaks the protocol: a
result that is not a grid wire blob, one that does not decode, is too large,
or does not match the model's layout. (A task that merely *fails* is not a
protocol violation: it fails the job with the node's message.) The record
keeps the reason and the evidence, the node is removed from the scheduler,
and it is refused when it tries to register again: by its certificate name
on TLS grids, by its node name on plaintext ones.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

from grid.handlers import call_handler

logger = logging.getLogger("grid.quarantine")


@dataclass
class QuarantineRecord:
    """Why a node is quarantined."""

    identity: str
    address: str
    reason: str
    evidence: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuarantineRecord":
        """The record :meth:`to_dict` wrote.

        Raises
        ------
        KeyError, TypeError, ValueError
            If ``data`` is not such a record.
        """
        evidence = data.get("evidence") or {}
        if not isinstance(evidence, dict):
            raise TypeError(f"evidence must be a mapping, got {evidence!r:.80}")
        return cls(
            identity=str(data["identity"]),
            address=str(data["address"]),
            reason=str(data["reason"]),
            evidence=evidence,
            time=float(data.get("time", 0.0)),
        )


class Quarantine:
    """Quarantined nodes of one region, by identity.

    With a state directory (``store``, a :class:`grid.scheduler.state.StateDir`)
    every new record is saved to ``quarantine.json`` at once, and
    :meth:`load` reads them back at start, so a restarted scheduler keeps
    refusing the nodes it quarantined before.
    """

    #: the state file's name (``<state-dir>/<region>/quarantine.json``)
    STATE_NAME = "quarantine"

    def __init__(self, scheduler: Any, access: Any, store: Any = None) -> None:
        self.scheduler = scheduler
        self.access = access
        self.records: dict[str, QuarantineRecord] = {}
        self.store = store
        #: called with every new record, once it is saved (e.g. to taint the jobs a caught node took part in)
        self.listeners: list[Callable[[QuarantineRecord], None]] = []

    def identity_of(self, address: str) -> str:
        """Who the node at ``address`` is: its certificate name on TLS grids, its node name on plaintext ones.

        On a TLS grid the name a node claims is never used as its identity (a
        node could claim another's name and with it that node's verification
        history or quarantine record): a node whose certificate is not bound
        to ``address`` is known by its address only.
        """
        name = self.access.node_name(address)
        if name:
            return name
        if getattr(self.access, "active", False):
            return address
        ws = self.scheduler.workers.get(address)
        return str(ws.name) if ws is not None else address

    def __contains__(self, identity: object) -> bool:
        return identity in self.records

    async def add(self, address: str, reason: str, evidence: dict | None = None) -> QuarantineRecord:
        """Quarantine the node at ``address`` and remove it from the scheduler."""
        record = self.add_identity(self.identity_of(address), address, reason, evidence)
        if address in self.scheduler.workers:
            result = self.scheduler.remove_worker(address=address, stimulus_id=f"grid-quarantine-{time.time()}", close=True)
            if inspect.isawaitable(result):
                await result
        return record

    def add_identity(self, identity: str, address: str, reason: str, evidence: dict | None = None) -> QuarantineRecord:
        """Record ``identity`` as quarantined (once; saved at once), without removing any worker:
        also for a node known only by its certificate name (it never registered)."""
        record = self.records.get(identity)
        if record is None:
            record = self.records[identity] = QuarantineRecord(identity, address, reason, dict(evidence or {}))
            logger.warning("node %s (%s) quarantined: %s", identity, address, reason)
            self.save()
            for listener in self.listeners:
                listener(record)
        return record

    def install(self, scheduler: Any) -> None:
        """Refuse the registration of quarantined nodes (wraps ``register-worker``)."""
        register = scheduler.handlers["register-worker"]

        async def guarded(comm: Any, **msg: Any) -> Any:
            identity = None
            try:
                ident = self.access.identity(comm)
                identity = ident.name if ident is not None else None
            except Exception:  # noqa: BLE001 - the access check reports bad certificates itself
                pass
            for who in (identity, str(msg.get("name"))):
                if who in self.records:
                    reason = self.records[who].reason
                    logger.warning("refused quarantined node %s: %s", who, reason)
                    # "time" too: distributed's worker reads it before it looks at the status
                    await comm.write(
                        {"status": "error", "time": time.time(), "message": f"node {who!r} is quarantined: {reason}"}
                    )
                    return None
            return await call_handler(register, comm, msg)

        scheduler.handlers["register-worker"] = guarded

    def to_list(self) -> list[dict]:
        return [r.to_dict() for r in self.records.values()]

    def to_dict(self) -> dict:
        """Plain data of every record (what ``quarantine.json`` holds)."""
        return {"records": self.to_list()}

    def load(self, data: Any) -> int:
        """Take over records saved by :meth:`to_dict`; return how many.

        ``None`` (no file yet) loads nothing; a malformed record is logged
        and skipped, never fatal: the scheduler must start.
        """
        if data is None:
            return 0
        items = data.get("records") if isinstance(data, dict) else None
        if not isinstance(items, list):
            logger.warning("quarantine state is not {'records': [...]}; ignoring it")
            return 0
        loaded = 0
        for item in items:
            try:
                record = QuarantineRecord.from_dict(item)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("quarantine record %r is not valid (%s); ignoring it", item, exc)
                continue
            self.records.setdefault(record.identity, record)
            loaded += 1
        return loaded

    def save(self) -> None:
        """Write every record to the state directory, if there is one (a failure is logged)."""
        if self.store is None:
            return
        try:
            self.store.save_json(self.STATE_NAME, self.to_dict())
        except (OSError, TypeError, ValueError) as exc:
            logger.warning("quarantine not saved to %s (%s); it is kept in memory only", self.store, exc)
