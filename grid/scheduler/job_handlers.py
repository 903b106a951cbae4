"""Jobs whose home is this region: one extension of the grid's scheduler plugin.

It keeps the region's :class:`~grid.scheduler.registry.JobRegistry`, runs a
:class:`~grid.scheduler.driver.JobDriver` per job as an asyncio task in the
scheduler's event loop, and registers the handlers data scientists call:
``grid_submit``, ``grid_job``, ``grid_jobs``, ``grid_cancel``, ``grid_wait``,
``grid_result`` and ``grid_rerun``.

A job's life here: :meth:`JobsExtension.submit` checks the request, records
the job and attaches its share of this region (``grid/scheduler/region_share.py``);
its driver runs the rounds; :meth:`JobsExtension.finish_job` frees what it
held and writes its end (``grid/scheduler/recovery.py``). A job on files the
region's nodes have not read yet waits, queued, until they have
(:meth:`JobsExtension.start_when_read`). After a restart,
:meth:`JobsExtension.recover` carries out the plan ``recovery.plan`` made:
jobs resume from their checkpoint or fail with the reason. A node
quarantined after a ``verify="adaptive"`` job ended taints the job
(:meth:`JobsExtension.taint_if_caught`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import TYPE_CHECKING, Any

from grid import config
from grid.protocol.requests import ADAPTIVE, check_request
from grid.scheduler import recovery
from grid.scheduler.datasets import no_nodes_reason
from grid.scheduler.driver import JobDriver, taint_entry
from grid.scheduler.registry import FINISHED, JobRecord, JobRegistry
from grid.scheduler.replies import error_reply, without_node_names
from jobs.aggregate import get_aggregator
from jobs.local import local_step
from jobs.plain import check_plain
from jobs.spec import resolve_class

if TYPE_CHECKING:
    from grid.scheduler.datasets import Dataset
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.state import Checkpoint

logger = logging.getLogger("grid.scheduler")


class JobsExtension:
    """The job registry, drivers and job handlers of one region.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        The region's grid plugin (its datasets, region share, access control
        and state directory are used here).
    """

    def __init__(self, plugin: "GridSchedulerPlugin") -> None:
        self.plugin = plugin
        self.region = plugin.region
        self.registry = JobRegistry(self.region, keep_finished=int(config.get("scheduler.finished-jobs-kept")))
        self.drivers: dict[str, JobDriver] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.finished_events: dict[str, asyncio.Event] = {}

    def install(self) -> None:
        self.plugin.scheduler.handlers.update(
            {
                "grid_submit": self.submit,
                "grid_job": self.job,
                "grid_jobs": self.list_jobs,
                "grid_cancel": self.cancel,
                "grid_wait": self.wait,
                "grid_result": self.result,
                "grid_rerun": self.rerun,
            }
        )
        self.plugin.ledger.quarantine.listeners.append(self.taint_finished_jobs)

    async def close(self) -> None:
        """Stop every driver (with a state directory, their jobs resume after the restart)."""
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # --- handlers ----------------------------------------------------------------------
    def submit(self, comm: Any, request: dict, placement: dict, owner: str = "") -> dict:
        """Register a job whose home is this region and start its driver."""
        datasets, region_share = self.plugin.datasets, self.plugin.region_share
        local = placement.get(self.region) if isinstance(placement, dict) else None
        pending = isinstance(local, dict) and isinstance(local.get("dataset"), str) and local["dataset"] in datasets.pending_files
        try:
            record = self._validate_submission(request, placement, self.plugin.access.owner(comm, owner), pending=pending)
        except Exception as exc:  # noqa: BLE001
            return error_reply(exc)
        if pending:  # its files are read when nodes join: queued, with the reason, until then
            record.waiting = no_nodes_reason(self.region)
            datasets.pending_files.discard(local["dataset"])
            self.registry.add(record)
            recovery.save_record(self.plugin, record)
            self.finished_events[record.id] = asyncio.Event()
            self.tasks[record.id] = asyncio.get_running_loop().create_task(self.start_when_read(record))
            return {"status": "OK", "id": record.id}
        try:
            dataset = datasets.dataset_for(comm, placement[self.region]["dataset"], record.owner) if self.region in placement else None
            driver = JobDriver(self.plugin, record)
            if dataset is not None:
                region_share.attach_local(record.id, request, dataset)
        except Exception as exc:  # noqa: BLE001
            return error_reply(exc)
        self.registry.add(record)
        recovery.save_record(self.plugin, record)
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
        cls = resolve_class(request["estimator"].get("class"), self.plugin.allowed_modules)
        if not (hasattr(cls, "get_params") and hasattr(cls, "partial_fit")):
            raise ValueError(f"estimator class {request['estimator'].get('class')!r} is not a scikit-learn estimator with partial_fit")
        check_request(request)
        aggregate = request.get("aggregate", "mean")
        if not isinstance(aggregate, str):
            raise ValueError(f"job request 'aggregate' must be a string, got {aggregate!r:.80}")
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
                where["address"] = self.plugin.region_share.peer_address(region, where["address"])
        if self.region in placement and not pending:
            self.plugin.datasets.store.get(placement[self.region]["dataset"])  # exists; who may use it: dataset_for
        return JobRecord(
            id=self.registry.new_id(),
            owner=str(owner),
            home=self.region,
            request=request,
            placement=placement,
        )

    def _record(self, comm: Any, job_id: str) -> JobRecord:
        """The job, if the caller may see it (its owner, an admin, a scheduler)."""
        if not isinstance(job_id, str):
            raise KeyError(f"job id must be a string like 'eu-3f9a1c2b7d41', got {job_id!r:.80}")
        record = self.registry.get(job_id)
        if not self.plugin.access.may_see(comm, record.owner):
            raise PermissionError(f"job {job_id!r} belongs to another user")
        return record

    def job(self, comm: Any, job_id: str, history: bool = True) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return error_reply(exc)
        out = record.summary()
        if history:
            out["history"] = list(record.history)
        if not self.plugin.access.sees_nodes(comm):
            out = without_node_names(out)
        return {"status": "OK", "job": out}

    def list_jobs(self, comm: Any = None) -> dict:
        visible = [j for j in self.registry.all() if self.plugin.access.may_see(comm, j.owner)]
        return {"status": "OK", "jobs": [j.summary() for j in visible]}

    async def cancel(self, comm: Any, job_id: str) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return error_reply(exc)
        if record.status in FINISHED:
            return {"status": "OK", "job_status": record.status}
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record.status = "cancelled"
        recovery.save_record(self.plugin, record)
        return {"status": "OK", "job_status": record.status}

    async def wait(self, comm: Any, job_id: str, timeout: float | None = None) -> dict:
        try:
            record = self._record(comm, job_id)
        except (KeyError, PermissionError) as exc:
            return error_reply(exc)
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
            return error_reply(exc)
        state = recovery.load_result(self.plugin, record) if record.status == "done" else None
        if record.status == "done" and state is None:
            return error_reply(RuntimeError(
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
        return reply if self.plugin.access.sees_nodes(comm) else without_node_names(reply)

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
            return error_reply(exc)
        request = copy.deepcopy(record.request)
        if verify is not None:
            request["verify"] = verify
        placement = {r: {k: v for k, v in where.items()} for r, where in record.placement.items()}
        return self.submit(comm, request, placement, owner=record.owner)

    # --- a job's life --------------------------------------------------------------------
    def note_waiting(self, job_id: str, reason: str | None) -> None:
        """Record why a job of this region waits (``None``: it no longer does), for its status."""
        if job_id in self.registry:
            self.registry.get(job_id).waiting = reason

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
        if self.plugin.closing and self.plugin.state is not None:
            # the scheduler stops, not the job: its record, checkpoint and data stay for the restart
            return
        driver = self.drivers.pop(record.id, None)
        self.plugin.region_share.detach_local(
            record.id, drop_dataset=bool(record.placement.get(self.region, {}).get("job_owned"))
        )
        if driver is not None:
            await driver.detach_remote()
        self.tasks.pop(record.id, None)
        self.taint_if_caught(record)  # a node of it quarantined (by another job) before it ended
        await recovery.persist_finished(self.plugin, record)
        event = self.finished_events.get(record.id)
        if event is not None:
            event.set()

    async def _files_read(self, name: str, when: str) -> "Dataset":
        """Dataset ``name`` once the nodes have read its files (``DatasetsExtension.read_later``).

        Shielded: cancelling one job must not cancel a read other jobs may share."""
        error = await asyncio.shield(self.plugin.datasets.files_ready[name])
        if error is not None:
            raise RuntimeError(f"the job's files could not be read{when}: {error}")
        return self.plugin.datasets.store.get(name)

    async def start_when_read(self, record: JobRecord) -> None:
        """Run a queued job whose ``jobs.data.Files`` dataset is pending, once the nodes have read it.

        Its request learns the data's features and class labels only now (the
        client could not read them); a classifier whose files hold no labels fails
        with the reason, as ``Grid.submit`` would have. Cancelling the job while it
        waits also stops the read: the dataset was the job's own.
        """
        datasets = self.plugin.datasets
        name = record.placement[self.region]["dataset"]
        reading = datasets.files_ready[name]
        try:
            dataset = await self._files_read(name, "")
            if dataset.owner and dataset.owner != record.owner:
                raise PermissionError(f"dataset {name!r} belongs to another user")
            request = record.request  # the drivers and the result read this same dict
            request["n_features"] = dataset.n_features
            if "classes" in request:  # a classifier (Grid.submit sends classes for those only)
                if not dataset.classes:
                    raise ValueError(
                        "this classifier needs class labels, but the data has none or a continuous target; "
                        "name the label column with Files(..., target=...)"
                    )
                request["classes"] = dataset.classes
            record.waiting = None
            driver = JobDriver(self.plugin, record)
            self.drivers[record.id] = driver  # from here on finish_job frees what it holds
            self.plugin.region_share.attach_local(record.id, request, dataset)
        except asyncio.CancelledError:
            if not self.plugin.closing:  # cancelled by its user while it waited for nodes
                reading.cancel()
                datasets.store.drop(name)
                await self.end_job(record, "cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
            datasets.store.drop(name)
            recovery.forget_recipe(self.plugin, name)
            await self.end_job(record, "failed", f"{type(exc).__name__}: {exc}")
            return
        logger.info("job %s starts: its files were read by the nodes that joined", record.id)
        await self._run(driver)

    # --- after a restart ----------------------------------------------------------------
    def recover(self, plan: recovery.RecoveryPlan) -> None:
        """Carry out what ``recovery.plan`` decided for the jobs of the state directory.

        Every job is known (and answers ``grid_job``) at once; reading Files
        datasets again and resuming run as background tasks that wait for
        nodes to connect, so the scheduler's start never waits for them.
        """
        state = self.plugin.state
        assert state is not None
        self.registry.on_forget = state.forget_job  # the disk keeps what the registry keeps
        for name in plan.stale_recipes:
            state.forget_dataset(name)
        for recipe in plan.recipes:
            self.plugin.datasets.read_later(
                recipe["name"], recipe["paths"], recipe["indices"], recipe.get("options") or {},
                owner=str(recipe.get("owner", "")), job_owned=bool(recipe.get("job_owned")), again=True,
            )
        for job in plan.jobs:
            record = job.record
            self.registry.add(record)
            if job.action == "keep":
                continue
            self.finished_events[record.id] = asyncio.Event()
            if job.action == "fail":
                self._fail_at_restart(record, str(job.reason))
                continue
            cp = job.checkpoint
            record.rounds_done = cp.rounds_done if cp else 0
            record.history = cp.history if cp else []
            record.result = cp.state if cp else None
            record.status = "queued"  # until its data is read again and the driver starts
            self.tasks[record.id] = asyncio.create_task(self._resume(record, cp, job.dataset))

    def _fail_at_restart(self, record: JobRecord, reason: str) -> None:
        """Mark a job that cannot resume failed, now and on disk, and free what it held elsewhere."""
        record.status = "failed"
        record.error = reason
        record.finished = time.time()
        recovery.save_record(self.plugin, record)
        logger.warning("job %s failed at restart: %s", record.id, reason)
        # detach its remote regions (they may hold its data and an attached run); finish_job does it
        try:
            self.drivers[record.id] = JobDriver(self.plugin, record)
        except Exception as exc:  # noqa: BLE001 - nothing remote to free if the driver cannot be made
            logger.debug("job %s: no driver to detach remote regions (%s)", record.id, exc)
        self.tasks[record.id] = asyncio.create_task(self.finish_job(record))

    async def _resume(self, record: JobRecord, cp: "Checkpoint | None", name: str | None) -> None:
        """Wait for the job's files to be read again, then run its driver from the checkpoint."""
        try:
            driver = JobDriver(self.plugin, record, resume=cp.state if cp else None)
            self.drivers[record.id] = driver  # from here on finish_job detaches its remote regions
            if name is not None:
                dataset = await self._files_read(name, " again after the scheduler restarted")
                self.plugin.region_share.attach_local(record.id, record.request, dataset)
        except asyncio.CancelledError:
            if not self.plugin.closing:  # cancelled by its user while waiting for its data
                await self.end_job(record, "cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
            await self.end_job(record, "failed", f"{type(exc).__name__}: {exc}")
            return
        logger.info("job %s resumes at round %d of %d", record.id, record.rounds_done + 1, record.rounds)
        await self._run(driver)

    # --- taint ---------------------------------------------------------------------------
    def taint_finished_jobs(self, caught: Any = None) -> None:
        """A node quarantined from now on taints the ended jobs it had updates accepted unchecked in."""
        for job in self.registry.all():
            self.taint_if_caught(job)

    def taint_if_caught(self, record: JobRecord) -> None:
        """Mark a finished ``verify="adaptive"`` job tainted when a node of this region that went
        unchecked in it is quarantined (a running job replays instead: ``JobDriver.run``)."""
        if record.tainted or record.status != "done" or record.request.get("verify") != ADAPTIVE:
            return
        quarantine = self.plugin.ledger.quarantine
        for node in sorted({n for e in record.history for n in (e.get("unverified_nodes") or {}).get(self.region, ())}):
            caught = quarantine.records.get(node)
            if caught is None:
                continue
            # the reason and when; the full evidence (other jobs, other nodes) stays in the quarantine record
            record.tainted = taint_entry(record, {self.region: [node]}, {"reason": caught.reason, "time": caught.time})
            logger.warning(
                "job %s is tainted: node %s, quarantined after the job ended, had updates accepted unchecked in "
                "rounds %s; rerun it (Job.rerun())", record.id, node, record.tainted["rounds"] if record.tainted else [],
            )
            recovery.save_record(self.plugin, record)
            return
