"""What a restarted scheduler decides for the jobs of its state directory (``recovery.plan``), without a cluster."""

from __future__ import annotations

import numpy as np

from grid import wire
from grid.scheduler import recovery
from grid.scheduler.registry import JobRecord
from grid.scheduler.state import Checkpoint, StateDir


def _record(job_id: str, status: str, dataset: str, submitted: float, rounds_done: int = 0) -> JobRecord:
    return JobRecord(
        id=job_id,
        owner="ana",
        home="eu",
        request={"kind": "partial_fit", "rounds": 5, "mode": "average", "estimator": {"class": "x:Y", "params": {}}},
        placement={"eu": {"address": "tcp://127.0.0.1:8786", "dataset": dataset, "job_owned": True}},
        status=status,
        submitted=submitted,
        rounds_done=rounds_done,
    )


def _recipe(name: str, job_owned: bool) -> dict:
    return {"name": name, "paths": ["/data/a.npz"], "indices": [0], "options": {}, "owner": "ana", "job_owned": job_owned}


def test_the_plan_resumes_jobs_on_files_fails_jobs_on_lost_data_and_keeps_ended_ones(tmp_path):
    state = StateDir(tmp_path, "eu")
    done = _record("eu-aaaaaaaaaaaa", "done", "files-done", 1.0, rounds_done=5)
    on_files = _record("eu-bbbbbbbbbbbb", "running", "files-running", 2.0, rounds_done=3)
    in_memory = _record("eu-cccccccccccc", "running", "scattered", 3.0, rounds_done=1)
    for record in (done, on_files, in_memory):
        state.save_job(record)
    blob = wire.encode({"coef": np.arange(3.0)})
    state.save_checkpoint(on_files.id, Checkpoint(state=blob, rounds_done=3, history=[{"round": i} for i in (1, 2, 3)]))
    state.save_dataset(_recipe("files-running", job_owned=True))
    state.save_dataset(_recipe("files-done", job_owned=True))  # its job ended: nobody reads it again
    state.save_dataset(_recipe("placed-files", job_owned=False))  # Grid.scatter of Files: kept for any job

    plan = recovery.plan(state, "eu")

    assert [(j.record.id, j.action) for j in plan.jobs] == [(done.id, "keep"), (on_files.id, "resume"), (in_memory.id, "fail")]
    resume, fail = plan.jobs[1], plan.jobs[2]
    assert resume.dataset == "files-running" and resume.checkpoint is not None
    assert resume.checkpoint.rounds_done == 3 and resume.checkpoint.state == blob
    assert fail.reason == recovery.LOST_REASON
    assert sorted(r["name"] for r in plan.recipes) == ["files-running", "placed-files"]
    assert plan.stale_recipes == ["files-done"]
    assert (plan.count("resume"), plan.count("fail")) == (1, 1)
    # planning changes nothing: the records, the checkpoint and every recipe are as they were
    assert [r.status for r in state.load_jobs()] == ["done", "running", "running"]
    assert state.load_checkpoint(on_files.id) is not None
    assert len(state.load_datasets()) == 3


def test_a_job_without_a_readable_checkpoint_resumes_from_round_zero(tmp_path):
    state = StateDir(tmp_path, "eu")
    state.save_job(_record("eu-dddddddddddd", "running", "files", 1.0, rounds_done=4))
    state.save_dataset(_recipe("files", job_owned=True))
    (job,) = recovery.plan(state, "eu").jobs
    assert job.action == "resume" and job.checkpoint is None and job.dataset == "files"
