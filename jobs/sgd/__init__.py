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

Modules
-------
``params``
    The parameters, their checks and the validated :class:`SGDConfig`.
``state``
    The layout of a state (what travels between the scheduler and the nodes).
``data``
    The rows a step trains on: features, encoded targets, row weights.
``losses``
    Negative gradients, loss sums and hits; a model's evaluation.
``kernel``
    Step sizes, the preconditioner and the minibatch epochs.
``step``
    The node's local step, :func:`sgd_step`.
``server``
    What the scheduler applies to a round's merged state: counters, the
    ``"adaptive"`` rule, server momentum, the running average.

Every name is importable from ``jobs.sgd`` itself, where it was defined before
the package was split (specs, tests and user code name ``jobs.sgd.X``).

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

from jobs.sgd.data import Targets, as_features, encode_targets, sample_weights, validation_split
from jobs.sgd.kernel import (
    AUTO_BATCH_RANGE,
    SHUFFLE_BLOCK,
    EpochStats,
    batch_rows,
    data_geometry,
    run_epochs,
    shuffled_rows,
    step_size,
)
from jobs.sgd.losses import _neg_grad  # noqa: F401  (private; tests call it as jobs.sgd._neg_grad)
from jobs.sgd.losses import decision_scores, evaluate
from jobs.sgd.params import (
    AGGREGATES,
    CLASSIFICATION_LOSSES,
    LEARNING_RATES,
    MAX_SEED,
    PENALTIES,
    REGRESSION_LOSSES,
    SGDConfig,
    SGDParameterError,
    check_average,
    check_class_weight,
    check_random_state_param,
    config_from_params,
    job_seed,
)
from jobs.sgd.server import adaptive_update, average_update, merge_counters, server_update
from jobs.sgd.state import AVERAGE_KEYS, STATE_KEYS, State, check_state, init_state
from jobs.sgd.step import sgd_step

__all__ = [
    "AGGREGATES",
    "AUTO_BATCH_RANGE",
    "AVERAGE_KEYS",
    "CLASSIFICATION_LOSSES",
    "EpochStats",
    "LEARNING_RATES",
    "MAX_SEED",
    "PENALTIES",
    "REGRESSION_LOSSES",
    "SGDConfig",
    "SGDParameterError",
    "SHUFFLE_BLOCK",
    "STATE_KEYS",
    "State",
    "Targets",
    "adaptive_update",
    "as_features",
    "average_update",
    "batch_rows",
    "check_average",
    "check_class_weight",
    "check_random_state_param",
    "check_state",
    "config_from_params",
    "data_geometry",
    "decision_scores",
    "encode_targets",
    "evaluate",
    "init_state",
    "job_seed",
    "merge_counters",
    "run_epochs",
    "sample_weights",
    "server_update",
    "sgd_step",
    "shuffled_rows",
    "step_size",
    "validation_split",
]
