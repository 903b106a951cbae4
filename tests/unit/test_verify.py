"""Replica comparison, quorum and adaptive replication (grid.scheduler.verify)."""

from __future__ import annotations


import numpy as np
import pytest

from grid.protocol.requests import check_request
from grid.scheduler.driver import first_round_of, rounds_of
from grid.scheduler.verify import (
    AdaptiveSettings,
    NodeRecord,
    Origin,
    Reliability,
    difference,
    independent,
    independent_count,
    quorum,
    replication_probability,
    should_replicate,
    spot_check_draw,
    trust_streak,
)


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
        ({"verify": "adaptve"}, "or 'adaptive'"),
        ({"verify": "adaptive", "mode": "sequential"}, "needs mode='average'"),
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
    check_request({"verify": "adaptive", "mode": "average"})


# --- verify="adaptive": whether an update is replicated ------------------------------------

NOW = 1_000_000.0
HOUR = 3600.0


def record(streak: int, idle: float = 0.0) -> NodeRecord:
    return NodeRecord(valid=streak, invalid=0, consecutive_valid=streak, last_valid=NOW - idle)


def test_an_untrusted_node_is_always_replicated() -> None:
    settings = AdaptiveSettings(trust_after=10, floor=0.1)
    for streak in (0, 1, 9):
        assert replication_probability(streak, settings) == 1.0
        assert all(should_replicate(record(streak), settings, draw, now=NOW) for draw in (0.0, 0.5, 0.999999))


def test_trust_thins_the_checks_down_to_the_floor_never_below() -> None:
    settings = AdaptiveSettings(trust_after=10, floor=0.1)
    assert replication_probability(10, settings) == 1.0
    assert replication_probability(20, settings) == pytest.approx(0.5)
    assert replication_probability(50, settings) == pytest.approx(0.2)
    assert replication_probability(100, settings) == pytest.approx(0.1)
    assert replication_probability(10**9, settings) == pytest.approx(0.1), "the floor holds for any record"
    # the decision is the draw against that probability
    assert should_replicate(record(20), settings, 0.49, now=NOW)
    assert not should_replicate(record(20), settings, 0.51, now=NOW)
    assert should_replicate(record(10**9), settings, 0.099, now=NOW)
    assert not should_replicate(record(10**9), settings, 0.101, now=NOW)
    # floor 0 and trust from the start (trust-after 0): nothing is checked
    assert replication_probability(0, AdaptiveSettings(trust_after=0, floor=0.0)) == 0.0
    assert replication_probability(0, AdaptiveSettings(trust_after=0, floor=0.3)) == 0.3


def test_trust_decays_with_time_since_the_last_valid_result() -> None:
    settings = AdaptiveSettings(trust_after=10, floor=0.1, half_life=HOUR)
    assert trust_streak(record(40), NOW, HOUR) == 40
    assert trust_streak(record(40, idle=HOUR), NOW, HOUR) == pytest.approx(20)
    assert trust_streak(record(40, idle=2 * HOUR), NOW, HOUR) == pytest.approx(10)
    assert trust_streak(record(40, idle=3 * HOUR), NOW, HOUR) == pytest.approx(5)
    assert trust_streak(record(40, idle=3 * HOUR), NOW, 0.0) == 40, "half-life 0: no decay"
    # a node away for 3 hours is not trusted any more: replicated whatever the draw
    assert not should_replicate(record(40), settings, 0.3, now=NOW)
    assert should_replicate(record(40, idle=3 * HOUR), settings, 0.999, now=NOW)


def test_a_disagreement_resets_trust_at_once() -> None:
    settings = AdaptiveSettings(trust_after=10, floor=0.1)
    rel = Reliability()
    for _ in range(1000):
        rel.valid("n", now=NOW)
    assert not should_replicate(rel.get("n"), settings, 0.5, now=NOW)
    rel.invalid("n")
    assert rel.get("n").consecutive_valid == 0
    assert should_replicate(rel.get("n"), settings, 0.999, now=NOW), "one wrong result and it starts over"
    rel.valid("n", now=NOW)
    assert rel.get("n").last_valid == NOW and replication_probability(1, settings) == 1.0


def test_spot_check_draws_are_reproducible_and_uniform() -> None:
    assert spot_check_draw("eu-abc", 3, 7) == spot_check_draw("eu-abc", 3, 7)
    assert spot_check_draw("eu-abc", 3, 7) != spot_check_draw("eu-abc", 4, 7)
    assert spot_check_draw("eu-abc", 3, 7) != spot_check_draw("eu-abd", 3, 7)
    assert spot_check_draw("eu-abc", 3, 7, salt=1) != spot_check_draw("eu-abc", 3, 7)
    draws = np.array([spot_check_draw("eu-abc", r, p) for r in range(50) for p in range(40)])
    assert ((draws >= 0) & (draws < 1)).all()
    # the floor is a real rate: about that share of a trusted node's updates is checked
    settings = AdaptiveSettings(trust_after=10, floor=0.1)
    checked = np.mean([should_replicate(record(10**6), settings, d, now=NOW) for d in draws])
    assert 0.08 < checked < 0.12


def test_adaptive_settings_are_read_and_checked() -> None:
    s = AdaptiveSettings.from_config({"quorum": 3, "trust-after": 5, "floor": 0.25, "half-life": "30m"})
    assert (s.quorum, s.trust_after, s.floor, s.half_life) == (3, 5.0, 0.25, 1800.0)
    assert AdaptiveSettings.from_config({}) == AdaptiveSettings()
    with pytest.raises(ValueError, match="floor must be between 0 and 1"):
        AdaptiveSettings.from_config({"floor": 2})
    with pytest.raises(ValueError, match="quorum must be >= 2"):
        AdaptiveSettings.from_config({"quorum": 1})


def test_reliability_loads_records_saved_without_a_time() -> None:
    rel = Reliability()
    rel.load({"old": {"valid": 3, "invalid": 0, "consecutive_valid": 3}})
    assert rel.get("old").last_valid == 0.0
    assert trust_streak(rel.get("old"), NOW, HOUR) == 3, "no time recorded: no decay"


def test_the_first_round_to_replay_and_the_rounds_of_a_taint() -> None:
    history = [
        {"round": 1},
        {"round": 2, "unverified_nodes": {"eu": ["n1"]}},
        {"round": 3, "unverified_nodes": {"eu": ["n0", "n1"], "us": ["m0"]}},
        {"round": 4, "unverified_nodes": {"eu": ["n0"]}},
    ]
    assert first_round_of(history, {}) is None
    assert first_round_of(history, {"eu": ["n2"]}) is None
    assert first_round_of(history, {"eu": ["n0"]}) == 2  # 0-based: round 3
    assert first_round_of(history, {"eu": ["n1"]}) == 1
    assert first_round_of(history, {"us": ["m0"]}) == 2
    assert first_round_of(history, {"us": ["n1"]}) is None, "a node is named within its region"
    assert rounds_of(history, "eu", "n0") == [3, 4]
