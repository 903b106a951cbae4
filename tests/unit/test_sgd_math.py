"""The grid's numpy SGD kernel (jobs.sgd) and its facades, without any grid."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.linear_model import SGDClassifier as SkSGDClassifier
from sklearn.linear_model import SGDRegressor as SkSGDRegressor
from sklearn.metrics import r2_score

from jobs import SGDClassifier, SGDRegressor
from jobs import sgd
from jobs.local import LOCAL_STEPS, local_step
from jobs.merge import SGDJobRule, rule_for
from jobs.spec import resolve_class

CLF = "jobs.sgd_estimators:SGDClassifier"
REG = "jobs.sgd_estimators:SGDRegressor"


# --------------------------------------------------------------------------------------
# data: well-specified linear problems, large test sets (accuracy noise << 1 point)
# --------------------------------------------------------------------------------------
def _classification(n_classes: int, seed: int = 0, n_train: int = 4000, n_test: int = 20000, d: int = 20):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, n_classes))
    if n_classes == 2:
        y = (X @ W[:, 0] + rng.logistic(size=n) > 0).astype(int)
    else:
        y = (X @ W + rng.gumbel(size=(n, n_classes))).argmax(axis=1)
    return X[:n_train], X[n_train:], y[:n_train], y[n_train:]


def _regression(seed: int = 5, n_train: int = 4000, n_test: int = 20000, d: int = 20):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + rng.standard_t(2, size=n)
    y = (y - y.mean()) / y.std()
    return X[:n_train], X[n_train:], y[:n_train], y[n_train:]


def serial_steps(params: dict, X, y, classes, *, cls: str = CLF, epochs: int = 5, parts: int = 4,
                 sample_weight=None):
    """The kernel as a serial sequence of local steps over ``parts`` partitions."""
    spec = {"class": cls, "params": params}
    bounds = np.linspace(0, X.shape[0], parts + 1).astype(int)
    state = None
    for epoch in range(epochs):
        for p in range(parts):
            a, b = bounds[p], bounds[p + 1]
            sw = None if sample_weight is None else sample_weight[a:b]
            state, metrics = sgd.sgd_step(spec, state, X[a:b], y[a:b], classes=classes,
                                          seed=epoch * 1000 + p, sample_weight=sw)
    return state, metrics


def accuracy(state, X, y, classes) -> float:
    Z = sgd.decision_scores(state["coef"], state["intercept"], X)
    idx = (Z[:, 0] > 0).astype(int) if Z.shape[1] == 1 else Z.argmax(axis=1)
    return float(np.mean(classes[idx] == y))


# --------------------------------------------------------------------------------------
# parity with scikit-learn: every loss and penalty
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("loss", ["log_loss", "hinge", "modified_huber"])
@pytest.mark.parametrize("penalty", ["l2", "l1", "elasticnet"])
def test_classifier_matches_sklearn_accuracy(n_classes, loss, penalty):
    Xtr, Xte, ytr, yte = _classification(n_classes)
    classes = np.unique(ytr)
    reference = SkSGDClassifier(loss=loss, penalty=penalty, random_state=0).fit(Xtr, ytr).score(Xte, yte)
    state, _ = serial_steps({"loss": loss, "penalty": penalty}, Xtr, ytr, classes)
    ours = accuracy(state, Xte, yte, classes)
    assert ours >= reference - 0.01, (ours, reference)


@pytest.mark.parametrize("loss", ["squared_error", "huber"])
@pytest.mark.parametrize("penalty", ["l2", "l1", "elasticnet"])
def test_regressor_matches_sklearn_r2(loss, penalty):
    Xtr, Xte, ytr, yte = _regression()
    reference = SkSGDRegressor(loss=loss, penalty=penalty, random_state=0).fit(Xtr, ytr).score(Xte, yte)
    state, _ = serial_steps({"loss": loss, "penalty": penalty}, Xtr, ytr, None, cls=REG)
    ours = r2_score(yte, sgd.decision_scores(state["coef"], state["intercept"], Xte)[:, 0])
    assert ours >= reference - 0.01, (ours, reference)


@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive"])
def test_other_schedules_learn(learning_rate):
    Xtr, Xte, ytr, yte = _classification(2)
    classes = np.unique(ytr)
    reference = SkSGDClassifier(loss="log_loss", random_state=0).fit(Xtr, ytr).score(Xte, yte)
    state, _ = serial_steps({"learning_rate": learning_rate}, Xtr, ytr, classes)
    # no iterate averaging here: the last iterate of a constant step is noisier
    assert accuracy(state, Xte, yte, classes) >= reference - 0.03


@pytest.mark.parametrize("n_classes", [2, 3])
def test_default_schedule_needs_no_feature_scaling(n_classes):
    # features scaled by 1e-2..1e2 and shifted by up to 100: the preconditioner
    # takes the steps in standardised coordinates, so accuracy does not change.
    # (No penalty: an L2 penalty on rescaled coefficients is another objective.)
    Xtr, Xte, ytr, yte = _classification(n_classes)
    rng = np.random.default_rng(7)
    scale, shift = 10 ** rng.uniform(-2, 2, Xtr.shape[1]), rng.uniform(-100, 100, Xtr.shape[1])
    classes = np.unique(ytr)
    standard, _ = serial_steps({"penalty": None}, Xtr, ytr, classes)
    raw, _ = serial_steps({"penalty": None}, Xtr * scale + shift, ytr, classes)
    assert accuracy(raw, Xte * scale + shift, yte, classes) >= accuracy(standard, Xte, yte, classes) - 0.01


def test_multinomial_is_softmax_not_one_vs_rest():
    # the gradient of the kernel's log_loss with 3 classes is the softmax cross-entropy one
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((7, 3))
    T = rng.integers(0, 3, 7)
    cfg = sgd.SGDConfig(loss="log_loss")
    NG, loss_sum, _ = sgd._neg_grad(cfg, "multinomial", Z.copy(), T, None)
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    onehot = np.eye(3)[T]
    np.testing.assert_allclose(NG, onehot - P, atol=1e-12)
    np.testing.assert_allclose(loss_sum, -np.log(P[np.arange(7), T]).sum(), rtol=1e-12)


@pytest.mark.parametrize(
    "loss,kind",
    [("log_loss", "binary"), ("hinge", "binary"), ("modified_huber", "binary"), ("log_loss", "multinomial"),
     ("hinge", "ovr"), ("modified_huber", "ovr"), ("squared_error", "regression"), ("huber", "regression")],
)
def test_gradients_match_finite_differences(loss, kind):
    rng = np.random.default_rng(1)
    cfg = sgd.SGDConfig(loss=loss, epsilon=0.3)
    K = 1 if kind in ("binary", "regression") else 3
    Z = rng.standard_normal((9, K)) * 1.7
    if kind == "binary":
        T, Z = np.where(rng.random(9) > 0.5, 1.0, -1.0), Z[:, 0]
    elif kind == "regression":
        T, Z = rng.standard_normal(9), Z[:, 0]
    else:
        T = rng.integers(0, K, 9)
    w = rng.random(9) + 0.5
    NG, _, _ = sgd._neg_grad(cfg, kind, Z.copy(), T, w)
    h = 1e-6
    numeric = np.zeros_like(Z)
    for idx in np.ndindex(Z.shape):
        up, down = Z.copy(), Z.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (sgd._neg_grad(cfg, kind, up, T, w)[1] - sgd._neg_grad(cfg, kind, down, T, w)[1]) / (2 * h)
    np.testing.assert_allclose(NG, -numeric, atol=1e-5)


# --------------------------------------------------------------------------------------
# inputs: float32, sparse CSR, weights
# --------------------------------------------------------------------------------------
def test_sparse_csr_equals_dense():
    Xtr, _, ytr, _ = _classification(3, n_train=2000, n_test=10)
    Xtr[np.abs(Xtr) < 0.8] = 0.0
    classes = np.unique(ytr)
    dense, _ = serial_steps({"penalty": "elasticnet"}, Xtr, ytr, classes, epochs=2)
    sparse, _ = serial_steps({"penalty": "elasticnet"}, sp.csr_matrix(Xtr), ytr, classes, epochs=2)
    np.testing.assert_allclose(sparse["coef"], dense["coef"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse["intercept"], dense["intercept"], rtol=1e-9, atol=1e-12)


def test_float32_input_learns_like_float64():
    Xtr, Xte, ytr, yte = _classification(2)
    classes = np.unique(ytr)
    s64, _ = serial_steps({}, Xtr, ytr, classes)
    s32, _ = serial_steps({}, Xtr.astype(np.float32), ytr, classes)
    assert s32["coef"].dtype == np.float64  # states are float64 whatever the input
    assert abs(accuracy(s32, Xte, yte, classes) - accuracy(s64, Xte, yte, classes)) < 0.005
    np.testing.assert_allclose(s32["coef"], s64["coef"], rtol=1e-3, atol=1e-3)


def test_sample_weight_zero_ignores_rows():
    Xtr, Xte, ytr, yte = _classification(2)
    classes = np.unique(ytr)
    noisy = ytr.copy()
    bad = np.arange(len(ytr)) % 2 == 0
    noisy[bad] = 1 - noisy[bad]  # half the labels flipped ...
    weights = np.where(bad, 0.0, 1.0)  # ... and weighted out
    state, _ = serial_steps({}, Xtr, noisy, classes, sample_weight=weights)
    clean, _ = serial_steps({}, Xtr[~bad], ytr[~bad], classes)
    assert accuracy(state, Xte, yte, classes) >= accuracy(clean, Xte, yte, classes) - 0.01


def test_class_weight_shifts_the_decision():
    Xtr, Xte, ytr, yte = _classification(2)
    classes = np.unique(ytr)
    plain, _ = serial_steps({}, Xtr, ytr, classes)
    heavy, _ = serial_steps({"class_weight": {1: 10.0}}, Xtr, ytr, classes)
    predicted_one = lambda s: np.mean(sgd.decision_scores(s["coef"], s["intercept"], Xte)[:, 0] > 0)  # noqa: E731
    assert predicted_one(heavy) > predicted_one(plain) + 0.05
    balanced, _ = serial_steps({"class_weight": "balanced"}, Xtr, ytr, classes)
    reference = SkSGDClassifier(loss="log_loss", class_weight="balanced", random_state=0).fit(Xtr, ytr).score(Xte, yte)
    assert accuracy(balanced, Xte, yte, classes) >= reference - 0.01, (accuracy(balanced, Xte, yte, classes), reference)


def test_l1_gives_sparse_coefficients():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4000, 40))
    y = (X[:, :3].sum(axis=1) + 0.3 * rng.standard_normal(4000) > 0).astype(int)
    state, _ = serial_steps({"penalty": "l1", "alpha": 0.01}, X, y, np.array([0, 1]))
    assert np.sum(state["coef"] == 0.0) >= 30
    assert np.all(state["coef"][0, :3] > 0.1)


# --------------------------------------------------------------------------------------
# the local step contract
# --------------------------------------------------------------------------------------
def test_local_step_is_registered_with_the_partial_fit_signature():
    assert local_step("sgd") is sgd.sgd_step
    assert set(LOCAL_STEPS) >= {"partial_fit", "sgd"}
    Xtr, _, ytr, _ = _classification(2, n_train=600, n_test=10)
    spec = {"class": CLF, "params": SGDClassifier(random_state=3).get_params()}
    state, metrics = local_step("sgd")(spec, None, Xtr, ytr, classes=np.array([0, 1]), seed=7, epochs=2)
    assert set(state) == set(sgd.STATE_KEYS)
    assert metrics["samples"] == 1200.0
    assert 0.0 < metrics["loss"] < 1.0 and 0.5 < metrics["score"] <= 1.0
    again, _ = local_step("sgd")(spec, state, Xtr, ytr, classes=np.array([0, 1]), seed=8, epochs=1)
    assert set(again) == set(state)  # same keys and shapes every round
    for key in state:
        assert np.shape(again[key]) == np.shape(state[key])


def test_same_seed_same_bits_and_seed_matters():
    Xtr, _, ytr, _ = _classification(3, n_train=1500, n_test=10)
    classes = np.unique(ytr)
    a, _ = serial_steps({}, Xtr, ytr, classes, epochs=2)
    b, _ = serial_steps({}, Xtr, ytr, classes, epochs=2)
    assert a["coef"].tobytes() == b["coef"].tobytes()
    spec = {"class": CLF, "params": {}}
    c, _ = sgd.sgd_step(spec, None, Xtr, ytr, classes=classes, seed=1)
    d, _ = sgd.sgd_step(spec, None, Xtr, ytr, classes=classes, seed=2)
    assert not np.array_equal(c["coef"], d["coef"])


def test_progress_is_counted_in_samples():
    Xtr, _, ytr, _ = _classification(2, n_train=1000, n_test=10)
    rule = SGDJobRule()
    spec = {"class": CLF, "params": {"learning_rate": "invscaling"}}
    for n_parts in (1, 4):
        bounds = np.linspace(0, 1000, n_parts + 1).astype(int)
        states, weights = [], []
        for p in range(n_parts):
            st, m = sgd.sgd_step(spec, None, Xtr[bounds[p]:bounds[p + 1]], ytr[bounds[p]:bounds[p + 1]],
                                 classes=np.array([0, 1]), seed=p)
            states.append(st)
            weights.append(m["samples"])
        merged = rule.merge(states, weights)
        nxt = rule.server_update(None, merged, {"estimator": spec}, 0)
        assert merged["t"] == 1000.0 and nxt["t0"] == 1000.0


def test_early_stopping_reports_validation_metrics_on_fixed_rows():
    Xtr, _, ytr, _ = _classification(2, n_train=1000, n_test=10)
    train1, val1 = sgd.validation_split(1000, 0.2, seed=4)
    train2, val2 = sgd.validation_split(1000, 0.2, seed=4)
    assert np.array_equal(val1, val2) and len(val1) == 200 and not set(train1) & set(val1)
    spec = {"class": CLF, "params": {"early_stopping": True, "validation_fraction": 0.2, "random_state": 4}}
    classes = np.array([0, 1])
    state, m1 = sgd.sgd_step(spec, None, Xtr, ytr, classes=classes, seed=1)
    state2, m2 = sgd.sgd_step(spec, state, Xtr, ytr, classes=classes, seed=2)
    assert m1["samples"] == 800.0 and m1["val_samples"] == 200.0
    assert m1["start_val_loss"] == pytest.approx(np.log(2))  # zero model
    assert m2["start_val_loss"] == pytest.approx(m1["val_loss"])  # same rows, same model
    assert m2["start_val_score"] == m1["val_score"]
    # the scores are the returned models' accuracies on exactly the held-out rows of random_state 4 ...
    assert m1["val_score"] == accuracy(state, Xtr[val1], ytr[val1], classes)
    assert m2["val_score"] == accuracy(state2, Xtr[val1], ytr[val1], classes)
    # ... and as good as scikit-learn's SGD trained on the other rows (200 rows: 0.005 a row)
    theirs = np.mean([SkSGDClassifier(loss="log_loss", random_state=s).fit(Xtr[train1], ytr[train1]).score(Xtr[val1], ytr[val1])
                      for s in (0, 1, 2)])
    assert m2["val_score"] >= theirs - 0.01, (m2["val_score"], theirs)


def test_adaptive_divides_the_step_on_a_plateau():
    cfg = sgd.SGDConfig(learning_rate="adaptive", tol=1e-3, n_iter_no_change=2)
    state = sgd.init_state(3, 1)
    for loss in (1.0, 0.5, 0.4999, 0.4998):
        state = sgd.adaptive_update(cfg, state, loss)
    assert state["eta_scale"] == pytest.approx(0.2)
    assert state["best_loss"] == pytest.approx(0.4998)


def test_server_momentum_accumulates_velocity():
    params = {"server_momentum": 0.5}
    prev = sgd.init_state(2, 1)
    merged = dict(prev, coef=np.array([[1.0, 0.0]]), intercept=np.array([0.5]))
    first = sgd.server_update(prev, merged, params, 0)
    np.testing.assert_allclose(first["coef"], [[1.0, 0.0]])
    merged2 = dict(first, coef=first["coef"] + np.array([[1.0, 0.0]]))
    merged2.pop("velocity_coef")
    second = sgd.server_update(first, merged2, params, 1)
    np.testing.assert_allclose(second["coef"], [[2.5, 0.0]])  # 1 + (0.5 * 1 + 1)


def test_server_momentum_reaches_accuracy_in_fewer_rounds():
    # digits in 5 partitions of 270 rows: few local steps per round, where FedAvgM helps
    # (measured: 0.96 test accuracy after 8 rounds with momentum 0.5, 16 without)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    classes = np.unique(y)
    rule = SGDJobRule()

    def rounds_to(target: float, momentum: float) -> int:
        spec = {"class": CLF, "params": {"server_momentum": momentum}}
        state = None
        for r in range(25):
            states, weights = [], []
            for p in range(5):
                sl = slice(p * 270, (p + 1) * 270)
                st, m = sgd.sgd_step(spec, state, Xtr[sl], ytr[sl], classes=classes, seed=r * 10 + p)
                states.append(st)
                weights.append(m["samples"])
            state = rule.server_update(state, rule.merge(states, weights, previous=state), {"estimator": spec}, r)
            if accuracy(state, Xte, yte, classes) >= target:
                return r + 1
        return 26

    with_momentum = rounds_to(0.955, 0.5)
    assert with_momentum <= 12
    assert with_momentum < rounds_to(0.955, 0.0)


# --------------------------------------------------------------------------------------
# validation errors name the parameter, show the value, say what is allowed
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params,words",
    [
        ({"loss": "squared_hinge"}, ["loss", "squared_hinge", "log_loss"]),
        ({"penalty": "l3"}, ["penalty", "l3", "elasticnet"]),
        ({"alpha": -1.0}, ["alpha", "-1.0", ">= 0"]),
        ({"l1_ratio": 1.5}, ["l1_ratio", "1.5", "<= 1"]),
        ({"learning_rate": "optimal"}, ["learning_rate", "optimal", "auto"]),
        ({"eta0": 0.0}, ["eta0", "0.0", "> 0"]),
        ({"batch_size": 0}, ["batch_size", "0", ">= 1"]),
        ({"validation_fraction": 1.0}, ["validation_fraction", "1.0", "< 1"]),
        ({"class_weight": "even"}, ["class_weight", "even", "balanced"]),
        ({"rounds": 0}, ["rounds", "0", ">= 1"]),
        ({"aggregate": "max"}, ["aggregate", "max", "median"]),
        ({"server_momentum": 1.0}, ["server_momentum", "1.0", "[0, 1)"]),
        ({"partition_rows": -5}, ["partition_rows", "-5", "auto"]),
    ],
)
def test_parameter_errors_are_explicit(params, words):
    with pytest.raises(ValueError) as info:
        SGDClassifier(**params)._job_request()
    for word in words:
        assert word in str(info.value)


def test_regressor_rejects_classifier_losses():
    with pytest.raises(ValueError, match="loss='log_loss'.*squared_error"):
        SGDRegressor(loss="log_loss")._job_request()


# --------------------------------------------------------------------------------------
# facades: job description, result loading, local partial_fit, predictions
# --------------------------------------------------------------------------------------
def test_job_request_is_plain_and_resolvable():
    est = SGDClassifier(loss="hinge", rounds=4, class_weight={0: 1.0, 1: 2.0}, random_state=9)
    request = est._job_request()
    assert request["kind"] == "sgd" and request["mode"] == "average"
    assert request["estimator"]["class"] == CLF
    assert resolve_class(request["estimator"]["class"]) is SGDClassifier
    assert isinstance(rule_for(SGDClassifier), SGDJobRule) and isinstance(rule_for(SGDRegressor), SGDJobRule)
    rebuilt = SGDClassifier._from_request(request)
    assert rebuilt.get_params() == est.get_params()
    with pytest.raises(ValueError, match="class_weight"):
        SGDClassifier(class_weight={0: object()})._job_request()


def test_load_result_gives_a_scikit_learn_model():
    Xtr, Xte, ytr, yte = _classification(3, n_train=3000)
    classes = np.unique(ytr)
    state, _ = serial_steps({}, Xtr, ytr, classes, epochs=3)
    est = SGDClassifier(rounds=3)
    est._load_result(state, [{"round": 1}, {"round": 2}, {"round": 3}],
                     {"classes": classes.tolist(), "n_features": 20, "local_epochs": 1})
    assert est.coef_.shape == (3, 20) and est.intercept_.shape == (3,)
    assert est.n_iter_ == 3 and len(est.history_) == 3 and est.n_features_in_ == 20
    assert est.score(Xte, yte) == pytest.approx(accuracy(state, Xte, yte, classes))
    proba = est.predict_proba(Xte[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(est.classes_[proba.argmax(axis=1)], est.predict(Xte[:5]))
    # warm start: the next job starts from these coefficients
    est.set_params(warm_start=True)
    init = est._job_request()["init_state"]
    np.testing.assert_allclose(init["coef"], state["coef"])


def test_local_partial_fit_streams_without_a_grid():
    Xtr, Xte, ytr, yte = _classification(2)
    est = SGDClassifier(loss="modified_huber")
    for chunk in range(8):
        sl = slice(chunk * 500, (chunk + 1) * 500)
        est.partial_fit(Xtr[sl], ytr[sl], classes=[0, 1] if chunk == 0 else None)
    reference = SkSGDClassifier(loss="modified_huber", random_state=0).fit(Xtr, ytr).score(Xte, yte)
    assert est.score(Xte, yte) >= reference - 0.01
    assert est.predict_proba(Xte[:3]).shape == (3, 2)
    assert est.decision_function(Xte[:3]).shape == (3,)
    assert est.n_iter_ == 8 and est.t_ == 4000.0
    hinge = SGDClassifier(loss="hinge").partial_fit(Xtr[:100], ytr[:100], classes=[0, 1])
    assert not hasattr(hinge, "predict_proba")
    with pytest.raises(ValueError, match="classes must be passed"):
        SGDClassifier().partial_fit(Xtr[:10], ytr[:10])
    with pytest.raises(ValueError, match="balanced"):
        SGDClassifier(class_weight="balanced").partial_fit(Xtr[:10], ytr[:10], classes=[0, 1])


def test_regressor_partial_fit_and_shapes():
    Xtr, Xte, ytr, yte = _regression()
    est = SGDRegressor(loss="huber")
    for chunk in range(4):
        est.partial_fit(Xtr[chunk * 1000:(chunk + 1) * 1000], ytr[chunk * 1000:(chunk + 1) * 1000])
    assert est.coef_.shape == (20,) and est.intercept_.shape == (1,)
    assert est.predict(Xte).shape == (len(Xte),)
    reference = SkSGDRegressor(loss="huber", random_state=0).fit(Xtr, ytr).score(Xte, yte)
    assert est.score(Xte, yte) >= reference - 0.01, (est.score(Xte, yte), reference)


def test_clone_and_params_roundtrip():
    est = SGDRegressor(alpha=0.01, rounds=3, batch_size=64)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert "class_weight" not in est.get_params() and "class_weight" in SGDClassifier().get_params()


def test_fit_checks_in_memory_data_before_any_grid_is_used():
    X = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="only one class"):
        SGDClassifier().fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="Unknown label type"):
        SGDClassifier().fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="requires y to be passed"):
        SGDRegressor().fit(X)
    with pytest.raises(ValueError, match="NaN"):
        SGDRegressor().fit(np.full((4, 2), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match="rounds"):
        SGDRegressor(rounds=0).fit(X, np.zeros(20))
