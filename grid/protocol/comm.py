"""The guarded comm: distributed's TLS transport, reading untrusted peers safely.

Registered as the ``tls`` backend of distributed's comm registry (the
extension point distributed offers for transports) when :mod:`grid` is
imported. The bytes on the wire are distributed's own, so stock Dask peers
interoperate unchanged; what changes is how a message is *read*:

* the peer's grid identity comes from its certificate when the connection is
  made, before anything is read. A grid scheduler closes connections from
  revoked certificates, from nodes of another region or in quarantine; a grid
  node closes connections from data scientists' and observers' certificates
  (they reach nodes only through the scheduler) and from nodes of another
  region;
* from a trusted peer (``admin`` or ``scheduler`` certificate) a message is
  read exactly as distributed reads it;
* from an untrusted peer (``node``, ``client`` or ``observer`` certificate)
  the size the message announces is checked against
  ``grid.protocol.max-message-bytes`` (:data:`MAX_OBSERVER_BYTES` for
  observers) before its buffers are allocated, its frames are checked by
  :func:`grid.protocol.payload.check_frames` before distributed decodes
  them (no pickle is ever unpickled, handshake included), and on a
  connection it opened to a grid scheduler or node every message is checked
  against :mod:`grid.protocol.messages` (allowed stream operations, field
  types, the identity the connection registered as).

A violation closes the connection. A node that commits one is quarantined by
its region's scheduler, with the evidence. Plaintext (``tcp://``) grids
authenticate nobody; their comms are distributed's own (private grids only).
"""

from __future__ import annotations

import logging
import struct
import weakref
from dataclasses import dataclass
from typing import Any

from tornado.iostream import StreamClosedError

from distributed.comm import registry
from distributed.comm.core import CommClosedError
from distributed.comm.tcp import (
    TLS,
    TLSBackend,
    TLSConnector,
    TLSListener,
    convert_stream_closed_error,
    read_bytes_rw,
)
from distributed.comm.utils import from_frames
from distributed.protocol.utils import unpack_frames

from grid.protocol.messages import (
    PRIVILEGED,
    PROTOCOL,
    RESERVED_CLIENT_PREFIX,
    ProtocolViolation,
    RoleProtocol,
    check_fields,
)
from grid.protocol.payload import UntrustedPayload, check_frames

logger = logging.getLogger("grid.protocol")

#: roles whose messages are checked (peers with these certificates are untrusted); any role
#: not trusted (PRIVILEGED) is checked, these are the ones with a configured message size
UNTRUSTED = frozenset({"node", "client"})
#: the first message of a connection (the comm handshake) is a few hundred bytes
MAX_HANDSHAKE_BYTES = 64 * 1024
#: an observer sends only small read requests (no data): a megabyte is plenty
MAX_OBSERVER_BYTES = 2**20
#: the grid scheduler plugins of this process: connections they open are checked against
#: their revocation lists, and a node breaking the protocol on one is reported to its region's
_schedulers: "weakref.WeakSet[Any]" = weakref.WeakSet()


def register_scheduler(plugin: Any) -> None:
    """Hold the connections this process opens to a grid scheduler's rules too.

    ``plugin`` has ``region``, ``access.revocation`` and ``ledger.protocol_violation``
    (:class:`grid.scheduler.plugin.GridSchedulerPlugin`).
    """
    _schedulers.add(plugin)


def unregister_scheduler(plugin: Any) -> None:
    _schedulers.discard(plugin)


def max_message_bytes(role: str) -> int:
    """``grid.protocol.max-message-bytes.<role>`` in bytes."""
    from grid import config

    return config.nbytes(f"protocol.max-message-bytes.{role}")


@dataclass
class Peer:
    """What the guarded comm knows of its peer, decided when the connection is made."""

    identity: Any = None  # grid.security.identity.Identity, or None without a grid certificate
    guarded: bool = False
    refusal: str | None = None  # a reason to close the connection before reading anything
    protocol: RoleProtocol | None = None  # messages checked (connections the peer opened to us)
    receiver: Any = None  # the grid scheduler or node the peer connected to
    max_bytes: int = 0

    @property
    def role(self) -> str | None:
        return self.identity.role if self.identity is not None else None


