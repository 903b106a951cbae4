"""The functions nodes run for grid jobs.

Each takes plain data (the job request, a state blob, the partition's rows)
and returns one ``bytes`` blob in the wire format of :mod:`grid.wire`, so the
scheduler reads numbers, never code. They call the pure training math of
``jobs``; they never import the scheduler side of the grid.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from grid import wire
import jobs  # noqa: F401  (registers every job kind's local step)
from jobs.data import read_partition
from jobs.local import derive_seed, local_step


def _classes(request: dict) -> np.ndarray | None:
    classes = request.get("classes")
    return None if classes is None else np.asarray(classes)


def _state(blob: bytes | None) -> dict | None:
    if blob is None:
        return None
    arrays, _ = wire.decode(blob)
    return arrays


def _aligned(X: Any) -> Any:
    """X with aligned memory: data scattered by Dask can arrive unaligned, which
    makes numpy's row gathers an order of magnitude slower. A copy costs one
    pass over the partition; an SGD epoch costs several."""
    if isinstance(X, np.ndarray) and not X.flags.aligned:
        return np.require(X, requirements="CA")
    return X


def _step_kwargs(weights: Any) -> dict:
    return {} if weights is None else {"sample_weight": weights}


def partition_update(
    request: dict, state_blob: bytes | None, partition: tuple[Any, Any, Any], round_no: int, index: int
) -> bytes:
    """One local update of one partition from the global state (average mode)."""
    start = time.perf_counter()
    X, y, w = partition
    X = _aligned(X)
    state, metrics = local_step(request["kind"])(
        request["estimator"],
        _state(state_blob),
        X,
        y,
        classes=_classes(request),
        seed=derive_seed(request["seed"], round_no, index),
        epochs=request.get("local_epochs", 1),
        **_step_kwargs(w),
    )
    metrics["seconds"] = time.perf_counter() - start
    metrics["partition"] = index
    return wire.encode(state, metrics)


def sequential_step(
    request: dict, previous: bytes | None, partition: tuple[Any, Any, Any], round_no: int, index: int
) -> bytes:
    """Continue the model of the previous partition on this one (sequential mode).

    Metrics accumulate along the chain: sample-weighted sums of loss and score.
    """
    start = time.perf_counter()
    X, y, w = partition
    X = _aligned(X)
    state, acc = (None, {}) if previous is None else wire.decode(previous)
    if "samples" not in acc:  # first step of this region's chain
        acc = {"samples": 0.0, "loss_sum": 0.0, "score_sum": 0.0, "seconds": 0.0}
    new_state, metrics = local_step(request["kind"])(
        request["estimator"],
        state,
        X,
        y,
        classes=_classes(request),
        seed=derive_seed(request["seed"], round_no, index),
        epochs=1,
        **_step_kwargs(w),
    )
    n = metrics["samples"]
    acc = {
        "samples": acc["samples"] + n,
        "loss_sum": acc["loss_sum"] + n * metrics.get("loss", 0.0),
        "score_sum": acc["score_sum"] + n * metrics.get("score", 0.0),
        "seconds": acc["seconds"] + time.perf_counter() - start,
    }
    return wire.encode(new_state, acc)


def read_file_partition(path: str, options: dict) -> tuple:
    """Read one file partition on this node (``jobs.data.Files``)."""
    return read_partition(path, **options)


def describe_partition(partition: tuple) -> bytes:
    """Rows, features and labels of a partition, for the scheduler to check and count."""
    X, y, _ = partition
    arrays = {"rows": int(X.shape[0]), "n_features": int(X.shape[1])}
    if y is not None and (y.dtype.kind in "biuUS" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0))):
        labels = np.unique(y)
        if labels.size <= 10_000:
            arrays["labels"] = labels
    values = X.data if hasattr(X, "tocsr") else X  # sparse: the stored values
    return wire.encode(arrays, {"x_kind": values.dtype.kind})
