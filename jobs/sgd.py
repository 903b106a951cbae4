"""The grid's own minibatch SGD for linear models, on numpy.

Every minibatch step is a handful of BLAS calls over a block of rows (one
``X_b @ W`` forward product, one ``X_b.T @ G`` gradient product and a few
vector updates); there is no per-sample Python loop. The same kernel runs in
three places:

* :func:`sgd_step`, the local step a node runs on one partition in one round
  (job kind ``"sgd"`` in :data:`jobs.local.LOCAL_STEPS`);
* ``jobs.SGDClassifier.partial_fit`` / ``jobs.SGDRegressor.partial_fit``, on the
  caller's machine, for streaming;
* the unit tests, as a serial sequence of local steps.

Model
-----
Linear scores ``Z = X @ W + b`` with ``W`` of shape (n_features, K). ``K`` is 1
for regression and binary classification, and the number of classes for
multiclass problems: ``log_loss`` is then a true multinomial softmax
cross-entropy, ``hinge`` and ``modified_huber`` are one-vs-rest (as in
scikit-learn).

The objective is ``mean_i(sw_i * loss(z_i, y_i)) + alpha * R(W)`` with
``R = (1 - l1_ratio) / 2 * ||W||^2 + l1_ratio * ||W||_1``. A step on a
minibatch ``B`` with loss gradient ``G`` in the scores is::

    gW = -eta * (X_B.T @ G / |B| + alpha * (1 - l1_ratio) * W)
    gb = -eta * sum(G) / |B|
    dW = (gW - center * gb) / scale**2          # preconditioner, see data_geometry
    W <- W + dW;  b <- b + gb - center @ dW
    W <- truncate(W, cumulative L1 penalty)     # Tsuruoka et al. (2009)

i.e. plain SGD in the standardised coordinates ``(x - center) / scale`` while
the model stays in the original units.

State
-----
A state is a dict of float64 arrays and Python floats (see :func:`init_state`),
so it travels in the grid's code-free wire format. Progress ``t`` is counted in
samples, never in rounds or nodes, so schedules do not depend on how many
nodes trained. Every random choice (shuffles, the sample used to size the
step, the validation split) comes from the ``seed`` argument or the job's
seed (the facade's ``random_state``) only; ``shuffle=False`` leaves the
partition's row order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

State = dict[str, Any]

CLASSIFICATION_LOSSES = ("log_loss", "hinge", "modified_huber")
REGRESSION_LOSSES = ("squared_error", "huber")
PENALTIES = ("l2", "l1", "elasticnet", None)
LEARNING_RATES = ("auto", "constant", "invscaling", "adaptive")
AGGREGATES = ("mean", "median", "trimmed_mean")

#: curvature bound of each loss (max second derivative in the score), used to
#: size the default step as 1 / (curvature * data Lipschitz constant)
_CURVATURE = {
    "log_loss": 0.25,
    "multinomial": 0.5,
    "hinge": 1.0,  # not smooth; the same scale as squared error works well
    "modified_huber": 2.0,
    "squared_error": 1.0,
    "huber": 1.0,
}

#: rows sampled (seeded) to estimate the data's Lipschitz constant
_STEP_SAMPLE_ROWS = 2048
#: power iterations for that estimate
_POWER_ITERATIONS = 12
#: ``batch_size="auto"``: ``n_rows // 64`` clipped to this range, so that a
#: small partition still takes about 64 steps per epoch and a large one
#: amortises the per-step overhead
AUTO_BATCH_RANGE = (16, 512)
#: the ``"adaptive"`` schedule divides the step by this after a plateau
_ADAPTIVE_DIVISOR = 5.0


class SGDParameterError(ValueError):
    """A parameter of the grid's SGD is not valid."""


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# data preparation
# --------------------------------------------------------------------------------------
def as_features(X: Any) -> Any:
    """Dense float32/float64 C-ordered array or float CSR matrix (ints become float64)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if not X.has_canonical_format:
            X.sum_duplicates()
        return X
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional (n_samples, n_features), got shape {X.shape}")
    return np.ascontiguousarray(X)


@dataclass
class Targets:
    """Targets of one block of rows, encoded for the kernel.

    ``kind`` is ``"binary"`` (``values`` in {-1, +1}), ``"multinomial"``
    (``values`` class indices), ``"ovr"`` (``values`` class indices, scored
    one-vs-rest) or ``"regression"`` (``values`` floats).
    """

    kind: str
    values: np.ndarray
    n_outputs: int


def encode_targets(cfg: SGDConfig, y: Any, classes: np.ndarray | None, dtype: Any) -> Targets:
    """Encode labels (with their global ``classes``) or continuous targets."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"y must be 1-dimensional, got shape {y.shape}")
    if classes is None:
        if cfg.loss in CLASSIFICATION_LOSSES:
            raise ValueError(f"loss={cfg.loss!r} is a classification loss and needs the class labels")
        values = y.astype(dtype, copy=False)
        if not np.all(np.isfinite(values)):
            raise ValueError("y contains NaN or infinity")
        return Targets("regression", values, 1)
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size < 2:
        raise ValueError(
            f"Classifier can't train when only one class is present: got the classes "
            f"{classes.tolist()!r}; a classifier needs at least 2 classes"
        )
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, classes.size - 1)
    bad = classes[idx] != y
    if np.any(bad):
        raise ValueError(
            f"y has labels {np.unique(y[bad]).tolist()[:10]} that are not in classes "
            f"{classes.tolist()[:20]}"
        )
    if classes.size == 2:
        return Targets("binary", np.where(idx == 1, 1.0, -1.0).astype(dtype), 1)
    kind = "multinomial" if cfg.loss == "log_loss" else "ovr"
    return Targets(kind, idx.astype(np.intp), int(classes.size))


