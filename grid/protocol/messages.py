"""Every message an untrusted peer may send, in one table.

Admin and scheduler certificates are trusted with the whole of Dask. Nodes,
clients (data scientists) and observers (the operators' read-only dashboard)
are not: what they may send a grid scheduler, and what a node may send another
node, is listed here, per role:

* ``handlers``: the RPC operations the role may call. Each maps to the types
  of the fields the grid checks before the handler runs (a field present with
  another type closes the connection). A call of an operation not listed is
  answered with a ``PermissionError`` naming it by the scheduler's access
  control (:mod:`grid.scheduler.access`), so an honest user learns why;
* ``streams``: the operations the role may send on its stream (the batched
  connection a client or worker keeps open after registering). Anything else
  closes the connection: stream messages have no reply to carry an error;
* identity binding: the first ``register-client`` / ``register-worker`` on a
  connection binds it to that client id / worker address, and every later
  message on it that names a ``client`` or ``worker`` must name that one
  (distributed lets a message's own field win over the connection's); a
  ``grid_channel`` opening makes the connection a dial-out node's grid
  channel, which carries answers to calls and nothing else.

Adding a handler an untrusted role may call means adding one line here. The
comm that enforces this is :mod:`grid.protocol.comm`; the pickle-free
decoding it applies first is :mod:`grid.protocol.payload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: roles trusted with the whole of Dask (operators and the schedulers themselves)
PRIVILEGED = frozenset({"admin", "scheduler"})
#: client ids the grid itself uses on a scheduler (dataset holders, drivers); nobody registers one
RESERVED_CLIENT_PREFIX = "grid-"

STR = (str,)
INT = (int,)
NUMBER = (int, float)
OPT_NUMBER = (int, float, type(None))
OPT_STR = (str, type(None))
BOOL = (bool,)
SEQ = (list, tuple)
OPT_SEQ = (list, tuple, type(None))
MAP = (dict,)
KEYS = (list, tuple, set, frozenset)


@dataclass(frozen=True)
class RoleProtocol:
    """What one untrusted role may send to one kind of receiver.

    Attributes
    ----------
    handlers : mapping of str to mapping of str to tuple of types
        RPC operations, each with the types of the fields checked.
    streams : mapping of str to mapping
        For each registration a connection may make (``"client"`` after
        ``register-client``, ``"worker"`` after ``register-worker``,
        ``"channel"`` after ``grid_channel``), the operations its stream may
        carry, each with the types of its fields.
    """

    handlers: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    streams: Mapping[str, Mapping[str, Mapping[str, tuple]]] = field(default_factory=dict)


KEY = (str, bytes, int, float, tuple)
#: topics whose events reach every client's screen (distributed's print / warn forwarding)
SCREEN_TOPICS = frozenset({"print", "warn"})


def screen_topics_only(op: str, topic: Any) -> None:
    """A client subscribes only to the topics every Dask client subscribes to at start."""
    if not isinstance(topic, str) or topic not in SCREEN_TOPICS:  # (a list is no topic, and unhashable)
        raise ProtocolViolation(f"{op!r}: topic {topic!r} is for admin certificates (clients may follow print and warn)")


def not_screen_topics(op: str, topic: Any) -> None:
    """A node logs events for operators, never onto data scientists' screens."""
    topics = topic if isinstance(topic, (list, tuple)) else [topic]
    if not all(isinstance(t, str) for t in topics):
        raise ProtocolViolation(f"{op!r}: topic {topic!r} is not a string")
    if set(topics) & SCREEN_TOPICS:
        raise ProtocolViolation(f"{op!r}: a node may not log to {sorted(set(topics) & SCREEN_TOPICS)} (clients print those)")


#: what a client's stream may carry (a data scientist's, or a node's own client)
CLIENT_STREAM: Mapping[str, Mapping[str, tuple]] = {
    "heartbeat-client": {"client": STR},
    "client-desires-keys": {"keys": KEYS, "client": STR},
    "client-releases-keys": {"keys": KEYS, "client": STR},
    "close-client": {"client": STR},
    "subscribe-topic": {"topic": screen_topics_only, "client": STR},
    "unsubscribe-topic": {"topic": screen_topics_only, "client": STR},
    "close-stream": {},  # distributed's own end of a stream
}

#: what an observer's stream may carry: a Dask client's own bookkeeping, and no keys (an
#: observer holds no futures, so it has no reason to desire or release any key)
OBSERVER_STREAM: Mapping[str, Mapping[str, tuple]] = {
    "heartbeat-client": {"client": STR},
    "close-client": {"client": STR},
    "subscribe-topic": {"topic": screen_topics_only, "client": STR},
    "unsubscribe-topic": {"topic": screen_topics_only, "client": STR},
    "close-stream": {},
}

#: what a node's worker stream may carry
WORKER_STREAM: Mapping[str, Mapping[str, tuple]] = {
    "task-finished": {"key": KEY, "worker": STR, "nbytes": INT},
    "task-erred": {"key": KEY, "worker": STR},
    "release-worker-data": {"key": KEY, "worker": STR},
    "add-keys": {"keys": KEYS, "worker": STR},
    "long-running": {"key": KEY, "worker": STR},
    "reschedule": {"key": KEY, "worker": STR},
    "keep-alive": {},
    "log-event": {"topic": not_screen_topics},
    "worker-status-change": {"status": STR, "worker": STR},
    "request-refresh-who-has": {"keys": KEYS, "worker": STR},
    "close-stream": {},
}

