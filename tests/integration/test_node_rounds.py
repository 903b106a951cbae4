"""Round requests: one ``grid_update`` call per node per round instead of a task graph.

The node's handler (``grid/node/rounds.py``) is tested on distributed's own
``gen_cluster``; the scheduler's side (``grid/scheduler/attempts.py``) on
in-process grids, against the task engine it replaces and with nodes that
cannot or will not serve requests.
"""

from __future__ import annotations


import dask
import numpy as np
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import gen_cluster
from sklearn.linear_model import SGDClassifier

import grid.node.tasks as node_tasks
from grid import Grid, wire
from grid.node.rounds import OP, NodeRounds
from jobs import PartialFit
from jobs import SGDClassifier as GridSGDClassifier
from tests.integration.reference import assert_same_model, fedavg


class TaskKeys(SchedulerPlugin):
    """Every task key the scheduler saw (to tell whether a round ran as tasks)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:  # noqa: ANN001
        self.keys.add(str(key))


def estimator(rounds: int = 3) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=rounds, partition_rows=1000)


def record_keys(g: Grid, region: str = "eu") -> TaskKeys:
    recorder = TaskKeys()
    # the scheduler object itself (run_on_scheduler would pickle a copy of the recorder)
    g._local.clusters[region].scheduler.add_plugin(recorder, name="test-task-keys")
    return recorder


def addresses(g: Grid, region: str = "eu") -> list[str]:
    return sorted(w["address"] for w in g.status()[region]["workers"])


# --- the node's handler ------------------------------------------------------------------
def _request() -> dict:
    return GridSGDClassifier(rounds=1, random_state=0)._job_request() | {"classes": [0, 1], "n_features": 3}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], worker_kwargs={"plugins": {NodeRounds()}})
async def test_the_node_handler_updates_held_partitions_and_names_the_rest(c, s, a) -> None:
    rng = np.random.default_rng(0)
    parts = {
        f"grid-part-t-{i}": (rng.normal(size=(64, 3)), (rng.random(64) > 0.5).astype(np.int64), None) for i in range(2)
    }
    await c.scatter(parts, workers=[a.address], hash=False)
    request = _request()
    reply = await s.rpc(a.address).grid_update(
        request=request, state=None, round_no=0,
        parts=[["grid-part-t-0", 0], ["grid-part-t-1", 1], ["grid-part-not-here", 2]],
        serializers=["msgpack"], deserializers=["msgpack"],
    )
    assert reply["status"] == "OK"
    assert [i for i, _ in reply["updates"]] == [0, 1]
    assert list(reply["missing"]) == [2] and not reply["errors"]  # msgpack gives tuples
    # the same bytes a task computes: the engines are interchangeable
    expected = node_tasks.partition_update(request, None, parts["grid-part-t-1"], 0, 1)
    got_arrays, got_meta = wire.decode(reply["updates"][1][1])
    want_arrays, _ = wire.decode(expected)
    for name in want_arrays:
        np.testing.assert_array_equal(got_arrays[name], want_arrays[name])
    assert got_meta["partition"] == 1 and got_meta["samples"] == 64

    # an update that raises is reported with its partition, not as a crash of the handler
    bad = dict(request, estimator={"class": request["estimator"]["class"], "params": {"loss": "no-such-loss"}})
    reply = await s.rpc(a.address).grid_update(request=bad, state=None, round_no=0, parts=[["grid-part-t-0", 0]])
    assert not reply["updates"] and [i for i, _ in reply["errors"]] == [0]
    assert "no-such-loss" in reply["errors"][0][1]

    # a paused node runs nothing and says so
    from distributed.core import Status

    a.status = Status.paused
    reply = await s.rpc(a.address).grid_update(request=request, state=None, round_no=0, parts=[["grid-part-t-0", 0]])
    assert reply["status"] == "paused" and not reply["updates"]
    a.status = Status.running


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], worker_kwargs={"plugins": {NodeRounds()}})
async def test_the_handler_leaves_with_its_plugin(c, s, a) -> None:
    assert OP in a.handlers
    await a.plugin_remove(NodeRounds.name)
    assert OP not in a.handlers


# --- the scheduler's side --------------------------------------------------------------
def test_direct_rounds_give_the_task_engines_model_bitwise_without_a_task(grid3: Grid, classification_data) -> None:
    X, y = classification_data
    data = grid3.scatter(X, y)
    keys = record_keys(grid3)
    with dask.config.set({"grid.scheduler.round-engine": "tasks"}):
        as_tasks = grid3.submit(estimator(), data)
        reference = as_tasks.result(timeout=120)
    direct = grid3.submit(estimator(), data)
    fitted = direct.result(timeout=120)
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)
    np.testing.assert_array_equal(fitted.estimator_.intercept_, reference.estimator_.intercept_)
    assert any(k.startswith(f"grid-{as_tasks.id}-r") for k in keys.keys)
    assert not any(k.startswith(f"grid-{direct.id}-r") for k in keys.keys), "a direct round made tasks"
    partitions = data.n_partitions
    assert all(h["tasks"] == 0 and 1 <= h["requests"] <= 3 for h in direct.history), direct.history
    assert all(h["tasks"] == partitions and h["requests"] == 0 for h in as_tasks.history)
    assert all(h["updates"] == partitions for h in direct.history)
    # the dashboard's per-node count includes requests: every node did work
    assert all(w["tasks_done"] > 0 for w in grid3.status()["eu"]["workers"])


def test_a_node_without_the_handler_gets_its_updates_as_tasks(grid3: Grid, classification_data) -> None:
    X, y = classification_data
    data = grid3.scatter(X, y)
    reference = grid3.submit(estimator(), data).result(timeout=120)
    stock = addresses(grid3)[0]
    c = grid3.client("eu")
    c.run(lambda dask_worker: dask_worker.handlers.pop(OP) and None, workers=[stock])  # a stock dask worker
    job = grid3.submit(estimator(), data)
    fitted = job.result(timeout=120)
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)
    history = job.history
    assert history[0]["tasks"] >= 1  # the stock node's share ran as tasks ...
    assert sum(h["reissued"] for h in history) == 0  # ... without counting as lost
    assert c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["grid"].ledger.lacks_rounds(stock))
    assert not grid3.status()["eu"]["quarantined"]


@pytest.mark.parametrize(
    "answer, why",
    [
        ("junk-blob", "bad magic bytes"),
        ("not-a-dict", "answered a round request"),
        ("silent", "did not answer for a partition"),
    ],
)
def test_a_node_answering_garbage_is_quarantined_and_the_model_is_clean(grid3: Grid, classification_data, answer: str, why: str) -> None:
    X, y = classification_data
    data = grid3.scatter(X, y)
    reference = grid3.submit(estimator(), data).result(timeout=120)
    bad = addresses(grid3)[0]

    def install(kind: str, dask_worker=None) -> None:  # noqa: ANN001
        real = dask_worker.handlers[OP]

        async def garbage(comm, **msg):  # noqa: ANN001, ANN003, ANN202
            reply = await real(comm, **msg)
            if kind == "junk-blob":
                return dict(reply, updates=[[i, b"\x00not a grid update"] for i, _ in reply["updates"]])
            if kind == "not-a-dict":
                return ["surprise"]
            return dict(reply, updates=[])

        dask_worker.handlers[OP] = garbage

    grid3.client("eu").run(install, answer, workers=[bad])
    job = grid3.submit(estimator(), data)
    fitted = job.result(timeout=120)
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)
    quarantined = grid3.status()["eu"]["quarantined"]
    assert [q["address"] for q in quarantined] == [bad], quarantined
    assert "sent an invalid update" in quarantined[0]["reason"] and why in quarantined[0]["reason"], quarantined[0]["reason"]
    assert sum(h["quarantined"] for h in job.history) == 1


def test_an_update_that_fails_on_the_node_fails_the_job_with_the_reason(
    grid3: Grid, classification_data, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = classification_data
    data = grid3.scatter(X, y)
    real = node_tasks.local_step

    def local_step(kind: str):  # noqa: ANN202
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise FloatingPointError("the update diverged")

        return run if kind == "partial_fit" else real(kind)

    monkeypatch.setattr(node_tasks, "local_step", local_step)
    job = grid3.submit(estimator(), data)
    assert job.wait(timeout=120) == "failed"
    error = job.info()["error"]
    assert "the update diverged" in error and "partition" in error, error
    assert not grid3.status()["eu"]["quarantined"]  # an honest failure is not the node's fault
    monkeypatch.setattr(node_tasks, "local_step", real)
    served = grid3.submit(estimator(rounds=1), data).result(timeout=120)  # the grid serves the next job
    assert_same_model(served, fedavg(SGDClassifier(random_state=0), X, y, rounds=1))  # the placed data's partitions