def receiver_kind(server: Any) -> str | None:
    """``"scheduler"``, ``"node"`` or ``"nanny"`` for a grid server; None for any other.

    A scheduler is a grid scheduler when it carries the grid plugin; a worker
    is a grid node when it serves round requests or runs community mode
    (``grid node``, ``Grid.local`` and ``dask worker --preload grid.node.rounds``),
    and a nanny when it starts such a worker. Any other Dask server in the
    process keeps distributed's own rules.
    """
    from distributed import Nanny, Scheduler, Worker

    if isinstance(server, Scheduler):
        return "scheduler" if "grid" in getattr(server, "plugins", {}) else None
    if isinstance(server, Worker):
        names = set(getattr(server, "plugins", {})) | {
            getattr(p, "name", None) for p in getattr(server, "_pending_plugins", ())
        }
        grid_plugin = bool(names & {"grid-node-rounds", "grid-community-mode"})
        return "node" if grid_plugin or "grid_update" in server.handlers else None
    if isinstance(server, Nanny):
        plugins = (getattr(server, "worker_kwargs", None) or {}).get("plugins") or ()
        grid_plugin = {getattr(p, "name", None) for p in plugins} & {"grid-node-rounds", "grid-community-mode"}
        return "nanny" if grid_plugin else None
    return None


def _identity(peercert: Any) -> Any:
    from grid.security.identity import identity_from_peercert

    try:
        return identity_from_peercert(peercert)
    except Exception:  # noqa: BLE001 - a certificate without a grid identity: not a grid peer
        return None


#: a grid node's own identity, read once from its certificate
_own: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _own_identity(server: Any) -> Any:
    """The grid identity of the certificate a node (or nanny) presents; None without one."""
    if server not in _own:
        from grid.security.identity import _as_cert, identity_from_certificate

        path = getattr(getattr(server, "security", None), "tls_worker_cert", None)
        try:
            _own[server] = identity_from_certificate(_as_cert(path)) if path else None
        except Exception:  # noqa: BLE001 - a certificate without a grid identity: no region to hold peers to
            _own[server] = None
    return _own[server]


def _revoked(identity: Any, revocations: Any) -> bool:
    return any(rl is not None and identity.serial in rl for rl in revocations)


def decide(peercert: Any, server: Any = None) -> Peer:
    """How to read the peer of a new connection (``server``: ours, for accepted connections)."""
    identity = _identity(peercert) if peercert else None
    kind = receiver_kind(server) if server is not None else None
    peer = Peer(identity=identity, receiver=server)
    if server is not None and kind is None:
        return peer  # a plain Dask server in this process: distributed's own rules
    if identity is None:
        # no grid identity: a stock Dask peer of some other deployment, unless we are a grid
        # server, which the grid CA's certificates only ever reach with an identity
        if kind is None:
            return peer
        peer.guarded, peer.refusal = True, "a certificate without a grid identity"
        return peer
    plugin = getattr(server, "plugins", {}).get("grid") if kind == "scheduler" else None
    revocations = [p.access.revocation for p in ([plugin] if plugin is not None else list(_schedulers))]
    if _revoked(identity, revocations):
        peer.guarded, peer.refusal = True, f"certificate {identity} was revoked"
        return peer
    if identity.role in PRIVILEGED:
        return peer
    peer.guarded = True
    if identity.role in UNTRUSTED:
        peer.max_bytes = max_message_bytes(identity.role)
    elif identity.role == "observer":
        peer.max_bytes = MAX_OBSERVER_BYTES
    else:  # a role this version does not know: read like a data scientist, never like an operator
        peer.max_bytes = max_message_bytes("client")
    if kind is None:  # a connection we opened: its replies are checked, not its operations
        return peer
    proto = PROTOCOL.get(kind, {}).get(identity.role)
    if proto is None:
        peer.refusal = f"a {identity.role} certificate may not connect to a grid {kind}"
        return peer
    peer.protocol = proto
    if kind in ("node", "nanny") and identity.role == "node":
        own = _own_identity(server)
        if own is not None and own.region != identity.region:
            peer.refusal = f"node {identity.name!r} belongs to region {identity.region!r}, not {own.region!r}"
    if plugin is not None and identity.role == "node":
        if identity.region != plugin.region:
            peer.refusal = f"node {identity.name!r} belongs to region {identity.region!r}, not {plugin.region!r}"
        elif identity.name in plugin.ledger.quarantine:
            peer.refusal = f"node {identity.name!r} is quarantined"
    return peer


