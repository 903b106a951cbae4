"""Grid metrics on the schedulers' Prometheus endpoint (/metrics) of an in-process grid."""

from __future__ import annotations

import urllib.request

import dask.config
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import SGDClassifier

import jobs
from grid import Grid
from tests.conftest import wait_for

ROWS = 1000
ROUNDS = 5


def _register(dask_scheduler):  # runs in the scheduler (here: the test process)
    from grid.scheduler.metrics import register_metrics

    register_metrics(dask_scheduler.plugins["grid"])


def _unregister(dask_scheduler):
    from grid.scheduler.metrics import unregister_metrics

    unregister_metrics(dask_scheduler.plugins["grid"])


def metrics_text(g: Grid, region: str) -> str:
    """The /metrics page of a region's scheduler (its HTTP port is in grid_info's dashboard link)."""
    link = g.status()[region]["dashboard"]
    base = link.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        return r.read().decode()


def grid_samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted labels...): value}`` of every ``grid_*`` sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("grid_"):
                out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(ROWS, 4))
    return X, (X[:, 0] > 0).astype(int)


@pytest.fixture
def metrics_grid():
    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False)
    try:
        for r in g.regions:
            g.client(r).run_on_scheduler(_register)
        yield g
    finally:
        for r in g.regions:
            g.client(r).run_on_scheduler(_unregister)
        g.close()


def test_metrics_of_a_finished_job(metrics_grid):
    g = metrics_grid
    X, y = data()
    job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=ROUNDS), X, y)
    assert job.wait(60) == "done"
    text = metrics_text(g, "eu")
    m = grid_samples(text)
    eu, us = ("region", "eu"), ("region", "us")

    assert m[("grid_jobs", eu, ("status", "done"))] == 1
    for status in ("queued", "running", "failed", "cancelled"):
        assert m[("grid_jobs", eu, ("status", status))] == 0
    assert m[("grid_rounds_done_total", eu)] == ROUNDS
    assert m[("grid_samples_total", eu)] == ROWS * ROUNDS  # every row, once per round
    assert m[("grid_samples_per_second", eu)] == 0  # nothing runs
    assert not [k for k in m if k[0].startswith("grid_job_")]  # per-job series only while running
    assert m[("grid_nodes", eu, ("state", "active"))] == 1
    assert m[("grid_nodes", eu, ("state", "paused"))] == 0
    assert m[("grid_nodes", eu, ("state", "quarantined"))] == 0
    assert m[("grid_verification_rejects_total", eu)] == 0
    # the job's home is eu: region us ran rounds of it but owns no job
    assert m[("grid_jobs", us, ("status", "done"))] == 0
    assert m[("grid_rounds_done_total", us)] == 0
    assert m[("grid_nodes", us, ("state", "active"))] == 1
    # a valid exposition: each family once, although two schedulers share the process
    assert text.count("# TYPE grid_jobs gauge") == 1
    # distributed's own metrics are still there
    assert "dask_scheduler_workers" in text


def test_metrics_of_a_running_job(metrics_grid):
    g = metrics_grid
    X, y = data(1)
    job = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=100_000), X, y)
    try:
        wait_for(lambda: job.info()["rounds_done"] >= 2, timeout=60, what="2 rounds")
        m = grid_samples(metrics_text(g, "eu"))
        eu = ("region", "eu")
        assert m[("grid_jobs", eu, ("status", "running"))] == 1
        labels = (("estimator", "SGDClassifier"), ("job", job.id), eu)
        assert m[("grid_job_rounds_done", *labels)] >= 2
        assert m[("grid_job_rounds", *labels)] == 100_000
        assert m[("grid_job_samples_per_second", ("job", job.id), eu)] > 0
        assert m[("grid_samples_per_second", eu)] == m[("grid_job_samples_per_second", ("job", job.id), eu)]
        assert m[("grid_rounds_done_total", eu)] >= 2
    finally:
        job.cancel()


def test_counters_stay_monotonic_when_the_registry_forgets_jobs():
    with dask.config.set({"grid.scheduler.finished-jobs-kept": 0}):
        g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False)
    try:
        g.client("eu").run_on_scheduler(_register)
        first = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=3), *data())
        assert first.wait(60) == "done"
        m = grid_samples(metrics_text(g, "eu"))
        assert m[("grid_rounds_done_total", ("region", "eu"))] == 3
        second = g.submit(jobs.PartialFit(SGDClassifier(random_state=0), rounds=2), *data())
        assert second.wait(60) == "done"
        assert [j["id"] for j in g.jobs()] == [second.id]  # the registry forgot the first job
        m = grid_samples(metrics_text(g, "eu"))
        assert m[("grid_rounds_done_total", ("region", "eu"))] == 5
        assert m[("grid_samples_total", ("region", "eu"))] == ROWS * 5
        assert m[("grid_jobs", ("region", "eu"), ("status", "done"))] == 1
    finally:
        g.client("eu").run_on_scheduler(_unregister)
        g.close()


def test_unregister_removes_the_grid_metrics():
    g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False)
    try:
        g.client("eu").run_on_scheduler(_register)
        g.client("eu").run_on_scheduler(_register)  # twice is harmless
        assert ("grid_jobs", ("region", "eu"), ("status", "done")) in grid_samples(metrics_text(g, "eu"))
        g.client("eu").run_on_scheduler(_unregister)
        assert not grid_samples(metrics_text(g, "eu"))
    finally:
        g.close()
