"""The estimator allowlist checks the class a name resolves to, not the name's first module."""

from __future__ import annotations

import pytest
from sklearn.cluster import Birch, MiniBatchKMeans
from sklearn.decomposition import IncrementalPCA
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    PassiveAggressiveClassifier,
    Perceptron,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.naive_bayes import BernoulliNB, CategoricalNB, ComplementNB, GaussianNB, MultinomialNB
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

import jobs
from jobs.spec import SpecError, build_estimator, class_path, estimator_spec, resolve_class

HONEST = [
    SGDClassifier, SGDRegressor, Perceptron, PassiveAggressiveClassifier, LinearRegression, LogisticRegression,
    MultinomialNB, BernoulliNB, CategoricalNB, ComplementNB, GaussianNB, MiniBatchKMeans, Birch,
    IncrementalPCA, MLPClassifier, MLPRegressor, MaxAbsScaler, MinMaxScaler, StandardScaler,
    jobs.PartialFit, jobs.SGDClassifier, jobs.SGDRegressor,
]


@pytest.mark.parametrize("cls", HONEST, ids=lambda c: c.__name__)
def test_honest_classes_resolve(cls):
    assert resolve_class(class_path(cls)) is cls  # the defining (often private) module, as estimator_spec names it
    public = "jobs" if cls.__module__.startswith("jobs.") else cls.__module__.split("._")[0]
    assert resolve_class(f"{public}:{cls.__name__}") is cls  # the public re-export, as users and docs write it


def test_honest_specs_round_trip():
    spec = estimator_spec(SGDClassifier(alpha=0.01, random_state=3))
    assert build_estimator(spec).get_params() == SGDClassifier(alpha=0.01, random_state=3).get_params()
    assert resolve_class("jobs.partial_fit:PartialFit", ["jobs"]) is jobs.PartialFit  # a prefix without the dot


ATTACKS = {
    # walks through an allowed module's imports to anything
    "jobs.spec:importlib.machinery.SourceFileLoader": "module 'importlib'",
    "jobs.spec:importlib.import_module": "module 'importlib'",
    "jobs.spec:np.lib.format": "module 'numpy'",
    "sklearn.linear_model:sys.modules": "",
    "sklearn.base:np.ctypeslib": "module 'numpy'",
    "jobs.spec:inspect.getattr_static": "module 'inspect'",
    "jobs.spec:types.FunctionType": "module 'types'",
    # dunder and private parts
    "sklearn:base.__builtins__": "private or dunder",
    "sklearn.linear_model:SGDClassifier.__init__": "private or dunder",
    "sklearn.linear_model:SGDClassifier.__class__": "private or dunder",
    "sklearn.linear_model:SGDClassifier.__subclasses__": "private or dunder",
    "sklearn.linear_model:SGDClassifier._validate_params": "private or dunder",
    "sklearn.__check_build:raise_build_error": "private or dunder",
    # objects that are no estimator class
    "jobs.spec:build_estimator": "is a function",
    "jobs.spec:SpecError": "no get_params",
    "sklearn.utils:Bunch": "no get_params",
    "sklearn.linear_model:SGDClassifier.fit": "is a function",
    "sklearn.linear_model:SGDClassifier.get_params": "is a function",
    "sklearn:clone": "is a function",
    "sklearn:base": "module 'sklearn.base'",
    # classes from outside the allowed modules, reached through an allowed one
    "jobs.spec:SpecError.__mro__": "private or dunder",
    "sklearn.base:BaseEstimator.__init_subclass__": "private or dunder",
    # names that are not names
    "os:system": "not allowed on this grid",
    "builtins:eval": "not allowed on this grid",
    "sklearn_evil.linear_model:SGDClassifier": "not allowed on this grid",
    "sklearn.linear_model:SGDClassifier:x": "'module:qualname'",
    "sklearn.linear_model.SGDClassifier": "'module:qualname'",
    "sklearn.linear_model:": "identifiers",
    ":SGDClassifier": "identifiers",
    "sklearn..x:Y": "identifiers",
    "sklearn.linear_model:SGDClassifier()": "identifiers",
    "sklearn.linear_model:NoSuchThing": "no attribute 'NoSuchThing'",
    "sklearn.no_such_module:X": "cannot be imported",
}


@pytest.mark.parametrize("path", sorted(ATTACKS))
def test_walks_to_anything_but_an_allowed_estimator_class_are_refused(path):
    with pytest.raises(SpecError) as info:
        resolve_class(path)
    assert ATTACKS[path] in str(info.value), str(info.value)
    with pytest.raises(SpecError):
        build_estimator({"class": path, "params": {}})


def test_a_class_reached_under_another_name_is_refused(monkeypatch):
    import jobs.partial_fit

    # an attribute of an allowed class that holds another (allowed) class: named by its own name only
    monkeypatch.setattr(jobs.PartialFit, "Other", SGDClassifier, raising=False)
    with pytest.raises(SpecError, match="by its own name"):
        resolve_class("jobs.partial_fit:PartialFit.Other")


def test_the_final_class_must_come_from_an_allowed_module(monkeypatch):
    import jobs.partial_fit

    class Outside:
        __module__ = "evil"

        def get_params(self, deep=True):
            return {}

    Outside.__qualname__ = "PartialFit.Outside"
    monkeypatch.setattr(jobs.PartialFit, "Outside", Outside, raising=False)
    with pytest.raises(SpecError, match="module that is not allowed"):
        resolve_class("jobs.partial_fit:PartialFit.Outside")


def test_operators_can_narrow_the_allowlist():
    with pytest.raises(SpecError, match="not allowed"):
        resolve_class("sklearn.linear_model:SGDClassifier", ["jobs."])
    with pytest.raises(SpecError, match="not allowed"):
        resolve_class("sklearn.linear_model:SGDClassifier", ["sklearn.naive_bayes"])
    assert resolve_class("sklearn.naive_bayes:GaussianNB", ["sklearn.naive_bayes"]) is GaussianNB