def sample_weights(cfg: SGDConfig, targets: Targets, classes: np.ndarray | None,
                   sample_weight: Any, n: int, dtype: Any) -> np.ndarray | None:
    """Per-row weights: ``sample_weight`` times ``class_weight``; None when all ones.

    ``class_weight="balanced"`` uses the label counts of the rows given here
    (a partition on the grid): ``n / (n_classes * count(class))``.
    """
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64).ravel()
        if w.shape[0] != n:
            raise ValueError(f"sample_weight has {w.shape[0]} values for {n} samples")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample_weight must be finite and non-negative")
    if cfg.class_weight is not None and classes is not None:
        idx = _class_index(targets)
        if cfg.class_weight == "balanced":
            counts = np.bincount(idx, minlength=len(classes)).astype(np.float64)
            per_class = np.where(counts > 0, n / (len(classes) * np.maximum(counts, 1)), 0.0)
        else:
            per_class = np.ones(len(classes))
            lookup = {(_label_key(k)): float(v) for k, v in cfg.class_weight.items()}
            for i, c in enumerate(classes):
                per_class[i] = lookup.get(_label_key(c), 1.0)
        cw = per_class[idx]
        w = cw if w is None else w * cw
    return None if w is None else w.astype(dtype, copy=False)


def _label_key(label: Any) -> Any:
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, float) and label.is_integer():
        return int(label)
    return label


