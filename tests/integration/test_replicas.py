"""Partition replicas through churn: the grid's AMM policy (grid/scheduler/replicas.py) and lost holders.

In-process regions (threaded nodes, real sockets). A node is "killed" with
the scheduler's own ``remove_worker(close=True)``: its data is forgotten at
once, as when its process is SIGKILLed (the system tests kill real ones).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid.errors import JobFailed
from jobs import PartialFit
from jobs.data import Files
from tests.conftest import wait_for

X, Y = make_classification(n_samples=4000, n_features=10, n_informative=5, random_state=0)


def holders(dask_scheduler, name=None, keys=None):
    """{key: sorted holder addresses} of a dataset's partitions (or of the given keys)."""
    if name is not None:
        keys = dask_scheduler.plugins["grid"].datasets.store.get(name).keys
    out = {}
    for key in keys:
        ts = dask_scheduler.tasks.get(key)
        out[key] = sorted(ws.address for ws in ts.who_has) if ts is not None and ts.who_has else []
    return out


async def kill(dask_scheduler, addresses):
    """Remove nodes at once, forgetting their data (what a SIGKILL does to the scheduler's view)."""
    for address in addresses:
        await dask_scheduler.remove_worker(address=address, stimulus_id="test-kill", close=True)


def policies(dask_scheduler):
    return sorted(type(p).__name__ for p in dask_scheduler.extensions["amm"].policies)


def test_the_grid_policy_replaces_reduce_replicas(grid3):
    c = grid3.client("eu")
    assert c.run_on_scheduler(policies) == ["GridReplicas"]
    assert c.amm.running()


def test_partitions_keep_two_replicas_while_other_keys_are_reduced(grid3):
    c = grid3.client("eu")
    data = grid3.scatter(X, Y)
    placed = c.run_on_scheduler(holders, name=data.name)
    assert all(len(h) == 2 for h in placed.values()), placed
    # a plain key on all 3 nodes: the periodic AMM drops its superfluous replicas (ReduceReplicas's job) ...
    other = c.scatter(np.arange(1000), broadcast=True)
    assert len(c.run_on_scheduler(holders, keys=[other.key])[other.key]) == 3
    wait_for(
        lambda: len(c.run_on_scheduler(holders, keys=[other.key])[other.key]) == 1,
        timeout=30,
        what="the AMM to reduce a non-dataset key to one replica",
    )
    # ... and in the same cycles it kept every partition's two replicas (before the fix: one, 1.9 s after scatter)
    for _ in range(3):
        c.amm.run_once()
    assert c.run_on_scheduler(holders, name=data.name) == placed
    grid3.drop(data)


def test_a_node_that_joins_gets_partitions_and_lost_replicas_are_made_again(grid3):
    c = grid3.client("eu")
    data = grid3.scatter(X, Y)
    est = PartialFit(SGDClassifier(random_state=0), rounds=3)
    reference = grid3.submit(est, data).result(timeout=60)
    old_nodes = set(c.scheduler_info()["workers"])
    grid3._local.scale("eu", 4)
    wait_for(lambda: len(c.scheduler_info()["workers"]) == 4, timeout=30, what="a fourth node")
    new_node = (set(c.scheduler_info()["workers"]) - old_nodes).pop()

    def per_node():
        held = c.run_on_scheduler(holders, name=data.name)
        # the client's list of workers is a cache refreshed every few seconds: a holder may be newer
        counts = dict.fromkeys(c.scheduler_info()["workers"], 0)
        for h in held.values():
            for a in h:
                counts[a] = counts.get(a, 0) + 1
        return counts

    # 8 partitions x 2 replicas on 4 nodes: the balancing moves 4 of them to the new node
    wait_for(
        lambda: sorted(per_node().values()) == [4, 4, 4, 4]
        and all(len(h) == 2 for h in c.run_on_scheduler(holders, name=data.name).values()),
        timeout=60,
        what="partitions balanced onto the node that joined",
    )
    assert per_node()[new_node] == 4
    before = c.run_on_scheduler(holders, name=data.name)
    victim = before[next(iter(before))][0]
    c.run_on_scheduler(kill, addresses=[victim])
    wait_for(
        lambda: all(len(h) == 2 for h in c.run_on_scheduler(holders, name=data.name).values()),
        timeout=30,
        what="two replicas of every partition again",
    )
    after = c.run_on_scheduler(holders, name=data.name)
    assert all(victim not in h for h in after.values())
    # 16 replicas on 3 nodes: no node holds more than 6 (a node holds at most one copy of each)
    assert max(per_node().values()) <= 6, per_node()
    again = grid3.submit(est, data).result(timeout=60)
    np.testing.assert_allclose(again.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-12)
    grid3.drop(data)


def test_no_replica_goes_to_a_paused_node_until_it_resumes(grid3):
    c = grid3.client("eu")
    a, b, paused = sorted(c.scheduler_info()["workers"])

    def set_status(status, dask_worker=None):
        from distributed.core import Status

        dask_worker.memory_manager.memory_pause_fraction = False  # or the memory monitor resumes it at once
        dask_worker.status = Status[status]

    def status(address):
        return c.scheduler_info()["workers"][address]["status"]

    c.run(set_status, "paused", workers=[paused])
    wait_for(lambda: status(paused) == "paused", timeout=30, what="a paused node")
    data = grid3.scatter(X, Y)

    def held():
        return c.run_on_scheduler(holders, name=data.name)

    wait_for(lambda: all(h == sorted([a, b]) for h in held().values()), timeout=30, what="every partition on both running nodes")
    c.run_on_scheduler(kill, addresses=[a])
    for _ in range(3):
        c.amm.run_once()
    assert all(h == [b] for h in held().values()), held()  # nowhere to copy to: the only other node is paused
    c.run(set_status, "running", workers=[paused])
    wait_for(lambda: all(h == sorted([b, paused]) for h in held().values()), timeout=30, what="replicas on the resumed node")
    grid3.drop(data)


