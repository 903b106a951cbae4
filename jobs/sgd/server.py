"""The scheduler's side of the grid's SGD: merge bookkeeping and the server update.

What the home scheduler applies to the merged state of a round
(:class:`jobs.merge.SGDJobRule` calls these): the schedule counters of the
partitions combined (:func:`merge_counters`), the ``"adaptive"`` plateau rule
(:func:`adaptive_update`), FedAvgM server momentum and the running average of
``average`` (:func:`average_update`). Nodes never run this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jobs.sgd.params import CLASSIFICATION_LOSSES, SGDConfig, config_from_params
from jobs.sgd.state import AVERAGE_KEYS, State

#: the ``"adaptive"`` schedule divides the step by this after a plateau
_ADAPTIVE_DIVISOR = 5.0


def adaptive_update(cfg: SGDConfig, state: State, loss: float) -> State:
    """Plateau rule of ``learning_rate="adaptive"``, applied once per round.

    When ``loss > best_loss - tol`` for ``n_iter_no_change`` consecutive
    rounds, the step is divided by 5 and the count restarts.
    """
    state = dict(state)
    tol = cfg.tol if cfg.tol is not None else -np.inf
    if loss > state["best_loss"] - tol:
        state["no_improve"] = state["no_improve"] + 1.0
    else:
        state["no_improve"] = 0.0
    state["best_loss"] = min(state["best_loss"], loss)
    if state["no_improve"] >= cfg.n_iter_no_change:
        state["eta_scale"] = state["eta_scale"] / _ADAPTIVE_DIVISOR
        state["no_improve"] = 0.0
    return state


def merge_counters(states: list[State], weights: list[float]) -> dict[str, float]:
    """Combine the schedule counters of partition states (coef/intercept excluded).

    ``t`` becomes ``t0 + sum(t_i - t0_i)`` (all samples trained on),
    ``eta_base``, ``center``, ``scale`` and ``epoch_loss`` the weighted means;
    the rest came from the same global state and is kept from the first
    partition.
    """
    total = float(sum(weights)) or 1.0
    t0 = float(states[0]["t0"])
    out = {
        "t": t0 + sum(float(s["t"]) - float(s["t0"]) for s in states),
        "t0": t0,
        "eta_base": sum(float(s["eta_base"]) * wt for s, wt in zip(states, weights)) / total,
        "epoch_loss": sum(float(s["epoch_loss"]) * wt for s, wt in zip(states, weights)) / total,
    }
    for key in ("center", "scale"):
        acc = np.zeros(np.shape(states[0][key]))
        for s, wt in zip(states, weights):
            acc += (wt / total) * np.asarray(s[key], dtype=np.float64)
        out[key] = acc
    for key in ("eta_scale", "best_loss", "no_improve"):
        out[key] = float(states[0][key])
    return out


def server_update(previous: State | None, merged: State, params: Mapping[str, Any], round_no: int) -> State:
    """Next global state of a round: schedule bookkeeping and optional server momentum.

    * ``t0`` is moved to ``t`` so the next round's merge counts only new samples.
    * ``learning_rate="adaptive"``: :func:`adaptive_update` with the round's
      training loss.
    * ``server_momentum=beta > 0`` (FedAvgM): with the pseudo-gradient
      ``delta = previous - merged``, ``v <- beta * v + delta`` and
      ``next = previous - v``; the velocities travel in the global state as
      ``velocity_coef`` / ``velocity_intercept`` (nodes ignore them).
    * ``average``: :func:`average_update` folds the round's model into the
      running average (``avg_coef`` / ``avg_intercept`` / ``avg_weight``).
    """
    classification = params.get("loss", "log_loss") in CLASSIFICATION_LOSSES
    cfg = config_from_params(params, classification=classification)
    out = dict(merged)
    out["t0"] = float(merged["t"])
    if cfg.learning_rate == "adaptive":
        out = adaptive_update(cfg, out, float(merged["epoch_loss"]))
    beta = float(params.get("server_momentum", 0.0) or 0.0)
    if beta > 0.0 and previous is not None and "coef" in previous:
        for key in ("coef", "intercept"):
            prev = np.asarray(previous[key], dtype=np.float64)
            delta = prev - np.asarray(merged[key], dtype=np.float64)
            v_prev = previous.get(f"velocity_{key}")
            v = delta if v_prev is None else beta * np.asarray(v_prev, dtype=np.float64) + delta
            out[f"velocity_{key}"] = v
            out[key] = prev - v
    if cfg.average:
        out.update(average_update(cfg.average, previous, out, float(merged["t"]) - float(merged["t0"])))
    return out


def average_update(start: int, previous: Mapping[str, Any] | None, current: Mapping[str, Any],
                   samples: float) -> State:
    """Fold one round's model into the running average of ``average=start``.

    The averaged model is the sample-weighted mean of the global models at the
    end of each round, counting a round once ``t`` (samples seen so far) has
    reached ``start``. It is computed on the scheduler from the aggregated
    models, so a node cannot move it except through its (aggregated) update,
    and nodes keep training the plain iterate ``coef``/``intercept``, as in
    scikit-learn's averaged SGD.

    Parameters
    ----------
    start : int
        ``average`` as an integer (1 for True).
    previous : mapping or None
        The global state before the round (holds the running average, if any).
    current : mapping
        The global state after the round.
    samples : float
        Samples trained on in the round (the weight of its model).

    Returns
    -------
    dict
        ``avg_coef``, ``avg_intercept`` and ``avg_weight`` (empty while
        ``t < start`` and nothing was averaged yet).
    """
    prev_w = float(previous.get("avg_weight", 0.0)) if previous else 0.0
    out: State = {}
    if prev_w > 0.0:
        out = {k: previous[k] for k in AVERAGE_KEYS}
    if float(current["t"]) < start or samples <= 0.0:
        return out
    total = prev_w + samples
    coef = np.asarray(current["coef"], dtype=np.float64)
    intercept = np.asarray(current["intercept"], dtype=np.float64)
    if prev_w > 0.0:
        coef = (prev_w * np.asarray(previous["avg_coef"], dtype=np.float64) + samples * coef) / total
        intercept = (prev_w * np.asarray(previous["avg_intercept"], dtype=np.float64) + samples * intercept) / total
    return {"avg_coef": coef.copy(), "avg_intercept": intercept.copy(), "avg_weight": total}
