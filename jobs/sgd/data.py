"""The rows a step trains on: features, encoded targets, row weights, the validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from jobs.sgd.params import CLASSIFICATION_LOSSES, SGDConfig


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


def _take_rows(X: Any, idx: np.ndarray) -> Any:
    return X[idx] if sp.issparse(X) else np.take(X, idx, axis=0)
