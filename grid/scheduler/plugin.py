"""The grid's scheduler plugin: the trusted side of a region, composed of extensions.

Installed on every regional scheduler (``grid scheduler`` and ``Grid.local``
pass it to distributed's ``Scheduler(plugins=...)``). Like distributed's own
scheduler extensions, each part of the grid runtime is an object of its own,
made with the plugin in :meth:`GridSchedulerPlugin.start`, that registers its
handlers on the scheduler (by the names of the protocol table,
``grid/protocol/messages.py``) and keeps its own state:

* ``dial_out`` (:class:`~grid.scheduler.dial_out.DialOutNodes`): which nodes
  the scheduler may dial, calls on the streams of those it may not, the
  partition store;
* ``ledger`` (:class:`~grid.scheduler.ledger.NodeLedger`): work done,
  rejections, verification records and the quarantine of the region's nodes;
* ``datasets`` (:class:`~grid.scheduler.dataset_handlers.DatasetsExtension`):
  the placed datasets and their handlers;
* ``region_share`` (:class:`~grid.scheduler.region_share.RegionShare`): this
  region's share of every job, the rounds other regions ask for, its peers;
* ``jobs`` (:class:`~grid.scheduler.job_handlers.JobsExtension`): the job
  registry, the drivers and the job handlers; it carries out the recovery
  plan of a restarted scheduler (``grid/scheduler/recovery.py``).

The plugin itself holds what they share (the region, access control, the
state directory, settings, an asynchronous client of the scheduler),
forwards distributed's worker hooks, and answers ``grid_info``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps

from grid import config
from grid.protocol import comm as protocol_comm
from grid.scheduler import recovery
from grid.scheduler.access import AccessControl, is_tls
from grid.scheduler.attempts import ROUND_ENGINES
from grid.scheduler.dataset_handlers import DatasetsExtension
from grid.scheduler.dial_out import DialOutNodes
from grid.scheduler.job_handlers import JobsExtension
from grid.scheduler.ledger import NodeLedger
from grid.scheduler.metrics import register_metrics, unregister_metrics
from grid.scheduler.region_share import RegionShare
from grid.scheduler.state import StateDir
from grid.node.align import PLUGIN_NAME as ALIGN_PLUGIN, AlignPartitions
from grid.node.rounds import PLUGIN_NAME as ROUNDS_PLUGIN, NodeRounds

logger = logging.getLogger("grid.scheduler")

#: name under which the plugin is registered on the scheduler
PLUGIN_NAME = "grid"


class GridSchedulerPlugin(SchedulerPlugin):
    """Grid runtime inside one regional Dask scheduler.

    Parameters
    ----------
    region : str
        This region's name; job ids start with it.
    """

    name = PLUGIN_NAME

    #: the kind of each extension :meth:`start` makes (a subclass may name an instrumented one)
    dial_out_class: type[DialOutNodes] = DialOutNodes
    ledger_class: type[NodeLedger] = NodeLedger
    datasets_class: type[DatasetsExtension] = DatasetsExtension
    region_share_class: type[RegionShare] = RegionShare
    jobs_class: type[JobsExtension] = JobsExtension

    def __init__(self, region: str) -> None:
        self.region = region
        self.scheduler: Any = None
        self.allowed_modules = tuple(config.get("jobs.allowed-modules"))
        self.max_update_bytes = config.nbytes("scheduler.max-update-bytes")
        config.choice("scheduler.round-engine", ROUND_ENGINES)  # a typo fails the scheduler's start, not a job
        self._client: Client | None = None
        self._client_lock: asyncio.Lock | None = None
        self.access = AccessControl(region)
        self.state: StateDir | None = None  # grid.scheduler.state-dir: durable jobs (recovery.py)
        self.closing = False
        # the extensions, made in start() (they need the scheduler)
        self.dial_out: DialOutNodes
        self.ledger: NodeLedger
        self.datasets: DatasetsExtension
        self.region_share: RegionShare
        self.jobs: JobsExtension
        self.started = False  # whether start() made them

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # in this order: each may use the ones made before it
        self.dial_out = self.dial_out_class(self)
        self.ledger = self.ledger_class(self)
        self.datasets = self.datasets_class(self)
        self.region_share = self.region_share_class(self)
        self.jobs = self.jobs_class(self)
        self.started = True
        self.access.stored = self.dial_out.store.has
        # a client's future on a partition only the store holds names a key Dask does not know
        warnings.filterwarnings("ignore", message=r"Client .* desires key 'grid-part-", category=UserWarning)
        self._client_lock = asyncio.Lock()
        scheduler.handlers["grid_info"] = self.info
        # each registers its handlers (and wraps Dask's) before access control wraps them all
        for extension in (self.ledger, self.datasets, self.region_share, self.jobs, self.dial_out):
            extension.install()
        # partitions arrive unaligned through Dask's comms: each node copies them once (grid/node/align.py)
        await scheduler.register_worker_plugin(None, dumps(AlignPartitions()), name=ALIGN_PLUGIN, idempotent=True)
        # round requests (grid/node/rounds.py) on nodes that accept plugins; `grid node` and
        # Grid.local install it themselves, community nodes refuse code from a plaintext peer
        await scheduler.register_worker_plugin(None, dumps(NodeRounds()), name=ROUNDS_PLUGIN, idempotent=True)
        if is_tls(scheduler):
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
        if state_dir:  # reload quarantine, jobs and Files datasets; resume what can resume
            self.state = StateDir(state_dir, self.region)
            n_quarantined = self.ledger.load(self.state)
            plan = recovery.plan(self.state, self.region)
            self.jobs.recover(plan)
            logger.info(
                "state directory %s: %d job(s) (%d resuming, %d failed: data was in memory), %d Files dataset(s), "
                "%d quarantined node(s)", self.state.path, len(plan.jobs), plan.count("resume"), plan.count("fail"),
                len(plan.recipes), n_quarantined,
            )
            self.jobs.taint_finished_jobs()  # both were kept: a node caught after a job still taints it
        register_metrics(self)

    async def close(self) -> None:
        protocol_comm.unregister_scheduler(self)
        self.closing = True  # drivers stopped now keep their durable state for the restart (JobsExtension.finish_job)
        unregister_metrics(self)
        if self.started:
            self.dial_out.close()
            self.datasets.close()
            await self.jobs.close()
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

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.dial_out.add_worker(worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.dial_out.remove_worker(worker)
        self.access.forget_worker(worker)
        self.ledger.remove_worker(worker)

    # --- handler: status ---------------------------------------------------------------
    def info(self, comm: Any = None) -> dict:
        """Region, nodes and job counts: what `grid status` and the dashboard show.

        Admins, schedulers (and every caller of a plaintext grid) see every
        node, job count, dataset and quarantine record. A data scientist sees
        node counts per state, its own jobs and datasets, and no node
        address, node name, other owner or quarantine evidence; a node sees
        the same with no jobs or datasets (it needs the region only).
        """
        s, ledger, reach = self.scheduler, self.ledger, self.dial_out.reach
        registry, datasets = self.jobs.registry, self.datasets.store.datasets
        nodes = {"active": 0, "paused": 0, "unreachable": 0}
        for ws in s.workers.values():
            state = ledger.node_state(ws)
            nodes[state] = nodes.get(state, 0) + 1
        nodes["quarantined"] = len(ledger.quarantine.records)
        reply = {
            "status": "OK",
            "region": self.region,
            "address": s.address,
            "dashboard": _dashboard_link(s),
            "nodes": nodes,
            # threads that can take grid work: what placement splits partitions by
            "nthreads": sum(ws.nthreads for ws in s.workers.values() if reach.kind(ws.address) != "unreachable"),
            "verification_rejects": ledger.verification_rejects,
            "tasks_done": ledger.tasks_done_total,
            "time": time.time(),
        }
        if not self.access.privileged(comm):
            identity = self.access.identity(comm)
            mine = identity.name if identity.role == "client" else None
            counts = dict.fromkeys(registry.counts(), 0)
            for job in registry.all():
                if job.owner == mine:
                    counts[job.status] += 1
            return {
                **reply,
                "workers": [],  # node addresses and names are the operators' (admin certificates)
                "jobs": counts,
                "datasets": [d.info() for d in datasets.values() if mine is not None and d.owner == mine],
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
                "state": ledger.node_state(ws),
                "reach": reach.kind(ws.address),
                "executing": len(ws.processing),
                "stored": self.dial_out.partitions_on(ws),
                "tasks_done": ledger.tasks_done.get(ws.address, 0),
                "rejected": ledger.rejected.get(ws.address, 0),
                "verified": ledger.reliability.get(ledger.quarantine.identity_of(ws.address)).valid,
            }
            for ws in s.workers.values()
        ]
        return {
            **reply,
            "workers": sorted(workers, key=lambda w: w["name"]),
            "jobs": registry.counts(),
            "datasets": [d.info() for d in datasets.values()],
            "quarantined": ledger.quarantine.to_list(),
        }


def _dashboard_link(scheduler: Any) -> str | None:
    try:
        port = scheduler.http_server.port
    except AttributeError:
        return None
    host = scheduler.address.split("://")[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}/status"
