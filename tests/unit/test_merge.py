"""Merge rules (jobs.merge): exact merges equal serial fits; state round trips are exact."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.cluster import MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import IncrementalPCA
from sklearn.linear_model import SGDClassifier as SkSGDClassifier
from sklearn.naive_bayes import BernoulliNB, CategoricalNB, ComplementNB, GaussianNB, MultinomialNB
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

from jobs.aggregate import median
from jobs.local import partial_fit_step
from jobs.merge import (
    CategoricalNBRule,
    LinearRule,
    MergeRule,
    NoMergeRule,
    SGDJobRule,
    rule_for,
    state_rule,
)
from jobs.spec import estimator_spec

EXACT = dict(rtol=1e-10, atol=1e-10)


def _wire(state: dict) -> dict:
    """What a state looks like after the wire: copies, scalars as Python scalars."""
    out = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _parts(X, y, k):
    bounds = np.linspace(0, X.shape[0], k + 1).astype(int)
    return [(X[a:b], None if y is None else y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _local_step(est, state, X, y, classes, seed):
    """The node-side local step (``jobs.local.partial_fit_step``)."""
    if isinstance(est, MinMaxScaler):
        # jobs.spec turns feature_range=(0, 1) into a list, which MinMaxScaler refuses;
        # until the spec keeps tuples, run the same steps on a clone
        local = clone(est)
        if state:
            state_rule(local).set_state(local, state)
        local.partial_fit(X)
        return state_rule(local).get_state(local), {"samples": float(X.shape[0])}
    return partial_fit_step(estimator_spec(est), state, X, y, classes=classes, seed=seed)


def _average_round(est, parts, previous, classes=None, aggregate=None):
    """One average-mode round through the node-side local step and the rule's merge."""
    states, weights = [], []
    for i, (X, y) in enumerate(parts):
        state, metrics = _local_step(est, previous, X, y, classes, i)
        states.append(_wire(state))
        weights.append(metrics["samples"])
    rule = rule_for(est)
    kwargs = {} if aggregate is None else {"aggregate": aggregate}
    return _wire(rule.merge(states, weights, previous=previous, **kwargs))


def _sequential(est, parts, state=None, classes=None):
    """Sequential mode: the state hops from partition to partition."""
    for i, (X, y) in enumerate(parts):
        state, _ = _local_step(est, state, X, y, classes, i)
        state = _wire(state)
    return state


def _serial(est, parts, classes=None, passes=1):
    est = clone(est)
    for _ in range(passes):
        for X, y in parts:
            if y is None:
                est.partial_fit(X)
            elif classes is not None:
                est.partial_fit(X, y, classes=classes)
            else:
                est.partial_fit(X, y)
    return est


def _load(est, state):
    fresh = clone(est)
    return state_rule(fresh).set_state(fresh, state)


def _assert_same(a, b, names, **tol):
    tol = tol or EXACT
    for name in names:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, list):
            for x, z in zip(va, vb):
                np.testing.assert_allclose(x, z, err_msg=name, **tol)
        else:
            np.testing.assert_allclose(va, vb, err_msg=name, **tol)


# --------------------------------------------------------------------------------------
# naive Bayes
# --------------------------------------------------------------------------------------
def _nb_data(kind: str):
    rng = np.random.default_rng(0)
    n, d = 1203, 12
    y = rng.integers(0, 3, n)
    if kind == "counts":
        X = rng.poisson(lam=1.0 + y[:, None] * (np.arange(d) % 3 == 0), size=(n, d)).astype(float)
    elif kind == "binary":
        X = (rng.random((n, d)) < 0.2 + 0.2 * (y[:, None] == np.arange(d) % 3)).astype(float)
    elif kind == "categories":
        X = rng.integers(0, 4, (n, d)) + (y[:, None] == 2) * (np.arange(d) % 2)
        X[:300, 0] = np.minimum(X[:300, 0], 1)  # the first partition sees fewer categories
    else:
        X = rng.standard_normal((n, d)) * (1 + np.arange(d)) + y[:, None] * 0.7 + 100.0
    return X, y