#: what a dial-out node's grid channel may carry after its ``grid_channel`` opening: the answers
#: to the scheduler's calls (grid.protocol.nodes)
CHANNEL_STREAM: Mapping[str, Mapping[str, tuple]] = {
    "grid-reply": {"call": INT, "reply": MAP},
}


#: what a data scientist's client may send a scheduler
SCHEDULER_FROM_CLIENT = RoleProtocol(
    handlers={
        "identity": {},
        "register-client": {"client": STR},
        "scatter": {"data": MAP, "workers": OPT_SEQ, "client": STR, "broadcast": BOOL, "timeout": OPT_NUMBER},
        "ncores": {"workers": OPT_SEQ},
        "versions": {},
        "grid_info": {},
        "grid_register_dataset": {
            "name": STR, "keys": KEYS, "rows": SEQ, "indices": SEQ, "n_features": INT,
            "classes": OPT_SEQ, "owner": STR, "job_owned": BOOL,
        },
        "grid_drop_dataset": {"name": STR},
        "grid_register_files": {
            "name": STR, "paths": SEQ, "indices": SEQ, "options": MAP, "owner": STR, "job_owned": BOOL, "wait": BOOL,
        },
        "grid_submit": {"request": MAP, "placement": MAP, "owner": STR},
        "grid_job": {"job_id": STR, "history": BOOL},
        "grid_jobs": {},
        "grid_cancel": {"job_id": STR},
        "grid_wait": {"job_id": STR, "timeout": OPT_NUMBER},
        "grid_result": {"job_id": STR},
        "grid_rerun": {"job_id": STR, "verify": (int, str, type(None))},
    },
    streams={"client": CLIENT_STREAM},
)

#: what the operators' dashboard (an observer certificate) may send a scheduler: the reads
#: `grid dashboard`, `grid status` and `grid jobs` make (every job's metadata and the node
#: view, answered by grid.scheduler.access), and what a Dask client needs to connect; no
#: data, no results, nothing that changes the grid or runs code
SCHEDULER_FROM_OBSERVER = RoleProtocol(
    handlers={
        "identity": {},
        "register-client": {"client": STR},
        "grid_info": {},
        "grid_jobs": {},
        "grid_job": {"job_id": STR, "history": BOOL},
    },
    streams={"client": OBSERVER_STREAM},
)

#: what a node may send its region's scheduler
SCHEDULER_FROM_NODE = RoleProtocol(
    handlers={
        "identity": {},
        "register-worker": {"address": STR, "nthreads": INT, "name": (str, int), "memory_limit": OPT_NUMBER},
        "register_nanny": {},
        # a worker's own client (worker_client, joblib inside tasks): its graphs stay refused
        "register-client": {"client": STR},
        "heartbeat_worker": {"address": STR},
        "unregister": {"address": STR},
        "log_event": {"topic": not_screen_topics},
        "grid_info": {},
        "retire_workers": {"workers": OPT_SEQ},  # only itself: grid.scheduler.access checks it
        "versions": {},
        "get_metadata": {"keys": KEYS},
        "who_has": {"keys": KEYS},  # where to fetch a partition copy from
        # a dial-out node reads a partition the scheduler asked it to hold (grid.protocol.nodes)
        "grid_store_read": {"key": STR, "token": STR, "offset": INT},
        # a dial-out node opens its grid channel with the token its scheduler offered it
        "grid_channel": {"worker": STR, "token": STR},
    },
    streams={"client": CLIENT_STREAM, "worker": WORKER_STREAM, "channel": CHANNEL_STREAM},
)

#: what a node may send another node of its region: partition copies only
NODE_FROM_NODE = RoleProtocol(handlers={"get_data": {"keys": KEYS, "who": OPT_STR}})

#: what a node may send a nanny: its own worker process asks it to close
NANNY_FROM_NODE = RoleProtocol(handlers={"close_gracefully": {"reason": OPT_STR}})

#: receiver kind -> peer role -> protocol; a role not listed may not connect at all
#: (clients and observers reach nodes only through their scheduler)
PROTOCOL: Mapping[str, Mapping[str, RoleProtocol]] = {
    "scheduler": {"client": SCHEDULER_FROM_CLIENT, "node": SCHEDULER_FROM_NODE, "observer": SCHEDULER_FROM_OBSERVER},
    "node": {"node": NODE_FROM_NODE},
    "nanny": {"node": NANNY_FROM_NODE},
}


class ProtocolViolation(ValueError):
    """A message an untrusted peer may not send; its connection is closed."""


def check_fields(op: str, msg: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Raise :class:`ProtocolViolation` for a field of ``msg`` that ``spec`` refuses.

    ``spec`` maps a field to a tuple of types, or to a function that raises
    :class:`ProtocolViolation` for a value it refuses.
    """
    for name, types in spec.items():
        if name not in msg:
            continue
        if callable(types):
            types(op, msg[name])
        elif not isinstance(msg[name], types):
            allowed = " or ".join(t.__name__ for t in types)
            raise ProtocolViolation(f"{op!r}: field {name!r} is a {type(msg[name]).__name__}, not {allowed}")


def handler_names(receiver: str, role: str) -> frozenset[str]:
    """The RPC operations ``role`` may call on a ``receiver`` (``"scheduler"`` or ``"node"``)."""
    proto = PROTOCOL.get(receiver, {}).get(role)
    return frozenset(proto.handlers) if proto is not None else frozenset()
