"""Durable jobs: what a restarted scheduler does with its state directory.

At start, :func:`recover` reloads the region's quarantine, its job records
and the recipes of its ``jobs.data.Files`` datasets, then decides for every
job that was queued or running when the scheduler stopped:

* its share of the data on this region came from files the nodes read
  themselves (or it has no share here): the files are read again, by the
  nodes that connect now, and the job continues from its last checkpointed
  round. Remote regions are attached again by the driver; one that cannot
  be reached fails the job with its reason;
* its data on this region lived only in the old scheduler's memory
  (``Grid.scatter``, arrays passed to ``submit``): the job is marked failed
  with :data:`LOST_REASON`. It is never silently started again from scratch.

Finished jobs keep their record, history and result file, so ``grid_job`` and
``grid_result`` answer as before the restart. While the scheduler runs,
:func:`persist_finished` writes a job's end and :func:`checkpoint` each
completed round. See docs/reliability.md, "Durable jobs".
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from grid.scheduler.registry import FINISHED, JobRecord
from grid.scheduler.state import Checkpoint

if TYPE_CHECKING:
    from grid.scheduler.datasets import Dataset
    from grid.scheduler.plugin import GridSchedulerPlugin

logger = logging.getLogger("grid.scheduler.recovery")

#: the error of a job whose partitions were in the memory of a scheduler that stopped
LOST_REASON = "partition data was lost with the scheduler; resubmit"

#: errors of a state directory that must not stop a job or the scheduler (disk full, odd values)
_STATE_ERRORS = (OSError, TypeError, ValueError)


def save_record(plugin: "GridSchedulerPlugin", record: JobRecord) -> None:
    """Write a job's record (no-op without a state directory; a failure is logged).

    Called on submission and on every status change. Records are small (no
    blobs), so they are written on the event loop.
    """
    if getattr(plugin, "state", None) is None or plugin.closing:
        return
    try:
        plugin.state.save_job(record)
    except _STATE_ERRORS as exc:
        logger.warning("job %s: record not written to %s (%s); the job will not survive a restart", record.id, plugin.state, exc)


#: state-directory name of the node verification records (grid.scheduler.verify.Reliability)
RELIABILITY = "reliability"


def save_reliability(plugin: "GridSchedulerPlugin") -> None:
    """Write the nodes' verification records, so trust (and distrust) survive a restart."""
    if getattr(plugin, "state", None) is None:
        return
    try:
        plugin.state.save_json(RELIABILITY, plugin.reliability.to_dict())
    except _STATE_ERRORS as exc:
        logger.warning("node reliability records not written to %s (%s)", plugin.state, exc)


async def checkpoint(plugin: "GridSchedulerPlugin", record: JobRecord, state_blob: bytes) -> None:
    """Write the round the job just completed (no-op without a state directory).

    The write runs in a thread: its fsync can take milliseconds on a busy
    disk, and the scheduler's event loop serves every node's heartbeats
    meanwhile. A failed write is logged; the job goes on (a restart then
    resumes from an earlier round).
    """
    if getattr(plugin, "state", None) is None:
        return
    cp = Checkpoint(state=state_blob, rounds_done=record.rounds_done, history=list(record.history))
    try:
        await asyncio.get_running_loop().run_in_executor(None, plugin.state.save_checkpoint, record.id, cp)
    except _STATE_ERRORS as exc:
        logger.warning("job %s: checkpoint of round %d not written (%s)", record.id, record.rounds_done, exc)


async def persist_finished(plugin: "GridSchedulerPlugin", record: JobRecord) -> None:
    """Write a finished job: its result first, then its record, then drop its checkpoint.

    In this order a record that says ``done`` always has its result on disk.
    """
    if plugin.state is None:
        return
    state = plugin.state
    try:
        if record.status == "done" and record.result is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.save_result, record.id, record.result)
        state.save_job(record)
        state.remove_checkpoint(record.id)
    except _STATE_ERRORS as exc:
        logger.warning("job %s: its end was not written to %s (%s)", record.id, state, exc)


def save_recipe(plugin: "GridSchedulerPlugin", dataset: "Dataset", paths: list, options: dict) -> None:
    """Remember how a Files dataset is read, so a restarted scheduler reads it again."""
    if plugin.state is None:
        return
    recipe = {
        "name": dataset.name,
        "paths": [str(p) for p in paths],
        "indices": list(dataset.indices),
        "options": dict(options),
        "owner": dataset.owner,
        "job_owned": dataset.job_owned,
    }
    try:
        plugin.state.save_dataset(recipe)
    except _STATE_ERRORS as exc:
        logger.warning("dataset %s: recipe not written to %s (%s); its jobs will not resume after a restart", dataset.name, plugin.state, exc)


def forget_recipe(plugin: "GridSchedulerPlugin", name: str) -> None:
    """Forget a dropped dataset's recipe (no-op while the scheduler stops: a restart needs it)."""
    if plugin.state is not None and not plugin.closing:
        plugin.state.forget_dataset(name)


def load_result(plugin: "GridSchedulerPlugin", record: JobRecord) -> bytes | None:
    """A done job's result, from memory or (after a restart) from its file."""
    if record.result is None and record.status == "done" and plugin.state is not None:
        record.result = plugin.state.load_result(record.id)
    return record.result


