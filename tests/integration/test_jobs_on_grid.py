"""Jobs on an in-process two-region grid: results, equality with serial, cancel, data."""

from __future__ import annotations

import contextlib
import pickle

import numpy as np
import pytest
from sklearn.linear_model import PassiveAggressiveClassifier, Perceptron, SGDClassifier, SGDRegressor

from grid import Grid
from jobs import PartialFit
from jobs.data import partition
from tests.conftest import wait_for
from tests.integration.reference import assert_same_model, fedavg


def grid_keys(g: Grid, needle: str) -> list[str]:
    """Keys of any region's scheduler whose name contains ``needle``."""
    out = []
    for cluster in g._local.clusters.values():
        out.extend(str(k) for k in cluster.scheduler.tasks if needle in str(k))
    return out


def serial_reference(est, X, y, rounds, partition_rows="auto", classes=None):
    parts = partition(X, y, partition_rows=partition_rows)
    for _ in range(rounds):
        for xp, yp, _ in parts.parts:
            if classes is None:
                est.partial_fit(xp, yp)
            else:
                est.partial_fit(xp, yp, classes=classes)
    return est


def test_average_job_trains_and_result_is_plain_sklearn(any_grid, classification_data):
    X, y = classification_data
    job = any_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=5), X, y)
    fitted = job.result(timeout=60)
    assert job.status == "done"
    assert isinstance(fitted.estimator_, SGDClassifier)
    assert_same_model(fitted, fedavg(SGDClassifier(random_state=0), X, y, rounds=5))
    history = job.history
    assert [h["round"] for h in history] == [1, 2, 3, 4, 5]
    assert all(h["samples"] == len(X) for h in history)
    assert all(h["regions"] == 2 and h["bytes_cross_region"] > 0 for h in history)
    # the fitted object works without the grid, after pickling
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
    # data of the job was released with it
    assert grid_keys(any_grid, "grid-part-job-") == []


@pytest.mark.parametrize("cls", [SGDClassifier, Perceptron, PassiveAggressiveClassifier])
def test_sequential_equals_serial_partial_fit(any_grid, classification_data, cls):
    X, y = classification_data
    est = cls(random_state=0)
    fitted = any_grid.submit(PartialFit(est, rounds=3, mode="sequential", partition_rows=700), X, y).result(timeout=60)
    ref = serial_reference(cls(random_state=0), X, y, 3, partition_rows=700, classes=np.unique(y))
    np.testing.assert_allclose(fitted.estimator_.coef_, ref.coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitted.estimator_.intercept_, ref.intercept_, rtol=0, atol=1e-12)


def test_regressor_average(any_grid):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    y = X @ np.arange(1.0, 6.0) + 0.1 * rng.normal(size=3000)
    fitted = any_grid.submit(PartialFit(SGDRegressor(random_state=0), rounds=5), X, y).result(timeout=60)
    assert_same_model(fitted, fedavg(SGDRegressor(random_state=0), X, y, rounds=5))


def test_fit_api_with_grid_argument_and_context(any_grid, classification_data):
    X, y = classification_data
    est = PartialFit(SGDClassifier(random_state=0), rounds=2)
    assert est.fit(X, y, grid=any_grid) is est
    assert_same_model(est, fedavg(SGDClassifier(random_state=0), X, y, rounds=2))
    from grid.client import current_grid

    with any_grid.as_current():  # `with any_grid:` without closing the shared fixture at the end
        assert current_grid() is any_grid
        est2 = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(X, y)
    assert current_grid() is None
    np.testing.assert_array_equal(est2.estimator_.coef_, est.estimator_.coef_)


def test_reattach_by_id(any_grid, classification_data):
    X, y = classification_data
    job = any_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), X, y)
    again = any_grid.job(job.id)
    fitted = again.result(timeout=60)
    np.testing.assert_array_equal(fitted.estimator_.coef_, job.result().estimator_.coef_)
    assert any(j["id"] == job.id for j in any_grid.jobs())
    with pytest.raises(KeyError, match="no job"):
        any_grid.job("eu-000000000000")


