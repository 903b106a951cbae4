"""Dashboard components against an in-process grid: update() puts the expected rows and points in source."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

import jobs
from grid import Grid
from grid.dashboard.components import JobProgress, JobsTable, NodesTable, RegionsTable, make_components
from grid.dashboard.views import GONE, UNKNOWN, UNREACHABLE, GridClientView, GridRPCView, Selection
from tests.conftest import wait_for

ROUNDS = 6


@pytest.fixture(scope="module")
def dash_grid():
    """Regions eu and us, one threaded node each, with their Dask dashboards, and one finished job."""
    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=True)
    try:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(1200, 4))
        y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
        job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=ROUNDS), X, y)
        assert job.wait(60) == "done"
        yield g, job
    finally:
        g.close()


@pytest.fixture
def view(dash_grid):
    g, _ = dash_grid
    v = GridClientView(g)
    v.refresh()
    return v


def test_regions_table_rows(dash_grid, view):
    g, _ = dash_grid
    status = g.status()
    table = RegionsTable(view)
    table.update()
    d = table.source.data
    assert d["region"] == ["eu", "us"]
    assert d["status"] == ["ok", "ok"]
    assert d["active"] == [1, 1]
    assert d["paused"] == [0, 0] and d["quarantined"] == [0, 0] and d["gone"] == [0, 0]
    assert d["threads"] == [status["eu"]["nthreads"], status["us"]["nthreads"]]
    assert d["dashboard"] == [status["eu"]["dashboard"], status["us"]["dashboard"]]
    assert all(link.startswith("http://") for link in d["dashboard"])
    assert d["jobs_total"] == [1, 0]  # the job's home is eu
    assert all(m > 0 for m in d["memory"]) and all("/" in t for t in d["memory_text"])
    assert d["tasks_per_s"] == [0.0, 0.0]  # grid_info reports no tasks_done yet
    assert table.source.selected.indices == [0]  # the first region is selected by default


def test_regions_click_selects_nodes_of_that_region(dash_grid, view):
    g, _ = dash_grid
    selection = Selection()
    regions, nodes = RegionsTable(view, selection), NodesTable(view, selection)
    regions.update()
    nodes.update()
    eu_worker = g.status()["eu"]["workers"][0]
    assert nodes.source.data["address"] == [eu_worker["address"]]
    regions.source.selected.indices = [1]  # what a click on the "us" row sends
    assert selection.region == "us"
    nodes.update()
    us_worker = g.status()["us"]["workers"][0]
    assert nodes.source.data["address"] == [us_worker["address"]]
    assert "us" in nodes.title.text


def test_nodes_table_rows(dash_grid, view):
    g, _ = dash_grid
    worker = g.status()["eu"]["workers"][0]
    table = NodesTable(view, Selection(region="eu"))
    table.update()
    d = table.source.data
    assert d["name"] == [worker["name"]]
    assert d["state"] == ["active"]
    assert d["threads"] == [worker["nthreads"]]
    assert d["memory_limit"] == [worker["memory_limit"]]
    assert 0 <= d["cpu"][0] <= 100 * worker["nthreads"] + 100
    # tasks the node finished (the module's jobs ran on it), no refused updates, no verification yet
    assert d["tasks_done"] == [worker["tasks_done"]] and worker["tasks_done"] > 0
    assert d["rejected"] == [0] and d["verified"] == [0]


def test_jobs_table_rows(dash_grid, view):
    _, job = dash_grid
    history = job.history
    table = JobsTable(view)
    table.update()
    d = table.source.data
    assert d["id"] == [job.id]
    assert d["status"] == ["done"]
    assert d["round"] == [f"{ROUNDS}/{ROUNDS}"]
    assert d["estimator"] == ["SGDClassifier"]
    assert d["home"] == ["eu"]
    assert d["regions"] == ["eu, us"]
    assert d["owner"] == [job.grid.owner]
    assert d["loss"] == [pytest.approx(history[-1]["loss"])]
    assert d["score"] == [pytest.approx(history[-1]["score"])]
    assert d["elapsed"][0] > 0 and d["elapsed_text"][0].endswith("s")
    assert d["note"] == [""], "a finished job waits for nothing"
    assert table.source.selected.indices == []  # followed automatically: not highlighted
    table.source.selected.indices = [0]  # what a click on the row sends
    assert table.selection.job == job.id
    table.update()
    assert table.source.selected.indices == [0]  # a picked job stays highlighted


def test_jobs_table_says_what_a_job_waits_for() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 4))
    y = (X[:, 0] > 0).astype(int)
    with Grid.local(regions={"eu": 1}, processes=False, dashboard=False) as g:
        job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=1), X, y, verify=2)
        wait_for(lambda: job.info().get("waiting"), timeout=60, what="the job to wait for a second node")
        view = GridClientView(g)
        view.refresh()
        table = JobsTable(view)
        table.update()
        note = table.source.data["note"]
        job.cancel()
        after = job.info()
    assert len(note) == 1 and note[0].startswith("waiting for nodes: verify=2 needs 2 independent nodes"), note
    assert after["status"] == "cancelled" and "waiting" not in after, "a cancelled job waits no more"


def test_job_progress_points(dash_grid, view):
    _, job = dash_grid
    view.refresh_job(job.id)
    history = job.history
    progress = JobProgress(view)
    progress.update()
    d = progress.source.data
    assert progress.job_id == job.id  # followed by default: the newest job
    assert d["round"] == list(range(1, ROUNDS + 1))
    assert d["loss"] == pytest.approx([h["loss"] for h in history])
    assert d["score"] == pytest.approx([h["score"] for h in history])
    assert d["samples_per_s"] == pytest.approx([h["samples"] / h["seconds"] for h in history])
    assert d["bytes_cross_region"] == [h["bytes_cross_region"] for h in history]
    assert d["bytes_cross_region"][-1] > 0  # two regions: aggregates cross every round
    assert job.id in progress.summary.text and f"round {ROUNDS}/{ROUNDS}" in progress.summary.text


def test_all_components_on_one_page(dash_grid, view):
    _, job = dash_grid
    view.refresh_job(job.id)
    components = make_components(view)
    for c in components.values():
        c.update()
        assert c.root is not None and c.source is not None
    header = components["header"].source.data
    assert header["regions"] == [2] and header["nodes"] == [2] and header["jobs_running"] == [0]
    jobs_table = components["jobs"]
    jobs_table.source.selected.indices = [0]  # a click on the job pins it
    assert components["job"].selection.job == job.id


def test_rpc_view_matches_and_shows_an_unreachable_region(dash_grid):
    g, job = dash_grid
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    addresses = {r: g.spec.regions[r].address for r in g.regions} | {"ap": dead}

    async def main() -> GridRPCView:
        view = GridRPCView(addresses, timeout=1)
        try:
            await view.refresh()
            await view.refresh_job(job.id)
        finally:
            await view.close()
        return view

    view = asyncio.run(main())
    assert set(view.info) == {"eu", "us"}
    assert "ap" in view.errors
    components = make_components(view)
    for c in components.values():
        c.update()
    assert components["regions"].source.data["status"] == ["ok", "ok", UNREACHABLE]
    assert components["jobs"].source.data["id"] == [job.id]
    assert len(components["job"].source.data["round"]) == ROUNDS
    assert "Unreachable: ap" in components["header"].root.text


def test_a_region_that_stops_answering_keeps_its_nodes_as_unknown(dash_grid):
    g, _ = dash_grid
    view = GridClientView(g)
    view.refresh()
    reply = view.info["eu"]
    view._set_error("eu", "region eu: OSError: timed out")  # what a failed refresh records
    components = make_components(view, Selection(region="eu"))
    for c in components.values():
        c.update()
    regions = components["regions"].source.data
    assert regions["status"] == [UNREACHABLE, "ok"] and regions["active"] == [0, 1]
    assert regions["memory_text"][0] == "-"
    nodes = components["nodes"].source.data
    assert nodes["address"] == [w["address"] for w in reply["workers"]] and set(nodes["state"]) == {UNKNOWN}
    assert "unreachable" in components["nodes"].title.text
    assert components["header"].source.data["nodes"] == [1]
    view.refresh()  # it answers again
    components["regions"].update()
    assert components["regions"].source.data["status"] == ["ok", "ok"]


def test_a_node_that_leaves_shows_as_gone():
    g = Grid.local(regions={"eu": 2}, processes=False, dashboard=False)
    try:
        view = GridClientView(g)
        wait_for(lambda: (view.refresh(), len(view.info["eu"]["workers"]) == 2)[1], timeout=30, what="2 nodes")
        nodes = NodesTable(view)
        regions = RegionsTable(view)
        leaving = view.info["eu"]["workers"][0]["address"]
        g.client("eu").retire_workers([leaving], close_workers=True)
        wait_for(lambda: (view.refresh(), len(view.info["eu"]["workers"]) == 1)[1], timeout=30, what="the node to leave")
        nodes.update()
        regions.update()
        d = dict(zip(nodes.source.data["address"], nodes.source.data["state"]))
        assert d[leaving] == GONE
        assert sorted(d.values()) == ["active", GONE]
        assert regions.source.data["active"] == [1] and regions.source.data["gone"] == [1]
    finally:
        g.close()


def test_scheduler_grid_page():
    """The grid page plugin serves /grid on a scheduler's own dashboard, linked from Dask's pages."""
    from distributed import Scheduler

    from grid.dashboard.app import register_scheduler_page, unregister_scheduler_page
    from grid.dashboard.page import scheduler_plugins

    async def main() -> tuple[str, str, dict]:
        async with Scheduler(dashboard_address="127.0.0.1:0", plugins=scheduler_plugins("eu")) as s:
            # the page plugin registered the page in its start(); a second registration is refused
            assert register_scheduler_page(s) is None
            base = f"http://127.0.0.1:{s.http_server.port}"
            loop = asyncio.get_running_loop()
            page = await loop.run_in_executor(None, lambda: urllib.request.urlopen(base + "/grid", timeout=10).read().decode())
            status = await loop.run_in_executor(None, lambda: urllib.request.urlopen(base + "/status", timeout=10).read().decode())
            view = GridRPCView({"eu": s.address}, local={"eu": s.handlers})
            await view.refresh()
            await view.close()
            unregister_scheduler_page(s)
            return page, status, view.info

    page, status, info = asyncio.run(main())
    assert "Bokeh.embed.embed_items" in page  # a Bokeh session page (filled over its websocket)
    assert 'href="grid"' in page  # inside Dask's own template, with its navigation bar
    assert 'href="grid"' in status  # the navigation bar of Dask's own pages links to it
    assert info["eu"]["region"] == "eu"