NB_CASES = [
    (MultinomialNB(alpha=0.5), "counts", ["class_count_", "feature_count_", "feature_log_prob_", "class_log_prior_"]),
    (BernoulliNB(), "binary", ["class_count_", "feature_count_", "feature_log_prob_", "class_log_prior_"]),
    (ComplementNB(norm=True), "counts", ["class_count_", "feature_count_", "feature_all_", "feature_log_prob_"]),
    (CategoricalNB(), "categories", ["class_count_", "category_count_", "feature_log_prob_", "class_log_prior_"]),
    (GaussianNB(), "gaussian", ["class_count_", "theta_", "var_", "class_prior_", "epsilon_"]),
]


@pytest.mark.parametrize("est,kind,names", NB_CASES, ids=[type(c[0]).__name__ for c in NB_CASES])
def test_naive_bayes_merge_equals_serial_fit(est, kind, names):
    X, y = _nb_data(kind)
    classes = np.unique(y)
    parts = _parts(X, y, 4)
    merged = _load(est, _average_round(est, parts, None, classes))
    serial = _serial(est, parts, classes)
    # a serial partial_fit chain of GaussianNB carries each batch's epsilon into the
    # next batch's variances (a scikit-learn quirk of order var_smoothing * var)
    tol = dict(rtol=1e-7, atol=1e-9) if isinstance(est, GaussianNB) else EXACT
    _assert_same(merged, serial, [n for n in names if n != "epsilon_"], **tol)
    np.testing.assert_array_equal(merged.predict(X), serial.predict(X))
    np.testing.assert_allclose(merged.predict_proba(X), serial.predict_proba(X), **tol)
    whole = clone(est).fit(X, y)
    _assert_same(merged, whole, names)  # and equals one fit on all the rows
    np.testing.assert_allclose(merged.predict_proba(X), whole.predict_proba(X), **EXACT)


@pytest.mark.parametrize("est,kind,names", NB_CASES, ids=[type(c[0]).__name__ for c in NB_CASES])
def test_naive_bayes_second_round_counts_previous_once(est, kind, names):
    X, y = _nb_data(kind)
    classes = np.unique(y)
    parts = _parts(X, y, 3)
    first = _average_round(est, parts, None, classes)
    second = _average_round(est, parts, first, classes)
    if isinstance(est, GaussianNB):  # equals one fit on every row twice
        serial = clone(est).fit(np.vstack([X, X]), np.concatenate([y, y]))
    else:
        serial = _serial(est, parts, classes, passes=2)
    _assert_same(_load(est, second), serial, names)


def _two_level_round(est, parts, previous, classes=None, groups=((0, 1), (2, 3))):
    """Partitions merged per region, then regions merged at home (as the driver does)."""
    spec_states = []
    for i, (X, y) in enumerate(parts):
        state, metrics = _local_step(est, previous, X, y, classes, i)
        spec_states.append((_wire(state), metrics["samples"]))
    rule = rule_for(est)
    regional = []
    for group in groups:
        states = [spec_states[i][0] for i in group]
        weights = [spec_states[i][1] for i in group]
        regional.append((_wire(rule.merge(states, weights, previous=previous)), sum(weights)))
    return _wire(rule.merge([r[0] for r in regional], [r[1] for r in regional], previous=previous))


EXACT_FAMILIES = [(c[0], c[1]) for c in NB_CASES]


@pytest.mark.parametrize("est,kind", EXACT_FAMILIES, ids=[type(c[0]).__name__ for c in EXACT_FAMILIES])
def test_naive_bayes_two_level_merge_equals_flat_merge(est, kind):
    X, y = _nb_data(kind)
    classes = np.unique(y)
    parts = _parts(X, y, 4)
    flat = _average_round(est, parts, _average_round(est, parts, None, classes), classes)
    tiered = _two_level_round(est, parts, _two_level_round(est, parts, None, classes), classes)
    assert set(flat) == set(tiered)
    for name in flat:
        np.testing.assert_allclose(np.asarray(tiered[name], dtype=float), np.asarray(flat[name], dtype=float),
                                   err_msg=name, **EXACT)


