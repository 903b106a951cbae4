"""The layout of an SGD state: what travels between the scheduler and the nodes.

A state is a dict of float64 arrays and Python floats, so it travels in the
grid's code-free wire format. :func:`init_state` lists the keys a node trains
on; a global state may also hold the running average of ``average``
(:data:`AVERAGE_KEYS`, kept by the scheduler) and server momentum velocities,
which nodes ignore.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

State = dict[str, Any]


def init_state(n_features: int, n_outputs: int) -> State:
    """A zero model and fresh schedule counters.

    Keys
    ----
    coef : (K, n_features) float64
    intercept : (K,) float64
    t : samples processed so far (all partitions, all rounds)
    t0 : ``t`` when the current update started (lets a merge count new samples)
    eta_base : step size of ``eta0=None`` (0 until estimated from the data)
    center, scale : (n_features,) float64, the preconditioner: steps are taken
        as if the features were ``(x - center) / scale`` (estimated with
        ``eta_base``; the model itself stays in the original units)
    eta_scale : multiplier of the step (``"adaptive"`` divides it by 5 on a plateau)
    best_loss, no_improve : plateau bookkeeping of ``"adaptive"``
    epoch_loss : mean training loss over the last local epoch (progressive)
    """
    return {
        "coef": np.zeros((n_outputs, n_features), dtype=np.float64),
        "intercept": np.zeros(n_outputs, dtype=np.float64),
        "center": np.zeros(n_features, dtype=np.float64),
        "scale": np.ones(n_features, dtype=np.float64),
        "t": 0.0,
        "t0": 0.0,
        "eta_base": 0.0,
        "eta_scale": 1.0,
        "best_loss": float(np.finfo(np.float64).max),
        "no_improve": 0.0,
        "epoch_loss": 0.0,
    }


STATE_KEYS = tuple(init_state(1, 1))


def check_state(state: Mapping[str, Any], n_features: int, n_outputs: int) -> State:
    """Copy ``state`` into fresh float64 arrays, checking shapes against the model."""
    missing = [k for k in ("coef", "intercept") if k not in state]
    if missing:
        raise ValueError(f"SGD state lacks {missing}")
    coef = np.array(state["coef"], dtype=np.float64, copy=True).reshape(-1, n_features) \
        if np.size(state["coef"]) == n_outputs * n_features else None
    intercept = np.array(state["intercept"], dtype=np.float64, copy=True).ravel()
    if coef is None or coef.shape != (n_outputs, n_features) or intercept.shape != (n_outputs,):
        raise ValueError(
            f"SGD state has coef of shape {np.shape(state['coef'])} and intercept of shape "
            f"{np.shape(state['intercept'])}; this model needs ({n_outputs}, {n_features}) and ({n_outputs},)"
        )
    out = init_state(n_features, n_outputs)
    out["coef"], out["intercept"] = coef, intercept
    for key in ("center", "scale"):
        if key in state:
            value = np.array(state[key], dtype=np.float64, copy=True).ravel()
            if value.shape != (n_features,):
                raise ValueError(f"SGD state has {key} of shape {value.shape}; this model needs ({n_features},)")
            out[key] = value
    for key in STATE_KEYS:
        if key not in ("coef", "intercept", "center", "scale") and key in state:
            out[key] = float(np.asarray(state[key]))
    if float(np.asarray(state.get("avg_weight", 0.0))) > 0.0:  # the running average of ``average``
        avg_coef = np.array(state["avg_coef"], dtype=np.float64, copy=True)
        avg_intercept = np.array(state["avg_intercept"], dtype=np.float64, copy=True).ravel()
        if avg_coef.shape != coef.shape or avg_intercept.shape != intercept.shape:
            raise ValueError(
                f"SGD state has avg_coef of shape {avg_coef.shape} and avg_intercept of shape "
                f"{avg_intercept.shape}; this model needs {coef.shape} and {intercept.shape}"
            )
        out.update(avg_coef=avg_coef, avg_intercept=avg_intercept, avg_weight=float(np.asarray(state["avg_weight"])))
    return out


#: keys of the averaged model in a global state (``average``); nodes ignore them
AVERAGE_KEYS = ("avg_coef", "avg_intercept", "avg_weight")
