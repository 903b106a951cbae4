"""Who may call what on a grid scheduler: admission of nodes and roles of clients.

One idea, hence the length: every decision of who may call which handler,
and on whose jobs and data, is here and nowhere else.

On a TLS grid every peer presents a certificate from the grid CA that names
its role (``scheduler``, ``node``, ``client``, ``admin``, ``observer``) and,
for nodes, its region (``grid certs``). This module wraps the scheduler's
handlers (an extension point: the plugin replaces entries of ``scheduler.handlers`` and
``scheduler.client_handlers`` with checked versions, distributed's code is
untouched) so that:

* a node is admitted only with a node certificate of this region that is not
  revoked; its certificate name is its identity;
* data scientists (``client``) reach only the grid's job handlers and data
  placement, and only their own jobs; the generic handlers that execute code
  (``run_function``, plugin registration, ``broadcast``, task graphs, ...)
  answer ``PermissionError`` for everyone but ``admin`` and ``scheduler``;
* the operators' dashboard (``observer``) reaches only the grid's read
  handlers (``grid_info``, ``grid_jobs``, ``grid_job``) and sees what the
  scheduler itself sees there: every job's metadata and the node view, with
  quarantine evidence withheld (:meth:`AccessControl._observe`). The handlers
  that read or change a job or data (``grid_result``, ``grid_cancel``,
  ``grid_wait``, ``grid_drop_dataset``, ...) still judge an observer like any
  other user (:meth:`AccessControl.may_see`), so it owns nothing there either.

Identities are bound, and claims checked, here too:

* a node's certificate is bound to its worker address only once distributed
  has admitted it (a scheduler plugin's ``add_worker`` hook), never from what
  a refused registration claimed. A registration that claims the address or
  the name of a live node of another certificate, or the certificate name of
  another node, is refused; the same certificate registering again (its
  process restarted before the scheduler noticed) replaces its stale record.
  Retiring, unregistering and heartbeats name only the caller's own bound
  addresses;
* the ``nthreads`` and memory a node claims are capped at ``grid.scheduler.max-node-threads``
  and ``grid.scheduler.max-node-memory``
  (:meth:`AccessControl.cap_claims`), so a node cannot draw more than its
  share of partitions or tasks by claiming a big machine;
* every partition key a data scientist scatters is recorded with the
  certificate name that placed it (:meth:`AccessControl.key_owner`): a
  dataset may be registered only from keys its caller placed, and a key
  another user placed cannot be scattered over;
* a data scientist's ``identity`` and ``ncores`` replies name no node: node
  addresses, names and hosts stay with the operators.

On a plaintext grid (``tcp://``, e.g. ``Grid.local()``) there are no
identities and no roles, exactly as in plain Dask.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from grid import config
from grid.handlers import call_handler
from grid.protocol.messages import PRIVILEGED, handler_names

logger = logging.getLogger("grid.access")

#: what a data scientist's client and a node may call (besides the stream each opens) is
#: defined once, with the checks of each message, in the grid's protocol table
CLIENT_HANDLERS = handler_names("scheduler", "client")
NODE_HANDLERS = handler_names("scheduler", "node")
OBSERVER_HANDLERS = handler_names("scheduler", "observer")

#: the grid handlers an observer calls whose answer depends on who asks: an observer
#: gets the scheduler's own view (every job and node), made safe by _observer_view
OBSERVER_VIEWS = frozenset({"grid_info", "grid_jobs", "grid_job"})

#: handlers other schedulers of the grid call on this one
SCHEDULER_ONLY = frozenset({"grid_attach", "grid_detach", "grid_region_round"})

#: client stream messages that carry code (pickled task graphs) or raw data
CLIENT_STREAM_PRIVILEGED = frozenset({"update-graph", "update-data"})

#: what a node may pass to ``retire_workers``: its own addresses and how to leave, no selection policy
RETIRE_FIELDS = frozenset({"workers", "close_workers", "remove", "stimulus_id"})

#: scattered keys remembered before forgotten ones are pruned (then twice what is left)
KEY_OWNERS_PRUNE_AT = 4096


def is_tls(scheduler: Any) -> bool:
    """Whether ``scheduler`` listens on TLS: peers present certificates, and the role checks apply."""
    return str(scheduler.address).startswith("tls://")


class AccessControl:
    """Role checks for one scheduler of a TLS grid.

    Parameters
    ----------
    region : str
        The region of this scheduler; nodes must carry it in their certificate.
    revocation : grid.security.identity.RevocationList, optional
        Serials refused even with a valid signature.
    """

    def __init__(self, region: str, revocation: Any = None) -> None:
        self.region = region
        self.revocation = revocation
        self.scheduler: Any = None
        #: True once installed on a TLS scheduler: identities come from certificates only
        self.active = False
        self.client_identities: dict[str, Any] = {}
        #: worker address -> identity, bound only after distributed admitted the worker
        self.worker_identities: dict[str, Any] = {}
        #: worker address -> identity of a registration in flight (moved to worker_identities on admission)
        self._registering: dict[str, Any] = {}
        #: certificate names of the nodes admitted here: no other certificate may take one as its node name
        self.node_names: set[str] = set()
        #: scattered key -> certificate name of the peer that placed it
        self.key_owners: dict[Any, str] = {}
        #: whether the region's partition store holds a key (set by the grid plugin)
        self.stored: Callable[[str], bool] = lambda key: False
        self._prune_at = KEY_OWNERS_PRUNE_AT

    # --- identities ----------------------------------------------------------------
    def identity(self, comm: Any) -> Any:
        """The grid identity of the peer of ``comm`` (None on a plaintext comm)."""
        if comm is None:
            return None
        info = getattr(comm, "extra_info", None) or {}
        if "peercert" not in info:
            return None
        from grid.security.identity import CertificateRevoked, identity_from_peercert

        identity = identity_from_peercert(info["peercert"])
        if self.revocation is not None and identity.serial in self.revocation:
            raise CertificateRevoked(f"certificate {identity} was revoked (serial {identity.serial:x})")
        return identity

    # --- installation --------------------------------------------------------------
    def install(self, scheduler: Any) -> None:
        """Wrap every handler of ``scheduler`` with the role check."""
        self.scheduler = scheduler
        self.active = True
        # inner wrappers first: the role check below runs before each of them
        if "scatter" in scheduler.handlers:
            scheduler.handlers["scatter"] = self._record_scatter(scheduler.handlers["scatter"])
        for op in ("identity", "ncores"):
            if op in scheduler.handlers:
                scheduler.handlers[op] = self._hide_nodes(op, scheduler.handlers[op])
        for op in OBSERVER_VIEWS & OBSERVER_HANDLERS:
            if op in scheduler.handlers:
                scheduler.handlers[op] = self._observe(op, scheduler.handlers[op])
        # identities are bound when distributed admits a worker, not when it asks to be
        scheduler.add_plugin(NodeBindings(self), name=NodeBindings.name, idempotent=True)
        for op, handler in list(scheduler.handlers.items()):
            scheduler.handlers[op] = self._guard(op, handler)
        # client stream messages live in scheduler.stream_handlers (merged with the workers')
        for op in CLIENT_STREAM_PRIVILEGED:
            if op in scheduler.stream_handlers:
                scheduler.stream_handlers[op] = self._guard_stream(op, scheduler.stream_handlers[op], scheduler)

    def _guard(self, op: str, handler: Callable) -> Callable:
        async def guarded(comm: Any, **msg: Any) -> Any:
            address = None
            try:
                identity = self.identity(comm)
                self.check(op, identity, msg)
                if op == "register-worker" and identity is not None:
                    address = await self._admit(identity, msg)
                    # what the node claims about itself is capped before distributed believes it
                    self.cap_claims(identity, msg)
            except Exception as exc:  # noqa: BLE001 - every refusal is reported, none crashes
                logger.warning("refused %r: %s", op, exc)
                if op == "register-worker":
                    # answer the way distributed refuses a duplicate name: the node stops
                    # ("time" too: distributed's worker reads it before it looks at the status)
                    await comm.write({"status": "error", "time": time.time(), "message": f"refused by the grid: {exc}"})
                    return None
                raise PermissionError(str(exc)) from None
            if op == "register-client" and identity is not None:
                self.client_identities[msg.get("client", "")] = identity
            if address is None:
                return await call_handler(handler, comm, msg)
            # _admit noted the registration; NodeBindings.add_worker binds it once distributed admits
            # the worker, and a refusal (quarantine, distributed's own checks) leaves nothing behind
            try:
                return await call_handler(handler, comm, msg)
            finally:
                if self._registering.get(address) is identity:
                    del self._registering[address]

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
                # the addresses bound to this certificate on admission, never ones it claimed
                own = self.addresses_of(identity)
                workers = msg.get("workers")
                unknown = sorted(set(msg) - RETIRE_FIELDS)
                if unknown or not isinstance(workers, (list, tuple)) or not workers or not set(workers) <= own:
                    raise PermissionError(
                        f"node {identity.name!r} may retire only itself: retire_workers(workers=[its own address])"
                        + (f", without {', '.join(unknown)}" if unknown else "")
                    )
            if op in ("unregister", "heartbeat_worker"):
                address = self._coerce(msg.get("address"))
                live = self.scheduler is not None and address in self.scheduler.workers
                if live and address not in self.addresses_of(identity):
                    raise PermissionError(f"node {identity.name!r} may {op.replace('_worker', '')} only itself, not {address}")
            return
        if identity.role == "client":
            if op not in CLIENT_HANDLERS:
                raise PermissionError(
                    f"{identity.name!r} has a client certificate, which may submit and manage its own "
                    f"grid jobs but not call {op!r}; that needs an admin certificate"
                )
            return
        if identity.role == "observer":
            if op not in OBSERVER_HANDLERS:
                raise PermissionError(
                    f"{identity.name!r} has an observer certificate, which may watch the grid "
                    f"({', '.join(sorted(OBSERVER_VIEWS))}) but not call {op!r}; submitting and managing "
                    "jobs needs a client certificate, anything else an admin certificate"
                )
            return
        raise PermissionError(f"unknown role {identity.role!r} of {identity.name!r}")

    def addresses_of(self, identity: Any) -> set[str]:
        """The worker addresses bound to ``identity``'s certificate."""
        return {addr for addr, ident in self.worker_identities.items() if ident.serial == identity.serial}

    def _coerce(self, address: Any, resolve: bool = True) -> Any:
        """``address`` the way the scheduler will store it (aliases, host names resolved)."""
        if self.scheduler is None or not isinstance(address, (str, tuple)):
            return address
        try:
            return self.scheduler.coerce_address(address, resolve)
        except Exception:  # noqa: BLE001 - distributed refuses a malformed address itself
            return address

    # --- node admission ------------------------------------------------------------
    async def _admit(self, identity: Any, msg: dict) -> str:
        """Check a registration against the live nodes; return the address it will have.

        Refused (``PermissionError``, naming the fix): an address or a name a
        live node of another certificate holds, a registration already in
        flight for that address, and a node name that is the certificate name
        of another node admitted here. The same certificate registering again
        while its old record is still live (its process restarted before the
        scheduler noticed) replaces that record.
        """
        scheduler = self.scheduler
        address = self._coerce(msg.get("address"), bool(msg.get("resolve_address", True)))
        name = msg.get("name")
        if not isinstance(address, str):
            raise PermissionError(f"node {identity.name!r} registered without an address ({address!r:.80})")
        if address in self._registering:
            raise PermissionError(f"another node is registering at {address} right now; a node registers once")
        stale: set[str] = set()
        holder = scheduler.aliases.get(name) if isinstance(name, (str, int)) else None
        for what, taken in (("address", address if address in scheduler.workers else None), ("name", holder)):
            if taken is None or taken not in scheduler.workers:
                continue
            bound = self.worker_identities.get(taken)
            if bound is None or bound.serial != identity.serial:
                shown = address if what == "address" else repr(name)
                raise PermissionError(
                    f"node {identity.name!r} claims the {what} {shown} of a live node of another certificate; "
                    "a node registers with its own address and name"
                )
            stale.add(taken)
        if identity.role == "node" and str(name) != identity.name and str(name) in self.node_names:
            raise PermissionError(
                f"node {identity.name!r} claims the name {name!r}, which is another node's certificate name; "
                f"on a TLS grid a node's identity is its certificate: start it with --name {identity.name} "
                "or leave --name out"
            )
        self._registering[address] = identity  # before any await: a second claim in between is refused
        for old in stale:
            logger.info("node %s registers again at %s: its old record %s is stale, removing it", identity.name, address, old)
            try:
                result = scheduler.remove_worker(address=old, stimulus_id=f"grid-reregister-{time.time()}", close=False)
                if inspect.isawaitable(result):
                    await result
            except BaseException:
                self._registering.pop(address, None)
                raise
        return address

    def bind_worker(self, address: str) -> None:
        """Distributed admitted the worker at ``address``: bind its certificate to it."""
        identity = self._registering.pop(address, None)
        if identity is None:
            return
        self.worker_identities[address] = identity
        if identity.role == "node":
            self.node_names.add(identity.name)

    def cap_claims(self, identity: Any, msg: dict) -> None:
        """Cap the threads and memory a registering node claims.

        ``grid.scheduler.max-node-threads`` and ``grid.scheduler.max-node-memory``
        apply to node certificates; workers with admin or scheduler
        certificates are the operators' own, and plaintext grids are private
        (their workers are the operators' machines), so those keep their claim.
        Changing the message changes what the scheduler believes (the worker's
        real thread pool is untouched): placement and task assignment follow
        the capped numbers.
        """
        if identity.role != "node":
            return
        cap = config.get("scheduler.max-node-threads")
        claimed = msg.get("nthreads")
        if cap is not None and isinstance(claimed, int) and not isinstance(claimed, bool) and claimed > int(cap):
            logger.info("node %s claims %d threads; believed %d (grid.scheduler.max-node-threads)", identity.name, claimed, int(cap))
            msg["nthreads"] = int(cap)
        memory_cap = config.get("scheduler.max-node-memory")
        memory = msg.get("memory_limit")
        if memory_cap is not None and isinstance(memory, (int, float)) and not isinstance(memory, bool):
            limit = config.nbytes("scheduler.max-node-memory")
            if memory > limit:
                logger.info("node %s claims %d bytes of memory; believed %d (grid.scheduler.max-node-memory)", identity.name, memory, limit)
                msg["memory_limit"] = limit

    # --- data placed by data scientists ----------------------------------------------
    def _record_scatter(self, handler: Callable) -> Callable:
        async def scatter(comm: Any = None, **msg: Any) -> Any:
            identity = self.identity(comm)
            data = msg.get("data")
            added: list = []
            if identity is not None and isinstance(data, dict):
                for key in data:
                    owner = self.key_owners.get(key) if _hashable(key) else None
                    if identity.role not in PRIVILEGED and self._placed(key) and owner != identity.name:
                        # writing over a key someone else placed (or a task made) would swap their data
                        raise PermissionError(
                            f"key {key!r} exists already and was not placed by {identity.name!r}; "
                            "Grid.scatter names its own partitions"
                        )
                for key in data:
                    if _hashable(key) and key not in self.key_owners:
                        self.key_owners[key] = identity.name
                        added.append(key)
                self._prune_keys()
            try:
                return await call_handler(handler, comm, msg)
            except BaseException:
                for key in added:
                    if not self._placed(key):
                        self.key_owners.pop(key, None)
                raise

        return scatter

    def _placed(self, key: Any) -> bool:
        """Whether ``key`` holds data now: a Dask key, or a partition in the region's store."""
        return key in self.scheduler.tasks or (isinstance(key, str) and self.stored(key))

    def _prune_keys(self) -> None:
        if len(self.key_owners) < self._prune_at:
            return
        self.key_owners = {k: v for k, v in self.key_owners.items() if self._placed(k)}
        self._prune_at = max(KEY_OWNERS_PRUNE_AT, 2 * len(self.key_owners))

    def key_owner(self, key: Any) -> str | None:
        """The certificate name of the peer that scattered ``key`` (None: not scattered on TLS)."""
        if self.scheduler is not None and not self._placed(key):
            self.key_owners.pop(key, None)  # forgotten: a key of that name now would be new data
            return None
        return self.key_owners.get(key)

    def check_keys_placed_by(self, comm: Any, dataset: str, keys: list) -> None:
        """Refuse to make a dataset of keys the caller did not scatter itself.

        Admins and schedulers may register any key; on a plaintext grid
        nobody is identified and nothing is checked.
        """
        identity = self.identity(comm)
        if _unrestricted(identity):
            return
        for key in keys:
            if not _hashable(key) or self.key_owner(key) != identity.name:
                raise PermissionError(
                    f"dataset {dataset!r}: partition {key!r} was not placed by {identity.name!r}; "
                    "a dataset is registered from partitions its owner scattered (place your own data with Grid.scatter)"
                )

    # --- what untrusted peers see ---------------------------------------------------
    def _hide_nodes(self, op: str, handler: Callable) -> Callable:
        """A data scientist's ``identity`` / ``ncores``: nodes as opaque placeholders, no addresses."""

        async def hidden(comm: Any = None, **msg: Any) -> Any:
            result = await call_handler(handler, comm, msg)
            if self.sees_nodes(comm):
                return result
            if op == "ncores" and isinstance(result, dict):
                return {f"node-{i}": n for i, n in enumerate(result.values())}
            if op == "identity" and isinstance(result, dict) and isinstance(result.get("workers"), dict):
                keep = ("status", "nthreads", "memory_limit")
                result = dict(result)
                result["workers"] = {
                    f"node-{i}": {k: w.get(k) for k in keep} for i, w in enumerate(result["workers"].values())
                }
            return result

        hidden.__name__ = getattr(handler, "__name__", op)
        return hidden

    def _observe(self, op: str, handler: Callable) -> Callable:
        """An observer's ``grid_info`` / ``grid_jobs`` / ``grid_job``: the scheduler's own view.

        The handler answers as for the scheduler's own process (no caller), so
        an observer sees every job and node; :func:`_observer_view` then
        withholds what an observer has no use for. Everyone else is answered
        by the handler as before.
        """

        async def observed(comm: Any = None, **msg: Any) -> Any:
            identity = self.identity(comm)
            if identity is None or identity.role != "observer":
                return await call_handler(handler, comm, msg)
            return _observer_view(op, await call_handler(handler, None, msg))

        observed.__name__ = getattr(handler, "__name__", op)
        return observed

    def privileged(self, comm: Any) -> bool:
        """Whether the peer sees and may do everything (admin, scheduler, in-process, plaintext)."""
        return _unrestricted(self.identity(comm))

    def sees_nodes(self, comm: Any) -> bool:
        """Whether the peer may see node addresses and names: privileged peers, and nodes
        (Dask's data path already tells a node its peers' addresses)."""
        identity = self.identity(comm)
        return _unrestricted(identity) or identity.role == "node"

    def owner(self, comm: Any, claimed: str) -> str:
        """The owner to record: the certificate name on TLS grids, else what the client says."""
        identity = self.identity(comm)
        return identity.name if identity is not None else str(claimed)

    def may_see(self, comm: Any, owner: str) -> bool:
        """Whether the peer may read or cancel a job (or dataset) of ``owner``.

        An observer owns nothing: it is refused here too, for every owner (it
        sees job metadata through :meth:`_observe`, never results or data).
        """
        identity = self.identity(comm)
        if _unrestricted(identity):
            return True
        # an observer named like a user (its certificate name is free) is not that user
        return identity.role != "observer" and identity.name == owner

    def forget_worker(self, address: str) -> None:
        self.worker_identities.pop(address, None)

    def node_name(self, address: str) -> str | None:
        identity = self.worker_identities.get(address)
        return identity.name if identity is not None else None

    def owner_of(self, address: str) -> str | None:
        """Who holds the certificate of the node at ``address`` (its ``owner``), if it names one."""
        identity = self.worker_identities.get(address)
        return getattr(identity, "owner", None) or None


