"""Training benchmark: ``jobs.SGDClassifier`` on a 2-node grid against the anchors.

On three problems -- (a) scikit-learn's digits, (b) a generated 2,000,000 x 50
binary problem (1.6M training rows), (c) a generated 500,000 x 100 ten-class
problem -- all standardised with a StandardScaler fitted on the training split,
this compares, side by side in one run on one machine:

* ``jobs.SGDClassifier(loss="log_loss")`` on ``Grid.local(regions={"eu": 2})``
  (one region, two node processes of one thread), the data placed once with
  ``g.scatter`` in one partition per node;
* serial scikit-learn ``SGDClassifier(loss="log_loss").partial_fit`` over the
  same partitions, one call per partition per epoch;
* dask-ml ``Incremental(SGDClassifier(loss="log_loss"))`` on a 2-worker
  ``LocalCluster`` configured like the grid's region (processes, one thread
  each), the same blocks placed on the workers once with client.scatter;
* ``LogisticRegression(solver="lbfgs")``: the accuracy ceiling (and a time anchor).

    python -m benchmarks.sgd            # the full benchmark (a few minutes, needs ~6 GB)
    python -m benchmarks.sgd --quick    # small sizes, a correctness check (< 1 minute)

See the printed "method" paragraph for how each number is measured.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import resource
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import machine, table
from grid.logs import DISTRIBUTED_LOGGERS, quiet_distributed

#: the training goals: ratios measured side by side
GOAL_VS_SERIAL = 4.0
GOAL_VS_DASK_ML = 5.0
GOAL_VS_LBFGS = 1.5
GOAL_THROUGHPUT = 10e6  # rows/s, 2 nodes
GOAL_OVERHEAD = 0.015  # seconds per round beyond the compute
#: the target accuracy is the lbfgs accuracy minus this (0.5 points)
TARGET_GAP = 0.005

METHOD = """\
method:
  target = lbfgs test accuracy - 0.5 points; test accuracy is evaluated on the held-out
  split after every epoch / round, and evaluation is never counted in any time.
  * grid: fresh jobs with rounds = 1, 2, 3, ... on the placed data (no warm start, no
    evaluation inside a job); time to target = wall time from submit to result() of the
    first job whose model reaches the target -- exactly what a user pays for that model,
    including job start-up and result transfer. Placement (g.scatter) is done once, before,
    and reported separately. Throughput, overhead and final accuracy come from one job
    with rounds = EPOCHS: throughput = median over its rounds of samples / round seconds
    (driver-measured, overhead included); overhead = median of round seconds minus
    compute_seconds (the slowest partition task, measured on the node) from job.history;
    with one partition per node the slowest task is the round's critical path.
  * serial sklearn / dask-ml: EPOCHS epochs of partial_fit from scratch; the clock runs
    only inside partial_fit; time to target = cumulative partial_fit time at the first
    epoch that reaches the target; throughput = training rows / median epoch time.
  * lbfgs: one fit (BLAS may use every core); time to target = its fit time.
  * peak RSS: main = this process (client; for the grid and dask-ml also the in-process
    scheduler; it also holds the dataset), sampled every 10 ms during the method;
    node = max over the worker processes of their lifetime peak (ru_maxrss), each
    cluster started for that method only. The grid keeps 2 replicas of every partition,
    so each of its 2 nodes holds the whole training set.
  * the grid and the dask-ml cluster are warmed up with one tiny fit on 64 test rows first
    (fresh worker processes import numpy / scikit-learn on their first task).
  * ">=" marks a lower bound: the anchor did not reach the target within EPOCHS epochs."""


# --------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------
@dataclass
class Problem:
    key: str
    title: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.y_train)


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(copy=False).fit(X_train)
    scaler.transform(X_train, copy=False)
    scaler.transform(X_test, copy=False)


def _split(X: np.ndarray, y: np.ndarray, n_train: int) -> tuple[np.ndarray, ...]:
    # make_classification shuffles its rows, so the first n_train rows are a random split;
    # views, not copies (the full problem is 800 MB)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def make_problem(key: str, quick: bool) -> Problem:
    from sklearn.datasets import load_digits, make_classification

    if key == "digits":
        X, y = load_digits(return_X_y=True)
        X = X.astype(np.float64)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(y))
        X, y = X[order], y[order]
        n_train = int(0.8 * len(y))
        title = f"(a) digits: {len(y):,} x {X.shape[1]}, 10 classes, {n_train:,} training rows"
    elif key == "binary":
        n = 60_000 if quick else 2_000_000
        X, y = make_classification(n_samples=n, n_features=50, n_informative=20, n_redundant=10,
                                   random_state=0)
        n_train = int(0.8 * n)
        title = f"(b) generated binary: {n:,} x 50, {n_train:,} training rows"
    elif key == "multiclass":
        n = 30_000 if quick else 500_000
        X, y = make_classification(n_samples=n, n_features=100, n_informative=30, n_redundant=10,
                                   n_classes=10, random_state=0)
        n_train = int(0.8 * n)
        title = f"(c) generated 10-class: {n:,} x 100, {n_train:,} training rows"
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(key)
    X_train, y_train, X_test, y_test = _split(X, y, n_train)
    _standardise(X_train, X_test)
    return Problem(key, title, X_train, y_train, X_test, y_test)


def blocks(n: int, parts: int) -> list[slice]:
    step = math.ceil(n / parts)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# --------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process, sampled in a thread while active."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def _worker_maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def workers_peak_mb(client: Any) -> float:
    """Largest lifetime peak RSS among a cluster's worker processes."""
    peaks = client.run(_worker_maxrss_kb)
    return max(peaks.values()) / 1024 if peaks else float("nan")


def accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X) == y))


@dataclass
class Result:
    name: str
    time_to_target: float | None = None  # None: not reached within the budget
    spent: float = 0.0  # time measured in total (lower bound when not reached)
    steps_to_target: int | None = None  # epochs / rounds
    throughput: float | None = None  # rows/s
    final_accuracy: float = float("nan")
    main_mb: float = float("nan")
    node_mb: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def ttt_cell(self) -> str:
        if self.time_to_target is not None:
            return f"{self.time_to_target:.3g}"
        return f">{self.spent:.3g} (not reached)"


def iterative_anchor(name: str, problem: Problem, epochs: int, target: float,
                     epoch_fn: Callable[[], None], model: Callable[[], Any]) -> Result:
    """Run ``epochs`` epochs, timing only ``epoch_fn``; evaluate after each (untimed)."""
    res = Result(name)
    times, spent = [], 0.0
    acc = float("nan")
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        epoch_fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        acc = accuracy(model(), problem.X_test, problem.y_test)
        if res.time_to_target is None and acc >= target:
            res.time_to_target, res.steps_to_target = spent, epoch
    res.spent = spent
    res.throughput = len(problem.y_train) / statistics.median(times)
    res.final_accuracy = acc
    res.notes["epoch_seconds"] = statistics.median(times)
    return res


# --------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------
def run_lbfgs(problem: Problem) -> Result:
    from sklearn.linear_model import LogisticRegression

    res = Result("LogisticRegression(lbfgs) [ceiling]")
    with PeakRSS() as peak, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on the small problems
        start = time.perf_counter()
        model = LogisticRegression(solver="lbfgs", max_iter=1000).fit(problem.X_train, problem.y_train)
        res.time_to_target = res.spent = time.perf_counter() - start
    res.final_accuracy = accuracy(model, problem.X_test, problem.y_test)
    res.main_mb = peak.mb
    res.notes["n_iter"] = int(np.max(model.n_iter_))
    return res


def run_serial(problem: Problem, epochs: int, target: float, parts: int) -> Result:
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", random_state=0)
    cuts = blocks(len(problem.y_train), parts)
    classes = problem.classes

    def epoch() -> None:
        for s in cuts:
            clf.partial_fit(problem.X_train[s], problem.y_train[s], classes=classes)

    with PeakRSS() as peak:
        res = iterative_anchor("sklearn SGDClassifier.partial_fit (serial)", problem, epochs, target,
                               epoch, lambda: clf)
    res.main_mb = peak.mb
    return res


