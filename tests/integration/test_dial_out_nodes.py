"""Dial-out nodes keep the grid's behaviour: a paused node gets no work, a late one a speculative copy,
and data placed while a node is still opening its grid channel waits for it.

On the embedded region of ``tests/integration/dial_out.py``: two dial-out nodes
that nothing can dial. Each model is compared with the same job on an open grid.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
from distributed.core import Status
from distributed.utils import sync
from sklearn.datasets import make_classification

from grid import Grid
from grid.node.rounds import PLUGIN_NAME
from grid.protocol.nodes import CHANNEL_OP
from tests.conftest import wait_for
from tests.integration.dial_out import DialOutGrid, job


def _open_grid_model(X, y, scatter: bool = True) -> np.ndarray:
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
        data = (g.scatter(X, y),) if scatter else (X, y)
        return g.submit(job(), *data).result(timeout=60).estimator_.coef_


def test_a_paused_dial_out_node_gets_no_work(dial_out_grid) -> None:
    """An idle-only node pauses while its owner uses the machine: rounds go to the other node."""
    X, y = make_classification(n_samples=4000, n_features=8, random_state=5)
    clean = _open_grid_model(X, y)
    grid, plugin = dial_out_grid, dial_out_grid.plugin
    data = grid.g.scatter(X, y)
    paused = grid.workers["vol-a"]

    def pause() -> None:
        # what the idle-only policy does (grid/node/idle.py): the memory monitor, which would
        # resume a node it did not pause itself, leaves the status to it
        paused.memory_manager.memory_pause_fraction = False
        paused.status = Status.paused

    grid.cluster.loop.add_callback(pause)
    wait_for(lambda: plugin.scheduler.workers[paused.address].status == Status.paused, timeout=10, what="vol-a paused")
    before = plugin.ledger.tasks_done.get(paused.address, 0)
    fitted = grid.g.submit(job(), data).result(timeout=60).estimator_.coef_
    assert plugin.ledger.tasks_done.get(paused.address, 0) == before
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)

    def resume() -> None:
        paused.status = Status.running

    grid.cluster.loop.add_callback(resume)
    wait_for(lambda: plugin.scheduler.workers[paused.address].status == Status.running, timeout=10, what="vol-a resumed")
    again = grid.g.submit(job(), data).result(timeout=60).estimator_.coef_
    np.testing.assert_allclose(again, clean, rtol=0, atol=1e-9)


def test_a_late_dial_out_node_gets_a_speculative_copy(dial_out_grid) -> None:
    """vol-a holds its calls back; the late partitions get copies on vol-b, which fetches their data."""
    X, y = make_classification(n_samples=4000, n_features=8, random_state=6)
    clean = _open_grid_model(X, y)
    grid = dial_out_grid
    slow = grid.workers["vol-a"]
    held: list = []
    release = {}

    def hold_calls() -> None:
        rounds = slow.plugins[PLUGIN_NAME]
        answer = rounds._answer
        release["event"] = asyncio.Event()

        async def late(comm, call: dict) -> None:  # each call is answered in its own task
            held.append(call["call"])
            await release["event"].wait()
            await answer(comm, call)

        rounds._answer = late

    sync(grid.cluster.loop, _as_coroutine(hold_calls))  # the Event belongs to the nodes' loop
    data = grid.g.scatter(X, y)
    with dask.config.set({"grid.scheduler.speculation.minimum": "300ms"}):
        submitted = grid.g.submit(job(), data)
        fitted = submitted.result(timeout=60).estimator_.coef_
    assert held, "the slow node got no call: the test proves nothing"
    grid.cluster.loop.add_callback(lambda: release["event"].set())
    assert sum(h["speculative"] for h in submitted.history) >= 1
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)


def _as_coroutine(function):
    async def run() -> None:
        function()

    return run


def test_a_stock_worker_nobody_can_reach_gets_no_data_and_no_work(dial_out_grid) -> None:
    """A plain Dask worker whose address nothing answers: found unreachable, passed over, reported."""
    X, y = make_classification(n_samples=4000, n_features=8, random_state=7)
    clean = _open_grid_model(X, y)
    grid, plugin = dial_out_grid, dial_out_grid.plugin
    stock = grid.add_node("stock", rounds=False, profile=False)
    wait_for(lambda: plugin.dial_out.reach.kind(stock.address) == "unreachable", timeout=30, what="the check")
    assert grid.g.status()["eu"]["nodes"] == {"active": 2, "paused": 0, "unreachable": 1, "quarantined": 0}
    fitted = grid.g.submit(job(), grid.g.scatter(X, y)).result(timeout=60).estimator_.coef_
    np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    ws = plugin.scheduler.workers[stock.address]
    assert not ws.has_what and not plugin.dial_out.store.count_held(stock.address)
    assert plugin.ledger.tasks_done.get(stock.address, 0) == 0


def test_a_files_job_on_dial_out_nodes_resumes_after_a_scheduler_restart(tmp_path) -> None:
    """A durable region restarts: new dial-out nodes read the job's files again and finish it."""
    from grid.scheduler.state import StateDir
    from jobs.data import Files
    from tests.integration.dial_out import DialOutGrid

    X, y = make_classification(n_samples=2000, n_features=8, random_state=3)
    for i in range(4):
        np.savez(tmp_path / f"part-{i}.npz", X=X[500 * i : 500 * (i + 1)], y=y[500 * i : 500 * (i + 1)])
    files = Files(str(tmp_path / "part-*.npz"))
    state = str(tmp_path / "state")

    def region(names: tuple[str, ...]) -> DialOutGrid:
        grid = DialOutGrid(state_dir=state)
        for name in names:
            grid.add_node(name)
        wait_for(lambda: grid.g.status()["eu"]["nodes"]["active"] == len(names), timeout=30, what="the nodes")
        return grid

    first = region(("vol-a", "vol-b"))
    try:
        reference = first.g.submit(job(rounds=60), files).result(timeout=120).estimator_.coef_
        running = first.g.submit(job(rounds=60), files)
        checkpoint = tmp_path / "state" / "eu" / "checkpoints" / f"{running.id}.bin"
        wait_for(lambda: checkpoint.exists() and running.info()["rounds_done"] >= 3, timeout=60, what="3 checkpointed rounds")
        first.stop_scheduler()
    finally:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            first.close()
    cp = StateDir(state, "eu").load_checkpoint(running.id)
    assert cp is not None and 3 <= cp.rounds_done < 60

    second = region(("vol-c", "vol-d"))
    try:
        reach = {name: second.plugin.dial_out.reach.kind(w.address) for name, w in second.workers.items()}
        resumed = second.g.job(running.id)
        fitted = resumed.result(timeout=120).estimator_.coef_
        history = resumed.history
        done = dict(second.plugin.ledger.tasks_done)
    finally:
        second.close()
    assert reach == {"vol-c": "dial-out", "vol-d": "dial-out"}, reach
    assert [h["round"] for h in history] == list(range(1, 61))
    assert sum(done.values()) > 0, "the resumed rounds did not run on the new nodes"
    np.testing.assert_allclose(fitted, reference, rtol=0, atol=1e-9)


