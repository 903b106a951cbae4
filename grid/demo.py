"""``grid demo`` / ``make demo``: the main job on an embedded two-region grid.

Trains ``PartialFit(SGDClassifier)`` on scikit-learn's bundled digits and on a
generated classification problem, shows a progress bar per job, and prints
each job's test accuracy beside the same estimator trained serially.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from grid.client import Grid
from jobs import PartialFit


def _serial(estimator: SGDClassifier, X: np.ndarray, y: np.ndarray, epochs: int) -> tuple[SGDClassifier, float]:
    """The same estimator trained on one machine: ``epochs`` partial_fit passes."""
    start = time.perf_counter()
    classes = np.unique(y)
    for _ in range(epochs):
        estimator.partial_fit(X, y, classes=classes)
    return estimator, time.perf_counter() - start


def _problem(name: str, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return {
        "name": name,
        "train": (scaler.transform(X_train), y_train),
        "test": (scaler.transform(X_test), y_test),
    }


def run_demo(rows: int = 1_000_000, regions: dict[str, int] | None = None, echo: Any = print) -> list[dict]:
    """Run the demo and return one result row per problem."""
    regions = regions or {"eu": 1, "us": 1}
    t0 = time.perf_counter()
    digits = load_digits()
    X_big, y_big = make_classification(
        n_samples=rows, n_features=50, n_informative=20, n_redundant=10, random_state=0, class_sep=1.0
    )
    problems = [
        _problem("digits (1,797 x 64, 10 classes)", digits.data, digits.target),
        _problem(f"generated ({rows:,} x 50, 2 classes)", X_big.astype(np.float64), y_big),
    ]
    rounds = {problems[0]["name"]: 20, problems[1]["name"]: 5}
    results = []
    with Grid.local(regions=regions) as grid:
        echo(f"embedded grid up in {time.perf_counter() - t0:.1f}s: " + ", ".join(
            f"{r} ({n} node{'s' if n != 1 else ''})" for r, n in regions.items()))
        for region, link in grid.dashboard_links().items():
            grid_page = link.rsplit("/", 1)[0] + "/grid" if link else None
            echo(f"  region {region}: grid dashboard {grid_page}  (Dask's own: {link})")
        for problem in problems:
            X_train, y_train = problem["train"]
            X_test, y_test = problem["test"]
            n_rounds = rounds[problem["name"]]
            est = PartialFit(SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0), rounds=n_rounds)
            echo(f"\n{problem['name']}: {n_rounds} rounds on the grid")
            start = time.perf_counter()
            job = grid.submit(est, X_train, y_train)
            job.progress()
            fitted = job.result()
            grid_seconds = time.perf_counter() - start
            serial, serial_seconds = _serial(SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0), X_train, y_train, n_rounds)
            row = {
                "problem": problem["name"],
                "job": job.id,
                "grid_accuracy": float(fitted.score(X_test, y_test)),
                "serial_accuracy": float(serial.score(X_test, y_test)),
                "grid_seconds": grid_seconds,
                "serial_seconds": serial_seconds,
                "bytes_cross_region_per_round": fitted.history_[-1]["bytes_cross_region"],
            }
            results.append(row)
            echo(
                f"  test accuracy: grid {row['grid_accuracy']:.4f}   serial {row['serial_accuracy']:.4f}   "
                f"(grid {grid_seconds:.1f}s incl. placing the data, serial {serial_seconds:.1f}s; "
                f"{row['bytes_cross_region_per_round']:,} bytes crossed regions per round)"
            )
    echo(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
    return results