def warm_up_dask_ml(problem: Problem) -> None:
    """Fresh workers import scikit-learn on their first task: not part of training."""
    import dask.array as da
    from dask_ml.wrappers import Incremental
    from sklearn.linear_model import SGDClassifier

    X = da.from_array(problem.X_test[:64], chunks=32)
    y = da.from_array(problem.y_test[:64], chunks=32)
    Incremental(SGDClassifier(loss="log_loss")).partial_fit(X, y, classes=problem.classes)


def run_dask_ml(problem: Problem, epochs: int, target: float, parts: int) -> Result:
    import dask
    import dask.array as da
    from dask_ml.wrappers import Incremental
    from distributed import Client, LocalCluster
    from sklearn.linear_model import SGDClassifier

    cuts = blocks(len(problem.y_train), parts)
    with PeakRSS() as peak:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            # place the blocks on the workers once (as g.scatter does for the grid); a dask array over them
            start = time.perf_counter()
            xs = client.scatter([problem.X_train[s] for s in cuts])
            ys = client.scatter([problem.y_train[s] for s in cuts])
            Xd = da.concatenate([da.from_delayed(dask.delayed(f), shape=(s.stop - s.start, problem.X_train.shape[1]),
                                                 dtype=problem.X_train.dtype) for f, s in zip(xs, cuts)])
            yd = da.concatenate([da.from_delayed(dask.delayed(f), shape=(s.stop - s.start,), dtype=problem.y_train.dtype)
                                 for f, s in zip(ys, cuts)])
            placement = time.perf_counter() - start
            warm_up_dask_ml(problem)
            inc = Incremental(SGDClassifier(loss="log_loss", random_state=0), shuffle_blocks=True,
                              random_state=0, assume_equal_chunks=True)
            classes = problem.classes
            res = iterative_anchor("dask-ml Incremental(SGDClassifier), 2 workers", problem, epochs, target,
                                   lambda: inc.partial_fit(Xd, yd, classes=classes), lambda: inc.estimator_)
            res.node_mb = workers_peak_mb(client)
            del Xd, yd, xs, ys
    res.main_mb = peak.mb
    res.notes["placement_seconds"] = placement
    return res


def kernel_reference(problem: Problem, parts: int) -> float:
    """Rows/s of the grid's local step (``jobs.sgd.sgd_step``, one epoch) on partition 0,
    in this process on one core: what a node could do without any grid around it."""
    from threadpoolctl import threadpool_limits

    from jobs import SGDClassifier
    from jobs.sgd import sgd_step
    from jobs.spec import estimator_spec

    s = blocks(len(problem.y_train), parts)[0]
    X, y = problem.X_train[s], problem.y_train[s]
    spec = estimator_spec(SGDClassifier(loss="log_loss"))
    best = math.inf
    with threadpool_limits(1):
        for seed in range(2):
            start = time.perf_counter()
            sgd_step(spec, None, X, y, classes=problem.classes, seed=seed)
            best = min(best, time.perf_counter() - start)
    return len(y) / best


def updates_per_node(g: Any) -> dict[str, int]:
    """Partition updates (round requests and tasks) each node of region eu has finished so far."""
    return {w["address"]: int(w["tasks_done"]) for w in g.status()["eu"]["workers"]}