@pytest.mark.parametrize("est,kind,names", NB_CASES, ids=[type(c[0]).__name__ for c in NB_CASES])
def test_naive_bayes_sequential_mode_is_exact(est, kind, names):
    X, y = _nb_data(kind)
    classes = np.unique(y)
    parts = _parts(X, y, 4)
    chained = _load(est, _sequential(est, parts, classes=classes))
    _assert_same(chained, _serial(est, parts, classes), names, rtol=0, atol=0)


def test_categorical_nb_states_may_differ_in_width():
    X, y = _nb_data("categories")
    parts = _parts(X, y, 4)
    spec = estimator_spec(CategoricalNB())
    widths = {partial_fit_step(spec, None, Xp, yp, classes=np.unique(y))[0]["category_count_0"].shape[1]
              for Xp, yp in parts}
    assert len(widths) > 1  # the first partition saw fewer categories ...
    assert "category_count_*" in CategoricalNBRule().variable_shape  # ... and the rule says so


# --------------------------------------------------------------------------------------
# scalers
# --------------------------------------------------------------------------------------
SCALERS = [
    (StandardScaler(), ["mean_", "var_", "scale_", "n_samples_seen_"]),
    (StandardScaler(with_mean=False), ["mean_", "var_", "scale_", "n_samples_seen_"]),
    (StandardScaler(with_std=False), ["mean_", "n_samples_seen_"]),
    (MaxAbsScaler(), ["max_abs_", "scale_", "n_samples_seen_"]),
    (MinMaxScaler(), ["data_min_", "data_max_", "data_range_", "scale_", "min_", "n_samples_seen_"]),
]


def _scaler_data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1001, 7)) * np.array([1, 10, 100, 0.01, 1e3, 5, 1]) + np.arange(7) * 50
    X[:, 6] = 3.0  # a constant feature
    return X


@pytest.mark.parametrize("est,names", SCALERS, ids=[repr(c[0]) for c in SCALERS])
def test_scaler_merge_equals_serial_fit(est, names):
    X = _scaler_data()
    parts = _parts(X, None, 5)
    merged = _load(est, _average_round(est, parts, None))
    serial = _serial(est, parts)
    whole = clone(est).fit(X)
    _assert_same(merged, serial, names)
    _assert_same(merged, whole, names)
    np.testing.assert_allclose(merged.transform(X), whole.transform(X), **EXACT)
    second = _load(est, _average_round(est, parts, _average_round(est, parts, None)))
    _assert_same(second, _serial(est, parts, passes=2), names)
    chained = _load(est, _sequential(est, parts))
    _assert_same(chained, serial, names, rtol=0, atol=0)


@pytest.mark.parametrize("est,names", SCALERS, ids=[repr(c[0]) for c in SCALERS])
def test_scaler_two_level_merge_equals_flat_merge(est, names):
    X = _scaler_data()
    parts = _parts(X, None, 4)
    flat = _load(est, _average_round(est, parts, _average_round(est, parts, None)))
    tiered = _load(est, _two_level_round(est, parts, _two_level_round(est, parts, None)))
    _assert_same(tiered, flat, names)


def test_sparse_standard_scaler_merge_is_exact():
    X = sp.random(900, 20, density=0.2, format="csr", random_state=2) * 10
    est = StandardScaler(with_mean=False)
    parts = _parts(X, None, 3)
    merged = _load(est, _average_round(est, parts, None))
    whole = clone(est).fit(X)
    _assert_same(merged, whole, ["mean_", "var_", "scale_", "n_samples_seen_"])