def _class_index(targets: Targets) -> np.ndarray:
    if targets.kind == "binary":
        return (targets.values > 0).astype(np.intp)
    return targets.values


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train / validation row indices of a block of ``n`` rows.

    Seeded by the job's ``seed`` and ``n`` only, so a partition keeps the same
    held-out rows in every round, on every node.
    """
    n_val = int(math.ceil(fraction * n)) if n > 1 else 0
    n_val = min(n_val, n - 1)
    rng = np.random.default_rng([int(seed), int(n), 0x5EED])
    perm = rng.permutation(n)
    val = np.sort(perm[:n_val])
    train = np.sort(perm[n_val:])
    return train, val


#: rows shuffled together: minibatches gather 16 random blocks of 16 adjacent rows
#: (three times faster than gathering single rows; on a partition sorted by
#: label each minibatch still draws blocks from all over it)
SHUFFLE_BLOCK = 16


def shuffled_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``n`` rows, shuffled in blocks of :data:`SHUFFLE_BLOCK`."""
    S = SHUFFLE_BLOCK
    n_blocks = -(-n // S)
    rows = (rng.permutation(n_blocks)[:, None] * S + np.arange(S)).ravel()
    return rows[rows < n] if n % S else rows


class _CSRBatches:
    """Minibatch products on consecutive rows of a CSR matrix, without scipy objects.

    Slicing a scipy matrix per minibatch costs more than the arithmetic; here a
    minibatch is a slice of ``data``/``indices`` and the products are
    ``bincount`` reductions (forward: per row; backward: per feature).
    """

    def __init__(self, X: sp.csr_matrix) -> None:
        self.data = X.data
        self.indices = X.indices
        self.indptr = X.indptr
        self.row = np.repeat(np.arange(X.shape[0], dtype=np.intp), np.diff(X.indptr))
        self._batch: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None

    def forward(self, start: int, stop: int, W: np.ndarray) -> np.ndarray:
        a, b = self.indptr[start], self.indptr[stop]
        vals = self.data[a:b]
        cols = self.indices[a:b]
        rows = self.row[a:b] - start
        m = stop - start
        self._batch = (vals, cols, rows, m)
        if W.ndim == 1:
            return np.bincount(rows, weights=vals * W[cols], minlength=m).astype(W.dtype, copy=False)
        prod = W[cols] * vals[:, None]
        return np.stack([np.bincount(rows, weights=prod[:, k], minlength=m) for k in range(W.shape[1])],
                        axis=1).astype(W.dtype, copy=False)

    def backward(self, NG: np.ndarray, d: int) -> np.ndarray:
        vals, cols, rows, _ = self._batch
        if NG.ndim == 1:
            return np.bincount(cols, weights=vals * NG[rows], minlength=d).astype(NG.dtype, copy=False)
        per_nz = NG[rows] * vals[:, None]
        return np.stack([np.bincount(cols, weights=per_nz[:, k], minlength=d) for k in range(NG.shape[1])],
                        axis=1).astype(NG.dtype, copy=False)


def _cumulative_l1(W: np.ndarray, u: Any, q: np.ndarray) -> np.ndarray:
    """In place: the cumulative L1 penalty of Tsuruoka et al. (2009), vectorised.

    A weight is pulled towards zero by the penalty it could have received
    so far (``u``, per coordinate) minus the penalty it did receive (``q``),
    and clipped at zero; ``q`` records what was applied. Weights whose
    gradient does not consistently push them away from zero stay exactly
    zero. Returns how much each weight moved.
    """
    z = W.copy()
    u = np.broadcast_to(u, W.shape)
    pos = W > 0
    neg = W < 0
    W[pos] = np.maximum(0.0, W[pos] - (u[pos] + q[pos]))
    W[neg] = np.minimum(0.0, W[neg] + (u[neg] - q[neg]))
    moved = W - z
    q += moved
    return moved


def _take_rows(X: Any, idx: np.ndarray) -> Any:
    return X[idx] if sp.issparse(X) else np.take(X, idx, axis=0)


# --------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# losses: negative gradient in the scores, loss sum and hits of one minibatch
# --------------------------------------------------------------------------------------
def _neg_grad(cfg: SGDConfig, kind: str, Z: np.ndarray, T: np.ndarray,
              w: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """Negative gradient ``-dloss/dz`` of the (weighted) losses in the scores ``Z``.

    ``Z`` is a scratch array that may be overwritten. Returns
    ``(NG, loss_sum, hits)``: ``hits`` counts correct predictions for
    classifiers (weighted) and is the (weighted) sum of squared residuals for
    regressors. Written with as few numpy calls as possible: this runs once
    per minibatch.
    """
    loss = cfg.loss
    if kind == "regression":
        r = np.subtract(T, Z, out=Z)  # r = y - z = -dloss/dz for squared error
        if loss == "squared_error":
            if w is None:
                sq = float(np.dot(r, r))
                return r, 0.5 * sq, sq
            sq = float(np.dot(w * r, r))
            return np.multiply(r, w, out=r), 0.5 * sq, sq
        eps = cfg.epsilon
        a = np.abs(r)
        losses = np.where(a <= eps, 0.5 * r * r, eps * a - 0.5 * eps * eps)
        sq = float(np.dot(r, r) if w is None else np.dot(w * r, r))
        NG = np.clip(r, -eps, eps, out=r)
        if w is None:
            return NG, float(losses.sum()), sq
        return np.multiply(NG, w, out=NG), float(np.dot(w, losses)), sq
    if kind == "multinomial":
        n = Z.shape[0]
        rows = np.arange(n)
        hit_mask = Z.argmax(axis=1) == T
        Z -= Z.max(axis=1, keepdims=True)
        zy = Z[rows, T]
        P = np.exp(Z, out=Z)
        norm = P.sum(axis=1)
        losses = np.log(norm) - zy
        P /= -norm[:, None]  # P = -softmax
        P[rows, T] += 1.0  # NG = onehot - softmax
        if w is None:
            return P, float(losses.sum()), float(np.count_nonzero(hit_mask))
        P *= w[:, None]
        return P, float(np.dot(w, losses)), float(np.dot(w, hit_mask))
    if kind == "ovr":
        n, K = Z.shape
        hit_mask = Z.argmax(axis=1) == T
        Y = np.full((n, K), -1.0, dtype=Z.dtype)
        Y[np.arange(n), T] = 1.0
        NG, losses = _binary_neg_grad(cfg, Z, Y)
        losses = losses.sum(axis=1)
        if w is None:
            return NG, float(losses.sum()), float(np.count_nonzero(hit_mask))
        NG *= w[:, None]
        return NG, float(np.dot(w, losses)), float(np.dot(w, hit_mask))
    # binary, T in {-1, +1}
    NG, losses = _binary_neg_grad(cfg, Z, T)
    hits_mask = losses < (0.6931471805599453 if loss == "log_loss" else 1.0)  # margin > 0
    if w is None:
        return NG, float(losses.sum()), float(np.count_nonzero(hits_mask))
    NG *= w
    return NG, float(np.dot(w, losses)), float(np.dot(w, hits_mask))


def _binary_neg_grad(cfg: SGDConfig, Z: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(-dloss/dz, loss)`` of the binary losses with labels ``Y`` in {-1, +1}; overwrites ``Z``."""
    m = np.multiply(Z, Y, out=Z)  # margins
    loss = cfg.loss
    if loss == "log_loss":
        np.negative(m, out=m)
        losses = np.logaddexp(0.0, m)
        NG = expit(m, out=m)
        NG *= Y
    elif loss == "hinge":
        losses = np.maximum(0.0, 1.0 - m)
        NG = np.multiply(losses > 0.0, Y, dtype=Z.dtype)
    else:  # modified_huber
        one_minus = 1.0 - m
        losses = np.where(m >= 1.0, 0.0, np.where(m >= -1.0, one_minus * one_minus, -4.0 * m))
        NG = np.where(m >= 1.0, 0.0, np.where(m >= -1.0, 2.0 * one_minus, 4.0)).astype(Z.dtype, copy=False)
        NG *= Y
    return NG, losses


# --------------------------------------------------------------------------------------
# step sizes
# --------------------------------------------------------------------------------------
def batch_rows(cfg: SGDConfig, n: int) -> int:
    """Rows per minibatch on a block of ``n`` rows (resolves ``batch_size="auto"``)."""
    if cfg.batch_size == "auto":
        low, high = AUTO_BATCH_RANGE
        B = min(high, max(low, n // 64))
    else:
        B = int(cfg.batch_size)
    return max(1, min(B, n))


def data_geometry(cfg: SGDConfig, X: Any, targets: Targets, w: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    """Preconditioner and default step, from a seeded sample of at most 2048 rows.

    Returns ``(eta_base, center, scale)``. Steps are taken in the coordinates
    ``x~ = (x - center) / scale`` (weighted mean and standard deviation of the
    sample; ``center = 0`` and ``scale`` the root mean square without an
    intercept; ``scale`` at least ``max |x - center| / sqrt(batch)`` so that a
    rare large value cannot dominate a minibatch), which makes the default
    step independent of how the features are scaled and shifted.

    ``eta_base = 1 / (curvature * L)`` with ``L = lambda_max(X~.T W X~ / s) +
    mean(w ||x~||^2) / batch`` (power iteration, the intercept as a column of
    ones, ``W`` the row weights, ``batch`` rows per minibatch): close to the
    largest stable step of a minibatch mean gradient. Sparse rows stay sparse
    (the centring is implicit).
    """
    n, d = X.shape
    m = min(n, _STEP_SAMPLE_ROWS)
    idx = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    Xs = _take_rows(X, idx)
    ws = np.ones(m) if w is None else np.asarray(w[idx], dtype=np.float64)
    wsum = float(ws.sum())
    if wsum <= 0:
        ws, wsum = np.ones(m), float(m)
    sparse = sp.issparse(Xs)
    Xs = sp.csr_matrix(Xs, dtype=np.float64) if sparse else np.asarray(Xs, dtype=np.float64)
    mean = np.asarray(Xs.T @ ws).ravel() / wsum
    second = np.asarray((Xs.multiply(Xs) if sparse else Xs * Xs).T @ ws).ravel() / wsum
    if cfg.fit_intercept:
        center = mean
        var = np.maximum(second - mean * mean, 0.0)
    else:
        center = np.zeros(d)
        var = second
    # a rare feature has a tiny standard deviation but large values: keep every
    # |x~| <= sqrt(batch) so that one row cannot blow up a minibatch's curvature
    if sparse:
        top = np.maximum(np.abs(Xs.max(axis=0).toarray().ravel() - center),
                         np.abs(Xs.min(axis=0).toarray().ravel() - center))
    else:
        top = np.max(np.abs(Xs - center), axis=0)
    scale = np.maximum(np.sqrt(var), top / math.sqrt(batch_rows(cfg, n)))
    # constant in the sample (up to rounding): leave that feature's steps unscaled
    scale[~(scale > 1e-7 * np.sqrt(second))] = 1.0
    inv = 1.0 / scale
    root = np.sqrt(ws)
    c_over_s = center * inv

    def forward(v: np.ndarray) -> np.ndarray:  # X~_w @ v (with the ones column last)
        z = Xs @ (v[:d] * inv) - float(c_over_s @ v[:d])
        if cfg.fit_intercept:
            z = z + v[d]
        return root * np.asarray(z).ravel()

    def backward(z: np.ndarray) -> np.ndarray:  # X~_w.T @ z
        zr = root * z
        g = (np.asarray(Xs.T @ zr).ravel() - center * zr.sum()) * inv
        return np.append(g, zr.sum()) if cfg.fit_intercept else g

    dim = d + int(cfg.fit_intercept)
    v = np.ones(dim) / math.sqrt(dim)
    lam = 0.0
    for _ in range(_POWER_ITERATIONS):
        u = backward(forward(v)) / wsum
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            break
        v = u / lam
    # mean over rows of w * ||x~||^2: standardised features give about d (+1)
    mean_sq = float(np.sum(((second - 2 * center * mean + center * center) * inv * inv))) + float(cfg.fit_intercept)
    L = lam + mean_sq / batch_rows(cfg, n)
    kind = "multinomial" if targets.kind == "multinomial" else cfg.loss
    # per unit of weight so far; a minibatch gradient is a mean over rows, not weights
    L *= _CURVATURE[kind] * (wsum / m)
    return 1.0 / max(L, 1e-12), center, scale


def step_size(cfg: SGDConfig, state: State, t: float, batch: int) -> float:
    """Step size after ``t`` samples.

    ``batch`` is the number of rows per minibatch (:func:`batch_rows`).

    * ``"auto"`` (default): ``eta_base / (1 + eta_base * alpha * t / batch)``,
      the classic ``1 / (alpha * t)`` decay of strongly convex SGD started at the
      data-sized step ``eta_base``, combined with iterate averaging in
      :func:`run_epochs`. For ``loss="squared_error"``, the one loss whose
      gradient grows with the residual (heavy-tailed targets make it
      unbounded), the step also decays at least like ``"invscaling"``:
      ``eta_base / max(1 + eta_base * alpha * t / batch, (1 + t / batch) ** power_t)``.
      With a tiny ``alpha`` the first decay barely starts, and without the
      second, gross target errors keep the iterates noisy.
    * ``"constant"``: ``eta_base``.
    * ``"invscaling"``: ``eta_base / (1 + t / batch) ** power_t``.
    * ``"adaptive"``: ``eta_base * eta_scale`` where ``eta_scale`` is divided
      by 5 every time the training loss has not improved by ``tol`` for
      ``n_iter_no_change`` rounds (see :func:`adaptive_update`).

    ``eta_base`` is ``eta0`` when given, else the data-sized step of
    :func:`data_geometry`. Steps are measured in the preconditioned
    coordinates ``(x - center) / scale``.
    """
    base = cfg.eta0 if cfg.eta0 is not None else state["eta_base"]
    base *= state["eta_scale"]
    lr = cfg.learning_rate
    if lr == "auto":
        decay = 1.0 + base * cfg.effective_alpha * t / batch
        if cfg.loss == "squared_error":  # unbounded gradients: never decay slower than invscaling
            decay = max(decay, (1.0 + t / batch) ** cfg.power_t)
        return base / decay
    if lr == "invscaling":
        return base / (1.0 + t / batch) ** cfg.power_t
    return base  # constant, adaptive


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


# --------------------------------------------------------------------------------------
# the kernel
# --------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    """Progressive statistics of the last epoch: each minibatch scored before its update."""

    samples: float = 0.0
    weight: float = 0.0
    loss_sum: float = 0.0
    hits: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.weight if self.weight else 0.0


def run_epochs(
    cfg: SGDConfig,
    state: State,
    X: Any,
    targets: Targets,
    w: np.ndarray | None,
    rng: np.random.Generator,
    epochs: int = 1,
) -> tuple[State, EpochStats]:
    """Run ``epochs`` shuffled passes of minibatch SGD over ``X`` from ``state``.

    Parameters
    ----------
    cfg : SGDConfig
    state : dict
        From :func:`init_state` / :func:`check_state`; not modified.
    X : ndarray or CSR matrix of shape (n, d)
    targets : Targets
    w : ndarray of shape (n,) or None
        Per-row weights.
    rng : numpy Generator
        The only source of randomness (shuffles).
    epochs : int

    Returns
    -------
    state : dict
        The new state; ``t`` advanced by ``n * epochs``.
    stats : EpochStats
        Progressive loss and hits of the last epoch.
    """
    state = dict(state)
    n, d = X.shape
    K = targets.n_outputs
    dtype = X.dtype
    sparse = sp.issparse(X)
    B = batch_rows(cfg, n)
    if state["eta_base"] <= 0.0:
        state["eta_base"], state["center"], state["scale"] = data_geometry(cfg, X, targets, w, rng)
    alpha = cfg.effective_alpha
    l1 = cfg.l1_share
    l2 = alpha * (1.0 - l1)
    l1a = alpha * l1
    vector = K == 1
    W = np.ascontiguousarray(state["coef"].T, dtype=dtype)  # (d, K)
    b = state["intercept"].astype(dtype)
    # preconditioner: a step in (V, c) with x~ = (x - mu) / s, W = V / s, b = c - mu @ W,
    # is, in the model's own units, dW = (G_W - mu G_b) / s^2 and db = G_b - mu @ dW
    mu = np.asarray(state["center"], dtype=dtype) if cfg.fit_intercept else np.zeros(d, dtype=dtype)
    inv_s2 = (1.0 / np.asarray(state["scale"], dtype=np.float64) ** 2).astype(dtype)
    if vector:
        W = W[:, 0].copy()
    else:
        inv_s2 = inv_s2[:, None]
    averaging = cfg.learning_rate == "auto"
    Wsum = np.zeros(W.shape, dtype=np.float64) if averaging else None
    bsum = np.zeros(K) if averaging else None
    n_avg = 0
    t = float(state["t"])
    T = targets.values
    kind = targets.kind
    stats = EpochStats()
    buf = None if sparse else np.empty((B, d), dtype=dtype)
    n_steps = -(-n // B)
    u = 0.0  # L1 penalty every weight could have received so far
    q = np.zeros(W.shape, dtype=dtype) if l1a else None  # L1 penalty each weight received
    for epoch in range(int(epochs)):
        # shuffle=False: the partition's own row order, every epoch
        rows = shuffled_rows(n, rng) if cfg.shuffle else np.arange(n)
        stats = EpochStats()
        csr = _CSRBatches(X[rows]) if sparse else None
        Tp = T[rows]
        wp = None if w is None else w[rows]
        # iterate averaging over the second half of the last epoch ("auto")
        avg_from = n_steps // 2 if (averaging and epoch == epochs - 1) else n_steps
        for step in range(n_steps):
            start = step * B
            stop = min(start + B, n)
            m = stop - start
            if sparse:
                Z = csr.forward(start, stop, W)
            else:
                if m == B:
                    # mode='clip': rows are valid by construction, and 'raise' makes numpy
                    # allocate a temporary per call (slow on workers, whose malloc trims eagerly)
                    Xb = np.take(X, rows[start:stop], axis=0, out=buf, mode="clip")
                else:
                    Xb = np.take(X, rows[start:stop], axis=0)
                Z = Xb @ W
            if vector:
                Z += b[0]
            else:
                Z += b
            wb = None if wp is None else wp[start:stop]
            NG, loss_sum, hits = _neg_grad(cfg, kind, Z, Tp[start:stop], wb)
            stats.loss_sum += loss_sum
            stats.hits += hits
            stats.samples += m
            stats.weight += m if wb is None else float(wb.sum())
            eta = step_size(cfg, state, t, B)
            NG *= eta / m
            gW = csr.backward(NG, d) if sparse else Xb.T @ NG  # -eta * gradient in W
            if l2:
                gW -= (eta * l2) * W
            if cfg.fit_intercept:
                gb = NG.sum(axis=0)  # -eta * gradient in b
                gW -= np.multiply.outer(mu, gb) if not vector else mu * gb
                gW *= inv_s2
                W += gW
                b += gb - mu @ gW
            else:
                gW *= inv_s2
                W += gW
            if l1a:  # cumulative truncated gradient (Tsuruoka et al., 2009), per coordinate
                u += eta * l1a
                moved = _cumulative_l1(W, u * inv_s2, q)
                if cfg.fit_intercept:
                    b -= mu @ moved
            t += m
            if step >= avg_from:
                Wsum += W
                bsum += b
                n_avg += 1
    if averaging and n_avg:
        W_out = Wsum / n_avg
        b_out = bsum / n_avg
        if l1a:  # keep L1 solutions sparse: the average on the last iterate's support
            W_out[W == 0] = 0.0
    else:
        W_out, b_out = W.astype(np.float64), b.astype(np.float64)
    state["coef"] = np.ascontiguousarray((W_out.reshape(d, 1) if vector else W_out).T, dtype=np.float64)
    state["intercept"] = np.asarray(b_out, dtype=np.float64).reshape(K)
    state["t"] = t
    state["epoch_loss"] = float(stats.loss)
    return state, stats


# --------------------------------------------------------------------------------------
# prediction helpers (shared with the facades)
# --------------------------------------------------------------------------------------
def decision_scores(coef: np.ndarray, intercept: np.ndarray, X: Any) -> np.ndarray:
    """``X @ coef.T + intercept`` as an (n, K) array."""
    Z = X @ np.asarray(coef).T
    Z = np.asarray(Z)
    return Z + np.asarray(intercept)


def evaluate(cfg: SGDConfig, coef: np.ndarray, intercept: np.ndarray, X: Any,
             targets: Targets, w: np.ndarray | None) -> dict[str, float]:
    """Mean loss and score (accuracy or R^2) of a model on a block of rows."""
    if X.shape[0] == 0:
        return {"loss": 0.0, "score": 0.0, "samples": 0.0}
    Z = decision_scores(coef, intercept, X).astype(np.float64)
    T = targets.values
    if targets.kind in ("binary", "regression"):
        Z = Z[:, 0]
        T = T.astype(np.float64)
    _, loss_sum, hits = _neg_grad(cfg, targets.kind, Z, T, None if w is None else w.astype(np.float64))
    weight = float(X.shape[0] if w is None else w.sum()) or 1.0
    if targets.kind == "regression":
        mean = np.average(T, weights=w) if w is not None and w.sum() > 0 else T.mean()
        ss_tot = float(np.sum((T - mean) ** 2) if w is None else np.dot(w, (T - mean) ** 2))
        score = 1.0 - hits / ss_tot if ss_tot > 0 else 0.0
    else:
        score = hits / weight
    return {"loss": loss_sum / weight, "score": float(score), "samples": float(X.shape[0])}


# --------------------------------------------------------------------------------------
# the local step of job kind "sgd"
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# scheduler side: merge bookkeeping and server update
# --------------------------------------------------------------------------------------
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


#: keys of the averaged model in a global state (``average``); nodes ignore them
AVERAGE_KEYS = ("avg_coef", "avg_intercept", "avg_weight")


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
