"""Node counts do not change the model; bad input fails before any work is scheduled."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, SGDClassifier

from grid import Grid, GridConnectionError, UnknownRegion
from jobs import PartialFit
from jobs.data import DataError
from jobs.spec import SpecError
from tests.integration.reference import assert_same_model, fedavg


def train(regions, X, y, **kwargs):
    with Grid.local(regions=regions, processes=False, dashboard=False) as g:
        return g.submit(PartialFit(SGDClassifier(random_state=0), rounds=3, **kwargs), X, y).result(timeout=60)


def test_two_region_model_does_not_depend_on_node_count(classification_data):
    X, y = classification_data
    one = train({"eu": 1, "us": 1}, X, y)
    two = train({"eu": 2, "us": 2}, X, y)
    uneven = train({"eu": 1, "us": 2}, X, y)  # a different split of partitions across regions
    np.testing.assert_allclose(two.estimator_.coef_, one.estimator_.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(uneven.estimator_.coef_, one.estimator_.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(uneven.estimator_.intercept_, one.estimator_.intercept_, rtol=0, atol=1e-9)


def scheduled_grid_keys(g: Grid) -> list[str]:
    return [str(k) for c in g._local.clusters.values() for k in c.scheduler.tasks if str(k).startswith("grid-")]


def datasets(g: Grid) -> list:
    return [d for info in g.status().values() for d in info["datasets"]]


class Unpicklable:
    def __call__(self):  # pragma: no cover - never called
        return None


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda X, y: (PartialFit(SGDClassifier()), X, y[:-1]), DataError, ["samples", "y has"]),
        (lambda X, y: (PartialFit(LinearRegression()), X, y), TypeError, ["partial_fit"]),
        (lambda X, y: (PartialFit(SGDClassifier(), rounds=0), X, y), ValueError, ["rounds"]),
        (lambda X, y: (PartialFit(SGDClassifier()), X[:0], y[:0]), DataError, ["empty"]),
        (lambda X, y: (PartialFit(SGDClassifier(random_state=np.random.RandomState(0))), X, y), SpecError, ["random_state", "plain"]),
        (lambda X, y: (PartialFit(SGDClassifier(class_weight=Unpicklable())), X, y), SpecError, ["class_weight"]),
        (lambda X, y: (SGDClassifier(), X, y), TypeError, ["PartialFit"]),
    ],
)
def test_bad_input_fails_before_any_work(grid2, classification_data, make, error, words):
    X, y = classification_data
    est, Xb, yb = make(X, y)
    # earlier jobs may still be releasing their keys: nothing new may appear
    keys_before = set(scheduled_grid_keys(grid2))
    names_before = {d["name"] for d in datasets(grid2)}
    with pytest.raises(error) as info:
        grid2.submit(est, Xb, yb)
    for w in words:
        assert w in str(info.value)
    assert set(scheduled_grid_keys(grid2)) <= keys_before
    assert {d["name"] for d in datasets(grid2)} <= names_before
    # the grid keeps serving other jobs: the next one trains the model of its in-process reference
    served = grid2.submit(PartialFit(SGDClassifier(), rounds=1), X, y).result(timeout=60)
    assert_same_model(served, fedavg(SGDClassifier(), X, y, rounds=1))


def test_unknown_region(grid2, classification_data):
    X, y = classification_data
    keys_before = set(scheduled_grid_keys(grid2))
    with pytest.raises(UnknownRegion, match="'mars'.*regions \\['eu', 'us'\\]"):
        grid2.submit(PartialFit(SGDClassifier()), X, y, regions=["mars"])
    with pytest.raises(UnknownRegion, match="mars"):
        grid2.client("mars")
    assert set(scheduled_grid_keys(grid2)) <= keys_before


def test_unreachable_scheduler_names_region_address_and_timeout():
    with pytest.raises(GridConnectionError) as info:
        Grid.connect({"regions": {"eu": "tcp://127.0.0.1:9"}}, timeout=0.5)
    message = str(info.value)
    assert "'eu'" in message and "tcp://127.0.0.1:9" in message and "0.5s" in message


def test_connect_to_a_region_that_serves_another_name(grid2):
    address = grid2.spec.regions["eu"].address
    with pytest.raises(GridConnectionError, match="serves region 'eu'"):
        Grid.connect({"regions": {"us": address}}, timeout=5)
