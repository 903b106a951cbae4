"""Parameters of the grid's SGD: their checks and the validated :class:`SGDConfig`.

Used on the client (``jobs.SGDClassifier`` / ``jobs.SGDRegressor`` check every
parameter before a job is described), on a node (:func:`jobs.sgd.step.sgd_step`
rebuilds the configuration from the job's spec) and on the scheduler
(:func:`jobs.sgd.server.server_update`). Every error names the parameter,
shows its value and says what is allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

CLASSIFICATION_LOSSES = ("log_loss", "hinge", "modified_huber")
REGRESSION_LOSSES = ("squared_error", "huber")
PENALTIES = ("l2", "l1", "elasticnet", None)
LEARNING_RATES = ("auto", "constant", "invscaling", "adaptive")
AGGREGATES = ("mean", "median", "trimmed_mean")


class SGDParameterError(ValueError):
    """A parameter of the grid's SGD is not valid."""


@dataclass(frozen=True)
class SGDConfig:
    """Validated hyper-parameters of the SGD kernel.

    Build it with :func:`config_from_params`, which checks every value and
    names the parameter in its error.
    """

    loss: str = "log_loss"
    penalty: str | None = "l2"
    alpha: float = 1e-4
    l1_ratio: float = 0.15
    epsilon: float = 0.1
    learning_rate: str = "auto"
    eta0: float | None = None
    power_t: float = 0.5
    batch_size: int | str = "auto"
    fit_intercept: bool = True
    class_weight: Any = None
    tol: float | None = 1e-3
    n_iter_no_change: int = 5
    early_stopping: bool = False
    validation_fraction: float = 0.1
    seed: int = 0
    shuffle: bool = True
    average: int = 0

    @property
    def l1_share(self) -> float:
        """The share of ``alpha`` applied as an L1 penalty."""
        if self.penalty == "l1":
            return 1.0
        if self.penalty == "elasticnet":
            return float(self.l1_ratio)
        return 0.0

    @property
    def effective_alpha(self) -> float:
        return 0.0 if self.penalty is None else float(self.alpha)


