"""Durable jobs: what a restarted scheduler does with its state directory.

At start, the node ledger reloads the region's quarantine and verification
records (``grid/scheduler/ledger.py``), and :func:`plan` reads the job
records and the recipes of its ``jobs.data.Files`` datasets and decides for
every job that was queued or running when the scheduler stopped:

* its share of the data on this region came from files the nodes read
  themselves (or it has no share here): the files are read again, by the
  nodes that connect now, and the job continues from its last checkpointed
  round. Remote regions are attached again by the driver; one that cannot
  be reached fails the job with its reason;
* its data on this region lived only in the old scheduler's memory
  (``Grid.scatter``, arrays passed to ``submit``): the job is marked failed
  with :data:`LOST_REASON`. It is never silently started again from scratch.

Finished jobs keep their record, history and result file, so ``grid_job`` and
``grid_result`` answer as before the restart. The plan is carried out by the
jobs extension (``JobsExtension.recover``, ``grid/scheduler/job_handlers.py``),
which reads the Files datasets again and starts the drivers. While the scheduler runs,
:func:`persist_finished` writes a job's end and :func:`checkpoint` each
completed round. See docs/reliability.md, "Durable jobs".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grid.scheduler.registry import FINISHED, JobRecord
from grid.scheduler.state import Checkpoint, StateDir

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
    if plugin.state is None or plugin.closing:
        return
    try:
        plugin.state.save_job(record)
    except _STATE_ERRORS as exc:
        logger.warning("job %s: record not written to %s (%s); the job will not survive a restart", record.id, plugin.state, exc)


#: state-directory name of the node verification records (grid.scheduler.verify.Reliability)
RELIABILITY = "reliability"


def save_reliability(plugin: "GridSchedulerPlugin") -> None:
    """Write the nodes' verification records, so trust (and distrust) survive a restart."""
    if plugin.state is None:
        return
    try:
        plugin.state.save_json(RELIABILITY, plugin.ledger.reliability.to_dict())
    except _STATE_ERRORS as exc:
        logger.warning("node reliability records not written to %s (%s)", plugin.state, exc)


async def checkpoint(plugin: "GridSchedulerPlugin", record: JobRecord, state_blob: bytes) -> None:
    """Write the round the job just completed (no-op without a state directory).

    The write runs in a thread: its fsync can take milliseconds on a busy
    disk, and the scheduler's event loop serves every node's heartbeats
    meanwhile. A failed write is logged; the job goes on (a restart then
    resumes from an earlier round).
    """
    if plugin.state is None:
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


@dataclass
class JobPlan:
    """What a restarted scheduler does with one job of its state directory."""

    record: JobRecord
    #: "keep" (it had ended: its record, history and result stay), "resume" or "fail"
    action: str
    #: resume: the last checkpointed round to continue from (None: from round 0)
    checkpoint: Checkpoint | None = None
    #: resume: the Files dataset of this region to wait for (None: the job has no share here)
    dataset: str | None = None
    #: fail: why
    reason: str | None = None


@dataclass
class RecoveryPlan:
    """What :func:`plan` decided; :meth:`grid.scheduler.job_handlers.JobsExtension.recover` carries it out."""

    #: every job of the state directory, in submission order
    jobs: list[JobPlan] = field(default_factory=list)
    #: the recipes of the Files datasets to read again (as :func:`save_recipe` wrote them)
    recipes: list[dict] = field(default_factory=list)
    #: job-owned Files datasets whose job ended: nobody will use them again, their recipes go
    stale_recipes: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for j in self.jobs if j.action == action)


def plan(state: StateDir, region: str) -> RecoveryPlan:
    """Read the jobs, checkpoints and Files recipes of ``region`` in its state directory and
    decide what becomes of each job (nothing is changed here).

    Runs inside the plugin's ``start()``: reading the files is quick, and every
    job is known (and answers ``grid_job``) as soon as the scheduler listens.
    """
    out = RecoveryPlan()
    records = state.load_jobs()
    unfinished = [r for r in records if r.status not in FINISHED]
    needed = {r.placement[region].get("dataset") for r in unfinished if isinstance(r.placement.get(region), dict)}
    for recipe in state.load_datasets():
        if recipe.get("job_owned") and recipe["name"] not in needed:
            out.stale_recipes.append(recipe["name"])
        else:
            out.recipes.append(recipe)
    readable = {recipe["name"] for recipe in out.recipes}
    for record in records:
        if record.status in FINISHED:
            out.jobs.append(JobPlan(record, "keep"))
            continue
        local = record.placement.get(region)
        if isinstance(local, dict) and local.get("dataset") not in readable:
            out.jobs.append(JobPlan(record, "fail", reason=LOST_REASON))
            continue
        cp = state.load_checkpoint(record.id)
        if cp is None and record.rounds_done:
            logger.warning(
                "job %s: no readable checkpoint of its %d completed round(s); it starts again from round 0 "
                "(its data is in files, and its result does not depend on where it starts)",
                record.id, record.rounds_done,
            )
        dataset = local.get("dataset") if isinstance(local, dict) else None
        out.jobs.append(JobPlan(record, "resume", checkpoint=cp, dataset=dataset))
    return out
