"""Who may call what on a grid scheduler: admission of nodes and roles of clients.

On a TLS grid every peer presents a certificate from the grid CA that names
its role (``scheduler``, ``node``, ``client``, ``admin``) and, for nodes, its
region (``grid certs``). This module wraps the scheduler's handlers (an
extension point: the plugin replaces entries of ``scheduler.handlers`` and
``scheduler.client_handlers`` with checked versions, distributed's code is
untouched) so that:

* a node is admitted only with a node certificate of this region that is not
  revoked; its certificate name is its identity;
* data scientists (``client``) reach only the grid's job handlers and data
  placement, and only their own jobs; the generic handlers that execute code
  (``run_function``, plugin registration, ``broadcast``, task graphs, ...)
  answer ``PermissionError`` for everyone but ``admin`` and ``scheduler``.

On a plaintext grid (``tcp://``, e.g. ``Grid.local()``) there are no
identities and no roles, exactly as in plain Dask.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from grid.handlers import call_handler

logger = logging.getLogger("grid.access")

#: roles with full Dask: operators and the schedulers themselves (their drivers)
PRIVILEGED = frozenset({"admin", "scheduler"})

#: what a data scientist's client may call (besides the stream it opens)
CLIENT_HANDLERS = frozenset(
    {
        "identity",
        "register-client",
        "scatter",
        "ncores",
        "versions",
        "grid_info",
        "grid_register_dataset",
        "grid_drop_dataset",
        "grid_register_files",
        "grid_submit",
        "grid_job",
        "grid_jobs",
        "grid_cancel",
        "grid_wait",
        "grid_result",
    }
)

#: what a node may call: registering itself, heartbeats, leaving
NODE_HANDLERS = frozenset(
    {
        "identity",
        "register-worker",
        "register_nanny",
        "register-client",  # a worker's own client (worker_client, joblib); its graphs stay refused
        "heartbeat_worker",
        "unregister",
        "log_event",
        "grid_info",
        "retire_workers",  # only itself: checked below
        "versions",
        "get_metadata",
    }
)

#: handlers other schedulers of the grid call on this one
SCHEDULER_ONLY = frozenset({"grid_attach", "grid_detach", "grid_region_round"})

#: client stream messages that carry code (pickled task graphs) or raw data
CLIENT_STREAM_PRIVILEGED = frozenset({"update-graph", "update-data"})


class AccessControl:
    """Role checks for one scheduler of a TLS grid.

    Parameters
    ----------
    region : str
        The region of this scheduler; nodes must carry it in their certificate.
    revocation : grid.security.certs.RevocationList, optional
        Serials refused even with a valid signature.
    """

    def __init__(self, region: str, revocation: Any = None) -> None:
        self.region = region
        self.revocation = revocation
        self.client_identities: dict[str, Any] = {}
        self.worker_identities: dict[str, Any] = {}

    # --- identities ----------------------------------------------------------------
    def identity(self, comm: Any) -> Any:
        """The grid identity of the peer of ``comm`` (None on a plaintext comm)."""
        if comm is None:
            return None
        info = getattr(comm, "extra_info", None) or {}
        if "peercert" not in info:
            return None
        from grid.security.certs import CertificateRevoked, identity_from_peercert

        identity = identity_from_peercert(info["peercert"])
        if self.revocation is not None and identity.serial in self.revocation:
            raise CertificateRevoked(f"certificate {identity} was revoked (serial {identity.serial:x})")
        return identity

    # --- installation --------------------------------------------------------------
    def install(self, scheduler: Any) -> None:
        """Wrap every handler of ``scheduler`` with the role check."""
        for op, handler in list(scheduler.handlers.items()):
            scheduler.handlers[op] = self._guard(op, handler)
        # client stream messages live in scheduler.stream_handlers (merged with the workers')
        for op in CLIENT_STREAM_PRIVILEGED:
            if op in scheduler.stream_handlers:
                scheduler.stream_handlers[op] = self._guard_stream(op, scheduler.stream_handlers[op], scheduler)

    def _guard(self, op: str, handler: Callable) -> Callable:
        async def guarded(comm: Any, **msg: Any) -> Any:
            try:
                identity = self.identity(comm)
                self.check(op, identity, msg)
            except Exception as exc:  # noqa: BLE001 - every refusal is reported, none crashes
                logger.warning("refused %r: %s", op, exc)
                if op == "register-worker":
                    # answer the way distributed refuses a duplicate name: the node stops
                    await comm.write({"status": "error", "message": f"refused by the grid: {exc}"})
                    return None
                raise PermissionError(str(exc)) from None
            if op == "register-worker" and identity is not None:
                self.worker_identities[msg.get("address", "")] = identity
            if op == "register-client" and identity is not None:
                self.client_identities[msg.get("client", "")] = identity
            return await call_handler(handler, comm, msg)

        guarded.__name__ = getattr(handler, "__name__", op)
        return guarded

    def _guard_stream(self, op: str, handler: Callable, scheduler: Any) -> Callable:
        def allowed(client: str | None, msg: dict) -> bool:
            if client is None:  # sent on a node's stream: never allowed
                logger.warning("refused %r on a worker stream (%s)", op, msg.get("worker"))
                return False
            identity = self.client_identities.get(client)
            if identity is None or identity.role not in PRIVILEGED:
                logger.warning("refused %r from client %s (%s): disconnecting it", op, client, identity)
                scheduler.remove_client(client=client, stimulus_id=f"grid-refused-{op}")
                return False
            return True

        if inspect.iscoroutinefunction(handler):  # the stream awaits coroutine handlers

            async def guarded_async(client: str | None = None, **msg: Any) -> Any:
                if allowed(client, msg):
                    return await handler(client=client, **msg)
                return None

            return guarded_async

        def guarded(client: str | None = None, **msg: Any) -> Any:
            if allowed(client, msg):
                return handler(client=client, **msg)
            return None

        return guarded

    # --- the rules -----------------------------------------------------------------
    def check(self, op: str, identity: Any, msg: dict) -> None:
        """Raise ``PermissionError`` unless ``identity`` may call ``op``."""
        if identity is None or identity.role in PRIVILEGED:
            if op in SCHEDULER_ONLY and identity is not None and identity.role != "scheduler":
                raise PermissionError(f"{op!r} is called by grid schedulers only, not by {identity}")
            return
        if identity.role == "node":
            if op not in NODE_HANDLERS:
                raise PermissionError(f"node {identity.name!r} may not call {op!r}")
            if op == "register-worker" and identity.region != self.region:
                raise PermissionError(
                    f"node {identity.name!r} has a certificate for region {identity.region!r}; "
                    f"this scheduler serves region {self.region!r}"
                )
            if op == "retire_workers":
                own = self._addresses_of(identity)
                if not set(msg.get("workers") or []) <= own:
                    raise PermissionError(f"node {identity.name!r} may retire only itself")
            return
        if identity.role == "client":
            if op not in CLIENT_HANDLERS:
                raise PermissionError(
                    f"{identity.name!r} has a client certificate, which may submit and manage its own "
                    f"grid jobs but not call {op!r}; that needs an admin certificate"
                )
            return
        raise PermissionError(f"unknown role {identity.role!r} of {identity.name!r}")

    def _addresses_of(self, identity: Any) -> set[str]:
        return {addr for addr, ident in self.worker_identities.items() if ident.serial == identity.serial}

    def owner(self, comm: Any, claimed: str) -> str:
        """The owner to record: the certificate name on TLS grids, else what the client says."""
        identity = self.identity(comm)
        return identity.name if identity is not None else str(claimed)

    def may_see(self, comm: Any, owner: str) -> bool:
        """Whether the peer may read or cancel a job (or dataset) of ``owner``."""
        identity = self.identity(comm)
        return identity is None or identity.role in PRIVILEGED or identity.name == owner

    def forget_worker(self, address: str) -> None:
        self.worker_identities.pop(address, None)

    def node_name(self, address: str) -> str | None:
        identity = self.worker_identities.get(address)
        return identity.name if identity is not None else None