def _real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    allowed = "a real number" + (f" {' and '.join(bounds)}" if bounds else "") + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise SGDParameterError(f"{name} must be {allowed}, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise SGDParameterError(f"{name} must be {allowed}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise SGDParameterError(f"{name} must be {allowed}, got {value!r}")
    return v


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise SGDParameterError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed or isinstance(value, bool):
        raise SGDParameterError(f"{name}={value!r} is not valid; choose one of {list(allowed)}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise SGDParameterError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_class_weight(class_weight: Any) -> Any:
    """Validate ``class_weight``: None, ``"balanced"`` or a dict label -> positive weight."""
    if class_weight is None or class_weight == "balanced":
        return class_weight
    if isinstance(class_weight, Mapping):
        for label, w in class_weight.items():
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not float(w) >= 0 or not math.isfinite(float(w)):
                raise SGDParameterError(
                    f"class_weight[{label!r}] must be a finite real number >= 0, got {w!r}"
                )
        return dict(class_weight)
    raise SGDParameterError(
        f"class_weight must be None, 'balanced' or a dict {{label: weight}}, got {class_weight!r}"
    )


def config_from_params(params: Mapping[str, Any], *, classification: bool) -> SGDConfig:
    """Validate the parameters of ``jobs.SGDClassifier`` / ``jobs.SGDRegressor``.

    Parameters
    ----------
    params : mapping
        The estimator's ``get_params()`` (or the ``params`` of its spec).
        Parameters that the kernel does not use (``rounds``, ``verbose``, ...)
        are ignored here.
    classification : bool
        Whether the losses of a classifier or a regressor are allowed.

    Returns
    -------
    SGDConfig

    Raises
    ------
    SGDParameterError
        Naming the parameter, showing its value and saying what is allowed.
    """
    defaults = SGDConfig()
    p = {k: params.get(k, getattr(defaults, k)) for k in SGDConfig.__dataclass_fields__}
    p["seed"] = job_seed(params)
    losses = CLASSIFICATION_LOSSES if classification else REGRESSION_LOSSES
    loss = _choice("loss", params.get("loss", losses[0]), losses)
    penalty = _choice("penalty", p["penalty"], PENALTIES)
    eta0 = p["eta0"]
    if isinstance(eta0, str) and eta0 == "auto":
        eta0 = None
    return SGDConfig(
        loss=loss,
        penalty=penalty,
        alpha=_real("alpha", p["alpha"], low=0.0),
        l1_ratio=_real("l1_ratio", p["l1_ratio"], low=0.0, high=1.0),
        epsilon=_real("epsilon", p["epsilon"], low=0.0),
        learning_rate=_choice("learning_rate", p["learning_rate"], LEARNING_RATES),
        eta0=_real("eta0", eta0, low=0.0, low_open=True, allow_none=True),
        power_t=_real("power_t", p["power_t"], low=0.0),
        batch_size=_batch_size(p["batch_size"]),
        fit_intercept=_boolean("fit_intercept", p["fit_intercept"]),
        class_weight=check_class_weight(p["class_weight"]) if classification else _no_class_weight(p["class_weight"]),
        tol=_real("tol", p["tol"], low=0.0, allow_none=True),
        n_iter_no_change=_integer("n_iter_no_change", p["n_iter_no_change"], 1),
        early_stopping=_boolean("early_stopping", p["early_stopping"]),
        validation_fraction=_real("validation_fraction", p["validation_fraction"], low=0.0, high=1.0,
                                  low_open=True, high_open=True),
        seed=p["seed"],
        shuffle=_boolean("shuffle", p["shuffle"]),
        average=check_average(p["average"]),
    )


#: largest seed a job accepts (scikit-learn's ``check_random_state`` range)
MAX_SEED = 2**32 - 1


def check_random_state_param(value: Any) -> int | None:
    """Validate ``random_state``: None or an integer in [0, 2**32 - 1].

    A job runs on many machines and is checkpointed and resumed, so its
    randomness must be a number that travels as plain data; a
    ``numpy.random.RandomState`` instance cannot.
    """
    if value is None:
        return None
    if isinstance(value, np.random.RandomState | np.random.Generator):
        raise SGDParameterError(
            f"random_state must be an integer or None for a grid job, got a {type(value).__name__} instance: "
            "a job runs on many nodes and can be resumed, so its randomness needs a reproducible "
            "seed. Pass an int such as random_state=0 (None also seeds with 0)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise SGDParameterError(f"random_state must be an integer in [0, {MAX_SEED}] or None, got {value!r}")
    return int(value)


def job_seed(params: Mapping[str, Any]) -> int:
    """The job's seed from the facade's parameters: ``random_state``, None meaning 0.

    None gives 0 rather than fresh entropy so that a job (and its retries and
    resumptions on other nodes) is reproducible by default.
    """
    seed = check_random_state_param(params.get("random_state"))
    return 0 if seed is None else seed


def check_average(value: Any) -> int:
    """Validate ``average`` (bool or int >= 0) as scikit-learn's: 0 is off, n starts after n samples."""
    if isinstance(value, (bool, np.bool_)):
        return int(bool(value))
    if not isinstance(value, numbers.Integral) or value < 0:
        raise SGDParameterError(
            f"average must be True, False or an integer >= 0 (samples seen before averaging starts), got {value!r}"
        )
    return int(value)


def _batch_size(value: Any) -> int | str:
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SGDParameterError(f"batch_size must be an integer >= 1 or 'auto', got {value!r}")
    return int(value)


def _no_class_weight(value: Any) -> None:
    if value is not None:
        raise SGDParameterError(f"class_weight is only for classifiers; a regressor needs None, got {value!r}")
    return None