def recover(plugin: "GridSchedulerPlugin") -> None:
    """Reload the state directory into a starting plugin; resume or fail unfinished jobs.

    Runs inside ``start()``: reading the files is quick, and every job is
    known (and answers ``grid_job``) as soon as the scheduler listens.
    Re-reading files and resuming run as background tasks that wait for
    nodes to connect, so the scheduler's start never waits for them.
    """
    state = plugin.state
    assert state is not None
    plugin.quarantine.store = state
    n_quarantined = plugin.quarantine.load(state.load_json(plugin.quarantine.STATE_NAME))
    plugin.reliability.load(state.load_json(RELIABILITY, {}))
    plugin.registry.on_forget = state.forget_job  # the disk keeps what the registry keeps

    records = state.load_jobs()
    unfinished = [r for r in records if r.status not in FINISHED]
    needed = {r.placement[plugin.region].get("dataset") for r in unfinished if isinstance(r.placement.get(plugin.region), dict)}
    recipes = {}
    for recipe in state.load_datasets():
        if recipe.get("job_owned") and recipe["name"] not in needed:
            state.forget_dataset(recipe["name"])  # its job ended: nobody will use it again
            continue
        recipes[recipe["name"]] = recipe
        plugin.files_ready[recipe["name"]] = asyncio.create_task(_reread_files(plugin, recipe))

    resumed = failed = 0
    for record in records:
        plugin.registry.add(record)
        if record.status in FINISHED:
            continue
        plugin.finished_events[record.id] = asyncio.Event()
        local = record.placement.get(plugin.region)
        if isinstance(local, dict) and local.get("dataset") not in recipes:
            _fail(plugin, record, LOST_REASON)
            failed += 1
            continue
        cp = state.load_checkpoint(record.id)
        if cp is None and record.rounds_done:
            logger.warning(
                "job %s: no readable checkpoint of its %d completed round(s); it starts again from round 0 "
                "(its data is in files, and its result does not depend on where it starts)",
                record.id, record.rounds_done,
            )
        record.rounds_done = cp.rounds_done if cp else 0
        record.history = cp.history if cp else []
        record.result = cp.state if cp else None
        record.status = "queued"  # until its data is read again and the driver starts
        plugin.tasks[record.id] = asyncio.create_task(_resume(plugin, record, cp))
        resumed += 1
    logger.info(
        "state directory %s: %d job(s) (%d resuming, %d failed: data was in memory), %d Files dataset(s), %d quarantined node(s)",
        state.path, len(records), resumed, failed, len(recipes), n_quarantined,
    )


def _fail(plugin: "GridSchedulerPlugin", record: JobRecord, reason: str) -> None:
    """Mark a job that cannot resume failed, now and on disk, and free what it held elsewhere."""
    record.status = "failed"
    record.error = reason
    record.finished = time.time()
    save_record(plugin, record)
    logger.warning("job %s failed at restart: %s", record.id, reason)
    # detach its remote regions (they may hold its data and an attached run); finish_job does it
    try:
        from grid.scheduler.driver import JobDriver

        plugin.drivers[record.id] = JobDriver(plugin, record)
    except Exception as exc:  # noqa: BLE001 - nothing remote to free if the driver cannot be made
        logger.debug("job %s: no driver to detach remote regions (%s)", record.id, exc)
    plugin.tasks[record.id] = asyncio.create_task(plugin.finish_job(record))


async def _reread_files(plugin: "GridSchedulerPlugin", recipe: dict) -> str | None:
    """Have the nodes read a Files dataset again; the error message, or None when it is back.

    The read tasks simply wait until nodes connect.
    """
    reply = await plugin.register_files(
        None,
        recipe["name"],
        recipe["paths"],
        recipe["indices"],
        recipe.get("options") or {},
        owner=str(recipe.get("owner", "")),
        job_owned=bool(recipe.get("job_owned")),
    )
    if reply.get("status") != "OK":
        logger.warning("dataset %s could not be read again after the restart: %s", recipe["name"], reply.get("message"))
        return str(reply.get("message"))
    logger.info("dataset %s: %d file partition(s) read again after the restart", recipe["name"], len(recipe["paths"]))
    return None


async def _resume(plugin: "GridSchedulerPlugin", record: JobRecord, cp: Checkpoint | None) -> None:
    """Wait for the job's files to be read again, then run its driver from the checkpoint."""
    from grid.scheduler.driver import JobDriver

    local = record.placement.get(plugin.region)
    name = local.get("dataset") if isinstance(local, dict) else None
    try:
        driver = JobDriver(plugin, record, resume=cp.state if cp else None)
        plugin.drivers[record.id] = driver  # from here on finish_job detaches its remote regions
        if name is not None:
            # shielded: cancelling this job must not cancel a read other jobs may share
            error = await asyncio.shield(plugin.files_ready[name])
            if error is not None:
                raise RuntimeError(f"the job's files could not be read again after the scheduler restarted: {error}")
            plugin._attach_local(record.id, record.request, plugin.datasets.get(name))
    except asyncio.CancelledError:
        if not plugin.closing:  # cancelled by its user while waiting for its data
            await plugin.end_job(record, "cancelled")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
        await plugin.end_job(record, "failed", f"{type(exc).__name__}: {exc}")
        return
    logger.info("job %s resumes at round %d of %d", record.id, record.rounds_done + 1, record.rounds)
    await plugin._run(driver)
