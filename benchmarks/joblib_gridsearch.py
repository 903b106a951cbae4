"""GridSearchCV(n_jobs=-1) on the grid's nodes vs joblib's loky and dask backends.

Anchors, measured side by side in one run on the same machine:
serial scikit-learn (n_jobs=1), joblib's loky backend with n_jobs=2, joblib's
plain dask backend on a 2-worker LocalCluster, and ``Grid.joblib()`` on a
1-region grid with 2 nodes. Each configuration runs the same search; the table
gives wall time (best of ``--repeat``) and speed-up over serial.

    python -m benchmarks.joblib_gridsearch
"""

from __future__ import annotations

import argparse
import logging

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from benchmarks.common import best_of, machine, table


def search() -> GridSearchCV:
    return GridSearchCV(
        LogisticRegression(max_iter=300),
        {"C": list(np.logspace(-3, 2, 8))},
        cv=4,
        n_jobs=-1,
    )


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    X, y = make_classification(n_samples=args.rows, n_features=args.features, n_informative=20, random_state=0)

    from threadpoolctl import threadpool_limits

    def serial():
        with threadpool_limits(1):  # one core, as each worker gets
            s = search().set_params(n_jobs=1)
            return s.fit(X, y).best_score_

    def loky():
        with joblib.parallel_config(backend="loky", n_jobs=2):
            return search().set_params(n_jobs=2).fit(X, y).best_score_

    rows = []
    t_serial, score = best_of(serial, args.repeat)
    rows.append(("serial (n_jobs=1)", t_serial, 1.0, score))
    t_loky, score = best_of(loky, args.repeat)
    rows.append(("joblib loky, n_jobs=2", t_loky, t_serial / t_loky, score))

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:

        def plain_dask():
            with joblib.parallel_config(backend="dask", client=client):
                return search().fit(X, y).best_score_

        t_dask, score = best_of(plain_dask, args.repeat)
        rows.append(("joblib dask backend, 2 workers", t_dask, t_serial / t_dask, score))

    from grid import Grid

    with Grid.local(regions={"eu": 2}) as g:

        def on_grid():
            with g.joblib(scatter=[X, y]):
                return search().fit(X, y).best_score_

        t_grid, score = best_of(on_grid, args.repeat)
        rows.append(("Grid.joblib(), 2 nodes", t_grid, t_serial / t_grid, score))

    print(f"GridSearchCV: LogisticRegression, 8 values of C x 4 folds, {args.rows:,} x {args.features}")
    print(f"machine: {machine()}")
    print(table(["configuration", "seconds (best)", "speed-up vs serial", "best CV score"], rows))
    print(f"Grid.joblib / loky speed ratio: {t_loky / t_grid:.2f}x  (>= 1 means the grid is at least as fast)")
    return rows


if __name__ == "__main__":
    main()
