"""The minibatch SGD kernel: step sizes, the preconditioner and the epochs over a block of rows.

One idea, the loop of :func:`run_epochs` and what sizes its steps
(:func:`data_geometry`, :func:`step_size`). It runs on a node inside
:func:`jobs.sgd.step.sgd_step` and on the caller's machine inside the
facades' ``partial_fit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from jobs.sgd.data import Targets, _take_rows
from jobs.sgd.losses import _CURVATURE, _neg_grad
from jobs.sgd.params import SGDConfig
from jobs.sgd.state import State

#: rows sampled (seeded) to estimate the data's Lipschitz constant
_STEP_SAMPLE_ROWS = 2048

#: power iterations for that estimate
_POWER_ITERATIONS = 12

#: ``batch_size="auto"``: ``n_rows // 64`` clipped to this range, so that a
#: small partition still takes about 64 steps per epoch and a large one
#: amortises the per-step overhead
AUTO_BATCH_RANGE = (16, 512)

#: rows shuffled together: minibatches gather 16 random blocks of 16 adjacent rows
#: (three times faster than gathering single rows; on a partition sorted by
#: label each minibatch still draws blocks from all over it)
SHUFFLE_BLOCK = 16


# --------------------------------------------------------------------------------------
# row order and sparse minibatches
# --------------------------------------------------------------------------------------
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
      ``n_iter_no_change`` rounds (see :func:`jobs.sgd.server.adaptive_update`).

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
        From :func:`jobs.sgd.state.init_state` / :func:`~jobs.sgd.state.check_state`; not modified.
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