class NodeBindings(SchedulerPlugin):
    """Binds a node's certificate to its address when distributed admits the worker.

    ``register-worker`` does not return until the worker leaves, so the
    access check cannot bind after it; distributed calls every scheduler
    plugin's ``add_worker`` once the worker state exists and before the
    worker hears "OK", which is exactly "after registration succeeded".
    """

    name = "grid-node-identities"

    def __init__(self, access: AccessControl) -> None:
        self.access = access

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.access.bind_worker(worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.access.forget_worker(worker)


def _observer_view(op: str, reply: Any) -> Any:
    """What an observer gets of the scheduler's own answer to ``op``.

    Job summaries and round histories (metrics only) pass unchanged, and so
    does the node view of ``grid_info``. Quarantine evidence is withheld: it
    can quote task keys and the first bytes of a node's message, and the
    dashboard shows the reason only.
    """
    if op != "grid_info" or not isinstance(reply, dict) or not isinstance(reply.get("quarantined"), list):
        return reply
    reply = dict(reply)
    reply["quarantined"] = [
        {**record, "evidence": {}} if isinstance(record, dict) else record for record in reply["quarantined"]
    ]
    return reply


def _unrestricted(identity: Any) -> bool:
    """No identity (a plaintext grid, the scheduler's own process) or a privileged certificate."""
    return identity is None or identity.role in PRIVILEGED


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True

