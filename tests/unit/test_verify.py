"""Replica comparison, quorum and adaptive replication (grid.scheduler.verify)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from grid.scheduler.verify import Reliability, check_request, difference, quorum


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


def test_adaptive_replication_trusts_a_long_record_but_never_below_the_floor() -> None:
    rel = Reliability(trust_after=5, floor=0.2)
    assert rel.replication_probability("n1") == 1.0
    for _ in range(4):
        rel.valid("n1")
    assert rel.replication_probability("n1") == 1.0  # not yet trusted
    rel.valid("n1")
    assert rel.replication_probability("n1") == 1.0  # 5 / 5
    for _ in range(5):
        rel.valid("n1")
    assert rel.replication_probability("n1") == pytest.approx(0.5)
    for _ in range(1000):
        rel.valid("n1")
    assert rel.replication_probability("n1") == 0.2  # the floor
    rng = random.Random(0)
    share = sum(rel.should_replicate("n1", rng) for _ in range(5000)) / 5000
    assert 0.17 < share < 0.23
    rel.invalid("n1")  # one disagreement and trust is gone
    assert rel.replication_probability("n1") == 1.0
    assert rel.get("n1").invalid == 1 and rel.get("n1").valid == 1010


def test_reliability_round_trips_and_skips_malformed_records() -> None:
    rel = Reliability()
    rel.valid("a")
    rel.invalid("b")
    other = Reliability()
    other.load({**rel.to_dict(), "junk": {"valid": "x"}, "short": {}})
    assert other.to_dict() == rel.to_dict()
    with pytest.raises(ValueError, match="replication-floor"):
        Reliability(floor=1.5)
    with pytest.raises(ValueError, match="trust-after"):
        Reliability(trust_after=0)


@pytest.mark.parametrize(
    "request_, nodes, match",
    [
        ({"verify": 0}, None, "verify must be an integer >= 1"),
        ({"verify": True}, None, "verify must be an integer >= 1"),
        ({"verify": "2"}, None, "verify must be an integer >= 1"),
        ({"verify": 2, "mode": "sequential"}, None, "needs mode='average'"),
        ({"verify": 3, "mode": "average"}, 2, "region 'eu' has 2 node"),
        ({"partial_participation": "yes"}, None, "partial_participation must be True or False"),
    ],
)
def test_bad_verification_settings_are_named(request_: dict, nodes: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_request(request_, "eu", nodes)


def test_good_verification_settings_pass() -> None:
    check_request({"verify": 2, "mode": "average"}, "eu", 2)
    check_request({}, "eu", 1)
    check_request({"verify": 1}, "eu", 0)  # a job may wait for nodes; only replicas need several
