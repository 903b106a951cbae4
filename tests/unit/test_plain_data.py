"""Job requests carry plain data only: ``jobs.plain.check_plain`` and where the grid applies it."""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
import pytest
from distributed.protocol.serialize import Pickled, Serialize, Serialized, ToPickle
from sklearn.linear_model import SGDClassifier

from grid.protocol.requests import check_request
from jobs import PartialFit
from jobs.plain import MAX_DEPTH, PlainDataError, check_plain
from jobs.spec import SpecError, build_estimator, estimator_spec


def honest_request() -> dict:
    request = PartialFit(SGDClassifier(random_state=0, class_weight={0: 1.0, 1: 2.0}), rounds=2)._job_request()
    request.update(verify=1, partial_participation=False, classes=[0, 1], n_features=6)
    request["init_state"] = {"coef": [[0.5] * 6], "intercept": [0.0]}
    return request


def test_an_honest_request_is_plain_data():
    check_plain(honest_request(), "request")
    check_request(honest_request())
    # what msgpack hands the scheduler: tuples for lists, int keys kept
    check_plain({"classes": (0, 1), "params": {"class_weight": {0: 1.0}}, "blob": b"\x00" * 10, "x": None})


class Marker:
    """Writes a marker file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(
    "value, words",
    [
        (Serialized({"serializer": "pickle"}, [b""]), "Serialized object"),
        (Serialize(1.0), "Serialize object"),
        (ToPickle(1.0), "ToPickle object"),
        (Pickled({}, []), "Pickled object"),
        (np.float64(0.1), "numpy.float64"),
        (np.int64(1), "numpy.int64"),
        (np.arange(3), "numpy.ndarray"),
        ({1, 2}, "a set"),
        (functools.partial(os.system, "true"), "partial object"),
        (os.system, "builtin_function_or_method"),
        (collections.OrderedDict(), "OrderedDict object"),
        (Marker("x"), "Marker object"),
        (bytearray(b"x"), "a bytearray"),
        (1j, "a complex"),
    ],
)
def test_anything_else_is_refused_naming_the_field(value, words):
    request = honest_request()
    request["estimator"]["params"]["alpha"] = value
    with pytest.raises(PlainDataError) as info:
        check_request(request)
    message = str(info.value)
    assert message.startswith("request['estimator']['params']['alpha'] is "), message
    assert words in message and "must be plain data" in message


@pytest.mark.parametrize("field", ["seed", "classes", "verbose", "n_features", "stopping"])
def test_every_field_of_a_request_is_checked(field):
    request = honest_request()
    request[field] = [0, Serialized({}, [])] if field == "classes" else {"deep": [ToPickle(1)]}
    with pytest.raises(PlainDataError, match=rf"request\['{field}'\]"):
        check_request(request)


def test_subclasses_of_plain_types_are_refused():
    class Text(str):
        pass

    class Number(float):
        pass

    for value in (Text("x"), Number(1.0), np.str_("x"), np.bool_(True)):
        with pytest.raises(PlainDataError):
            check_plain({"a": value})


def test_keys_must_be_plain_scalars():
    with pytest.raises(PlainDataError, match="key that is a tuple"):
        check_plain({(1, 2): 3}, "request")
    with pytest.raises(PlainDataError, match="key that is a numpy.int64"):
        check_plain({np.int64(1): 3}, "request")
    check_plain({"a": 1, 2: 3, 1.5: 4, True: 5})


def test_bounds():
    deep: list = []
    node = deep
    for _ in range(MAX_DEPTH + 1):
        node.append([])
        node = node[0]
    with pytest.raises(PlainDataError, match="deeper than"):
        check_plain(deep, "request")
    with pytest.raises(PlainDataError, match="more than 10 values"):
        check_plain({"a": list(range(20))}, "request", max_items=10)
    with pytest.raises(PlainDataError, match="more than 10 values"):
        check_plain([{"a": 1}] * 20, "request", max_items=10)
    with pytest.raises(PlainDataError, match="longer than 8"):
        check_plain({"a": b"x" * 9}, "request", max_length=8)
    with pytest.raises(PlainDataError, match="outside 64 bits"):
        check_plain({"seed": 2**64}, "request")
    with pytest.raises(PlainDataError, match="outside 64 bits"):
        check_plain([1.0, -(2**63) - 1], "request")
    check_plain([2**64 - 1, -(2**63), 1.5, None, True])
    check_plain([0.0] * 1_000_000)  # a large model's coefficients


def test_a_request_that_is_not_a_dict_is_refused():
    with pytest.raises(PlainDataError, match="request is a Serialized object"):
        check_request(Serialized({}, []))
    with pytest.raises(PlainDataError, match="must be a dict"):
        check_request([1, 2])


def test_estimator_params_are_checked_where_an_estimator_is_built(tmp_path):
    marker = tmp_path / "marker"
    spec = {"class": "sklearn.linear_model:SGDClassifier", "params": {"alpha": Marker(str(marker))}}
    with pytest.raises(PlainDataError, match=r"estimator params\['alpha'\] is a Marker object"):
        build_estimator(spec)
    with pytest.raises(SpecError, match="str keys"):
        build_estimator({"class": "sklearn.linear_model:SGDClassifier", "params": {1: 2}})
    assert build_estimator({"class": "sklearn.linear_model:SGDClassifier", "params": {"alpha": 0.1}}).alpha == 0.1
    assert not marker.exists()


def test_the_client_side_spec_is_plain_and_bounded():
    spec = estimator_spec(SGDClassifier(alpha=np.float64(0.5), class_weight={np.int64(0): 1.0}))
    check_plain(spec)
    assert type(spec["params"]["alpha"]) is float
    with pytest.raises(PlainDataError, match="longer than"):
        estimator_spec(SGDClassifier(loss="x" * (2 << 20)))
