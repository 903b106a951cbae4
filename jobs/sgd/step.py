"""The local step of job kind ``"sgd"``: what a node computes on one partition in one round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jobs.sgd.data import Targets, _take_rows, as_features, encode_targets, sample_weights, validation_split
from jobs.sgd.kernel import run_epochs
from jobs.sgd.losses import evaluate
from jobs.sgd.params import config_from_params
from jobs.sgd.state import AVERAGE_KEYS, State, check_state, init_state


def _is_classification(spec: Mapping[str, Any], classes: Any) -> bool:
    if classes is not None:
        return True
    return str(spec.get("class", "")).endswith("Classifier")


def sgd_step(
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
    """One local update of the grid's SGD on one partition.

    Parameters
    ----------
    spec : dict
        ``{"class": ..., "params": ...}`` of ``jobs.SGDClassifier`` /
        ``jobs.SGDRegressor``.
    state : dict or None
        The current global state (None on the first round).
    X, y : the partition's rows
    classes : ndarray, optional
        All class labels of the job (classifiers).
    seed : int, optional
        Seed of this (job, round, partition): shuffles and the step-size sample.
    epochs : int
        Local passes over the partition.
    sample_weight : array-like, optional
        Per-row weights of the partition.

    Returns
    -------
    state : dict
        The updated state (same keys and shapes every round).
    metrics : dict
        ``samples`` (rows trained on, times epochs), ``loss`` and ``score``
        (progressive: each minibatch scored before its update, last epoch),
        and with ``early_stopping=True`` the held-out ``val_loss``/``val_score``
        of the updated local model and ``start_val_loss``/``start_val_score``
        of the incoming global model, with ``val_samples``.
    """
    params = spec.get("params") or {}
    classification = _is_classification(spec, classes)
    cfg = config_from_params(params, classification=classification)
    X = as_features(X)
    if y is None:
        raise ValueError("the grid's SGD requires y to be passed, but the target y is None")
    dtype = X.dtype
    classes_arr = None if classes is None else np.asarray(classes)
    targets = encode_targets(cfg, y, classes_arr, dtype)
    n, d = X.shape
    if targets.values.shape[0] != n:
        raise ValueError(f"X has {n} rows but y has {targets.values.shape[0]}")
    w = sample_weights(cfg, targets, classes_arr, sample_weight, n, dtype)
    st = init_state(d, targets.n_outputs) if state is None else check_state(state, d, targets.n_outputs)
    for key in AVERAGE_KEYS:  # the scheduler keeps the average; a node trains the plain iterate
        st.pop(key, None)
    st["t0"] = st["t"]
    rng = np.random.default_rng(0 if seed is None else int(seed))
    metrics: dict[str, float] = {}
    if cfg.early_stopping:
        train, val = validation_split(n, cfg.validation_fraction, cfg.seed)
        Xv = _take_rows(X, val)
        tv = Targets(targets.kind, targets.values[val], targets.n_outputs)
        wv = None if w is None else w[val]
        X = _take_rows(X, train)
        targets = Targets(targets.kind, targets.values[train], targets.n_outputs)
        w = None if w is None else w[train]
        start = evaluate(cfg, st["coef"], st["intercept"], Xv, tv, wv)
        metrics["start_val_loss"] = start["loss"]
        metrics["start_val_score"] = start["score"]
    new, stats = run_epochs(cfg, st, X, targets, w, rng, epochs)
    metrics["samples"] = float(X.shape[0] * int(epochs))
    metrics["loss"] = float(stats.loss)
    if targets.kind == "regression":
        T = targets.values.astype(np.float64)
        mean = float(np.average(T, weights=w)) if w is not None and w.sum() > 0 else float(T.mean())
        ss = float(np.sum((T - mean) ** 2) if w is None else np.dot(w, (T - mean) ** 2))
        metrics["score"] = 1.0 - stats.hits / ss if ss > 0 else 0.0
    else:
        metrics["score"] = stats.hits / stats.weight if stats.weight else 0.0
    if cfg.early_stopping:
        end = evaluate(cfg, new["coef"], new["intercept"], Xv, tv, wv)
        metrics["val_loss"] = end["loss"]
        metrics["val_score"] = end["score"]
        metrics["val_samples"] = float(Xv.shape[0])
    return new, metrics
