"""The functions nodes run for grid jobs.

Each takes plain data (the job request, a state blob, the partition's rows)
and returns one ``bytes`` blob in the wire format of :mod:`grid.wire`, so the
scheduler reads numbers, never code. They call the pure training math of
``jobs``; they never import the scheduler side of the grid.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from grid import config, wire
from grid.node.community import CommunityMode
import jobs  # noqa: F401  (registers every job kind's local step)
from jobs.data import read_partition
from jobs.data_roots import HTTP_SCHEMES, Location, check_location, fetch_url, roots_setting
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


def _this_worker() -> Any:
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # called outside a task (tests, tools): no node to ask
        return None


def data_policy(worker: Any = None) -> dict:
    """This node's rules for ``Files`` reads: ``check_location`` keyword arguments.

    A community node (the ``CommunityMode`` plugin installed) reads only under
    its data roots, and has none until its operator names them; a private or
    embedded node reads anything unless roots are configured. URLs into the
    node's own networks are refused unless ``grid.node.allow-private-urls``.
    """
    roots = roots_setting(config.get("node.data-roots"))
    community = worker is not None and CommunityMode.name in getattr(worker, "plugins", {})
    name = getattr(worker, "name", None)
    return {
        "roots": roots,
        "restricted": community or bool(roots),
        "allow_private_urls": bool(config.get("node.allow-private-urls")),
        "restricted_by": f"node {name!r} runs in community mode" if name is not None else "a community node",
    }


def _opener(location: Location) -> Any:
    """Open exactly the checked location: the resolved path, or the URL at its checked addresses."""
    if location.local:
        return lambda: open(location.target, "rb")
    if urlsplit(location.target).scheme.lower() in HTTP_SCHEMES:
        return lambda: fetch_url(location)

    def open_remote() -> Any:
        import fsspec

        return fsspec.open(location.target, "rb")

    return open_remote


def read_file_partition(path: str, options: dict) -> tuple:
    """Read one file partition on this node (``jobs.data.Files``).

    The node's data roots and URL rules are checked here, on the node, right
    before the file is opened, so neither a client nor a scheduler can skip
    them (see docs/operations.md, "Data roots").
    """
    location = check_location(path, **data_policy(_this_worker()))
    reader = {k: options.get(k) for k in ("target", "features", "format")}
    return read_partition(path, **reader, opener=_opener(location))


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