def test_the_replica_manager_never_has_a_dial_out_node_copy_from_another_node(dial_out_grid) -> None:
    """Replication keeps two copies of each partition on open nodes, never on a dial-out node.

    A dial-out node that held a Dask replica would have dialed another node to
    copy it. Until open-2 joins, the dial-out nodes are the only candidates for
    the second copy of what open-1 holds; open-2 receiving those copies shows
    the replica manager ran meanwhile and kept them for an open node.
    """
    X, y = make_classification(n_samples=4000, n_features=8, random_state=9)
    grid, plugin = dial_out_grid, dial_out_grid.plugin
    first = grid.add_node("open-1", reachable=True)
    wait_for(lambda: plugin.dial_out.reach.kind(first.address) == "open", timeout=30, what="open-1 checked")
    data = grid.g.scatter(X, y)
    # the placement gives each partition two holders of three: those with a Dask copy are on open-1
    keys = set(plugin.datasets.store.get(data.name).keys) & set(first.data)
    assert keys, "no partition reached the open node"
    second = grid.add_node("open-2", reachable=True)
    dial_out = [grid.workers["vol-a"], grid.workers["vol-b"]]

    def copied() -> dict:
        return {name: sorted(keys & set(w.data)) for name, w in grid.workers.items()}

    wait_for(lambda: keys <= set(second.data), timeout=30, what=f"open-2 to get its replicas (held: {copied()})")
    held = copied()
    assert held["vol-a"] == held["vol-b"] == [], f"dial-out nodes copied partitions from another node: {held}"
    assert all(not plugin.scheduler.workers[w.address].has_what for w in dial_out)