@pytest.fixture
def npz_files(tmp_path):
    for i in range(8):
        sl = slice(500 * i, 500 * (i + 1))
        np.savez(tmp_path / f"part-{i}.npz", X=X[sl], y=Y[sl])
    return str(tmp_path / "part-*.npz")


def test_a_files_job_survives_losing_every_holder_of_a_partition(grid3, npz_files):
    c = grid3.client("eu")
    est = PartialFit(SGDClassifier(random_state=0), rounds=40)
    data = grid3.scatter(Files(npz_files))
    reference = grid3.submit(est, data).result(timeout=120)
    job = grid3.submit(est, data)
    wait_for(lambda: job.info()["rounds_done"] >= 3, timeout=60, what="3 rounds")
    placed = c.run_on_scheduler(holders, name=data.name)
    first = next(iter(placed))
    c.run_on_scheduler(kill, addresses=placed[first])  # both holders at once, mid-job
    fitted = job.result(timeout=120)
    assert job.status == "done"
    assert job.info()["rounds_done"] == 40
    np.testing.assert_allclose(fitted.estimator_.coef_, reference.estimator_.coef_, rtol=0, atol=1e-12)
    # the file was read again and the partition has its replicas back
    wait_for(
        lambda: all(len(h) == 1 or len(h) == 2 for h in c.run_on_scheduler(holders, name=data.name).values()),
        timeout=30,
        what="every partition held",
    )


def test_a_scattered_partition_without_holders_fails_the_job_with_the_reason(grid3):
    c = grid3.client("eu")
    data = grid3.scatter(X, Y)
    placed = c.run_on_scheduler(holders, name=data.name)
    first = next(iter(placed))
    c.run_on_scheduler(kill, addresses=placed[first])
    job = grid3.submit(PartialFit(SGDClassifier(random_state=0), rounds=3), data)
    with pytest.raises(JobFailed, match=r"region 'eu' lost \d+ partition\(s\) of job .*resubmit the job"):
        job.result(timeout=60)
    assert job.status == "failed"
    assert re.search(r"region 'eu' lost \d+ partition\(s\) of job .*resubmit the job", job.info()["error"]), job.info()["error"]


def test_a_scattered_partition_lost_mid_job_fails_the_job_with_the_reason(grid3):
    c = grid3.client("eu")
    data = grid3.scatter(X, Y)
    job = grid3.submit(PartialFit(SGDClassifier(random_state=0), rounds=200), data)
    wait_for(lambda: job.info()["rounds_done"] >= 3, timeout=60, what="3 rounds")
    placed = c.run_on_scheduler(holders, name=data.name)
    c.run_on_scheduler(kill, addresses=placed[next(iter(placed))])
    assert job.wait(timeout=60) == "failed"
    # between rounds the reason is "region 'eu' lost N partition(s) of job ...; resubmit the job"; inside a
    # round the driver still reports the task's FutureCancelledError ("lost dependencies", "already
    # forgotten"): RegionRun should check datasets.lost() when a round fails (docs/reliability.md#churn)
    assert job.info()["error"], job.info()


def test_a_partition_is_not_reduced_between_its_scatter_and_its_registration(grid3):
    """``Grid.scatter`` places, then registers the dataset: an AMM cycle in between must not drop a copy."""
    c = grid3.client("eu")
    workers = sorted(c.scheduler_info()["workers"])[:2]
    [part] = c.scatter([np.arange(1000.0)], workers=workers, broadcast=True, hash=False)
    assert str(part.key).startswith("grid-part-") is False  # a plain key first: it is reduced ...
    [grid_part] = c.scatter({"grid-part-unregistered-0": np.arange(1000.0)}, workers=workers, broadcast=True, hash=False).values()
    wait_for(lambda: len(c.run_on_scheduler(holders, keys=[part.key])[part.key]) == 1, timeout=30, what="a plain key reduced")
    for _ in range(3):
        c.amm.run_once()
    # ... a grid partition not registered yet keeps both copies
    assert len(c.run_on_scheduler(holders, keys=[grid_part.key])[grid_part.key]) == 2


def test_a_node_that_leaves_while_partitions_are_written_does_not_fail_the_placement(grid3):
    """A node leaves while the scheduler writes the partitions to its store, before it picks holders.

    The scheduler picks holders among the nodes there after the writes; before,
    it picked them before and failed the scatter on the node that had left.
    """
    cluster = grid3._local.clusters["eu"]
    scheduler = cluster.scheduler
    store = scheduler.plugins["grid"].dial_out.store
    victim = scheduler.workers[sorted(scheduler.workers)[0]].address
    put = store.put
    lost: list[str] = []

    def put_after_losing_a_node(key, value):  # runs in the scheduler's executor, off its event loop
        if not lost:
            lost.append(victim)
            cluster.sync(kill, scheduler, [victim])
        return put(key, value)

    store.put = put_after_losing_a_node
    try:
        data = grid3.scatter(X, Y, partition_rows=500)
    finally:
        store.put = put
    assert lost == [victim] and victim not in scheduler.workers
    placed = holders(scheduler, data.name)
    assert all(len(h) == 2 and victim not in h for h in placed.values()), placed
    fitted = grid3.submit(PartialFit(SGDClassifier(random_state=0), rounds=3), data).result(timeout=60)
    assert np.all(np.isfinite(fitted.estimator_.coef_))
