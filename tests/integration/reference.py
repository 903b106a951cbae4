"""What a grid job computes, recomputed in this process without a grid.

Tests compare a job's model with these references to 1e-9 instead of checking
that its score clears a threshold: a job whose merge lost a partition, counted
one twice, skipped a round or returned its starting model scores about as well
as a correct one, but its coefficients differ from the reference.

* :func:`fedavg` is ``PartialFit(model)`` in average mode for a linear
  scikit-learn model, written with scikit-learn and numpy alone: every
  partition continues a copy of the global model with ``partial_fit``, and the
  next global model is the sample-weighted mean of ``coef_``, ``intercept_``
  and ``t_`` (FedAvg).
* :func:`grid_sgd` is ``jobs.SGDClassifier`` / ``jobs.SGDRegressor``: rounds of
  the numpy kernel (``jobs.sgd.sgd_step``, compared with scikit-learn in
  ``tests/unit/test_sgd_math.py``) on every partition; the next global model
  is the sample-weighted mean of ``coef`` and ``intercept`` (computed here,
  not by the merge rule under test), with the kernel's own step-schedule
  bookkeeping (``jobs.sgd.merge_counters``, ``jobs.sgd.server_update``).

Both cut in-memory data into partitions the way ``Grid.submit`` does
(``jobs.data.partition``), or take the partitions (dask chunks, files) as a
list of ``(X, y)`` blocks. Seeds follow the grid's rule: (job seed, round,
partition index).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier

from jobs import sgd
from jobs.data import partition
from jobs.local import derive_seed

#: the tolerance of a job's coefficients against a reference: the grid sums the same
#: numbers in another order (regional means first), which changes the last bits only
ATOL = 1e-9


def _blocks(X: Any, y: Any, parts: Sequence[tuple[Any, Any]] | None, partition_rows: int | str) -> list[tuple[Any, Any]]:
    if parts is not None:
        return [(np.asarray(Xp), np.asarray(yp)) for Xp, yp in parts]
    return [(Xp, yp) for Xp, yp, _ in partition(X, y, partition_rows=partition_rows).parts]


def fedavg(
    model: Any,
    X: Any = None,
    y: Any = None,
    *,
    rounds: int,
    seed: int = 0,
    partition_rows: int | str = "auto",
    parts: Sequence[tuple[Any, Any]] | None = None,
    merged: Sequence[Sequence[int]] | None = None,
) -> Any:
    """The model ``PartialFit(model, rounds=rounds, seed=seed, partition_rows=...)`` trains in average mode.

    Only for linear scikit-learn models (``SGDClassifier``, ``SGDRegressor``,
    ``Perceptron``, ``PassiveAggressive*``), whose state is ``coef_``,
    ``intercept_`` and the step counter ``t_``. ``merged`` lists, per round,
    the indices of the partitions whose updates the round combines (default:
    all of them), for rounds that left a region out.
    """
    blocks = _blocks(X, y, parts, partition_rows)
    classes = np.unique(np.concatenate([yp for _, yp in blocks])) if is_classifier(model) else None
    own_seed = model.get_params().get("random_state") is not None
    global_model = None
    for r in range(rounds):
        local_models, weights = [], []
        for i, (Xp, yp) in enumerate(blocks):
            if merged is not None and i not in merged[r]:
                continue
            local = clone(model) if global_model is None else copy.deepcopy(global_model)
            if not own_seed:  # the grid seeds a model whose random_state the user left as None
                local.set_params(random_state=derive_seed(seed, r, i))
            if classes is not None:
                local.partial_fit(Xp, yp, classes=classes)
            else:
                local.partial_fit(Xp, yp)
            local_models.append(local)
            weights.append(float(Xp.shape[0]))
        global_model = copy.deepcopy(local_models[0])
        for name in ("coef_", "intercept_", "t_"):
            mean = np.average([np.asarray(getattr(m, name), dtype=np.float64) for m in local_models], axis=0, weights=weights)
            setattr(global_model, name, float(mean) if name == "t_" else mean)
    return global_model


def grid_sgd(
    estimator: Any,
    X: Any = None,
    y: Any = None,
    *,
    parts: Sequence[tuple[Any, Any]] | None = None,
) -> Any:
    """A fitted copy of the grid SGD ``estimator`` as a grid job trains it on ``X``, ``y`` (or ``parts``).

    The estimator's ``tol`` may not end the job early within its rounds (the
    reference runs every round): use ``tol=None`` or ``n_iter_no_change`` of at
    least the round count.
    """
    request = estimator._job_request()
    stopping = request.get("stopping")
    if stopping is not None and int(stopping["n_iter_no_change"]) < request["rounds"]:
        raise ValueError(
            f"the reference runs every round, but tol={stopping['tol']!r} with n_iter_no_change="
            f"{stopping['n_iter_no_change']} may stop the job after fewer than {request['rounds']} rounds; "
            "pass tol=None"
        )
    if request["aggregate"] != "mean":
        raise ValueError(f"the reference averages; aggregate={request['aggregate']!r} is not supported")
    blocks = _blocks(X, y, parts, request["partition_rows"])
    classes = np.unique(np.concatenate([yp for _, yp in blocks])) if estimator._is_classifier() else None
    params = request["estimator"]["params"]
    state = None
    history = []
    for r in range(request["rounds"]):
        states, weights = [], []
        for i, (Xp, yp) in enumerate(blocks):
            new, metrics = sgd.sgd_step(request["estimator"], state, Xp, yp, classes=classes,
                                        seed=derive_seed(request["seed"], r, i), epochs=request["local_epochs"])
            states.append(new)
            weights.append(metrics["samples"])
        merged = {
            name: np.average([np.asarray(s[name], dtype=np.float64) for s in states], axis=0, weights=weights)
            for name in ("coef", "intercept")
        }
        merged.update(sgd.merge_counters(states, weights))
        state = sgd.server_update(state, merged, params, r)
        history.append({"round": r + 1, "samples": float(sum(weights))})
    fitted = clone(estimator)
    request["classes"] = None if classes is None else classes.tolist()
    request["n_features"] = int(blocks[0][0].shape[1])
    fitted._load_result(state, history, request)
    return fitted


def assert_same_model(fitted: Any, reference: Any, atol: float = ATOL) -> None:
    """``fitted`` (a grid job's result) has the coefficients of ``reference`` to ``atol``."""
    inner = getattr(fitted, "estimator_", fitted)
    np.testing.assert_allclose(inner.coef_, reference.coef_, rtol=0, atol=atol, err_msg="coef_")
    np.testing.assert_allclose(inner.intercept_, reference.intercept_, rtol=0, atol=atol, err_msg="intercept_")
