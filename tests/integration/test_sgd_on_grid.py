"""The grid's SGD on in-process grids: parity with scikit-learn, composition, determinism, bad data.

* every loss and penalty of ``jobs.SGDClassifier`` / ``jobs.SGDRegressor``
  reaches the test accuracy (R^2) of scikit-learn's ``SGDClassifier`` /
  ``SGDRegressor`` on the same data, within one point;
* the job estimators work inside ``Pipeline``, ``clone`` and ``GridSearchCV``,
  with ``grid=g`` and inside ``with g:``;
* determinism: the same seed gives the same model bitwise on 1, 2 or 4 nodes of
  one region, and on 1+1, 2+2 nodes of two regions; between one and two
  regions the model differs by rounding only (the home scheduler combines
  regional means, so the summation order differs): within 1e-12 relative;
* partitions that disagree (number of features, NaN / inf, a dtype that cannot
  be aligned) are rejected with an error naming the partition, and the grid
  serves the next job.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn import linear_model as sk
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from grid import Grid
from grid.client import _current, current_grid
from jobs import PartialFit, SGDClassifier, SGDRegressor
from jobs.data import DataError
from tests.integration.reference import assert_same_model, fedavg, grid_sgd

PENALTIES = ["l2", "l1", "elasticnet", None]
#: scikit-learn's SGD is noisy from seed to seed: compare with its mean over these seeds
SK_SEEDS = (0, 1, 2)
ROUNDS = 5


@pytest.fixture(scope="module")
def g2():
    """One region with two threaded nodes."""
    g = Grid.local(regions={"eu": 2}, processes=False, dashboard=False)
    try:
        yield g
    finally:
        g.close()


@contextlib.contextmanager
def as_current(g: Grid) -> Iterator[Grid]:
    """``with g:`` without closing the shared grid at the end of the block."""
    token = _current.set([*_current.get(), g])
    try:
        yield g
    finally:
        _current.reset(token)


def n_jobs(g: Grid) -> int:
    return len(g.jobs())


def leftovers(g: Grid) -> tuple[list, list]:
    """Placed datasets and grid task keys still held anywhere on the grid."""
    datasets = [d for info in g.status().values() for d in info["datasets"]]
    keys = [str(k) for c in g._local.clusters.values() for k in c.scheduler.tasks if str(k).startswith("grid-")]
    return datasets, keys


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def split(X, y, n_train=2000):
    scaler = StandardScaler().fit(X[:n_train])
    return scaler.transform(X[:n_train]), y[:n_train], scaler.transform(X[n_train:]), y[n_train:]


def classification(n_classes: int):
    X, y = make_classification(n_samples=3000, n_features=20, n_informative=10, n_classes=n_classes,
                               random_state=0)
    return split(X, y)


def regression(outliers: bool):
    X, y = make_regression(n_samples=3000, n_features=20, n_informative=10, noise=10.0, random_state=0)
    y = y / y.std()
    if outliers:  # gross errors on 5 % of the training targets
        rng = np.random.default_rng(0)
        idx = rng.choice(2000, size=100, replace=False)
        y[idx] += rng.normal(0.0, 20.0, size=100)
    return split(X, y)


def sk_mean_score(make, X, y, Xt, yt) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(np.mean([make(s).fit(X, y).score(Xt, yt) for s in SK_SEEDS]))


# --------------------------------------------------------------------------------------
# parity with scikit-learn
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("loss", ["log_loss", "hinge", "modified_huber"])
def test_classifier_reaches_sklearn_accuracy(g2, loss, penalty, n_classes):
    X, y, Xt, yt = classification(n_classes)
    est = SGDClassifier(loss=loss, penalty=penalty, rounds=ROUNDS).fit(X, y, grid=g2)
    assert len(est.history_) == ROUNDS and est.history_[-1]["updates"] == 8  # really trained on the grid
    ours = est.score(Xt, yt)
    theirs = sk_mean_score(lambda s: sk.SGDClassifier(loss=loss, penalty=penalty, random_state=s), X, y, Xt, yt)
    assert ours >= theirs - 0.01, f"grid {ours:.4f} vs scikit-learn {theirs:.4f}"


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("loss, outliers", [("squared_error", False), ("huber", False), ("huber", True)],
                         ids=["squared_error", "huber", "huber-outliers"])
def test_regressor_reaches_sklearn_r2(g2, loss, outliers, penalty):
    X, y, Xt, yt = regression(outliers)
    est = SGDRegressor(loss=loss, penalty=penalty, rounds=ROUNDS).fit(X, y, grid=g2)
    assert len(est.history_) == ROUNDS
    ours = est.score(Xt, yt)
    theirs = sk_mean_score(lambda s: sk.SGDRegressor(loss=loss, penalty=penalty, random_state=s), X, y, Xt, yt)
    assert ours >= theirs - 0.01, f"grid R^2 {ours:.4f} vs scikit-learn {theirs:.4f}"


def test_squared_error_with_heavy_tailed_targets_reaches_sklearn_r2(g2):
    """Least squares where 5 % of the targets carry gross errors (the default schedule).

    The least-squares optimum (LinearRegression) is still well defined here;
    scikit-learn's SGDRegressor gets close to it, and so must the grid's.
    """
    X, y, Xt, yt = regression(outliers=True)
    optimum = sk.LinearRegression().fit(X, y).score(Xt, yt)
    theirs = sk_mean_score(lambda s: sk.SGDRegressor(random_state=s), X, y, Xt, yt)
    assert theirs >= optimum - 0.05  # the reference itself is sound
    ours = SGDRegressor(rounds=ROUNDS).fit(X, y, grid=g2).score(Xt, yt)
    assert ours >= theirs - 0.01, (
        f"grid R^2 {ours:.4f} vs scikit-learn SGDRegressor {theirs:.4f} (least squares {optimum:.4f})"
    )


# --------------------------------------------------------------------------------------
# Pipeline, clone, GridSearchCV
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unscaled():
    X, y = make_classification(n_samples=1500, n_features=10, n_informative=5, random_state=0)
    return X * 100.0 + 5.0, y


def job_estimators():
    return {
        "sgdclassifier": SGDClassifier(rounds=3),
        "partialfit": PartialFit(sk.SGDClassifier(random_state=0), rounds=3),
    }


def coef(est) -> np.ndarray:
    return est.estimator_.coef_ if isinstance(est, PartialFit) else est.coef_


def reference_fit(name: str, X, y, **params):
    """``job_estimators()[name]`` with ``params``, trained in this process (see tests/integration/reference.py)."""
    est = job_estimators()[name].set_params(**params)
    if isinstance(est, PartialFit):
        return fedavg(est.estimator, X, y, rounds=est.rounds, seed=est.seed)
    return grid_sgd(est, X, y)


@pytest.mark.parametrize("name", list(job_estimators()))
def test_pipeline_with_grid_argument_and_inside_with_block(g2, unscaled, name):
    X, y = unscaled
    before = n_jobs(g2)
    pipe = make_pipeline(StandardScaler(), job_estimators()[name])
    assert pipe.fit(X, y, **{f"{name}__grid": g2}) is pipe
    assert n_jobs(g2) == before + 1
    scaled = StandardScaler().fit_transform(X)
    reference = reference_fit(name, scaled, y)
    assert_same_model(pipe[-1], reference)
    assert pipe.score(X, y) == reference.score(scaled, y)
    with as_current(g2):
        assert current_grid() is g2
        again = make_pipeline(StandardScaler(), job_estimators()[name]).fit(X, y)
    assert n_jobs(g2) == before + 2
    np.testing.assert_array_equal(coef(again[-1]), coef(pipe[-1]))
    np.testing.assert_array_equal(again.predict(X), pipe.predict(X))


@pytest.mark.parametrize("name", list(job_estimators()))
def test_clone(g2, unscaled, name):
    X, y = unscaled
    est = job_estimators()[name].set_params(**({"alpha": 1e-3} if name == "sgdclassifier" else {"estimator__alpha": 1e-3}))
    fitted = est.fit(X, y, grid=g2)
    copy = clone(fitted)
    assert copy is not fitted
    assert copy.get_params(deep=False).keys() == fitted.get_params(deep=False).keys()
    assert repr(copy) == repr(fitted)
    assert not hasattr(copy, "coef_") and not hasattr(copy, "estimator_")  # unfitted
    if name == "partialfit":
        assert copy.estimator is not fitted.estimator and copy.estimator.alpha == 1e-3
    refit = copy.fit(X, y, grid=g2)
    np.testing.assert_array_equal(coef(refit), coef(fitted))  # same parameters, same seed: same model


@pytest.mark.parametrize("name", list(job_estimators()))
def test_gridsearchcv_with_grid_argument_and_inside_with_block(g2, unscaled, name):
    X, y = unscaled
    X = StandardScaler().fit_transform(X)
    if name == "sgdclassifier":
        grid_params = {"alpha": [1e-4, 1e-1], "loss": ["log_loss", "hinge"]}
    else:
        grid_params = {"estimator__alpha": [1e-4, 1e-1], "rounds": [1, 3]}
    before = n_jobs(g2)
    search = GridSearchCV(job_estimators()[name], grid_params, cv=3).fit(X, y, grid=g2)
    assert n_jobs(g2) == before + 4 * 3 + 1  # every candidate and fold, and the refit, ran on the grid
    assert type(search.best_estimator_) is type(job_estimators()[name])
    # every fold's score, the choice and the refit are those of the same search in this process
    folds = list(StratifiedKFold(n_splits=3).split(X, y))
    expected = [
        np.mean([reference_fit(name, X[train], y[train], **params).score(X[test], y[test]) for train, test in folds])
        for params in search.cv_results_["params"]
    ]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected, rtol=0, atol=1e-12)
    assert search.best_score_ == pytest.approx(max(expected), rel=0, abs=1e-12)
    best = reference_fit(name, X, y, **search.best_params_)
    assert_same_model(search.best_estimator_, best)
    assert search.score(X, y) == best.score(X, y)
    with as_current(g2):
        again = GridSearchCV(job_estimators()[name], grid_params, cv=3).fit(X, y)
    assert again.best_params_ == search.best_params_
    np.testing.assert_array_equal(again.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])


# --------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------
LAYOUTS = {
    "eu1": {"eu": 1},
    "eu2": {"eu": 2},
    "eu4": {"eu": 4},
    "eu1+us1": {"eu": 1, "us": 1},
    "eu2+us2": {"eu": 2, "us": 2},
    "eu1+us2": {"eu": 1, "us": 2},  # another split of the partitions between the regions
}


def determinism_estimators(seed: int = 7):
    return {
        "SGDClassifier": SGDClassifier(rounds=3, random_state=seed, partition_rows=500),
        "SGDRegressor": SGDRegressor(loss="huber", penalty="elasticnet", rounds=3, random_state=seed, partition_rows=500),
        "PartialFit": PartialFit(sk.SGDClassifier(), rounds=3, seed=seed, partition_rows=500),
    }


@pytest.fixture(scope="module")
def determinism_data():
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=5, n_classes=3, random_state=0)
    target = X @ np.linspace(-1.0, 1.0, 10) + 0.1 * np.random.default_rng(0).normal(size=4000)
    return X, y, target


def params(est) -> np.ndarray:
    if isinstance(est, PartialFit):
        return np.concatenate([est.estimator_.coef_.ravel(), est.estimator_.intercept_.ravel()])
    return np.concatenate([np.ravel(est.coef_), np.ravel(est.intercept_)])


@pytest.fixture(scope="module")
def models(determinism_data):
    """Every determinism estimator trained on every layout (one grid per layout)."""
    X, y, target = determinism_data
    out: dict[str, dict[str, np.ndarray]] = {}
    for layout_name, layout in LAYOUTS.items():
        with Grid.local(regions=layout, processes=False, dashboard=False) as g:
            assert sum(len(info["workers"]) for info in g.status().values()) == sum(layout.values())
            out[layout_name] = {
                name: params(est.fit(X, target if name == "SGDRegressor" else y, grid=g))
                for name, est in determinism_estimators().items()
            }
    return out


@pytest.mark.parametrize("name", list(determinism_estimators()))
@pytest.mark.parametrize("layouts", [("eu1", "eu2", "eu4"), ("eu1+us1", "eu2+us2")], ids=["1-region", "2-regions"])
def test_same_seed_same_model_bitwise_for_any_node_count(models, name, layouts):
    first = models[layouts[0]][name]
    for layout in layouts[1:]:
        np.testing.assert_array_equal(models[layout][name], first, err_msg=f"{layout} vs {layouts[0]}")


@pytest.mark.parametrize("name", list(determinism_estimators()))
def test_region_layouts_differ_by_rounding_only(models, name):
    """Two regions reduce partitions to regional means first, then combine those at
    home: the summation order differs from one region, so the last bits may too."""
    one = models["eu1"][name]
    for layout in ("eu1+us1", "eu1+us2"):
        other = models[layout][name]
        assert np.max(np.abs(other - one)) <= 1e-12 * max(1.0, np.max(np.abs(one))), layout


def test_a_different_seed_gives_a_different_model(g2, determinism_data):
    """The determinism tests above could not pass by training nothing."""
    X, y, _ = determinism_data
    a = params(determinism_estimators(seed=7)["SGDClassifier"].fit(X, y, grid=g2))
    b = params(determinism_estimators(seed=8)["SGDClassifier"].fit(X, y, grid=g2))
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------------------
# bad partitions
# --------------------------------------------------------------------------------------
N, D, CHUNK = 600, 5, 200


@pytest.fixture(scope="module")
def clean():
    X = np.random.default_rng(0).normal(size=(N, D))
    return X, (X[:, 0] + 0.3 * X[:, 1] > 0).astype(np.int64)


def chunks_of(blocks: list[np.ndarray]) -> da.Array:
    """A dask array whose chunks are ``blocks``; its metadata claims D columns of float64
    (as a dask array built from files or delayed reads would, before computing)."""
    parts = [da.from_delayed(dask.delayed(lambda b=b: b)(), shape=(b.shape[0], D), dtype=np.float64)
             for b in blocks]
    return da.concatenate(parts, axis=0)


def y_chunks(y: np.ndarray) -> da.Array:
    return da.from_array(y, chunks=CHUNK)


def with_value(X: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    X = X.copy()
    X[row, col] = value
    return X


def bad_features(X, y):
    return chunks_of([X[:200], X[200:400, :4], X[400:]]), y_chunks(y)


def bad_nan(X, y):
    return da.from_array(with_value(X, 450, 2, np.nan), chunks=(CHUNK, D)), y_chunks(y)


def bad_inf(X, y):
    return da.from_array(with_value(X, 250, 1, -np.inf), chunks=(CHUNK, D)), y_chunks(y)


def bad_strings(X, y):
    return chunks_of([X[:200], np.full((200, D), "n/a"), X[400:]]), y_chunks(y)


def bad_dataframe_column(X, y):
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(D)])

    def spoil(part: pd.DataFrame) -> pd.DataFrame:
        if part.index[0] == 200:  # partition 1: one column arrives as text
            part = part.astype({"f2": object})
            part["f2"] = "missing"
        return part

    ddf = dd.from_pandas(df, npartitions=3).map_partitions(spoil, meta=df.iloc[:0])
    return ddf, dd.from_pandas(pd.Series(y), npartitions=3)


def bad_target_nan(X, y):
    target = y.astype(np.float64)
    target[300] = np.nan
    return da.from_array(X, chunks=(CHUNK, D)), y_chunks(target)


BAD = {
    # name: (make, partition index the error must name, words the error must contain)
    "features-disagree": (bad_features, 1, ["4 features", "5"]),
    "nan": (bad_nan, 2, ["NaN"]),
    "inf": (bad_inf, 1, ["infinity"]),
    "dtype-strings": (bad_strings, 1, ["dtype"]),
    "dtype-dataframe-column": (bad_dataframe_column, 1, ["dtype object"]),
    "target-nan": (bad_target_nan, 1, ["y", "NaN"]),
}


@pytest.mark.parametrize("how", ["submit", "scatter"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_partition_is_rejected_by_name_and_the_grid_serves_the_next_job(g2, clean, case, how):
    X, y = clean
    make, index, words = BAD[case]
    Xb, yb = make(X, y)
    before = n_jobs(g2)
    with pytest.raises(DataError) as info:
        if how == "submit":
            g2.submit(SGDClassifier(rounds=1), Xb, yb)
        else:
            g2.scatter(Xb, yb)
    message = str(info.value)
    assert re.search(rf"\b(partition|chunk) {index}\b", message), f"the error does not name partition {index}: {message}"
    for word in words:
        assert word in message, message
    assert n_jobs(g2) == before  # rejected before any job was registered
    assert leftovers(g2) == ([], [])  # ... and before any data was placed
    # the grid serves the next job
    good = SGDClassifier(rounds=2).fit(da.from_array(X, chunks=(CHUNK, D)), y_chunks(y), grid=g2)
    chunks = [(X[i : i + CHUNK], y[i : i + CHUNK]) for i in range(0, N, CHUNK)]
    assert_same_model(good, grid_sgd(SGDClassifier(rounds=2), parts=chunks))
    assert n_jobs(g2) == before + 1


def test_partitions_with_dtypes_that_can_be_aligned_are_accepted(g2, clean):
    """float32, float64 and integer partitions of one dataset train together."""
    X, y = clean
    Xm = da.concatenate([
        da.from_array(X[:200].astype(np.float32), chunks=(CHUNK, D)),
        da.from_array(X[200:400], chunks=(CHUNK, D)),
        da.from_array(np.round(X[400:] * 100).astype(np.int64), chunks=(CHUNK, D)),
    ])
    est = SGDClassifier(rounds=3).fit(Xm, y_chunks(y), grid=g2)
    assert est.history_[-1]["updates"] == 3
    # computed here, whatever dask scheduler an earlier test left as the default
    chunks = [(block.compute(scheduler="sync"), y[i * CHUNK : (i + 1) * CHUNK]) for i, block in enumerate(Xm.blocks)]
    assert_same_model(est, grid_sgd(SGDClassifier(rounds=3), parts=chunks))