def run_grid(problem: Problem, epochs: int, target: float, parts: int) -> Result:
    from grid import Grid
    from jobs import SGDClassifier

    res = Result("jobs.SGDClassifier, grid 1 region x 2 nodes")
    rows = math.ceil(len(problem.y_train) / parts)
    with PeakRSS() as peak:
        with Grid.local(regions={"eu": 2}, dashboard=False) as g:
            # fresh node processes import numpy/scikit-learn/jobs on their first task: not part of training
            SGDClassifier(rounds=1).fit(problem.X_test[:64], problem.y_test[:64], grid=g)
            start = time.perf_counter()
            data = g.scatter(problem.X_train, problem.y_train, partition_rows=rows)
            res.notes["placement_seconds"] = time.perf_counter() - start

            def fit(rounds: int) -> tuple[float, Any, list[dict]]:
                est = SGDClassifier(loss="log_loss", rounds=rounds, random_state=0)
                start = time.perf_counter()
                job = g.submit(est, data)
                model = job.result()
                return time.perf_counter() - start, model, model.history_

            # time to target: fresh jobs of 1, 2, 3, ... rounds
            for r in range(1, epochs + 1):
                seconds, model, _ = fit(r)
                res.spent = seconds  # not reached: the longest job tried is the lower bound
                if accuracy(model, problem.X_test, problem.y_test) >= target:
                    res.time_to_target, res.steps_to_target = seconds, r
                    break
            # throughput, overhead, final accuracy: one job of `epochs` rounds; the nodes' update
            # counts show whether the partitions of a round ran on different nodes
            before = updates_per_node(g)
            seconds, model, history = fit(epochs)
            after = updates_per_node(g)
            res.notes["updates_per_node"] = sorted(after[w] - before.get(w, 0) for w in after)
            res.final_accuracy = accuracy(model, problem.X_test, problem.y_test)
            round_s = [h["seconds"] for h in history]
            compute_s = [h["compute_seconds"] for h in history]
            res.throughput = statistics.median(h["samples"] / h["seconds"] for h in history)
            res.notes.update(
                job_seconds=seconds,
                round_seconds=statistics.median(round_s),
                compute_seconds=statistics.median(compute_s),
                overhead=statistics.median(r - c for r, c in zip(round_s, compute_s)),
                compute_throughput=statistics.median(h["samples"] / h["compute_seconds"] for h in history),
                updates=history[0]["updates"],
            )
            res.node_mb = workers_peak_mb(g.client("eu"))
            g.drop(data)
    res.notes["kernel_throughput"] = kernel_reference(problem, parts)
    res.main_mb = peak.mb
    return res


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def _ratio(anchor: Result, grid: Result) -> tuple[float | None, bool]:
    """Grid speed-up over ``anchor`` in time to target, and whether it is a lower bound."""
    if grid.time_to_target is None:
        return None, False
    if anchor.time_to_target is None:
        return anchor.spent / grid.time_to_target, True
    return anchor.time_to_target / grid.time_to_target, False


def _ratio_cell(r: tuple[float | None, bool]) -> str:
    value, lower = r
    if value is None:
        return "n/a"
    return f"{'>=' if lower else ''}{value:.2f}x"


def _verdict(r: tuple[float | None, bool], goal: float) -> str:
    value, lower = r
    if value is None:
        return "MISS (grid did not reach the target)"
    if value >= goal:
        return "PASS"
    return "UNDECIDED (lower bound; raise --epochs)" if lower else "MISS"