# --------------------------------------------------------------------------------------
# MiniBatchKMeans
# --------------------------------------------------------------------------------------
def test_minibatch_kmeans_inertia_within_two_percent_of_serial():
    X, _ = make_blobs(n_samples=8000, centers=6, n_features=5, cluster_std=1.5, random_state=3)
    est = MiniBatchKMeans(n_clusters=6, random_state=0, n_init=3)
    parts = _parts(X, None, 8)
    serial = _serial(est, parts, passes=3)
    state = None
    for _ in range(3):
        state = _average_round(est, parts, state)
    merged = _load(est, state)
    serial_inertia, merged_inertia = -serial.score(X), -merged.score(X)
    assert merged_inertia <= serial_inertia * 1.02, (merged_inertia, serial_inertia)
    assert merged._counts.sum() == pytest.approx(serial._counts.sum())


def test_minibatch_kmeans_sequential_mode_is_exact():
    X, _ = make_blobs(n_samples=3000, centers=4, n_features=3, random_state=4)
    est = MiniBatchKMeans(n_clusters=4, random_state=7, n_init=1, reassignment_ratio=0.5)
    parts = _parts(X, None, 6)
    chained = _load(est, _sequential(est, parts))
    serial = _serial(est, parts)
    np.testing.assert_array_equal(chained.cluster_centers_, serial.cluster_centers_)
    np.testing.assert_array_equal(chained._counts, serial._counts)
    assert chained.n_steps_ == serial.n_steps_


# --------------------------------------------------------------------------------------
# IncrementalPCA
# --------------------------------------------------------------------------------------
def _pca_data(n=2000, d=8, rank=None, seed=5):
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.standard_normal((n, d)) * np.linspace(3, 0.5, d) @ _rotation(d, rng) + 7.0
    low = rng.standard_normal((n, rank)) * np.linspace(5, 2, rank) @ rng.standard_normal((rank, d))
    return low + 0.1 * rng.standard_normal((n, d)) + 3.0


def _rotation(d, rng):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_incremental_pca_merge_is_exact_with_all_components():
    X = _pca_data()
    est = IncrementalPCA()
    parts = _parts(X, None, 4)
    merged = _load(est, _average_round(est, parts, None))
    serial = _serial(est, parts)
    for name in ("mean_", "var_", "n_samples_seen_", "singular_values_", "explained_variance_",
                 "explained_variance_ratio_", "components_"):
        np.testing.assert_allclose(getattr(merged, name), getattr(serial, name), rtol=1e-8, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(merged.transform(X), serial.transform(X), rtol=1e-8, atol=1e-8)
    second = _load(est, _average_round(est, parts, _average_round(est, parts, None)))
    np.testing.assert_allclose(second.components_, _serial(est, parts, passes=2).components_, rtol=1e-7, atol=1e-9)


def test_incremental_pca_truncated_merge_error_is_small():
    # rank-3 signal plus small noise, 3 of 10 components kept: documented approximation
    X = _pca_data(n=3000, d=10, rank=3)
    est = IncrementalPCA(n_components=3)
    parts = _parts(X, None, 6)
    merged = _load(est, _average_round(est, parts, None))
    serial = _serial(est, parts)
    np.testing.assert_allclose(merged.mean_, serial.mean_, **EXACT)
    np.testing.assert_allclose(merged.var_, serial.var_, **EXACT)
    np.testing.assert_allclose(merged.explained_variance_, serial.explained_variance_, rtol=1e-3)
    cosines = np.linalg.svd(merged.components_ @ serial.components_.T, compute_uv=False)
    assert cosines.min() > 0.9999  # principal angles between the subspaces
    assert merged.noise_variance_ == pytest.approx(0.01, rel=0.2)


def test_incremental_pca_sequential_mode_is_exact():
    X = _pca_data()
    est = IncrementalPCA(n_components=4)
    parts = _parts(X, None, 4)
    chained = _load(est, _sequential(est, parts))
    serial = _serial(est, parts)
    np.testing.assert_array_equal(chained.components_, serial.components_)
    assert chained.noise_variance_ == serial.noise_variance_


# --------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_mlp_sequential_mode_is_exact(solver):
    X, y = make_blobs(n_samples=1200, centers=3, n_features=6, random_state=6)
    est = MLPClassifier(hidden_layer_sizes=(8, 5), solver=solver, random_state=0)
    parts = _parts(X, y, 4)
    classes = np.unique(y)
    chained = _load(est, _sequential(est, parts, classes=classes))
    chained = _load(est, _sequential(est, parts, state=rule_for(est).get_state(chained), classes=classes))
    serial = _serial(est, parts, classes, passes=2)
    _assert_same(chained, serial, ["coefs_", "intercepts_"], rtol=0, atol=0)
    assert chained.t_ == serial.t_
    np.testing.assert_array_equal(chained.predict_proba(X), serial.predict_proba(X))


def test_mlp_average_mode_learns_and_keeps_flat_state():
    X, y = make_blobs(n_samples=3000, centers=3, n_features=6, cluster_std=3.0, random_state=6)
    est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01)
    parts = _parts(X, y, 4)
    classes = np.unique(y)
    state = None
    for _ in range(8):
        state = _average_round(est, parts, state, classes)
    assert {"coefs_0", "coefs_1", "intercepts_0", "intercepts_1", "opt_ms_0", "opt_t"} <= set(state)
    assert all(isinstance(v, (int, float, str, np.ndarray)) for v in state.values())
    merged = _load(est, state)
    serial = _serial(est, parts, classes, passes=8)
    assert merged.score(X, y) >= serial.score(X, y) - 0.02
    assert merged.t_ == serial.t_


