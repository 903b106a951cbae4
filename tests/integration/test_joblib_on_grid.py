"""``Grid.joblib()``: scikit-learn's ``n_jobs`` on a region's nodes (grid/parallel.py)."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client, get_task_stream
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from grid import Grid
from grid.errors import UnknownRegion
from grid.parallel import BACKEND_NAME, GridDaskBackend, placed_keys
from tests.conftest import wait_for


def _search(n_jobs):
    return GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3, n_jobs=n_jobs)


def _scheduler_keys(client: Client) -> set:
    return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)))


@pytest.fixture(scope="module")
def grid_2nodes():
    g = Grid.local(regions={"eu": 2}, processes=False, dashboard=False)
    try:
        yield g
    finally:
        g.close()


def test_gridsearch_on_two_nodes_matches_serial(grid_2nodes, classification_data):
    X, y = classification_data
    serial = _search(1).fit(X, y)
    with get_task_stream(client=grid_2nodes.client("eu")) as ts, grid_2nodes.joblib(scatter=[X, y]):
        on_grid = _search(-1).fit(X, y)
    assert on_grid.best_params_ == serial.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score", "split2_test_score"):
        np.testing.assert_allclose(on_grid.cv_results_[key], serial.cv_results_[key], rtol=1e-10)
    fits = [t for t in ts.data if "fit_and_score" in t["key"]]
    assert fits, "the folds ran as tasks on the region's nodes"
    assert len({t["worker"] for t in fits}) == 2, "the folds ran on both nodes"


def test_n_jobs_minus_one_is_every_thread_of_the_region(grid_2nodes):
    backend = GridDaskBackend(client=grid_2nodes.client("eu"))
    threads = sum(grid_2nodes.client("eu").ncores().values())
    assert backend.effective_n_jobs(-1) == backend.effective_n_jobs(None) == max(threads, 2)
    assert backend.effective_n_jobs(-2) == max(threads - 1, 1)
    assert backend.effective_n_jobs(3) == 3


def test_one_thread_region_still_runs_on_its_node(classification_data):
    # joblib's own dask backend reports n_jobs=1 here and joblib then runs every fold in this process
    X, y = classification_data
    g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False)
    try:
        with get_task_stream(client=g.client()) as ts, g.joblib():
            _search(-1).fit(X, y)
        assert any("fit_and_score" in t["key"] for t in ts.data)
    finally:
        g.close()


def test_scattered_data_is_kept_once_and_reused(grid_2nodes, classification_data):
    X, y = classification_data
    client = grid_2nodes.client("eu")
    with grid_2nodes.joblib(scatter=[X, y]):
        first = _search(-1).fit(X, y)
    keys = set(placed_keys(client))
    assert len(keys) >= 2 and keys <= _scheduler_keys(client)
    # every node holds it (broadcast), so no task waits for a transfer of X
    assert all(keys <= set(held) for held in client.has_what().values())
    # the same data (a copy: matched by content) reuses the futures (a new scatter would make new keys)
    X2, y2 = X.copy(), y.copy()
    with grid_2nodes.joblib(scatter=[X2, y2]):
        second = _search(-1).fit(X2, y2)
    assert set(placed_keys(client)) == keys
    assert second.best_params_ == first.best_params_
    # changed data is sent again
    X3 = X.copy()
    X3[0, 0] += 1.0
    with grid_2nodes.joblib(scatter=[X3, y]):
        pass
    assert keys < set(placed_keys(client))


def test_cache_false_releases_the_data_when_the_block_exits(grid_2nodes, classification_data):
    X, _ = classification_data
    client = grid_2nodes.client("eu")
    Xs = X[:1000] * 2.0  # data of its own, not in the cache
    cached, before = set(placed_keys(client)), _scheduler_keys(client)
    with grid_2nodes.joblib(scatter=[Xs], cache=False):
        added = _scheduler_keys(client) - before
    assert added, "the block's data was placed on the nodes"
    assert set(placed_keys(client)) == cached
    wait_for(lambda: not (added & _scheduler_keys(client)), timeout=10, what="block data released")


def test_grid_close_releases_the_cached_data(classification_data):
    from grid.local import LocalGrid

    X, y = classification_data
    local = LocalGrid({"eu": 2}, processes=False, dashboard=False)
    try:
        g = Grid.connect(local.spec)
        with g.joblib(scatter=[X, y]):
            _search(-1).fit(X, y)
        keys = set(placed_keys(g.client("eu")))
        assert keys
        g.close()
        with Client(local.clusters["eu"].scheduler_address, set_as_default=False) as observer:
            wait_for(lambda: not (keys & _scheduler_keys(observer)), timeout=10, what="cached data released")
            assert not any(keys & set(k) for k in observer.has_what().values())
    finally:
        local.close()


def test_bad_input_raises_clear_errors(grid_2nodes, classification_data):
    X, y = classification_data
    with pytest.raises(UnknownRegion, match="'mars'.*regions \\['eu'\\]"):
        with grid_2nodes.joblib("mars"):
            pass
    with pytest.raises(TypeError, match="region must be a region name"):
        with grid_2nodes.joblib(["eu"]):
            pass
    with pytest.raises(TypeError, match="scatter must be a list or tuple"):
        with grid_2nodes.joblib(scatter=X):
            pass


def test_client_certificate_is_refused_up_front(classification_data):
    # plain Dask on a TLS grid needs an admin certificate: say so before sending any data
    X, y = classification_data
    g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False, tls=True)
    try:
        with pytest.raises(PermissionError, match="admin certificate"):
            with g.joblib(scatter=[X, y]):
                pass
        assert not placed_keys(g.client("eu"))
    finally:
        g.close()


def test_backend_is_registered_with_joblib(grid_2nodes):
    import joblib

    with joblib.parallel_config(backend=BACKEND_NAME, client=grid_2nodes.client("eu")):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(10))
    assert out == [i * i for i in range(10)]
