"""Incremental training on the grid: ``PartialFit.partial_fit``, and the SGD facade's
``average`` / ``shuffle`` / ``max_iter`` / ``verbose`` on a small in-process grid."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier as SkSGDClassifier

from grid import Grid
from jobs import PartialFit, SGDClassifier, SGDRegressor, sgd
from jobs.local import derive_seed


@pytest.fixture(scope="module")
def g():
    with Grid.local(regions={"eu": 1}, processes=False, dashboard=False) as grid:
        yield grid


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=n, n_features=5, n_informative=3, random_state=seed)
    return X, y


def test_sequential_partial_fit_calls_equal_serial_sklearn_partial_fit(g):
    # 200 rows are one partition, and sequential mode runs sklearn's own partial_fit
    # from the state the previous call left: the two calls are exactly the serial chain
    X1, y1 = _data(200, 1)
    X2, y2 = _data(200, 2)
    est = PartialFit(SkSGDClassifier(random_state=0), mode="sequential")
    est.partial_fit(X1, y1, classes=[0, 1], grid=g)
    est.partial_fit(X2, y2, grid=g)

    serial = SkSGDClassifier(random_state=0)
    serial.partial_fit(X1, y1, classes=[0, 1])
    serial.partial_fit(X2, y2)
    np.testing.assert_array_equal(est.estimator_.coef_, serial.coef_)
    np.testing.assert_array_equal(est.estimator_.intercept_, serial.intercept_)
    np.testing.assert_array_equal(est.classes_, serial.classes_)
    assert est.estimator_.t_ == serial.t_
    assert [h["round"] for h in est.history_] == [1, 2] and est.n_rounds_ == 2
    np.testing.assert_array_equal(est.predict(X2), serial.predict(X2))


def test_partial_fit_refuses_a_call_missing_a_class(g):
    X, y = _data(100)
    est = PartialFit(SkSGDClassifier(random_state=0))
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        est.partial_fit(X, y, classes=[0, 1, 2], grid=g)


def _serial_rounds(params: dict, X: np.ndarray, y: np.ndarray, rounds: int) -> list[dict]:
    """The global states of a one-partition SGD job, computed with the numpy kernel."""
    cfg = sgd.config_from_params(params, classification=True)
    classes = np.unique(y)
    targets = sgd.encode_targets(cfg, y, classes, X.dtype)
    state = sgd.init_state(X.shape[1], targets.n_outputs)
    states = []
    for r in range(rounds):
        rng = np.random.default_rng(derive_seed(cfg.seed, r, 0))
        state, _ = sgd.run_epochs(cfg, state, X, targets, None, rng, 1)
        state["t0"] = state["t"]
        states.append(state)
    return states


@pytest.mark.parametrize("average", [True, 450])
def test_average_gives_the_mean_of_the_round_models(g, average):
    # one partition, so the merge is the identity and the reference is the serial
    # kernel: the averaged model is the (equal-weight) mean of the round models with t >= average
    X, y = _data(150)
    est = SGDClassifier(learning_rate="constant", eta0=0.05, max_iter=4, tol=None, random_state=3, average=average)
    est.fit(X, y, grid=g)
    states = _serial_rounds(est.get_params(), X, y, 4)
    used = [s for s in states if s["t"] >= int(average)]
    assert len(used) == (4 if average is True else 2)  # t = 150, 300, 450, 600
    np.testing.assert_allclose(est.coef_, np.mean([s["coef"] for s in used], axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(est.intercept_, np.mean([s["intercept"] for s in used], axis=0), rtol=1e-12, atol=1e-12)
    # training continued from the plain iterate, which the state keeps
    np.testing.assert_allclose(est._sgd_state_["coef"], states[-1]["coef"], rtol=1e-12, atol=1e-12)
    assert not np.allclose(est.coef_, states[-1]["coef"])


def test_shuffle_is_seeded_by_random_state_not_by_node_count():
    X, y = _data(600)

    def fit(nodes: int, random_state: int, shuffle: bool = True) -> np.ndarray:
        with Grid.local(regions={"eu": nodes}, processes=False, dashboard=False) as grid:
            est = SGDRegressor(max_iter=2, tol=None, random_state=random_state, shuffle=shuffle, partition_rows=200)
            est.fit(X, y.astype(float), grid=grid)
        return np.r_[est.coef_, est.intercept_]

    one, two = fit(1, 0), fit(2, 0)
    np.testing.assert_array_equal(one, two)
    assert not np.allclose(one, fit(1, 1))
    assert not np.allclose(one, fit(1, 0, shuffle=False))


def test_max_iter_runs_that_many_rounds(g):
    X, y = _data(100)
    est = SGDClassifier(max_iter=3, tol=None).fit(X, y, grid=g)
    assert len(est.history_) == 3 and est.n_iter_ == 3


def test_fit_verbose_shows_the_round_count(g):
    X, y = _data(100)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        SGDClassifier(max_iter=2, tol=None).fit(X, y, grid=g, verbose=True)
    assert "2/2" in err.getvalue()