def test_a_stock_worker_found_unreachable_is_checked_again_until_it_can_be_reached() -> None:
    """A check that failed (a busy network, a firewall opened later) does not lose the node for good."""
    from distributed import Worker
    from distributed.core import Server

    from grid.scheduler.reach import OPEN, UNREACHABLE
    from tests.system.procs import free_port

    port = free_port()  # nothing listens there yet: the first check is refused
    with dask.config.set({"grid.scheduler.node-recheck-interval": "200ms"}):
        g = Grid.local(regions={"eu": 0}, processes=False, dashboard=False)
    cluster = g._local.clusters["eu"]
    plugin = cluster.scheduler.plugins["grid"]
    listener = Server({})
    worker = None
    try:
        async def start() -> Worker:
            return await Worker(cluster.scheduler.address, nthreads=1, contact_address=f"tcp://127.0.0.1:{port}")

        worker = sync(cluster.loop, start)
        wait_for(lambda: plugin.dial_out.reach.kind(worker.address) == UNREACHABLE, timeout=30, what="the first check")
        assert g.status()["eu"]["nodes"]["unreachable"] == 1

        # the address answers now (as the node's firewall would once opened): the next check finds it
        sync(cluster.loop, listener.listen, f"tcp://127.0.0.1:{port}")
        wait_for(lambda: plugin.dial_out.reach.kind(worker.address) == OPEN, timeout=30, what="a re-check to reach it")
        assert g.status()["eu"]["nodes"]["unreachable"] == 0
        assert worker.address not in plugin.dial_out.reach.rechecks  # no re-check left running
    finally:
        if worker is not None:
            sync(cluster.loop, worker.close)
        sync(cluster.loop, listener.close)
        g.close()


def test_data_placed_before_the_only_node_opened_its_channel_waits_for_it() -> None:
    X, y = make_classification(n_samples=4000, n_features=8, random_state=8)
    clean = _open_grid_model(X, y)
    grid = DialOutGrid()
    try:
        scheduler = grid.cluster.scheduler
        opening = scheduler.handlers[CHANNEL_OP]
        gate: dict = {}

        def hold_channels() -> None:  # the node's channel reaches the scheduler late (a slow volunteer link)
            gate["open"] = asyncio.Event()

            async def late(comm, **msg):
                await gate["open"].wait()
                return await opening(comm, **msg)

            scheduler.handlers[CHANNEL_OP] = late

        sync(grid.cluster.loop, _as_coroutine(hold_channels))
        node = grid.add_node("vol-a").address
        channels = grid.plugin.dial_out.channels
        with ThreadPoolExecutor(1) as pool:
            placing = pool.submit(grid.g.scatter, X, y)
            # the placement waits for the node's channel instead of finding no node to place on
            wait_for(lambda: node in channels.opened or placing.done(), timeout=30, what="the placement to wait")
            assert not placing.done(), placing.exception()
            grid.cluster.loop.add_callback(lambda: gate["open"].set())
            data = placing.result(timeout=60)
        fitted = grid.g.submit(job(), data).result(timeout=60).estimator_.coef_
        np.testing.assert_allclose(fitted, clean, rtol=0, atol=1e-9)
    finally:
        grid.close()
