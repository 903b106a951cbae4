"""``grid demo`` / ``make demo``: what the grid is for, on an embedded two-region grid.

Four short stories, each a few seconds on a 2-core laptop:

1. **Time to the same test accuracy.** ``jobs.SGDClassifier`` on one region's
   nodes against serial scikit-learn ``SGDClassifier`` and full-batch
   ``LogisticRegression(solver="lbfgs")`` on the same generated problem; the
   target is the lbfgs accuracy minus half a point. Placing the data
   (``g.scatter``) is timed apart: it happens once, and every job reuses it.
2. **One model from two regions**: the data stays in its region; only model
   updates cross, and the job's history counts the bytes.
3. **Exact merges**: ``PartialFit(GaussianNB())`` on partitions in two regions
   equals ``GaussianNB().fit`` on all the rows.
4. **Verified results**: ``verify=2`` computes every partition update on two
   nodes and uses it only when they agree.

The grid's time to target is measured as the benchmark does
(``python -m benchmarks.sgd``): fresh jobs with 1, 2, ... rounds, each timed
from submit to result, until one reaches the target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model import SGDClassifier as SerialSGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.preprocessing import StandardScaler

import jobs
from grid.client import Grid
from grid.logs import quiet_distributed

#: the target accuracy is the lbfgs accuracy minus this (half a point), as in benchmarks/sgd.py
TARGET_GAP = 0.005
#: most rounds / epochs tried before a method is reported as not reaching the target
MAX_EPOCHS = 10
#: scikit-learn's own settings for the serial anchor and the grid's estimator alike
SGD_PARAMS = {"loss": "log_loss", "alpha": 1e-4, "random_state": 0}
#: dask's config key ``logging.distributed`` as the node processes read it at start
NODE_LOGGING_ENV = "DASK_LOGGING__DISTRIBUTED"


@contextlib.contextmanager
def quiet_dask() -> Iterator[None]:
    """Keep distributed's log lines (start-up, shutdown) off the demo's output.

    In this process by logger level; in the node processes, which configure
    their logging from dask's config when they import distributed, by the
    environment they inherit.
    """
    saved_env = os.environ.get(NODE_LOGGING_ENV)
    os.environ[NODE_LOGGING_ENV] = "critical"
    levels = quiet_distributed(logging.CRITICAL, ("distributed", "grid", "bokeh", "tornado"))
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if saved_env is None:
            os.environ.pop(NODE_LOGGING_ENV, None)
        else:
            os.environ[NODE_LOGGING_ENV] = saved_env


def _split_scaled(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _serial_time_to_target(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                           target: float) -> dict[str, Any]:
    """Serial ``SGDClassifier.partial_fit`` epochs until the target; the clock runs only inside partial_fit."""
    est = SerialSGDClassifier(**SGD_PARAMS)
    classes = np.unique(y)
    seconds, accuracy = 0.0, 0.0
    for epoch in range(1, MAX_EPOCHS + 1):
        _, dt = _timed(lambda: est.partial_fit(X, y, classes=classes))
        seconds += dt
        accuracy = float(est.score(X_test, y_test))
        if accuracy >= target:
            return {"seconds": seconds, "steps": f"{epoch} epoch{'s' * (epoch > 1)}", "accuracy": accuracy, "reached": True}
    return {"seconds": seconds, "steps": f"{MAX_EPOCHS} epochs", "accuracy": accuracy, "reached": False}


def _grid_time_to_target(g: Grid, data: Any, X_test: np.ndarray, y_test: np.ndarray, target: float) -> dict[str, Any]:
    """Fresh jobs with 1, 2, ... rounds, each timed submit to result, until one reaches the target."""
    accuracy, seconds = 0.0, 0.0
    for rounds in range(1, MAX_EPOCHS + 1):
        est = jobs.SGDClassifier(max_iter=rounds, **SGD_PARAMS)
        start = time.perf_counter()
        job = g.submit(est, data)
        job.progress(desc=f"grid SGD, {rounds} round{'s' * (rounds > 1)}")
        fitted = job.result()
        seconds = time.perf_counter() - start
        accuracy = float(fitted.score(X_test, y_test))
        if accuracy >= target:
            return {"seconds": seconds, "steps": f"{rounds} round{'s' * (rounds > 1)}", "accuracy": accuracy,
                    "reached": True, "model": fitted, "rounds": rounds}
    return {"seconds": seconds, "steps": f"{MAX_EPOCHS} rounds", "accuracy": accuracy, "reached": False,
            "model": fitted, "rounds": MAX_EPOCHS}


def _time_to_target(g: Grid, rows: int, echo: Callable[[str], None]) -> dict[str, Any]:
    X, y = make_classification(n_samples=rows, n_features=50, n_informative=20, n_redundant=10,
                               class_sep=1.0, random_state=0)
    X_train, X_test, y_train, y_test = _split_scaled(X, y)
    nodes = g.status()["eu"]["nodes"]["active"]
    echo(f"\n1. Time to the same test accuracy: {rows:,} x 50, 2 classes ({len(y_train):,} training rows)")
    lbfgs, lbfgs_seconds = _timed(lambda: LogisticRegression(solver="lbfgs", max_iter=1000).fit(X_train, y_train))
    lbfgs_accuracy = float(lbfgs.score(X_test, y_test))
    target = lbfgs_accuracy - TARGET_GAP
    echo(f"   target: test accuracy {target:.4f} (full-batch lbfgs's {lbfgs_accuracy:.4f} minus half a point)")
    data, place_seconds = _timed(lambda: g.scatter(X_train, y_train, regions="eu"))
    echo(f"   placed the training rows on region eu's {nodes} nodes in {place_seconds:.1f}s "
         f"(once: every job below reuses them)")
    grid = _grid_time_to_target(g, data, X_test, y_test, target)
    serial = _serial_time_to_target(X_train, y_train, X_test, y_test, target)
    rows_out = [
        (f"grid jobs.SGDClassifier (eu, {nodes} nodes)", grid),
        ("serial scikit-learn SGDClassifier", serial),
        ("scikit-learn LogisticRegression(lbfgs)", {"seconds": lbfgs_seconds, "steps": "full batch",
                                                    "accuracy": lbfgs_accuracy, "reached": True}),
    ]
    echo(f"\n   {'':<42}{'time to target':>16}  {'':<12}{'accuracy':>9}  {'vs grid':>9}")
    for name, r in rows_out:
        at_least = "" if r["reached"] else ">="
        ratio = "1.0x" if r is grid else f"{at_least}{r['seconds'] / grid['seconds']:.1f}x"
        echo(f"   {name:<42}{at_least + format(r['seconds'], '.2f') + 's':>16}  {r['steps']:<12}"
             f"{r['accuracy']:>9.4f}  {ratio:>9}")
    return {"data": data, "grid": grid, "serial": serial, "lbfgs_seconds": lbfgs_seconds,
            "lbfgs_accuracy": lbfgs_accuracy, "target": target, "place_seconds": place_seconds,
            "test": (X_test, y_test), "train": (X_train, y_train)}


def _two_regions(g: Grid, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 echo: Callable[[str], None]) -> dict[str, Any]:
    echo(f"\n2. One model from two regions: {len(y):,} rows split between eu and us; the rows stay home")
    job = g.submit(jobs.SGDClassifier(max_iter=3, **SGD_PARAMS), X, y, regions=["eu", "us"])
    job.progress(desc="eu + us, 3 rounds")
    fitted = job.result()
    crossed = [h["bytes_cross_region"] for h in fitted.history_]
    accuracy = float(fitted.score(X_test, y_test))
    echo(f"   test accuracy {accuracy:.4f}; crossed regions per round: {crossed[-1]:,} bytes "
         f"(model updates; the {X.nbytes / 2**20:,.0f} MiB of rows never left their region)")
    return {"accuracy": accuracy, "bytes_cross_region": crossed}


def _exact_merge(g: Grid, echo: Callable[[str], None]) -> dict[str, Any]:
    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    echo("\n3. Exact merges: PartialFit(GaussianNB()) on digits, partitions in eu and us")
    job = g.submit(jobs.PartialFit(GaussianNB(), rounds=1), X, y)
    job.progress(desc="GaussianNB, 1 round")
    fitted = job.result()
    serial = GaussianNB().fit(X, y)
    diff = max(float(np.max(np.abs(fitted.estimator_.theta_ - serial.theta_))),
               float(np.max(np.abs(fitted.estimator_.var_ - serial.var_))))
    same = bool(np.array_equal(fitted.predict(X), serial.predict(X)))
    echo(f"   max |difference| of the class means and variances from GaussianNB().fit on all rows: {diff:.1e}; "
         f"predictions {'identical' if same else 'DIFFERENT'}")
    return {"max_abs_diff": diff, "same_predictions": same}


def _verified(g: Grid, first: dict[str, Any], echo: Callable[[str], None]) -> dict[str, Any]:
    rounds = first["grid"]["rounds"]
    echo("\n4. Verified: verify=2 computes every partition update on 2 nodes of eu and uses it only when they agree")
    job = g.submit(jobs.SGDClassifier(max_iter=rounds, **SGD_PARAMS), first["data"], verify=2)
    job.progress(desc=f"verify=2, {rounds} round{'s' * (rounds > 1)}")
    fitted = job.result()
    diff = float(np.max(np.abs(fitted.coef_ - first["grid"]["model"].coef_)))
    updates = sum(int(h["updates"]) for h in fitted.history_)
    replicas = sum(int(h["replicas"]) for h in fitted.history_)
    quarantined = sum(int(h["quarantined"]) for h in fitted.history_)
    echo(f"   {updates} partition updates, each also computed on a second node ({replicas} replicas): "
         f"{'all agreed' if not quarantined else f'{quarantined} node(s) disagreed and were quarantined'}; "
         f"max |coef difference| from the unverified job: {diff:.1e}")
    return {"max_abs_diff": diff, "updates": updates, "replicas": replicas, "quarantined": quarantined}


def run_demo(rows: int = 1_000_000, regions: dict[str, int] | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; return its figures (what it printed, as numbers)."""
    regions = regions or {"eu": 2, "us": 1}
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with quiet_dask():
        with Grid.local(regions=regions) as g:
            echo(f"dask-grid demo: an embedded grid up in {time.perf_counter() - t0:.1f}s, "
                 + ", ".join(f"region {r} ({n} node{'s' * (n != 1)})" for r, n in regions.items()))
            for region, link in g.dashboard_links().items():
                if link:
                    echo(f"   dashboard of {region}: {link.rsplit('/', 1)[0]}/grid")
            first = _time_to_target(g, rows, echo)
            results["time_to_target"] = {k: v for k, v in first.items() if k not in ("data", "test", "train")}
            X_test, y_test = first["test"]
            X_train, y_train = first["train"]
            few = min(len(y_train), 200_000)
            results["two_regions"] = _two_regions(g, X_train[:few], y_train[:few], X_test, y_test, echo)
            results["exact_merge"] = _exact_merge(g, echo)
            results["verified"] = _verified(g, first, echo)
            g.drop(first["data"])
    results["seconds"] = time.perf_counter() - t0
    echo(f"\ndemo finished in {results['seconds']:.0f}s")
    return results