def test_mlp_regressor_rule_roundtrip():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    est = MLPRegressor(hidden_layer_sizes=(6,), random_state=0)
    state = _average_round(est, _parts(X, y, 2), None)
    merged = _load(est, state)
    assert merged.out_activation_ == "identity" and merged.predict(X).shape == (400,)
    same = rule_for(est).merge([state, state], [1.0, 3.0])
    for name in ("coefs_0", "intercepts_1"):
        np.testing.assert_allclose(same[name], state[name], rtol=1e-15)


# --------------------------------------------------------------------------------------
# the registry and the base class
# --------------------------------------------------------------------------------------
def test_registry_lists_families_and_suggests_sequential():
    class NoRule:
        pass

    with pytest.raises(NoMergeRule) as info:
        rule_for(NoRule)
    message = str(info.value)
    for word in ("naive Bayes", "scalers", "clustering", "decomposition", "neural networks",
                 "linear models", "mode='sequential'"):
        assert word in message
    assert isinstance(rule_for(SkSGDClassifier), LinearRule)


def test_generic_merge_accepts_previous_and_ignores_it():
    rule = MergeRule()
    states = [{"coef_": np.array([1.0, 2.0]), "n": 3}, {"coef_": np.array([3.0, 4.0]), "n": 3}]
    merged = rule.merge(states, [1.0, 3.0], previous={"coef_": np.zeros(2), "n": 3})
    np.testing.assert_allclose(merged["coef_"], [2.5, 3.5])


def test_sgd_job_rule_uses_the_aggregator_and_counts_samples():
    rule = SGDJobRule()
    base = {"t": 100.0, "t0": 100.0, "eta_base": 1.0, "eta_scale": 1.0, "best_loss": 1.0,
            "no_improve": 0.0, "epoch_loss": 0.5, "center": np.zeros(1), "scale": np.ones(1)}
    states = [dict(base, coef=np.array([[c]]), intercept=np.array([0.0]), t=100.0 + n)
              for c, n in ((1.0, 10), (2.0, 10), (100.0, 10))]
    merged = rule.merge(states, [10, 10, 10], aggregate=median)
    assert merged["coef"][0, 0] == 2.0  # a robust aggregate ignores the outlier
    assert merged["t"] == 130.0