def report(problem: Problem, target: float, results: dict[str, Result], epochs: int, parts: int) -> str:
    grid = results["grid"]
    lines = [f"## {problem.title}", f"target accuracy: {target:.4f} (lbfgs {results['lbfgs'].final_accuracy:.4f} - 0.5 points); "
             f"EPOCHS = {epochs}; {parts} partitions of <= {math.ceil(len(problem.y_train) / parts):,} rows"]
    rows = []
    for key in ("grid", "serial", "dask_ml", "lbfgs"):
        r = results[key]
        speedup = "1 (reference)" if key == "grid" else _ratio_cell(_ratio(r, grid))
        rows.append((
            r.name,
            r.ttt_cell(),
            "-" if r.steps_to_target is None else r.steps_to_target,
            "-" if r.throughput is None else f"{r.throughput / 1e6:.2f}M",
            f"{r.final_accuracy:.4f}",
            f"{r.main_mb:,.0f}",
            "-" if r.node_mb is None else f"{r.node_mb:,.0f}",
            speedup,
        ))
    lines.append(table(
        ["method", "time to target (s)", "epochs/rounds to target", "epoch throughput (rows/s)",
         f"accuracy after {epochs} epochs", "peak RSS main (MB)", "peak RSS per node (MB)",
         "grid speed-up (time to target)"],
        rows,
    ))
    n = grid.notes
    lines.append(
        f"grid: placement (g.scatter, once) {n['placement_seconds']:.2f}s; {epochs}-round job {n['job_seconds']:.2f}s; "
        f"median round {n['round_seconds'] * 1e3:.1f} ms = compute {n['compute_seconds'] * 1e3:.1f} ms + overhead "
        f"{n['overhead'] * 1e3:.1f} ms; {n['updates']} partition updates per round, {n['updates_per_node']} per node over the job; compute-only throughput "
        f"{n['compute_throughput'] / 1e6:.2f}M rows/s; the same local step in this process on one core: "
        f"{n['kernel_throughput'] / 1e6:.2f}M rows/s per core"
    )
    lines.append(
        f"dask-ml: placement (client.scatter, once) {results['dask_ml'].notes['placement_seconds']:.2f}s, "
        f"median epoch {results['dask_ml'].notes['epoch_seconds']:.3f}s; serial sklearn median epoch "
        f"{results['serial'].notes['epoch_seconds']:.3f}s; lbfgs {results['lbfgs'].notes['n_iter']} iterations"
    )
    goals = [
        ("time to target vs serial sklearn partial_fit", _ratio_cell(_ratio(results["serial"], grid)),
         f">= {GOAL_VS_SERIAL:g}x", _verdict(_ratio(results["serial"], grid), GOAL_VS_SERIAL)),
        ("time to target vs dask-ml Incremental", _ratio_cell(_ratio(results["dask_ml"], grid)),
         f">= {GOAL_VS_DASK_ML:g}x", _verdict(_ratio(results["dask_ml"], grid), GOAL_VS_DASK_ML)),
        ("time to target vs lbfgs", _ratio_cell(_ratio(results["lbfgs"], grid)),
         f">= {GOAL_VS_LBFGS:g}x", _verdict(_ratio(results["lbfgs"], grid), GOAL_VS_LBFGS)),
        ("grid epoch throughput (2 nodes)", f"{grid.throughput / 1e6:.2f}M rows/s",
         f">= {GOAL_THROUGHPUT / 1e6:g}M rows/s", "PASS" if grid.throughput >= GOAL_THROUGHPUT else "MISS"),
        ("driver overhead per round (median)", f"{n['overhead'] * 1e3:.1f} ms",
         f"<= {GOAL_OVERHEAD * 1e3:g} ms", "PASS" if n["overhead"] <= GOAL_OVERHEAD else "MISS"),
    ]
    scope = "" if problem.key == "binary" else " (the issue states the goals for problem (b); informational here)"
    lines.append(f"goals{scope}:")
    lines.append(table(["goal", "measured", "goal", "verdict"], goals))
    return "\n".join(lines)


@contextmanager
def quiet() -> Iterator[None]:
    """Benchmark output is a report, not a log: distributed's and the grid's loggers at ERROR
    (:func:`grid.logs.quiet_distributed`), and no UserWarning inside the block."""
    quiet_distributed(names=(*DISTRIBUTED_LOGGERS, "grid"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # dask "large graph" warnings
        yield


def main(argv: list[str] | None = None) -> dict[str, dict[str, Result]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (60k x 50, 30k x 100) and 4 epochs: a correctness check")
    parser.add_argument("--problems", default="digits,binary,multiclass",
                        help="comma-separated subset of digits,binary,multiclass")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs / rounds per iterative method (default 10, --quick 4)")
    parser.add_argument("--partitions", type=int, default=2,
                        help="partitions (= blocks for the anchors); default one per node")
    args = parser.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 10)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    for p in problems:
        if p not in ("digits", "binary", "multiclass"):
            parser.error(f"unknown problem {p!r}")

    started = time.perf_counter()
    print(f"# Training benchmark: python -m benchmarks.sgd{' --quick' if args.quick else ''}")
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(METHOD.replace("EPOCHS", str(epochs)))
    out: dict[str, dict[str, Result]] = {}
    with quiet():
        for key in problems:
            problem = make_problem(key, args.quick)
            results = {"lbfgs": run_lbfgs(problem)}
            target = results["lbfgs"].final_accuracy - TARGET_GAP
            results["serial"] = run_serial(problem, epochs, target, args.partitions)
            results["grid"] = run_grid(problem, epochs, target, args.partitions)
            results["dask_ml"] = run_dask_ml(problem, epochs, target, args.partitions)
            print()
            print(report(problem, target, results, epochs, args.partitions), flush=True)
            out[key] = results
            del problem
            gc.collect()
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s; "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return out


if __name__ == "__main__":
    main()