class GuardedTLS(TLS):
    """A TLS comm that reads untrusted peers through :mod:`grid.protocol`."""

    def __init__(self, stream: Any, local_addr: str, peer_addr: str, deserialize: bool = True, server: Any = None) -> None:
        self._server = server
        self.peer: Peer = Peer()
        self._bound: dict[str, str] = {}  # "client" / "worker" -> the identity this connection registered
        self._messages_read = 0
        super().__init__(stream, local_addr, peer_addr, deserialize)

    def _read_extra(self) -> None:
        super()._read_extra()
        self.peer = decide(self._extra.get("peercert"), self._server)
        if self.peer.refusal:
            logger.warning("closing the connection from %s (%s): %s", self._peer_addr, self.peer.identity, self.peer.refusal)

    async def read(self, deserializers: Any = None) -> Any:
        if not self.peer.guarded:
            return await super().read(deserializers)
        if self.peer.refusal:
            self.abort()
            raise CommClosedError(f"refused by the grid: {self.peer.refusal}")
        frames = await self._read_frames()
        try:
            # replies from a node to requests we made (gathering results for an admin) stay
            # serialized and unread on a scheduler; everything a node sends on its own is checked
            opaque = self.peer.role == "node" and not self.deserialize and self.peer.receiver is None
            check_frames(frames, opaque_ok=opaque)
        except UntrustedPayload as exc:
            self._violation(str(exc), frames)
        try:
            msg = await from_frames(frames, deserialize=self.deserialize, deserializers=deserializers, allow_offload=self.allow_offload)
        except EOFError:
            self.abort()
            raise CommClosedError("aborted stream on truncated data")
        except Exception as exc:  # noqa: BLE001 - what distributed cannot decode is refused
            self._violation(f"a message distributed could not decode ({type(exc).__name__}: {exc})", frames)
        self._messages_read += 1
        if self.peer.protocol is not None and self._messages_read > 1:  # the first is the handshake
            try:
                self._check_message(msg)
            except ProtocolViolation as exc:
                self._violation(str(exc), frames)
        return msg

    async def _read_frames(self) -> list:
        """distributed's framing, with the announced sizes checked before buffers are allocated."""
        stream = self.stream
        if stream is None:
            raise CommClosedError()
        limit = MAX_HANDSHAKE_BYTES if self._messages_read == 0 else self.peer.max_bytes
        fmt_size = struct.calcsize("Q")
        try:
            (header_nbytes,) = struct.unpack("Q", await stream.read_bytes(fmt_size))
            if header_nbytes > limit:
                self._violation(f"a message of {header_nbytes} bytes (at most {limit} are read from a {self.peer.role})")
            frames_nosplit = await read_bytes_rw(stream, header_nbytes)
            try:
                frames, buffers_nbytes = unpack_frames(frames_nosplit, partial=True)
            except struct.error as exc:
                self._violation(f"malformed frames ({exc})")
            total = header_nbytes + sum(buffers_nbytes)
            if total > limit:
                self._violation(f"a message of {total} bytes (at most {limit} are read from a {self.peer.role})")
            for nbytes in buffers_nbytes:
                frames.append(await read_bytes_rw(stream, nbytes))
        except (StreamClosedError, OSError) as exc:
            self.stream = None
            self._closed = True
            if isinstance(exc, StreamClosedError):
                convert_stream_closed_error(self, exc)
            raise CommClosedError(str(exc)) from exc
        return frames

    # --- the message table -------------------------------------------------------------
    def _check_message(self, msg: Any) -> None:
        proto = self.peer.protocol
        assert proto is not None
        if msg == "OK":  # distributed's acknowledgement (get_data, streams)
            return
        if isinstance(msg, dict) and "op" in msg and not self._bound:
            # an RPC call: the handler's own access control answers an op the role may not call
            op = msg["op"]
            spec = proto.handlers.get(op)
            if spec is not None:
                check_fields(op, msg, spec)
                self._bind(op, msg)
            return
        if not self._bound:
            # an answer inside a handler's own exchange (e.g. register_nanny's): plain data, checked above
            return
        # a stream: after register-client / register-worker / grid_channel, batches of operations
        for item in msg if isinstance(msg, (list, tuple)) else (msg,):
            if item == "OK":
                continue
            if not isinstance(item, dict):
                raise ProtocolViolation(f"a stream message that is a {type(item).__name__}")
            op = item.get("op")
            allowed = proto.streams.get(next(iter(self._bound)), {})
            spec = allowed.get(op) if isinstance(op, str) else None
            if spec is None:
                raise ProtocolViolation(f"a {self.peer.role} may not send {op!r} on its stream")
            check_fields(op, item, spec)
            for field_name, bound in self._bound.items():
                if field_name in item and item[field_name] != bound:
                    raise ProtocolViolation(
                        f"{op!r} names {field_name} {item[field_name]!r}, but this connection is {field_name} {bound!r}"
                    )

    def _bind(self, op: str, msg: dict) -> None:
        server = self.peer.receiver
        if op == "register-client":
            client = msg.get("client")
            if not isinstance(client, str) or client.startswith(RESERVED_CLIENT_PREFIX):
                raise ProtocolViolation(f"client id {client!r} is reserved for the grid")
            if server is not None and client in getattr(server, "clients", {}):
                raise ProtocolViolation(f"client id {client!r} is registered already (by another connection)")
            self._bound["client"] = client
        elif op == "register-worker":
            address = msg.get("address")
            if server is not None and address in getattr(server, "workers", {}):
                raise ProtocolViolation(f"worker address {address!r} is registered already (by another node)")
            self._bound["worker"] = address
        elif op == "grid_channel":
            # from now on the connection carries the answers of the node it was opened for
            # (whether the scheduler accepts it is its handler's decision: token and certificate)
            self._bound["channel"] = msg.get("worker")

    def _violation(self, reason: str, frames: Any = None) -> None:
        """Close the connection and report it; raises ``CommClosedError``."""
        who = f"{self.peer.identity}" if self.peer.identity is not None else "an unidentified peer"
        logger.warning("refused a message from %s at %s and closed the connection: %s", who, self._peer_addr, reason)
        self.abort()
        if self.peer.role == "node":
            receiver = getattr(self.peer.receiver, "plugins", {}).get("grid")
            # a node we dialed (a round request) is reported to the schedulers of its region here
            reporters = [receiver] if receiver is not None else [p for p in _schedulers if p.region == self.peer.identity.region]
            evidence = {"peer": self._peer_addr, "reason": reason}
            if frames:
                evidence["first-bytes"] = bytes(frames[0][:64]).hex()
            for plugin in reporters:
                plugin.ledger.protocol_violation(self.peer.identity, self._peer_addr, reason, evidence)
        raise CommClosedError(f"refused by the grid: {reason}")


class GuardedTLSConnector(TLSConnector):
    comm_class = GuardedTLS


class GuardedTLSListener(TLSListener):
    def __init__(self, address: str, comm_handler: Any, deserialize: bool = True, **kwargs: Any) -> None:
        super().__init__(address, comm_handler, deserialize, **kwargs)
        server = getattr(comm_handler, "__self__", None)  # distributed listens with server.handle_comm

        def comm_class(stream: Any, local: str, peer: str, deserialize: bool) -> GuardedTLS:
            return GuardedTLS(stream, local, peer, deserialize, server=server)

        self.comm_class = comm_class


class GuardedTLSBackend(TLSBackend):
    """distributed's TLS backend with :class:`GuardedTLS` comms."""

    _connector_class = GuardedTLSConnector
    _listener_class = GuardedTLSListener


def install() -> None:
    """Make ``tls://`` in this process use the guarded comm (idempotent)."""
    if not isinstance(registry.backends.get("tls"), GuardedTLSBackend):
        registry.backends["tls"] = GuardedTLSBackend()
