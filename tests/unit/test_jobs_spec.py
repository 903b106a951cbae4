import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, SGDClassifier

from jobs import PartialFit
from jobs.merge import NoMergeRule, rule_for
from jobs.spec import SpecError, build_estimator, estimator_spec


def test_spec_round_trip():
    est = SGDClassifier(alpha=1e-3, class_weight={0: 1.0, 1: 2.0}, random_state=np.int64(3))
    spec = estimator_spec(est)
    assert spec["class"].endswith(":SGDClassifier")
    assert spec["params"]["random_state"] == 3 and type(spec["params"]["random_state"]) is int
    rebuilt = build_estimator(spec)
    assert rebuilt.get_params() == clone(est).set_params(random_state=3).get_params()


def test_unpicklable_parameter_is_refused_with_advice():
    est = SGDClassifier(random_state=np.random.RandomState(0))
    with pytest.raises(SpecError, match="plain parameters"):
        estimator_spec(est)


def test_classes_outside_the_allowlist_are_refused():
    with pytest.raises(SpecError, match="not allowed"):
        build_estimator({"class": "os:system", "params": {}})
    with pytest.raises(SpecError, match="module:qualname"):
        build_estimator({"class": "sklearn.linear_model.SGDClassifier", "params": {}})


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"rounds": 0}, ValueError, ["rounds", ">= 1", "0"]),
        ({"rounds": 2.5}, ValueError, ["rounds"]),
        ({"mode": "fast"}, ValueError, ["mode", "'fast'", "average"]),
        ({"aggregate": "max"}, ValueError, ["aggregate", "median"]),
        ({"local_epochs": 0}, ValueError, ["local_epochs"]),
    ],
)
def test_partial_fit_parameter_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        PartialFit(SGDClassifier(), **kwargs)._job_request()
    for w in words:
        assert w in str(info.value)


def test_estimator_without_partial_fit():
    with pytest.raises(TypeError, match="partial_fit"):
        PartialFit(LinearRegression())._job_request()


def test_no_merge_rule_suggests_sequential():
    from sklearn.cluster import Birch

    with pytest.raises(NoMergeRule, match="mode='sequential'"):
        rule_for(Birch())
    PartialFit(Birch(), mode="sequential")._job_request()  # allowed sequentially


def test_partial_fit_is_a_scikit_learn_estimator():
    est = PartialFit(SGDClassifier(alpha=0.1), rounds=3)
    c = clone(est)
    assert c.get_params()["rounds"] == 3 and c.get_params()["estimator__alpha"] == 0.1
    pickle.loads(pickle.dumps(est))


def test_linear_merge_is_weighted_mean():
    X = np.random.default_rng(0).random((40, 3))
    y = (X[:, 0] > 0.5).astype(int)
    a = SGDClassifier(random_state=0).partial_fit(X[:20], y[:20], classes=[0, 1])
    b = SGDClassifier(random_state=0).partial_fit(X[20:], y[20:], classes=[0, 1])
    rule = rule_for(a)
    merged = rule.merge([rule.get_state(a), rule.get_state(b)], [1.0, 3.0])
    np.testing.assert_allclose(merged["coef_"], 0.25 * a.coef_ + 0.75 * b.coef_)
    np.testing.assert_array_equal(merged["classes_"], [0, 1])


def test_early_stopping_rule_follows_scikit_learn():
    from grid.scheduler.driver import should_stop

    stop = {"tol": 0.01, "n_iter_no_change": 2, "metric": "loss"}
    improving = [{"loss": v} for v in (1.0, 0.8, 0.6, 0.4)]
    assert not should_stop(improving, stop)
    flat = [{"loss": v} for v in (1.0, 0.5, 0.499, 0.495)]
    assert should_stop(flat, stop)
    assert not should_stop(flat, None) and not should_stop(flat, {**stop, "tol": None})
    assert not should_stop(flat[:2], stop)
