"""The grid's scheduler plugin: the trusted side of a region.

Installed on every regional scheduler (``grid scheduler`` and ``Grid.local``
pass it to distributed's ``Scheduler(plugins=...)``). It adds the grid's RPC
handlers to the scheduler, keeps the job registry and the placed datasets,
and runs job drivers as asyncio tasks in the scheduler's event loop, talking
to the region's nodes through an asynchronous ``Client`` of its own.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import warnings
from typing import Any

import numpy as np

from distributed import Client
from distributed.comm import get_address_host
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps

from grid import config
from grid.handlers import call_handler
from grid.protocol import comm as protocol_comm
from grid.keys import GRID_PREFIX, is_partition, partition_key
from grid.scheduler import replicas, untrusted
from grid.scheduler.access import AccessControl
from grid.scheduler.attempts import ROUND_ENGINES
from grid.scheduler.dial_out import DialOutNodes
from grid.scheduler.quarantine import Quarantine
from grid.scheduler.datasets import Dataset, DatasetStore, no_nodes_reason, read_pending_files
from grid.scheduler.driver import JobDriver, RegionRun, start_when_read, taint_entry
from grid.scheduler.metrics import register_metrics, unregister_metrics
from grid.scheduler.registry import FINISHED, JobRecord, JobRegistry
from grid.scheduler import recovery
from grid.scheduler.state import StateDir
from grid.protocol.requests import ADAPTIVE, check_request
from grid.scheduler.verify import INDEPENDENCE, Origin, Reliability
from grid.node.align import PLUGIN_NAME as ALIGN_PLUGIN, AlignPartitions
from grid.node.rounds import PLUGIN_NAME as ROUNDS_PLUGIN, NodeRounds
from jobs.local import local_step
from jobs.plain import check_plain
from jobs.spec import SpecError, resolve_class

logger = logging.getLogger("grid.scheduler")

#: name under which the plugin is registered on the scheduler
PLUGIN_NAME = "grid"

#: a node that had no round handler is asked again after this long (seconds)
ROUNDS_RETRY_SECONDS = 60.0


def _error(exc: BaseException) -> dict:
    return {"status": "error", "type": type(exc).__name__, "message": str(exc)}


class GridSchedulerPlugin(SchedulerPlugin):
    """Grid runtime inside one regional Dask scheduler.

    Parameters
    ----------
    region : str
        This region's name; job ids start with it.
    """

    name = PLUGIN_NAME

    def __init__(self, region: str) -> None:
        self.region = region
        self.scheduler: Any = None
        self.registry = JobRegistry(region, keep_finished=int(config.get("scheduler.finished-jobs-kept")))
        self.runs: dict[str, RegionRun] = {}
        self.drivers: dict[str, JobDriver] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.finished_events: dict[str, asyncio.Event] = {}
        self.allowed_modules = tuple(config.get("jobs.allowed-modules"))
        self.max_update_bytes = config.nbytes("scheduler.max-update-bytes")
        config.choice("scheduler.round-engine", ROUND_ENGINES)  # a typo fails the scheduler's start, not a job
        self._client: Client | None = None
        self._client_lock: asyncio.Lock | None = None
        self.datasets: DatasetStore
        self.access = AccessControl(region)
        self.result_workers: dict[str, list[str]] = {}  # grid task key -> nodes that computed it, in order
        self.verification_rejects = 0
        self.rejected: dict[str, int] = {}  # node address -> updates refused from it
        self.tasks_done: dict[str, int] = {}  # node address -> tasks and round requests it finished
        #: nodes that answered a round request as having no grid_update handler -> when (asked again later)
        self.nodes_without_rounds: dict[str, float] = {}
        self.tasks_done_total = 0
        self.quarantine: Quarantine
        self.state: StateDir | None = None  # grid.scheduler.state-dir: durable jobs (recovery.py)
        self.closing = False
        #: other regions this scheduler may dial (besides grid.scheduler.peers): region -> address
        self.peers: dict[str, str] = {}
        #: set by an embedded grid, whose nodes all share this machine: "nodes" (else grid.scheduler.verify.independent)
        self.verify_independence: str | None = None
        self.files_ready: dict[str, asyncio.Task] = {}  # Files datasets read again after a restart
        self.pending_files: set[str] = set()  # jobs' Files datasets registered before a node could read them
        self.reliability = Reliability()

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # which nodes the scheduler may dial, calls to those it may not, and the partitions
        # those fetch for themselves (docs/architecture.md#dial-out-nodes)
        self.dial_out = DialOutNodes(self)
        self.datasets = DatasetStore(
            scheduler, stored=self.dial_out.store.has, on_drop=self.dial_out.drop_stored, fetchable=self.dial_out.fetchable
        )
        self.access.stored = self.dial_out.store.has
        # a client's future on a partition only the store holds names a key Dask does not know
        warnings.filterwarnings("ignore", message=r"Client .* desires key 'grid-part-", category=UserWarning)
        self._client_lock = asyncio.Lock()
        scheduler.handlers.update(
            {
                "grid_info": self.info,
                "grid_register_dataset": self.register_dataset,
                "grid_drop_dataset": self.drop_dataset,
                "grid_register_files": self.register_files,
                "grid_submit": self.submit,
                "grid_job": self.job,
                "grid_jobs": self.jobs,
                "grid_cancel": self.cancel,
                "grid_wait": self.wait,
                "grid_result": self.result,
                "grid_rerun": self.rerun,
                "grid_attach": self.attach,
                "grid_detach": self.detach,
                "grid_region_round": self.region_round,
            }
        )
        # partitions a client scatters without naming nodes go to grid.jobs.replicas nodes at once
        scheduler.handlers["scatter"] = self._spread_scatter(scheduler.handlers["scatter"])
        untrusted.install(scheduler, on_finished=self._result_from)
        self.quarantine = Quarantine(scheduler, self.access)
        self.quarantine.install(scheduler)
        self.quarantine.listeners.append(self._taint_finished_jobs)
        self.dial_out.install()  # its handler, and its copies kept at the memory manager's pace
        # keep grid.jobs.replicas copies of every dataset partition (docs/reliability.md#churn)
        self.replica_policy = replicas.install(self, scheduler)
        # partitions arrive unaligned through Dask's comms: each node copies them once (grid/node/align.py)
        await scheduler.register_worker_plugin(None, dumps(AlignPartitions()), name=ALIGN_PLUGIN, idempotent=True)
        # round requests (grid/node/rounds.py) on nodes that accept plugins; `grid node` and
        # Grid.local install it themselves, community nodes refuse code from a plaintext peer
        await scheduler.register_worker_plugin(None, dumps(NodeRounds()), name=ROUNDS_PLUGIN, idempotent=True)
        if _is_tls(scheduler):
            crl = config.get("scheduler.crl-file")
            if crl:
                from grid.security.identity import RevocationList

                # signed by the grid's CA, checked at every reload; read once now, so a missing or
                # bad list stops the scheduler at start instead of refusing every call later
                ca = getattr(getattr(scheduler, "security", None), "tls_ca_file", None)
                self.access.revocation = RevocationList(crl, ca=ca)
                self.access.revocation.serials()
            self.access.install(scheduler)
        # connections this scheduler opens (to nodes, to other regions) follow its rules too
        protocol_comm.register_scheduler(self)
        state_dir = config.get("scheduler.state-dir")
        if state_dir:  # reload jobs, quarantine and Files datasets; resume what can resume
            self.state = StateDir(state_dir, self.region)
            recovery.recover(self)
            self._taint_finished_jobs()  # both were kept: a node caught after a job still taints it
        register_metrics(self)

    def _taint_finished_jobs(self, caught: Any = None) -> None:
        """A node quarantined from now on taints the ended jobs it had updates accepted unchecked in."""
        for job in self.registry.all():
            self.taint_if_caught(job)

    def taint_if_caught(self, record: JobRecord) -> None:
        """Mark a finished ``verify="adaptive"`` job tainted when a node of this region that went
        unchecked in it is quarantined (a running job replays instead: ``JobDriver.run``)."""
        if record.tainted or record.status != "done" or record.request.get("verify") != ADAPTIVE:
            return
        for node in sorted({n for e in record.history for n in (e.get("unverified_nodes") or {}).get(self.region, ())}):
            caught = self.quarantine.records.get(node)
            if caught is None:
                continue
            # the reason and when; the full evidence (other jobs, other nodes) stays in the quarantine record
            record.tainted = taint_entry(record, {self.region: [node]}, {"reason": caught.reason, "time": caught.time})
            logger.warning(
                "job %s is tainted: node %s, quarantined after the job ended, had updates accepted unchecked in "
                "rounds %s; rerun it (Job.rerun())", record.id, node, record.tainted["rounds"] if record.tainted else [],
            )
            recovery.save_record(self, record)
            return

    def protocol_violation(self, identity: Any, peer: str, reason: str, evidence: dict) -> None:
        """A node's connection was closed for breaking the protocol (``grid.protocol.comm``):
        quarantine the node, with the evidence, and remove it."""
        evidence = {**evidence, "violation": reason}
        self.quarantine.add_identity(identity.name, peer, f"it broke the grid protocol: {reason}", evidence)
        for address in self.access.addresses_of(identity) & set(self.scheduler.workers):
            asyncio.ensure_future(
                self.scheduler.remove_worker(address=address, stimulus_id=f"grid-protocol-{time.time()}", close=True)
            )

    async def close(self) -> None:
        protocol_comm.unregister_scheduler(self)
        if self.scheduler is not None:
            self.dial_out.close()
        self.closing = True  # drivers stopped now keep their durable state for the restart (finish_job)
        for task in self.files_ready.values():
            task.cancel()
        unregister_metrics(self)
        if self.scheduler is not None:
            replicas.uninstall(self.scheduler, getattr(self, "replica_policy", None))
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def get_client(self) -> Client:
        """The plugin's own asynchronous client of this scheduler (made on first use)."""
        assert self._client_lock is not None
        async with self._client_lock:
            if self._client is None:
                self._client = await Client(
                    self.scheduler.address,
                    asynchronous=True,
                    security=self.scheduler.security,
                    name=f"grid-driver-{self.region}",
                    set_as_default=False,
                    # node results arrive as msgpack'd bytes (grid.wire); refuse anything that unpickles
                    serializers=["msgpack"],
                    deserializers=["msgpack"],
                    direct_to_workers=True,  # fetch from nodes with our serializers, not via the scheduler
                )
            return self._client

    # --- handlers: status ------------------------------------------------------------
    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.dial_out.add_worker(worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.dial_out.remove_worker(worker)
        self.access.forget_worker(worker)
        self.tasks_done.pop(worker, None)
        self.nodes_without_rounds.pop(worker, None)

    def count_update(self, worker: str | None) -> None:
        """Count one finished task or round request of ``worker`` (dashboard: tasks done)."""
        if worker:
            self.tasks_done[worker] = self.tasks_done.get(worker, 0) + 1
            self.tasks_done_total += 1

    def lacks_rounds(self, worker: str) -> bool:
        """Whether ``worker`` said lately that it has no ``grid_update`` handler.

        Asked again after ``ROUNDS_RETRY_SECONDS``: a plugin may reach a node
        after its first round request did."""
        since = self.nodes_without_rounds.get(worker)
        return since is not None and time.monotonic() - since < ROUNDS_RETRY_SECONDS

    def _result_from(self, key: Any, worker: str | None) -> None:
        self.count_update(worker)
        if isinstance(key, str) and key.startswith(GRID_PREFIX) and not is_partition(key) and worker:
            self.result_workers.setdefault(key, []).append(worker)

    def result_workers_of(self, key: str) -> list[str]:
        """The nodes that computed grid task ``key``, in order (a lost result is computed again)."""
        return self.result_workers.get(key, [])

    def forget_results(self, keys: list[str]) -> None:
        for key in keys:
            self.result_workers.pop(key, None)

    def release_futures(self, futures: list) -> None:
        """Drop the driver's hold on grid task results so the scheduler frees them."""
        self.forget_results([f.key for f in futures])
        for f in futures:
            f.release()

    def node_count(self) -> int:
        """Nodes of this region (running or paused; quarantined ones are gone)."""
        return len(self.scheduler.workers)

    def independence(self) -> str:
        """What makes two nodes independent in a quorum here: ``"nodes"`` or ``"hosts-and-owners"``.

        ``grid.scheduler.verify.independent`` (an embedded grid says
        ``"nodes"`` itself: its nodes share one machine); ``auto`` is hosts and owners on
        a grid that checks certificates (community nodes are strangers), nodes
        on a plaintext one (an operator's own machines, or one laptop).
        """
        mode = self.verify_independence or config.choice("scheduler.verify.independent", INDEPENDENCE)
        if mode == "auto":
            return "hosts-and-owners" if self.access.active else "nodes"
        return mode

    def origin_of(self, address: str) -> Origin:
        """Who computed a result of the node at ``address``, as independence counts it.

        The host is the address its connection to this scheduler comes from,
        not the address it claims, so nodes of one machine share it; the owner
        is the one its certificate names (its certificate's name when it
        names none), so one volunteer's nodes share it.
        """
        identity = self.quarantine.identity_of(address)
        host = ""
        stream = self.scheduler.stream_comms.get(address)
        comm = getattr(stream, "comm", None)
        if comm is not None and not comm.closed():
            try:
                host = get_address_host(comm.peer_address)
            except ValueError:
                host = ""
        if not host:
            ws = self.scheduler.workers.get(address)
            host = ws.host if ws is not None else get_address_host(address)
        return Origin(node=identity, owner=self.access.owner_of(address) or identity, host=host)

    def node_state(self, ws: Any) -> str:
        """``active``, ``paused``, or ``unreachable``: a stock worker the scheduler cannot
        connect to gets neither data nor work (grid/scheduler/reach.py)."""
        if self.dial_out.reach.kind(ws.address) == "unreachable":
            return "unreachable"
        return "paused" if ws.status.name == "paused" else "active"

    def info(self, comm: Any = None) -> dict:
        """Region, nodes and job counts: what `grid status` and the dashboard show.

        Admins, schedulers (and every caller of a plaintext grid) see every
        node, job count, dataset and quarantine record. A data scientist sees
        node counts per state, its own jobs and datasets, and no node
        address, node name, other owner or quarantine evidence; a node sees
        the same with no jobs or datasets (it needs the region only).
        """
        s = self.scheduler
        nodes = {"active": 0, "paused": 0, "unreachable": 0}
        for ws in s.workers.values():
            state = self.node_state(ws)
            nodes[state] = nodes.get(state, 0) + 1
        nodes["quarantined"] = len(self.quarantine.records)
        reply = {
            "status": "OK",
            "region": self.region,
            "address": s.address,
            "dashboard": _dashboard_link(s),
            "nodes": nodes,
            # threads that can take grid work: what placement splits partitions by
            "nthreads": sum(ws.nthreads for ws in s.workers.values() if self.dial_out.reach.kind(ws.address) != "unreachable"),
            "verification_rejects": self.verification_rejects,
            "tasks_done": self.tasks_done_total,
            "time": time.time(),
        }
        if not self.access.privileged(comm):
            identity = self.access.identity(comm)
            mine = identity.name if identity.role == "client" else None
            counts = dict.fromkeys(self.registry.counts(), 0)
            for job in self.registry.all():
                if job.owner == mine:
                    counts[job.status] += 1
            return {
                **reply,
                "workers": [],  # node addresses and names are the operators' (admin certificates)
                "jobs": counts,
                "datasets": [d.info() for d in self.datasets.datasets.values() if mine is not None and d.owner == mine],
                "quarantined": [],
            }
        workers = [
            {
                "address": ws.address,
                "name": self.access.node_name(ws.address) or str(ws.name),
                "dask_name": str(ws.name),
                "host": ws.host,
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                "memory": ws.memory.process,
                "cpu": ws.metrics.get("cpu", 0.0),
                "status": ws.status.name,
                "state": self.node_state(ws),
                "reach": self.dial_out.reach.kind(ws.address),
                "executing": len(ws.processing),
                "stored": self.dial_out.partitions_on(ws),
                "tasks_done": self.tasks_done.get(ws.address, 0),
                "rejected": self.rejected.get(ws.address, 0),
                "verified": self.reliability.get(self.quarantine.identity_of(ws.address)).valid,
            }
            for ws in s.workers.values()
        ]
        return {
            **reply,
            "workers": sorted(workers, key=lambda w: w["name"]),
            "jobs": self.registry.counts(),
            "datasets": [d.info() for d in self.datasets.datasets.values()],
            "quarantined": self.quarantine.to_list(),
        }

    # --- handlers: data --------------------------------------------------------------
    def register_dataset(
        self,
        comm: Any,
        name: str,
        keys: list[str],
        rows: list[int],
        indices: list[int],
        n_features: int,
        classes: list | None = None,
        owner: str = "",
        job_owned: bool = False,
    ) -> dict:
        try:
            for arg, value in (("keys", keys), ("rows", rows), ("indices", indices)):
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"{arg} must be a list, got {value!r:.80}")
            if not keys:
                raise ValueError("a dataset needs at least one partition (keys is empty)")
            if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rows):
                raise ValueError(f"rows must be integers >= 1, got {rows!r:.80}")
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices) or len(set(indices)) != len(indices):
                raise ValueError(f"indices must be distinct integers >= 0, got {indices!r:.80}")
            if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
                raise ValueError(f"n_features must be an integer >= 1, got {n_features!r:.80}")
            if not (len(keys) == len(rows) == len(indices)):
                raise ValueError("keys, rows and indices must have the same length")
            # on TLS a dataset is made only of partitions its owner scattered (grid.scheduler.access)
            self.access.check_keys_placed_by(comm, str(name), list(keys))
            self.datasets.register(
                Dataset(
                    name=str(name),
                    keys=[str(k) for k in keys],
                    rows=[int(r) for r in rows],
                    indices=[int(i) for i in indices],
                    n_features=int(n_features),
                    classes=classes,
                    owner=self.access.owner(comm, owner),
                    job_owned=bool(job_owned),
                )
            )
        except Exception as exc:  # noqa: BLE001 - report every rejection to the caller
            return _error(exc)
        return {"status": "OK"}

    def peer_address(self, region: str, claimed: str) -> str:
        """The address this scheduler dials for ``region``: the one its operator configured.

        A job request names the regions it trains in, with the addresses the
        client knows; a scheduler never dials an address a request names (a
        listener an attacker runs would read this scheduler's requests and
        answer them). On TLS grids a region must be one of
        ``grid.scheduler.peers``; plaintext grids authenticate nobody, so
        there the client's address is used when no peer is configured.
        """
        peers = {**(config.get("scheduler.peers") or {}), **self.peers}
        if region in peers:
            return str(peers[region])
        if self.scheduler is not None and _is_tls(self.scheduler):
            known = ", ".join(sorted(peers)) or "none"
            raise ValueError(
                f"region {region!r} is not a peer of region {self.region!r} (peers: {known}); a scheduler dials only "
                f"the regions its operator lists: `grid scheduler --peer {region}=ADDRESS` or grid.scheduler.peers"
            )
        return str(claimed)

    def _spread_scatter(self, scatter: Any) -> Any:
        """Wrap ``scatter``: grid partitions sent without named nodes go to ``grid.jobs.replicas``
        nodes, each copy straight from the scheduler.

        Data scientists do not see node addresses, so the scheduler picks the
        nodes holding the fewest partitions. Every partition is also written
        to the region's partition store (``grid/scheduler/store.py``). An open
        node gets its copy by scatter, from the scheduler; a dial-out node is
        granted the partition and fetches it from the store over its own
        connection (at once, and at the latest when a round needs it). A node
        the scheduler cannot reach gets nothing, so it never stalls placement.
        None gets a copy from another node: a node that will not serve its
        partitions to other nodes cannot leave a dataset with a single copy,
        and the dataset has its copies before it is registered (the replica
        policy keeps them through churn afterwards).
        """

        async def spread(comm: Any = None, **msg: Any) -> Any:
            data = msg.get("data")
            if msg.get("workers") or msg.get("broadcast") or not isinstance(data, dict) or not data or not all(
                is_partition(k) for k in data
            ):
                return await call_handler(scatter, comm, msg)
            await self.dial_out.reach.settled([ws.address for ws in self.scheduler.running])
            eligible = [ws.address for ws in self.scheduler.running if self.dial_out.reach.may_work(ws.address)]
            if not eligible:
                if self.scheduler.running:
                    raise OSError(
                        f"region {self.region!r} has no node the scheduler can reach or that dials out "
                        "(its nodes are stock Dask workers behind a firewall); start nodes with `grid node`"
                    )
                return await call_handler(scatter, comm, msg)  # no node yet: distributed waits for one
            loop = asyncio.get_running_loop()
            for key, value in data.items():  # disk writes off the event loop
                await loop.run_in_executor(None, self.dial_out.store.put, key, value)
            held = {w: self.dial_out.partitions_on(self.scheduler.workers[w]) for w in eligible}
            ranked = sorted(eligible, key=lambda w: (held[w], w))
            # partition j of the message goes to the j-th least loaded node and the ones after it
            r = min(max(1, int(config.get("jobs.replicas"))), len(ranked))
            groups: dict[tuple[str, ...], dict] = {}
            for j, (key, value) in enumerate(data.items()):
                holders = tuple(ranked[(j + k) % len(ranked)] for k in range(r))
                groups.setdefault(holders, {})[key] = value
            for holders, part in groups.items():
                for holder in holders:
                    if self.dial_out.reach.is_dial_out(holder):
                        self.dial_out.prefetch(holder, list(part))
                    else:  # one scatter per holder (distributed's broadcast would copy node to node)
                        await call_handler(scatter, comm, {**msg, "data": part, "workers": [holder], "broadcast": False})
            return list(data)

        return spread

    async def register_files(
        self,
        comm: Any,
        name: str,
        paths: list[str],
        indices: list[int],
        options: dict,
        owner: str = "",
        job_owned: bool = False,
        wait: bool = True,
    ) -> dict:
        """Have this region's nodes read file partitions and hold them as a dataset.

        The read tasks keep their recipe, so a partition whose every holder
        left is read again. Partitions that disagree are refused with the file
        named. ``wait=False`` (a job's files on a region without nodes) answers
        at once: the files are read when nodes join, and the job submitted on
        them is queued until then.
        """
        from grid import wire
        from grid.node.tasks import read_file_partition

        if not wait:
            try:
                if len(paths) != len(indices) or not paths:
                    raise ValueError("paths and indices must be non-empty lists of the same length")
                if name in self.datasets.datasets or name in self.files_ready:
                    raise ValueError(f"a dataset named {name!r} exists already on this region")
                options = {k: options.get(k) for k in ("target", "features", "format")}
                self.pending_files.add(str(name))
                self.files_ready[str(name)] = asyncio.get_running_loop().create_task(
                    read_pending_files(self, str(name), list(paths), list(indices), options, self.access.owner(comm, owner))
                )
            except Exception as exc:  # noqa: BLE001 - every rejection goes back to the caller
                return _error(exc)
            return {"status": "OK", "pending": True}
        try:
            if len(paths) != len(indices) or not paths:
                raise ValueError("paths and indices must be non-empty lists of the same length")
            options = {k: options.get(k) for k in ("target", "features", "format")}
            client = await self.get_client()
            parts = [
                client.submit(read_file_partition, str(p), options, key=partition_key(name, i))
                for p, i in zip(paths, indices)
            ]
            try:
                blobs = await self._describe(client, parts, name, indices)
            except Exception as exc:  # noqa: BLE001 - a file that cannot be read: say which
                await client.cancel(parts)
                raise ValueError(str(exc)) from None
            described = [wire.decode(b)[0] for b in blobs]
            n_features = described[0]["n_features"]
            for d, path in zip(described, paths):
                if d["n_features"] != n_features:
                    await client.cancel(parts)
                    raise ValueError(
                        f"partition {path} has {d['n_features']} features but {paths[0]} has {n_features}; "
                        "every partition needs the same columns"
                    )
            labels = sorted({v for d in described if "labels" in d for v in np.asarray(d["labels"]).tolist()})
            self.datasets.register(
                Dataset(
                    name=str(name),
                    keys=[f.key for f in parts],
                    rows=[int(d["rows"]) for d in described],
                    indices=[int(i) for i in indices],
                    n_features=int(n_features),
                    classes=labels or None,
                    owner=self.access.owner(comm, owner),
                    job_owned=bool(job_owned),
                    sources={f.key: [str(p), options] for f, p in zip(parts, paths)},
                )
            )
            for f in parts:
                f.release()  # the dataset holds them now
            recovery.save_recipe(self, self.datasets.get(str(name)), paths, options)
        except Exception as exc:  # noqa: BLE001 - every rejection goes back to the caller
            return _error(exc)
        return {"status": "OK", "rows": sum(int(d["rows"]) for d in described), "n_features": int(n_features), "labels": labels}

    async def _describe(self, client: Any, parts: list, name: str, indices: list[int]) -> list[bytes]:
        """The rows, features and labels of each file partition read on the nodes (wire blobs).

        Each is described where it was read: by a task on an open node (its small
        result fetched as usual), by a call on a dial-out node's own stream (which
        nothing can dial to fetch a result from)."""
        from grid.node.tasks import describe_partition

        for exc in await asyncio.gather(*(f.exception() for f in parts)):  # each read ends (or fails)
            if exc is not None:
                raise exc

        async def describe(f: Any, i: int) -> bytes:
            ts = self.scheduler.tasks.get(f.key)
            holder = min((ws.address for ws in ts.who_has), default=None) if ts is not None and ts.who_has else None
            if holder is not None and self.dial_out.reach.is_dial_out(holder):
                reply = await self.dial_out.channels.call(holder, "describe", key=f.key)
                if not isinstance(reply, dict) or not isinstance(reply.get("blob"), bytes):
                    raise OSError(f"node {holder} did not describe partition {i}: {str(reply)[:120]}")
                return reply["blob"]
            info = client.submit(describe_partition, f, key=f"grid-describe-{name}-{i}", workers=self.dial_out.open_nodes())
            try:
                return await info.result()
            finally:
                info.release()

        return list(await asyncio.gather(*(describe(f, i) for f, i in zip(parts, indices))))

    def drop_dataset(self, comm: Any, name: str) -> dict:
        if not isinstance(name, str):
            return _error(TypeError(f"dataset name must be a string, got {name!r:.80}"))
        dataset = self.datasets.datasets.get(name)
        if dataset is not None and not self.access.may_see(comm, dataset.owner):
            return _error(PermissionError(f"dataset {name!r} belongs to another user; it is not yours to drop"))
        if dataset is None and name in self.pending_files:  # not read yet (its job was never submitted): stop the read
            self.pending_files.discard(name)
            reading = self.files_ready.pop(name, None)
            if reading is not None:
                reading.cancel()
        if dataset is not None and dataset.users:
            active = [j for j in dataset.users if j in self.runs]
            if active:
                return _error(ValueError(f"dataset {name!r} is in use by job(s) {sorted(active)}"))
        dropped = self.datasets.drop(name)
        recovery.forget_recipe(self, name)
        return {"status": "OK", "dropped": dropped}

    # --- handlers: jobs ---------------------------------------------------------------
    def submit(self, comm: Any, request: dict, placement: dict, owner: str = "") -> dict:
        """Register a job whose home is this region and start its driver."""
        local = placement.get(self.region) if isinstance(placement, dict) else None
        pending = isinstance(local, dict) and isinstance(local.get("dataset"), str) and local["dataset"] in self.pending_files
        try:
            record = self._validate_submission(request, placement, self.access.owner(comm, owner), pending=pending)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        if pending:  # its files are read when nodes join: queued, with the reason, until then
            record.waiting = no_nodes_reason(self.region)
            self.pending_files.discard(local["dataset"])
            self.registry.add(record)
            recovery.save_record(self, record)
            self.finished_events[record.id] = asyncio.Event()
            self.tasks[record.id] = asyncio.get_running_loop().create_task(start_when_read(self, record))
            return {"status": "OK", "id": record.id}
        try:
            dataset = self._dataset_for(comm, placement[self.region]["dataset"], record.owner) if self.region in placement else None
            driver = JobDriver(self, record)
            if dataset is not None:
                self._attach_local(record.id, request, dataset)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        self.registry.add(record)
        recovery.save_record(self, record)
        self.drivers[record.id] = driver
        self.finished_events[record.id] = asyncio.Event()
        self.tasks[record.id] = asyncio.get_running_loop().create_task(self._run(driver))
        return {"status": "OK", "id": record.id}

    def _validate_submission(self, request: Any, placement: Any, owner: Any, pending: bool = False) -> JobRecord:
        if not isinstance(request, dict):
            raise TypeError(f"a job request must be a dict, got {type(request).__name__}")
        for key in ("kind", "estimator", "rounds", "mode"):
            if key not in request:
                raise ValueError(f"job request lacks {key!r}")
        if not isinstance(request["kind"], str):
            raise ValueError(f"job request 'kind' must be a string, got {request['kind']!r:.80}")
        local_step(request["kind"])  # raises for an unknown kind
        if not isinstance(request["estimator"], dict):
            raise ValueError(f"job request 'estimator' must be a mapping with 'class' and 'params', got {request['estimator']!r:.80}")
        cls = resolve_class(request["estimator"].get("class"), self.allowed_modules)
        if not (hasattr(cls, "get_params") and hasattr(cls, "partial_fit")):
            raise ValueError(f"estimator class {request['estimator'].get('class')!r} is not a scikit-learn estimator with partial_fit")
        check_request(request)
        aggregate = request.get("aggregate", "mean")
        if not isinstance(aggregate, str):
            raise ValueError(f"job request 'aggregate' must be a string, got {aggregate!r:.80}")
        from jobs.aggregate import get_aggregator
        get_aggregator(aggregate)
        rounds = request["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        if request["mode"] not in ("average", "sequential"):
            raise ValueError(f"mode must be 'average' or 'sequential', got {request['mode']!r}")
        if not isinstance(placement, dict) or not placement:
            raise ValueError("a job needs a placement: region -> {address, dataset}")
        for region, where in placement.items():
            if not isinstance(region, str):
                raise ValueError(f"placement region {region!r} must be a region name (a string)")
            if not isinstance(where, dict) or not isinstance(where.get("dataset"), str) or not isinstance(where.get("address"), str):
                raise ValueError(f"placement of region {region!r} needs 'address' and 'dataset'")
        check_plain(placement, "placement")
        for region, where in placement.items():
            if region != self.region:
                where["address"] = self.peer_address(region, where["address"])
        if self.region in placement and not pending:
            self.datasets.get(placement[self.region]["dataset"])  # exists; who may use it: _dataset_for
        return JobRecord(
            id=self.registry.new_id(),
            owner=str(owner),
            home=self.region,
            request=request,
            placement=placement,
        )

    def _dataset_for(self, comm: Any, name: str, owner: str | None) -> Dataset:
        """The dataset a job trains on, if its submitter may use it.

        On a TLS grid: its owner, an admin or a scheduler (the certificate
        decides). On a plaintext grid nobody is identified, so the owner the
        client names must match, as it always did.
        """
        if self.access.active and self.access.identity(comm) is not None:
            return self.datasets.get_for(name, lambda o: self.access.may_see(comm, o))
        return self.datasets.get_for(name, lambda o: not o or owner is None or o == owner)

    async def _run(self, driver: JobDriver) -> None:
        try:
            await driver.run()
        except asyncio.CancelledError:
            pass

    async def end_job(self, record: JobRecord, status: str, error: str | None = None) -> None:
        """End a job that stopped before or between its rounds: status, reason, end time; then free it."""
        record.status = status
        record.error = error
        record.finished = time.time()
        await self.finish_job(record)

    async def finish_job(self, record: JobRecord) -> None:
        """Free what a finished job held: its region runs, remote shares and own data."""
        if self.closing and self.state is not None:
            # the scheduler stops, not the job: its record, checkpoint and data stay for the restart
            return
        driver = self.drivers.pop(record.id, None)
        self._detach_local(record.id, drop_dataset=bool(record.placement.get(self.region, {}).get("job_owned")))
        if driver is not None:
            await driver.detach_remote()
        self.tasks.pop(record.id, None)
        self.taint_if_caught(record)  # a node of it quarantined (by another job) before it ended
        await recovery.persist_finished(self, record)
        event = self.finished_events.get(record.id)
        if event is not None:
            event.set()

    def _record(self, comm: Any, job_id: str) -> JobRecord:
        """The job, if the caller may see it (its owner, an admin, a scheduler)."""
        if not isinstance(job_id, str):
            raise KeyError(f"job id must be a string like 'eu-3f9a1c2b7d41', got {job_id!r:.80}")
        record = self.registry.get(job_id)
        if not self.access.may_see(comm, record.owner):
            raise PermissionError(f"job {job_id!r} belongs to another user")
        return record

    def job(self, comm: Any, job_id: str, history: bool = True) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return _error(exc)
        out = record.summary()
        if history:
            out["history"] = list(record.history)
        if not self.access.sees_nodes(comm):
            out = _without_node_names(out)
        return {"status": "OK", "job": out}

    def jobs(self, comm: Any = None) -> dict:
        visible = [j for j in self.registry.all() if self.access.may_see(comm, j.owner)]
        return {"status": "OK", "jobs": [j.summary() for j in visible]}

    def note_waiting(self, job_id: str, reason: str | None) -> None:
        """Record why a job of this region waits (``None``: it no longer does), for its status."""
        if job_id in self.registry:
            self.registry.get(job_id).waiting = reason

    async def cancel(self, comm: Any, job_id: str) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return _error(exc)
        if record.status in FINISHED:
            return {"status": "OK", "job_status": record.status}
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record.status = "cancelled"
        recovery.save_record(self, record)
        return {"status": "OK", "job_status": record.status}

    async def wait(self, comm: Any, job_id: str, timeout: float | None = None) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return _error(exc)
        if record.status not in FINISHED:
            event = self.finished_events.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return {"status": "OK", "job_status": record.status}

    def result(self, comm: Any, job_id: str) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return _error(exc)
        state = recovery.load_result(self, record) if record.status == "done" else None
        if record.status == "done" and state is None:
            return _error(RuntimeError(
                f"the result of job {job_id} is lost: its file in the state directory is missing or corrupt; resubmit the job"
            ))
        reply = {
            "status": "OK",
            "job_status": record.status,
            "error": record.error,
            "state": state,
            "history": list(record.history),
            "request": record.request,
            "tainted": record.tainted,
        }
        return reply if self.access.sees_nodes(comm) else _without_node_names(reply)

    def rerun(self, comm: Any, job_id: str, verify: Any = None) -> dict:
        """Submit a job again, with the same request and data (e.g. a tainted one); only its owner may.

        ``verify`` replaces the job's setting when given. The data must still
        be placed: a job's own in-memory data is freed when the job ends.
        """
        try:
            record = self._record(comm, job_id)  # its owner (or an admin), as for cancel
            freed = [r for r, where in record.placement.items() if where.get("job_owned")]
            if freed:
                raise ValueError(
                    f"job {job_id} trained on data of its own, freed when it ended (region(s) {sorted(freed)}); "
                    "submit it again with the data (g.submit(estimator, X, y, ...)), or place data with "
                    "Grid.scatter first to be able to rerun jobs on it"
                )
        except (KeyError, PermissionError, ValueError) as exc:
            return _error(exc)
        request = copy.deepcopy(record.request)
        if verify is not None:
            request["verify"] = verify
        placement = {r: {k: v for k, v in where.items()} for r, where in record.placement.items()}
        return self.submit(comm, request, placement, owner=record.owner)

    # --- handlers: this region's share of a job (called by the job's home) ---------
    def _attach_local(self, job_id: str, request: dict, dataset: Dataset) -> None:
        previous = self.runs.pop(job_id, None)
        if previous is not None:  # attached again by a home scheduler that restarted
            previous.close()
        self.runs[job_id] = RegionRun(self, job_id, request, dataset)
        dataset.users.add(job_id)

    def _detach_local(self, job_id: str, drop_dataset: bool) -> None:
        run = self.runs.pop(job_id, None)
        if run is None:
            return
        run.close()
        run.dataset.users.discard(job_id)
        if drop_dataset and run.dataset.job_owned:  # the scheduler's record decides, not the client's flag
            self.datasets.drop(run.dataset.name)
            recovery.forget_recipe(self, run.dataset.name)

    def attach(self, job_id: str, request: dict, dataset: str, home: str = "", owner: str | None = None) -> dict:
        try:
            resolve_class(request["estimator"]["class"], self.allowed_modules)
            check_request(request)
            # the home scheduler names the job's owner: the dataset must be theirs (None: an older home)
            self._attach_local(job_id, request, self._dataset_for(None, dataset, owner))
        except (KeyError, SpecError, ValueError, TypeError, PermissionError) as exc:
            return _error(exc)
        return {"status": "OK"}

    def detach(self, job_id: str, drop_dataset: bool = False) -> dict:
        self._detach_local(job_id, drop_dataset)
        return {"status": "OK"}

    async def region_round(self, job_id: str, round_no: int, state: bytes | None) -> dict:
        from grid import wire

        run = self.runs.get(job_id)
        if run is None:
            return _error(KeyError(f"job {job_id!r} is not attached to region {self.region!r}"))
        try:
            result = await run.run_round(round_no, state)
        except Exception as exc:  # noqa: BLE001 - the home scheduler decides what a failure means
            return _error(exc)
        return {
            "status": "OK",
            "state": wire.encode(result["state"]),
            "weight": result["weight"],
            "metrics": result["metrics"],
        }


def _without_node_names(out: dict) -> dict:
    """A job's summary, history or result for a caller that may not see node names (a data scientist
    on a TLS grid): the nodes a verify="adaptive" job names become placeholders, numbered in order."""
    names: dict[str, str] = {}

    def hide(by_region: Any) -> Any:
        if not isinstance(by_region, dict):
            return by_region
        return {r: [names.setdefault(n, f"node-{len(names)}") for n in nodes] for r, nodes in by_region.items()}

    out = dict(out)
    if out.get("history"):
        out["history"] = [
            {**h, **{k: hide(h[k]) for k in ("unverified_nodes", "caught") if k in h}} for h in out["history"]
        ]
    if out.get("tainted"):
        tainted = out["tainted"]
        out["tainted"] = {**tainted, "node": hide({"": [tainted["node"]]})[""][0]}
    return out


def _is_tls(scheduler: Any) -> bool:
    return str(scheduler.address).startswith("tls://")


def _dashboard_link(scheduler: Any) -> str | None:
    try:
        port = scheduler.http_server.port
    except AttributeError:
        return None
    host = scheduler.address.split("://")[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}/status"
