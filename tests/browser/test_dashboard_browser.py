"""The grid dashboard in headless Chromium while a job runs on a local 2-region grid."""

from __future__ import annotations

import sys

import numpy as np
import dask.config
import pytest
from sklearn.linear_model import SGDClassifier

import jobs
from grid import Grid
from tests.browser.conftest import ARTIFACTS, Proc, dashboard_command, source_data
from tests.conftest import wait_for

pytestmark = pytest.mark.browser

DOOMED = "doomed-node"


def _data(rows: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 8))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.5 * rng.normal(size=rows) > 0).astype(int)
    return X, y


def _node_names(g: Grid, region: str) -> set[str]:
    return {w["name"] for w in g.status()[region]["workers"]}


def test_dashboard_shows_jobs_rounds_and_a_killed_node(page, tmp_path):
    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=True)
    node = dash = job = None
    try:
        grid_file = str(tmp_path / "grid.yaml")
        g.spec.write(grid_file)
        job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=100_000), *_data())
        # a node of its own process (nanny + worker), to be killed later
        node = Proc(
            [sys.executable, "-m", "grid.cli", "node", "--region", "eu", "--scheduler", g.spec.regions["eu"].address, "--name", DOOMED],
            tmp_path / "node.log",
        )
        dash = Proc(dashboard_command(grid_file), tmp_path / "dashboard.log")
        url = dash.wait_for_line(r"(http://\S+)", timeout=60).group(1)
        wait_for(lambda: DOOMED in _node_names(g, "eu"), timeout=90, what=f"{DOOMED} to join eu")

        page.goto(url)
        # the jobs table shows the job id (in the page's model and on screen)
        page.wait_for_function(
            "(id) => { const d = window.Bokeh && Bokeh.documents[0]; const m = d && d.get_model_by_name('grid-jobs');"
            " return m && Array.from(m.data instanceof Map ? m.data.get('id') : m.data.id).includes(id); }",
            arg=job.id,
            timeout=30_000,
        )
        page.locator(".slick-cell", has_text=job.id).first.wait_for(state="visible", timeout=15_000)
        # the loss plot has at least 2 points of the running job
        page.wait_for_function(
            "() => { const m = Bokeh.documents[0].get_model_by_name('grid-job-rounds');"
            " const d = m.data instanceof Map ? m.data.get('loss') : m.data.loss; return d.length >= 2; }",
            timeout=60_000,
        )
        rounds = source_data(page, "grid-job-rounds")
        assert all(np.isfinite(rounds["loss"])) and rounds["round"][:2] == [1, 2]
        assert job.id in page.locator("text=Rounds of job").first.inner_text()
        # the doomed node is listed as active in region eu (the selected region) ...
        page.wait_for_function(
            "(name) => { const m = Bokeh.documents[0].get_model_by_name('grid-nodes');"
            " const g = (k) => Array.from(m.data instanceof Map ? m.data.get(k) : m.data[k]);"
            " const i = g('name').indexOf(name); return i >= 0 && g('state')[i] === 'active'; }",
            arg=DOOMED,
            timeout=30_000,
        )
        # ... and shows as gone once killed (SIGKILL: no goodbye to the scheduler)
        node.kill()
        page.wait_for_function(
            "(name) => { const m = Bokeh.documents[0].get_model_by_name('grid-nodes');"
            " const g = (k) => Array.from(m.data instanceof Map ? m.data.get(k) : m.data[k]);"
            " const i = g('name').indexOf(name); return i >= 0 && g('state')[i] === 'gone'; }",
            arg=DOOMED,
            timeout=60_000,
        )
        page.locator(".slick-cell", has_text="gone").first.wait_for(state="visible", timeout=15_000)
        regions = source_data(page, "grid-regions")
        assert regions["region"] == ["eu", "us"] and regions["gone"][0] == 1
        assert job.status == "running"  # the job goes on without the killed node
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        assert page.viewport_size == {"width": 1280, "height": 800}
        assert not page.errors, page.errors
    finally:
        try:
            if job is not None:
                job.cancel()
        finally:
            try:
                if dash is not None:
                    dash.stop()
            finally:
                try:
                    if node is not None:
                        node.kill()
                        node.stop()
                finally:
                    g.close()


def test_grid_page_on_a_scheduler_dashboard(page):
    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=True)
    spec_file = ARTIFACTS.parent / "test-artifacts-grid.yaml"
    g.spec.write(str(spec_file))
    # the plugin registered /grid at start; it reads the regions to show from this setting per page view
    settings = dask.config.set({"grid.dashboard.grid-spec": str(spec_file)})
    try:
        base = g.status()["eu"]["dashboard"].rsplit("/", 1)[0]
        job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=5), *_data(500))
        assert job.wait(60) == "done"
        page.goto(f"{base}/grid")
        page.wait_for_function(
            "() => { const d = window.Bokeh && Bokeh.documents[0]; const m = d && d.get_model_by_name('grid-regions');"
            " const s = m && Array.from(m.data instanceof Map ? m.data.get('status') : m.data.status);"
            " return s && s.length === 2 && s.every((x) => x === 'ok'); }",
            timeout=30_000,
        )
        page.wait_for_function(
            "(id) => Array.from(Bokeh.documents[0].get_model_by_name('grid-jobs').data.get ?"
            " Bokeh.documents[0].get_model_by_name('grid-jobs').data.get('id') :"
            " Bokeh.documents[0].get_model_by_name('grid-jobs').data.id).includes(id)",
            arg=job.id,
            timeout=30_000,
        )
        page.wait_for_function(
            "() => { const m = Bokeh.documents[0].get_model_by_name('grid-job-rounds');"
            " return (m.data instanceof Map ? m.data.get('loss') : m.data.loss).length === 5; }",
            timeout=30_000,
        )
        assert page.locator("a[href='grid']").count() >= 1  # Dask's navigation bar links the page
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "scheduler-grid-page.png"))
        assert not page.errors, page.errors
    finally:
        settings.__exit__(None, None, None)
        spec_file.unlink(missing_ok=True)
        g.close()
