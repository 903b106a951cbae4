"""``jobs.SGDClassifier`` / ``jobs.SGDRegressor`` take scikit-learn's parameters."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn import linear_model
from sklearn.base import clone

from jobs import SGDClassifier, SGDRegressor, sgd

PAIRS = [(linear_model.SGDClassifier, SGDClassifier), (linear_model.SGDRegressor, SGDRegressor)]

#: defaults that differ on purpose, because scikit-learn's meaning does not carry:
#: the grid's tuning-free "auto" schedule replaces "optimal" / "invscaling", with a
#: data-sized step (eta0=None) and its own decay exponent; the classifier's default
#: loss is logistic regression (the grid's reference model, with predict_proba)
DIFFERENT_DEFAULTS = {
    "SGDClassifier": {"loss", "learning_rate", "eta0"},
    "SGDRegressor": {"learning_rate", "eta0", "power_t"},
}

#: parameters of the grid only (no scikit-learn counterpart)
GRID_ONLY = {"rounds", "local_epochs", "batch_size", "partition_rows", "aggregate", "server_momentum"}


@pytest.mark.parametrize("sk_cls, cls", PAIRS, ids=lambda c: c.__name__ if isinstance(c, type) else None)
def test_every_sklearn_parameter_is_accepted_with_its_default(sk_cls, cls):
    ours = inspect.signature(cls).parameters
    theirs = inspect.signature(sk_cls).parameters
    assert set(theirs) <= set(ours), f"missing: {sorted(set(theirs) - set(ours))}"
    differ = {k for k, p in theirs.items() if ours[k].default != p.default}
    assert differ == DIFFERENT_DEFAULTS[cls.__name__]
    # one name per idea: nothing beyond scikit-learn's names except the grid's own settings
    assert set(ours) - set(theirs) == GRID_ONLY
    # and every scikit-learn parameter value that scikit-learn accepts by default works here
    cls(**{k: p.default for k, p in theirs.items() if k not in differ})._job_request()


@pytest.mark.parametrize("cls", [SGDClassifier, SGDRegressor])
def test_clone_round_trips_every_parameter(cls):
    extra = {"n_jobs": 3} if cls is SGDClassifier else {}
    est = cls(max_iter=7, shuffle=False, random_state=11, average=50, verbose=1, epsilon=0.2,
              warm_start=True, validation_fraction=0.2, **extra)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert copy.set_params(average=True).average is True


def test_max_iter_and_rounds_name_the_same_thing():
    assert SGDClassifier()._job_request()["rounds"] == 10
    assert SGDClassifier(max_iter=4)._job_request()["rounds"] == 4
    assert SGDClassifier(rounds=4)._job_request()["rounds"] == 4
    assert SGDClassifier(rounds=4, max_iter=4)._job_request()["rounds"] == 4
    with pytest.raises(ValueError, match="max_iter=4 and rounds=5 disagree"):
        SGDClassifier(rounds=5, max_iter=4)._job_request()


def test_random_state_seeds_the_job():
    assert SGDRegressor()._job_request()["seed"] == 0
    assert SGDRegressor(random_state=12)._job_request()["seed"] == 12


@pytest.mark.parametrize(
    "params, name",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"rounds": 0}, "rounds"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"average": -1}, "average"),
        ({"average": 0.5}, "average"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": 2**32}, "random_state"),
        ({"random_state": np.random.RandomState(0)}, "random_state"),
        ({"n_jobs": "all"}, "n_jobs"),
        ({"verbose": -1}, "verbose"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"warm_start": "no"}, "warm_start"),
        ({"class_weight": "some"}, "class_weight"),
    ],
)
def test_invalid_values_raise_naming_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        SGDClassifier(**params)._job_request()


def test_random_state_instance_error_says_how_to_fix():
    with pytest.raises(ValueError, match=r"reproducible seed.*random_state=0"):
        SGDClassifier(random_state=np.random.RandomState(0))._job_request()


def test_regressor_has_no_class_weight_or_n_jobs():
    with pytest.raises(TypeError):
        SGDRegressor(n_jobs=2)


def _blobs(n: int = 120):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(int)
    return X, y


def test_local_partial_fit_with_average_keeps_the_mean_of_the_call_models():
    # locally, one partial_fit call is one round: coef_ is the mean of the models
    # after each call, the state keeps the plain iterate
    X, y = _blobs()
    avg = SGDClassifier(learning_rate="constant", eta0=0.1, average=True, random_state=1)
    plain = clone(avg).set_params(average=False)
    coefs = []
    for _ in range(3):
        avg.partial_fit(X, y, classes=[0, 1])
        plain.partial_fit(X, y, classes=[0, 1])
        coefs.append(plain.coef_.copy())
    np.testing.assert_allclose(avg.coef_, np.mean(coefs, axis=0), rtol=1e-12)
    np.testing.assert_allclose(avg._sgd_state_["coef"], plain.coef_, rtol=1e-12)


def test_shuffle_false_visits_rows_in_order():
    # once the step size is known (eta_base), the shuffle is the only use of the
    # generator: without it two generators give the same model, with it they do not
    X, y = _blobs()
    params = {"batch_size": 16, "learning_rate": "constant", "eta0": 0.1}
    models = {}
    for shuffle in (False, True):
        cfg = sgd.config_from_params({**params, "shuffle": shuffle}, classification=True)
        targets = sgd.encode_targets(cfg, y, np.array([0, 1]), X.dtype)
        state, _ = sgd.run_epochs(cfg, sgd.init_state(4, 1), X, targets, None, np.random.default_rng(0))
        models[shuffle] = [sgd.run_epochs(cfg, state, X, targets, None, np.random.default_rng(s))[0]["coef"]
                           for s in (1, 2)]
    np.testing.assert_array_equal(*models[False])
    assert not np.array_equal(*models[True])
