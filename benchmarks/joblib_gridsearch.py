"""GridSearchCV(n_jobs=-1) on the grid's nodes vs joblib's loky and dask backends.

Anchors, measured side by side in one run on the same machine:
serial scikit-learn (n_jobs=1), joblib's loky backend with n_jobs=2, joblib's
plain dask backend on a 2-worker LocalCluster, and ``Grid.joblib(scatter=[X, y])``
on a 1-region grid with 2 nodes, all started up front. The search runs in rounds,
every configuration once per round, so that load coming and going on a shared
machine hits them all alike. The first round is reported apart ("first call":
worker start-up, imports, data transfer; the loky pool and the grid's data cache
are warm after it); the table gives the best and the median of the ``--repeat``
later rounds and the speed-up of the best over serial, and the load average is
printed with it. GridSearchCV refits the best candidate in this process after the
search; every configuration does so with the same BLAS threads (``--client-blas-threads``,
default 1 as in the serial run: with OpenBLAS's 2 threads that refit took 3 s on a
loaded machine, against 0.04-0.1 s with one thread; see docs/performance.md).

    python -m benchmarks.joblib_gridsearch                      # 20,000 rows, quick
    python -m benchmarks.joblib_gridsearch --rows 100000 --repeat 2
    python -m benchmarks.joblib_gridsearch --breakdown          # + Grid.joblib without each fix
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import time

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from benchmarks.common import machine, table


def search() -> GridSearchCV:
    return GridSearchCV(
        LogisticRegression(max_iter=300),
        {"C": list(np.logspace(-3, 2, 8))},
        cv=4,
        n_jobs=-1,
    )


def _load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds after the first one")
    parser.add_argument("--breakdown", action="store_true", help="also Grid.joblib without each of its changes")
    parser.add_argument(
        "--client-blas-threads",
        type=int,
        default=1,
        help="BLAS threads of this (the client) process in every configuration, as serial has; 0: the library default",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1 (the first round is reported apart)")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    X, y = make_classification(n_samples=args.rows, n_features=args.features, n_informative=20, random_state=0)

    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    from grid import Grid

    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        g = stack.enter_context(Grid.local(regions={"eu": 2}, dashboard=False))
        # (name, context of one call, n_jobs); serial: one core, as each worker gets
        configs = [
            ("serial (n_jobs=1)", lambda: threadpool_limits(1), 1),
            ("joblib loky, n_jobs=2", lambda: joblib.parallel_config(backend="loky", n_jobs=2), 2),
            ("joblib dask backend, 2 workers", lambda: joblib.parallel_config(backend="dask", client=client), -1),
            ("Grid.joblib(scatter=[X, y]), 2 nodes", lambda: g.joblib(scatter=[X, y]), -1),
        ]
        if args.breakdown:
            configs += [
                ("  ... warm=False (no node warm-up)", lambda: g.joblib(scatter=[X, y], warm=False), -1),
                ("  ... cache=False (data sent per block)", lambda: g.joblib(scatter=[X, y], cache=False), -1),
                ("  ... no scatter= (joblib scatters per call)", lambda: g.joblib(), -1),
            ]
        # GridSearchCV refits the best candidate in this process: give it the same BLAS threads everywhere
        client_blas = (lambda: threadpool_limits(args.client_blas_threads)) if args.client_blas_threads else contextlib.nullcontext
        # rounds: every configuration once per round, so load that comes and goes hits them all
        times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        scores: dict[str, float] = {}
        load0 = _load()
        for _ in range(1 + args.repeat):
            for name, context, n_jobs in configs:
                start = time.perf_counter()
                with client_blas(), context():
                    scores[name] = search().set_params(n_jobs=n_jobs).fit(X, y).best_score_
                times[name].append(time.perf_counter() - start)
        load1 = _load()

    t_serial = min(times[configs[0][0]][1:])
    results = [
        {"name": name, "first": times[name][0], "best": min(times[name][1:]), "median": statistics.median(times[name][1:]), "score": scores[name]}
        for name, _, _ in configs
    ]
    rows = [(r["name"], r["first"], r["best"], r["median"], t_serial / r["best"], r["score"]) for r in results]
    print(
        f"GridSearchCV: LogisticRegression, 8 values of C x 4 folds, {args.rows:,} x {args.features}; "
        f"first round, then best and median of {args.repeat} rounds"
    )
    print(f"machine: {machine()}")
    print(f"load average (1 min): {load0:.1f} at the start, {load1:.1f} at the end; client BLAS threads: {args.client_blas_threads or 'default'}")
    print(table(["configuration", "first call s", "best s", "median s", "speed-up vs serial (best)", "best CV score"], rows))
    t_loky, t_grid = results[1]["best"], results[3]["best"]
    print(f"Grid.joblib / loky speed ratio: {t_loky / t_grid:.2f}x  (>= 1 means the grid is at least as fast)")
    return results


if __name__ == "__main__":
    main()
