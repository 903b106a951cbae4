"""A community node runs the grid's job functions only: also the tasks and callables hidden in their arguments.

An admin certificate may send any task graph through the scheduler, so what a
community node runs is decided on the node (``grid.node.community``). A task
whose outer function is a grid function can still carry code for the node to
run first: a nested ``Task`` in its arguments (directly, inside dask's
``List`` / ``Dict`` containers, in keyword arguments), a container whose
function was replaced, a function sent by value that claims a grid function's
name, or a callable passed as data that scikit-learn calls. Each attack below
creates a marker file if anything of it runs on the node; the node must refuse
the task with ``PermissionError`` naming what it refused, and keep serving
honest grid work.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import numpy as np
import pytest
from dask._task_spec import List, Task
from distributed import Client, Worker
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import SGDClassifier

from grid import Grid, wire
from grid.node import tasks
from grid.node.community import CommunityMode
from grid.security.certs import issue
from jobs import PartialFit


def touch(path: str, *args: Any, **kwargs: Any) -> None:
    """The attacker's code: leaves a marker file where it ran."""
    with open(path, "w") as f:
        f.write("ran")


TOUCH = f"{touch.__module__}.touch"  # how a refusal names it


def touch_centers(path: str, X: Any, n_clusters: int, random_state: Any = None) -> np.ndarray:
    """A callable ``init`` for MiniBatchKMeans that leaves a marker file when scikit-learn calls it."""
    touch(path)
    return np.zeros((n_clusters, X.shape[1]))


def forged_grid_function(path: str) -> Any:
    """A function that claims to be ``grid.node.tasks.partition_update``; cloudpickle sends it by value."""

    def partition_update(*args: Any, **kwargs: Any) -> None:
        with open(path, "w") as f:
            f.write("ran")

    partition_update.__module__ = "grid.node.tasks"
    partition_update.__qualname__ = "partition_update"
    return partition_update


def container_running(path: str) -> List:
    """A dask ``List`` container whose function (a pickled slot) was replaced by the attacker's."""
    container = List(path)
    container.func = touch
    return container


def kmeans_request(init: Any) -> dict:
    request = PartialFit(MiniBatchKMeans(n_clusters=2, random_state=0, n_init=1), rounds=1)._job_request()
    request["estimator"]["params"]["init"] = init
    return request


X, Y = np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 2

#: attack -> (grid function, args, kwargs, what the refusal names); each builds its marker path in
ATTACKS = {
    "task in args": lambda m: (tasks.describe_partition, (Task("evil", touch, m),), {}, TOUCH),
    "task in a list": lambda m: (tasks.describe_partition, ([Task("evil", touch, m), None, None],), {}, TOUCH),
    "task in a dict": lambda m: (tasks.read_file_partition, ("x.npz", {"target": Task("evil", touch, m)}), {}, TOUCH),
    "task in kwargs": lambda m: (tasks.read_file_partition, ("x.npz",), {"options": Task("evil", touch, m)}, TOUCH),
    "task in a task": lambda m: (
        tasks.describe_partition, (Task("outer", tasks.describe_partition, Task("evil", touch, m)),), {}, TOUCH
    ),
    "container with its own function": lambda m: (tasks.describe_partition, (container_running(m),), {}, TOUCH),
    "callable passed as data": lambda m: (
        tasks.partition_update,
        (kmeans_request(functools.partial(touch_centers, m)), None, (X, None, None), 0, 0),
        {},
        "a functools.partial object",
    ),
    "function claiming a grid function's name": lambda m: (
        forged_grid_function(m), (), {}, "grid.node.tasks.partition_update (not the grid's own function"
    ),
}


@pytest.fixture(scope="module")
def tls_grid():
    g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False, tls=True)
    try:
        yield g
    finally:
        g.close()


#: stands for a partition held by the community node (scattered to it first), as grid tasks refer to theirs
PART = object()


def run_on_community_node(g: Grid, submissions: dict[str, tuple]) -> dict[str, Any]:
    """Start an in-process community node in region eu; run each ``name -> (func, args, kwargs)``
    on it through an admin client, in order. Returns ``name -> result or 'refused: <error>'``, and
    under ``"refused_tasks"`` how many tasks the node refused."""
    throwaway = g._local.throwaway
    cert = issue(throwaway.ca, "node", "community-nested-eu", region="eu")
    address = g.spec.regions["eu"].address
    community = CommunityMode()

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Worker(address, security=cert.security(), nthreads=1, plugins=(community,)) as w:
            async with Client(address, security=throwaway.admin.security(), asynchronous=True) as admin:
                part = await admin.scatter((X, Y, None), workers=[w.address], direct=True)
                for name, (func, args, kwargs) in submissions.items():
                    args = tuple(part if a is PART else a for a in args)
                    future = admin.submit(
                        func, *args, **kwargs, workers=[w.address], allow_other_workers=False, pure=False
                    )
                    try:
                        out[name] = await future
                    except Exception as exc:  # noqa: BLE001 - the refusal is what we test
                        out[name] = f"refused: {type(exc).__name__}: {exc}"
                    future.release()
        out["refused_tasks"] = community.refused_tasks
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_community_node_runs_nothing_hidden_in_a_grid_task(tmp_path, tls_grid, attack):
    marker = str(tmp_path / "marker")
    func, args, kwargs, refused_name = ATTACKS[attack](marker)
    out = run_on_community_node(tls_grid, {"attack": (func, args, kwargs)})
    assert not os.path.exists(marker), f"the node ran the attacker's code ({attack}): {out['attack']!r:.300}"
    outcome = out["attack"]
    assert isinstance(outcome, str) and outcome.startswith("refused: "), outcome
    assert "PermissionError" in outcome and "community mode" in outcome, outcome
    assert f"refused {refused_name}" in outcome, outcome
    assert out["refused_tasks"] == 1


def test_the_node_keeps_serving_honest_grid_work(tmp_path, tls_grid):
    marker = str(tmp_path / "marker")
    attacks = {name: build(marker)[:3] for name, build in ATTACKS.items()}
    request = PartialFit(SGDClassifier(random_state=0), rounds=1)._job_request()
    request.update(classes=[0, 1], n_features=X.shape[1], verify=1, partial_participation=False)
    honest = {
        "describe": (tasks.describe_partition, (PART,), {}),
        "update": (tasks.partition_update, (request, None, PART, 0, 0), {}),
        "update with keywords": (tasks.partition_update, (request, None, [X, Y, None]), {"round_no": 0, "index": 1}),
        "next step": (tasks.sequential_step, (request, None, PART, 0, 2), {}),
    }
    out = run_on_community_node(tls_grid, {**honest, **attacks, **{f"{k} again": v for k, v in honest.items()}})
    assert not os.path.exists(marker)
    assert all(out[name].startswith("refused: ") for name in attacks), out
    assert out["refused_tasks"] == len(attacks)
    for again in ("", " again"):
        arrays, _ = wire.decode(out["describe" + again])
        assert int(arrays["rows"]) == len(X) and int(arrays["n_features"]) == X.shape[1]
        for name in ("update", "update with keywords", "next step"):
            state, metrics = wire.decode(out[name + again])
            assert metrics["samples"] == len(X) and state and all(np.all(np.isfinite(v)) for v in state.values())