def test_scattered_data_is_reused_and_dropped(any_grid, classification_data):
    X, y = classification_data
    data = any_grid.scatter(X, y)
    assert data.n_samples == len(X) and set(data.regions) == {"eu", "us"}
    keys = grid_keys(any_grid, data.name)
    assert len(keys) == data.n_partitions
    a = any_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), data).result(timeout=60)
    b = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(data, grid=any_grid)
    np.testing.assert_array_equal(a.estimator_.coef_, b.estimator_.coef_)
    # the same data submitted directly gives the same model: placement does not matter
    c = any_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), X, y).result(timeout=60)
    np.testing.assert_array_equal(a.estimator_.coef_, c.estimator_.coef_)
    assert grid_keys(any_grid, data.name) == keys  # still placed after the jobs
    any_grid.drop(data)
    wait_for(lambda: grid_keys(any_grid, data.name) == [], timeout=10, what="dataset keys released")
    with pytest.raises(ValueError, match="dropped"):
        any_grid.submit(PartialFit(SGDClassifier()), data)


def test_cancel_stops_within_a_round_and_frees_everything(any_grid, classification_data):
    X, y = classification_data
    job = any_grid.submit(PartialFit(SGDClassifier(random_state=0), rounds=10_000), X, y)
    wait_for(lambda: job.info()["rounds_done"] >= 2, timeout=60, what="two rounds")
    assert job.cancel() == "cancelled"
    done_at_cancel = job.info()["rounds_done"]
    assert job.status == "cancelled"
    wait_for(lambda: grid_keys(any_grid, job.id) == [] and grid_keys(any_grid, "grid-part-job-") == [], timeout=10, what="keys released")
    assert job.info()["rounds_done"] <= done_at_cancel + 1
    from grid.errors import JobCancelled

    with pytest.raises(JobCancelled):
        job.result(timeout=5)
    # the grid keeps serving
    served = any_grid.submit(PartialFit(SGDClassifier(), rounds=1), X, y).result(timeout=60)
    assert_same_model(served, fedavg(SGDClassifier(), X, y, rounds=1))


def admin_client(g: Grid, region: str):
    """A plain dask Client with full rights: the grid's own on plaintext, an admin certificate on TLS."""
    from distributed import Client

    if g.spec.tls is None:
        return contextlib.nullcontext(g.client(region))
    security = g._local.throwaway.admin.security()
    return Client(g.spec.regions[region].address, security=security, set_as_default=False)


def test_plain_dask_on_a_region(any_grid):
    import dask.array as da

    x = da.ones((1000, 100), chunks=(100, 100))
    with admin_client(any_grid, "eu") as client:
        assert client.compute(x.sum()).result() == 100_000


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_joblib_gridsearch_on_the_grid(classification_data, tls):
    X, y = classification_data
    # two nodes: with one thread in all, joblib would run the search in this process
    g = Grid.local(regions={"eu": 2}, processes=False, dashboard=False, tls=tls)
    try:
        _joblib_search(g, X, y)
    finally:
        g.close()


def _joblib_search(any_grid, X, y):
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(SGDClassifier(random_state=0), {"alpha": [1e-4, 1e-3, 1e-2]}, cv=3, n_jobs=-1)
    with admin_client(any_grid, "eu") as client:
        from grid.parallel import parallel_config

        with parallel_config(client):
            search.fit(X, y)
        # the folds are deterministic: the same search in this process scores every candidate alike
        serial = GridSearchCV(SGDClassifier(random_state=0), {"alpha": [1e-4, 1e-3, 1e-2]}, cv=3).fit(X, y)
        np.testing.assert_allclose(search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], rtol=0, atol=1e-12)
        assert search.best_params_ == serial.best_params_
        ran = client.run_on_scheduler(lambda dask_scheduler: sum(tp.state_counts["memory"] + tp.state_counts["forgotten"] + tp.state_counts["released"] for tp in dask_scheduler.task_prefixes.values() if "fit_and_score" in tp.name))
    assert ran > 0  # the folds ran as tasks on the region's nodes
