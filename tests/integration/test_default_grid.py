"""Which grid ``est.fit`` uses: ``with g:`` reaches other threads and joblib's worker
processes; without any grid, one embedded grid per process, announced once."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from sklearn.model_selection import GridSearchCV, cross_validate

import jobs
from grid import Grid
from grid.client import _owned, current_grid, default_grid


@pytest.fixture(scope="module")
def grid_eu():
    g = Grid.local(regions={"eu": 1}, processes=False, dashboard=False)
    try:
        yield g
    finally:
        g.close()


def _sgd(**params):
    return jobs.SGDClassifier(max_iter=2, random_state=0, **params)


def _job_count(g: Grid) -> int:
    return len(g.jobs())


def test_with_grid_reaches_other_threads(grid_eu, classification_data):
    X, y = classification_data
    before = _job_count(grid_eu)
    with grid_eu.as_current():
        with ThreadPoolExecutor(2) as pool:
            fitted = list(pool.map(lambda a: _sgd(alpha=a).fit(X, y), [1e-4, 1e-3]))
    assert _job_count(grid_eu) == before + 2, "both fits ran as jobs of the grid of the block"
    assert "embedded" not in _owned, "no embedded grid was started"
    assert [f.alpha for f in fitted] == [1e-4, 1e-3]
    assert current_grid() is None, "leaving the block leaves no grid current"


def test_with_grid_reaches_joblib_worker_processes(grid_eu, classification_data):
    # loky workers are other processes: the estimator pickled to them carries how to reach the grid
    X, y = classification_data
    before = _job_count(grid_eu)
    with grid_eu.as_current():
        search = GridSearchCV(_sgd(), {"alpha": [1e-4, 1e-3]}, cv=2, n_jobs=2).fit(X, y)
        scores = cross_validate(_sgd(), X, y, cv=2, n_jobs=2)
    # 2 candidates x 2 folds + the refit, then 2 folds
    assert _job_count(grid_eu) == before + 5 + 2
    owners = {j["owner"] for j in grid_eu.jobs()}
    assert owners == {grid_eu.owner}, "the workers' jobs carry the block's owner"
    assert search.best_estimator_.coef_.shape == (1, X.shape[1])
    assert scores["test_score"].shape == (2,)


def test_estimator_pickled_in_the_block_carries_the_grid(grid_eu, classification_data):
    est = _sgd()
    with grid_eu.as_current():
        state = pickle.loads(pickle.dumps(est)).__dict__
    recipe = state["_grid_recipe"]
    assert recipe == {"spec": grid_eu.spec.to_dict(), "owner": grid_eu.owner, "pid": os.getpid()}
    assert "_grid_recipe" not in est.__dict__, "pickling does not change the estimator"
    assert "_grid_recipe" not in pickle.loads(pickle.dumps(est)).__dict__, "outside the block: no recipe"
    # as a child of the writer sees it: the recipe connects to the same grid, once per process
    as_child = dict(recipe, pid=os.getppid())
    inherited = default_grid(None, recipe=as_child)
    try:
        assert inherited is not grid_eu and default_grid(None, recipe=as_child) is inherited
        before = _job_count(grid_eu)
        X, y = classification_data
        _sgd().fit(X, y, grid=inherited)
        assert _job_count(grid_eu) == before + 1
    finally:
        _owned.clear()
        inherited.close()


EMBEDDED_SCRIPT = textwrap.dedent(
    """
    import pickle, sys, warnings
    from sklearn.datasets import make_classification
    import jobs
    from grid.client import _owned


    def main():
        X, y = make_classification(n_samples=600, n_features=5, random_state=0)
        stale = pickle.loads(sys.stdin.buffer.read())  # pickled in a `with grid:` block of another process
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jobs.SGDClassifier(max_iter=2, random_state=0).fit(X, y)
            first = _owned["embedded"]
            stale.fit(X, y)
            jobs.SGDClassifier(max_iter=2, random_state=1).fit(X, y)
        assert _owned["embedded"] is first
        print("grids", len(_owned), "jobs", len(first.jobs()))
        print("warnings", sum("embedded local grid" in str(w.message) for w in caught))


    if __name__ == "__main__":  # the embedded grid's nodes are processes: spawn imports __main__
        main()
    """
)


@pytest.mark.slow
def test_without_a_grid_one_embedded_grid_per_process_announced_once(grid_eu, tmp_path):
    with grid_eu.as_current():
        stale = pickle.dumps(_sgd())  # names grid_eu, but the script's process is not a child of this one
    script = tmp_path / "fit_without_grid.py"
    script.write_text(EMBEDDED_SCRIPT)
    # run through a shell so the script's parent is not this process
    done = subprocess.run(
        ["/bin/sh", "-c", f'"{sys.executable}" "{script}"; exit $?'],
        input=stale, capture_output=True, timeout=240,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "grids 1 jobs 3" in out, out
    assert "warnings 1" in out, out
