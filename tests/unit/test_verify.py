"""Replica comparison, quorum and adaptive replication (grid.scheduler.verify)."""

from __future__ import annotations


import numpy as np
import pytest

from grid.scheduler.verify import Origin, Reliability, check_request, difference, independent, independent_count, quorum


def update(value: float, samples: float = 10.0) -> tuple[dict, dict]:
    return {"coef": np.full((1, 3), value), "intercept": np.array([value])}, {"samples": samples, "seconds": value}


def test_identical_updates_agree_and_a_far_one_does_not() -> None:
    assert difference(update(1.0), update(1.0), rtol=1e-7, atol=1e-10) == 0.0
    assert difference(update(1.0), update(1.0 + 1e-9), rtol=1e-7, atol=1e-10) <= 1.0
    assert difference(update(1.0), update(1.1), rtol=1e-7, atol=1e-10) > 1.0


def test_updates_that_differ_in_samples_layout_or_nan_never_agree() -> None:
    assert difference(update(1.0, samples=10), update(1.0, samples=11), 1e-7, 1e-10) == float("inf")
    a, b = update(1.0), update(1.0)
    b[0]["coef"] = np.ones((3, 1))
    assert difference(a, b, 1e-7, 1e-10) == float("inf")
    c = update(1.0)
    c[0]["coef"][0, 0] = np.nan
    assert difference(c, update(1.0), 1e-7, 1e-10) == float("inf")
    d = update(1.0)
    d[0]["extra"] = np.zeros(1)
    assert difference(d, update(1.0), 1e-7, 1e-10) == float("inf")


def test_quorum_finds_the_agreeing_majority_in_any_order() -> None:
    good, bad = update(1.0), update(5.0)
    assert quorum([good, good], 2, 1e-7, 1e-10) == [0, 1]
    assert quorum([good, bad], 2, 1e-7, 1e-10) is None
    assert quorum([bad, good, good], 2, 1e-7, 1e-10) == [1, 2]
    assert quorum([good, bad, good], 2, 1e-7, 1e-10) == [0, 2]
    assert quorum([good, bad, update(9.0)], 2, 1e-7, 1e-10) is None


def test_independent_nodes_in_each_mode() -> None:
    a = Origin(node="alice-1", owner="alice", host="10.0.0.1")
    a2 = Origin(node="alice-2", owner="alice", host="10.0.0.2")  # alice's second machine
    b_same_host = Origin(node="bob-1", owner="bob", host="10.0.0.1")  # behind the same address as alice-1
    c = Origin(node="carol-1", owner="carol", host="10.0.0.3")
    assert not independent(a, a, "nodes") and not independent(a, a, "hosts-and-owners")
    assert independent(a, a2, "nodes") and independent(a, b_same_host, "nodes")
    assert not independent(a, a2, "hosts-and-owners"), "one owner counts once"
    assert not independent(a, b_same_host, "hosts-and-owners"), "one host counts once"
    assert independent(a, c, "hosts-and-owners") and independent(c, a, "hosts-and-owners")
    assert independent_count([a, a2, b_same_host, c], "nodes") == 4
    assert independent_count([a, a2, b_same_host, c], "hosts-and-owners") == 2
    assert independent_count([], "hosts-and-owners") == 0


def test_reliability_round_trips_and_skips_malformed_records() -> None:
    rel = Reliability()
    rel.valid("a")
    rel.valid("a")
    rel.invalid("b")
    assert (rel.get("a").valid, rel.get("a").consecutive_valid, rel.get("b").invalid) == (2, 2, 1)
    rel.invalid("a")  # a disagreement ends the run of agreeing results
    assert rel.get("a").consecutive_valid == 0 and rel.get("a").valid == 2
    other = Reliability()
    other.load({**rel.to_dict(), "junk": {"valid": "x"}, "short": {}})
    assert other.to_dict() == rel.to_dict()


@pytest.mark.parametrize(
    "request_, match",
    [
        ({"verify": 0}, "verify must be an integer >= 1"),
        ({"verify": True}, "verify must be an integer >= 1"),
        ({"verify": "2"}, "verify must be an integer >= 1"),
        ({"verify": 2, "mode": "sequential"}, "needs mode='average'"),
        ({"partial_participation": "yes"}, "partial_participation must be True or False"),
    ],
)
def test_bad_verification_settings_are_named(request_: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_request(request_)


def test_good_verification_settings_pass() -> None:
    # more replicas than the region has nodes is no error: the job waits for nodes
    check_request({"verify": 5, "mode": "average"})
    check_request({})
    check_request({"verify": 1})
