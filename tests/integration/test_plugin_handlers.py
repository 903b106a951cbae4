"""The grid scheduler plugin's handlers on distributed's own test clusters (gen_cluster)."""

from __future__ import annotations

import numpy as np
from distributed.utils_test import async_poll_for, gen_cluster

from grid.scheduler.plugin import GridSchedulerPlugin
from jobs.spec import estimator_spec



def plugin_kwargs() -> dict:
    """A fresh plugin for each test's scheduler."""
    return {"plugins": [GridSchedulerPlugin("eu")]}


def request(**overrides):
    from sklearn.linear_model import SGDClassifier

    base = {
        "kind": "partial_fit",
        "facade": "jobs.partial_fit:PartialFit",
        "estimator": estimator_spec(SGDClassifier(random_state=0)),
        "rounds": 2,
        "mode": "average",
        "aggregate": "mean",
        "local_epochs": 1,
        "partition_rows": "auto",
        "seed": 0,
        "classes": [0, 1],
    }
    base.update(overrides)
    return base


async def place(c, s, name="d1", n=2):
    rng = np.random.default_rng(0)
    parts = {}
    for i in range(n):
        X = rng.normal(size=(100, 3))
        parts[f"grid-part-{name}-{i}"] = (X, (X[:, 0] > 0).astype(int), None)
    futures = await c.scatter(parts, hash=False)
    reply = await c.scheduler.grid_register_dataset(
        name=name, keys=list(parts), rows=[100] * n, indices=list(range(n)), n_features=3, classes=[0, 1]
    )
    assert reply["status"] == "OK", reply
    return futures


@gen_cluster(client=True, scheduler_kwargs=plugin_kwargs())
async def test_submit_wait_result_through_handlers(c, s, a, b):
    await place(c, s)
    placement = {"eu": {"address": s.address, "dataset": "d1", "job_owned": False}}
    reply = await c.scheduler.grid_submit(request=request(), placement=placement, owner="alice")
    assert reply["status"] == "OK"
    job_id = reply["id"]
    assert job_id.startswith("eu-")
    done = await c.scheduler.grid_wait(job_id=job_id, timeout=30)
    assert done["job_status"] == "done"
    result = await c.scheduler.grid_result(job_id=job_id)
    assert isinstance(result["state"], bytes) and len(result["history"]) == 2
    jobs = await c.scheduler.grid_jobs()
    assert [j["owner"] for j in jobs["jobs"]] == ["alice"]
    info = await c.scheduler.grid_info()
    assert info["region"] == "eu" and len(info["workers"]) == 2 and info["jobs"]["done"] == 1


@gen_cluster(client=True, scheduler_kwargs=plugin_kwargs())
async def test_malformed_submissions_are_rejected_and_nothing_is_lost(c, s, a, b):
    await place(c, s)
    placement = {"eu": {"address": s.address, "dataset": "d1"}}
    good = await c.scheduler.grid_submit(request=request(), placement=placement)
    bad_payloads = [
        dict(request="nope", placement=placement),
        dict(request=request(kind="shell"), placement=placement),
        dict(request=request(estimator={"class": "os:system", "params": {}}), placement=placement),
        dict(request=request(rounds=-1), placement=placement),
        dict(request=request(rounds=True), placement=placement),
        dict(request=request(mode="turbo"), placement=placement),
        dict(request=request(), placement={}),
        dict(request=request(), placement={"eu": {"address": s.address, "dataset": "missing"}}),
        dict(request=request(), placement={"eu": "x"}),
    ]
    for payload in bad_payloads:
        reply = await c.scheduler.grid_submit(**payload)
        assert reply["status"] == "error", (payload, reply)
        assert reply["message"]
    done = await c.scheduler.grid_wait(job_id=good["id"], timeout=30)
    assert done["job_status"] == "done"
    jobs = (await c.scheduler.grid_jobs())["jobs"]
    assert [j["id"] for j in jobs] == [good["id"]]


@gen_cluster(client=True, scheduler_kwargs=plugin_kwargs())
async def test_dataset_keys_are_held_by_the_scheduler_and_dropped(c, s, a, b):
    futures = await place(c, s, name="d2")
    keys = [f.key for f in futures.values()]
    del futures  # the client lets go; the dataset still holds the data
    await c.scheduler.grid_info()
    assert all(k in s.tasks for k in keys)
    reply = await c.scheduler.grid_drop_dataset(name="d2")
    assert reply["dropped"] is True
    await async_poll_for(lambda: not any(k in s.tasks for k in keys), timeout=10)
    missing = await c.scheduler.grid_register_dataset(name="d3", keys=["nope"], rows=[1], indices=[0], n_features=1)
    assert missing["status"] == "error" and "Grid.scatter" in missing["message"]


@gen_cluster(client=True, scheduler_kwargs=plugin_kwargs())
async def test_each_extension_registers_its_own_handlers_all_in_the_protocol_table(c, s, a, b):
    from grid.protocol.messages import PROTOCOL
    from grid.scheduler.access import SCHEDULER_ONLY

    plugin = s.plugins["grid"]
    listed = {op for role in PROTOCOL["scheduler"].values() for op in role.handlers if op.startswith("grid_")}
    owner = {op: handler.__self__ for op, handler in s.handlers.items() if op.startswith("grid_")}
    # every grid handler is one untrusted roles may call (the table) or one other schedulers call
    assert set(owner) == listed | SCHEDULER_ONLY
    by_extension = {
        plugin.jobs: {"grid_submit", "grid_job", "grid_jobs", "grid_cancel", "grid_wait", "grid_result", "grid_rerun"},
        plugin.datasets: {"grid_register_dataset", "grid_drop_dataset", "grid_register_files"},
        plugin.region_share: SCHEDULER_ONLY,
        plugin.dial_out: {"grid_store_read"},
        plugin: {"grid_info"},
    }
    for extension, ops in by_extension.items():
        assert {op for op, o in owner.items() if o is extension} == ops, type(extension).__name__
