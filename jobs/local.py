"""Local updates: what a node computes on one partition in one round.

Pure scikit-learn / numpy. The grid's node tasks call these functions with the
job's estimator spec, the current global state and the partition's rows, and
send the returned state back as raw numeric buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.merge import State, state_rule
from jobs.sgd import sgd_step
from jobs.spec import build_estimator


def derive_seed(job_seed: int, round_no: int, partition: int) -> int:
    """A 32-bit seed from (job seed, round, partition): the only source of randomness."""
    return int(np.random.SeedSequence([int(job_seed), int(round_no), int(partition)]).generate_state(1)[0])


def prepare_estimator(spec: dict, state: State | None, seed: int | None) -> Any:
    """Build the estimator of ``spec`` and load ``state`` into it.

    An estimator whose ``random_state`` the user left as None gets ``seed``, so
    every run of the job is reproducible; an explicit ``random_state`` is kept,
    which is what makes sequential mode equal a serial ``partial_fit`` loop.
    """
    est = build_estimator(spec)
    params = est.get_params(deep=False)
    if seed is not None and "random_state" in params and params["random_state"] is None:
        est.set_params(random_state=seed)
    if state:
        state_rule(est).set_state(est, state)
    return est


def partial_fit_step(
    spec: dict,
    state: State | None,
    X: Any,
    y: Any,
    *,
    classes: np.ndarray | None = None,
    seed: int | None = None,
    epochs: int = 1,
    sample_weight: Any = None,
) -> tuple[State, dict[str, float]]:
    """Run ``epochs`` calls of ``partial_fit`` on one partition from ``state``.

    Returns
    -------
    state : dict
        The estimator's new state.
    metrics : dict
        ``samples`` and the training ``loss`` / ``score`` on this partition
        after the update.
    """
    est = prepare_estimator(spec, state, seed)
    kwargs = {}
    if classes is not None:
        kwargs["classes"] = classes
    if sample_weight is not None:
        kwargs["sample_weight"] = sample_weight
    for _ in range(int(epochs)):
        if y is None:
            est.partial_fit(X, **kwargs)
        else:
            est.partial_fit(X, y, **kwargs)
    metrics = {"samples": float(X.shape[0] * int(epochs))}
    metrics.update(partition_metrics(est, X, y))
    return state_rule(est).get_state(est), metrics


#: Local update functions by job kind. Each has the signature of
#: :func:`partial_fit_step`: ``(spec, state, X, y, *, classes, seed, epochs)``
#: returning ``(state, metrics)``. Job estimators name their kind in their
#: request; nodes look the function up here.
#: the local update of each job kind: what a node computes for one partition
LOCAL_STEPS = {"partial_fit": partial_fit_step, "sgd": sgd_step}


def local_step(kind: str):
    try:
        return LOCAL_STEPS[kind]
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r}; known kinds are {sorted(LOCAL_STEPS)}") from None


def partition_metrics(est: Any, X: Any, y: Any) -> dict[str, float]:
    """Training loss and score of ``est`` on one partition (cheap: one predict pass)."""
    if y is None:
        score = getattr(est, "score", None)
        if score is None:
            return {}
        try:
            value = float(score(X))
        except Exception:  # noqa: BLE001 - transformers without a meaningful score
            return {}
        return {"loss": -value, "score": value}
    # a partition without some class leaves that class a zero prior (naive Bayes): log(0) = -inf is
    # the right answer there, not something to warn about on every node every round
    with np.errstate(divide="ignore"):
        predicted = est.predict(X)
    if getattr(est, "_estimator_type", None) == "classifier" or hasattr(est, "classes_"):
        accuracy = float(np.mean(predicted == y))
        return {"loss": 1.0 - accuracy, "score": accuracy}
    residual = np.asarray(y, dtype=np.float64) - np.asarray(predicted, dtype=np.float64)
    mse = float(np.mean(residual**2))
    variance = float(np.var(y)) or 1.0
    return {"loss": mse, "score": 1.0 - mse / variance}
