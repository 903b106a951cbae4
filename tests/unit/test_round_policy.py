"""The round engine's decisions (grid.scheduler.round_policy), without a cluster."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from grid import wire
from grid.scheduler import round_policy
from grid.scheduler.round_policy import (
    MAX_REISSUES,
    POLL_SECONDS,
    Attempt,
    Declined,
    NodeFailed,
    PartitionRound,
    Speculation,
    choose_node,
    holder,
    may_vote,
    next_wakeup,
    read_reply,
    settle,
    waiting_reason,
)
from grid.scheduler.verify import Origin


def update(value: float) -> tuple[dict, dict]:
    return {"coef": np.full((1, 3), value)}, {"samples": 10.0}


def never_read() -> Iterator[str]:
    raise AssertionError("the fallback was read although a first choice existed")
    yield  # pragma: no cover - makes this a generator


# --- the first update's holder ---------------------------------------------------------
def test_the_least_loaded_holder_gets_the_update() -> None:
    load = {"a": 2, "b": 0, "c": 1}
    assert holder(["a", "b", "c"], [], load, {}) == "b"
    load["b"] = 3
    assert holder(["a", "b", "c"], [], load, {}) == "c"


def test_holder_ties_go_to_fewer_holdings_then_to_the_lowest_address() -> None:
    load = {"a": 1, "b": 1, "c": 1}
    assert holder(["c", "b", "a"], [], load, {"a": 5, "b": 2, "c": 2}) == "b"  # b and c hold 2: lower address
    assert holder(["c", "b", "a"], [], load, {"a": 1, "b": 2, "c": 2}) == "a"  # a holds fewer: it wins over b
    assert holder(["c", "b", "a"], [], {}, {}) == "a"  # nothing known: the lowest address


def test_no_holder_and_no_fetcher_means_no_request() -> None:
    assert holder([], [], {"a": 0}, {"a": 1}) is None


def test_a_dial_out_fetcher_takes_the_update_only_where_no_node_holds_it() -> None:
    assert holder([], ["d2", "d1"], {"d1": 3, "d2": 1}, {}) == "d2"  # least loaded among the fetchers
    assert holder(["h"], never_read(), {"h": 9}, {}) == "h"  # a holder, however loaded: fetchers not read


# --- further copies --------------------------------------------------------------------
def choose(**kwargs):
    args = dict(usable=["a", "b", "c"], fallback=never_read(), holders=set(), used=set(), dial_out=set(),
                fetchable=False, load={})
    args.update(kwargs)
    return choose_node(args.pop("usable"), args.pop("fallback"), **args)


def test_a_copy_goes_to_a_node_not_used_yet() -> None:
    assert choose(used={"a"}) == "b"
    assert choose(used={"a", "b"}) == "c"
    assert choose(used={"a", "b", "c"}, fallback=[]) is None


def test_a_copy_prefers_holders_then_the_least_loaded_then_the_lowest_address() -> None:
    assert choose(holders={"c"}, load={"c": 7}) == "c"  # a holder first, even the busiest
    assert choose(load={"a": 2, "b": 1, "c": 1}) == "b"  # no holder: least loaded, ties by address
    assert choose(holders={"b", "c"}, load={"b": 1, "c": 0}) == "c"


def test_a_dial_out_node_gets_a_copy_only_where_it_holds_or_can_fetch_the_data() -> None:
    assert choose(usable=["d", "z"], dial_out={"d"}, load={"z": 5}) == "z"  # d cannot get the data
    assert choose(usable=["d", "z"], dial_out={"d"}, load={"z": 5}, fetchable=True) == "d"
    assert choose(usable=["d", "z"], dial_out={"d"}, holders={"d"}) == "d"
    assert choose(usable=["d"], dial_out={"d"}, fallback=[]) is None


def test_a_paused_node_is_the_last_resort() -> None:
    assert choose(usable=["a"], used={"a"}, fallback=["a", "p"]) == "p"
    assert choose(usable=[], fallback=["p", "q"], load={"p": 1}) == "q"


def test_a_copy_goes_only_to_a_node_independent_of_the_voters() -> None:
    origins = {
        "a": Origin("alice-1", "alice", "10.0.0.1"),
        "b": Origin("alice-2", "alice", "10.0.0.2"),  # alice's second node
        "c": Origin("bob-1", "bob", "10.0.0.1"),  # bob, on alice's host
        "d": Origin("carol-1", "carol", "10.0.0.3"),
    }
    voters = [origins["a"]]
    strict = dict(usable=["b", "c", "d"], voters=voters, origin_of=origins.__getitem__, fallback=[])
    assert choose(**strict, independence="hosts-and-owners") == "d"
    assert choose(**strict, independence="nodes") == "b"  # distinct nodes are enough here
    assert choose(**{**strict, "usable": ["b", "c"]}, independence="hosts-and-owners") is None


def test_may_vote_needs_independence_from_every_voter() -> None:
    alice, bob, carol = Origin("a1", "alice", "h1"), Origin("b1", "bob", "h2"), Origin("c1", "carol", "h2")
    assert may_vote(carol, [], "hosts-and-owners")
    assert may_vote(carol, [alice], "hosts-and-owners")
    assert not may_vote(carol, [alice, bob], "hosts-and-owners")  # shares bob's host
    assert may_vote(carol, [alice, bob], "nodes")
    assert not may_vote(alice, [alice], "nodes")


def test_voters_are_the_nodes_computing_or_having_computed_the_partition() -> None:
    pr = PartitionRound(0, 0, 2)
    pr.origins = {w: Origin(w, w, w) for w in "abc"}
    pr.attempts = [Attempt("k0", "a", 0.0, "first"), Attempt("k1", "b", 0.0, "replica", settled=True),
                   Attempt("k2", None, 0.0, "replica")]
    pr.results = [("c", update(1.0))]
    assert sorted(o.node for o in pr.voters()) == ["a", "c"]  # b's copy ended without a result
    assert pr.workers() == {"a", "b", "c"}
    assert PartitionRound(0, 0, 1, attempts=[Attempt("k", "a", 0.0, "first")]).voters() == []  # verify=1: no origins


# --- lost and late updates -------------------------------------------------------------
def test_an_update_is_reissued_at_most_max_reissues_times() -> None:
    pr = PartitionRound(0, 0, 1)
    allowed = 0
    while pr.may_reissue():
        pr.reissues += 1
        allowed += 1
    assert allowed == MAX_REISSUES == 3


def test_stranded_attempts_are_the_pending_ones_pinned_to_nodes_that_left() -> None:
    gone, here = Attempt("k0", "gone", 0.0, "first"), Attempt("k1", "here", 0.0, "first")
    anywhere, done = Attempt("k2", None, 0.0, "first"), Attempt("k3", "gone", 0.0, "first", settled=True)
    pr = PartitionRound(0, 0, 1, attempts=[gone, here, anywhere, done])
    assert pr.stranded({"here"}) == [gone]


def test_a_partition_is_late_once_past_the_deadline_and_speculated_on_once() -> None:
    pr = PartitionRound(0, 0, 1, attempts=[Attempt("k", "a", 0.0, "first")])
    assert not pr.is_late(None, 100.0)  # no deadline known yet
    assert not pr.is_late(5.0, 4.0)
    assert pr.is_late(5.0, 6.0)
    pr.speculated = True
    assert not pr.is_late(5.0, 6.0)
    assert not PartitionRound(0, 0, 1).is_late(5.0, 6.0)  # nothing running: nothing to copy


def test_no_deadline_until_the_quantile_of_partitions_is_done() -> None:
    spec = Speculation(enabled=True, quantile=0.5, multiplier=3.0, minimum=0.0)
    assert spec.deadline([], 10, None) is None
    assert spec.deadline([1.0] * 4, 10, None) is None  # 4 of 10 done: the median is not known yet
    assert spec.deadline([1.0, 1.0, 2.0, 3.0, 5.0], 10, None) == pytest.approx(6.0)  # 3 x median 2
    assert spec.deadline([], 1, []) is None  # no previous round either


def test_the_previous_rounds_median_sets_a_deadline_from_the_start() -> None:
    spec = Speculation(enabled=True, quantile=0.5, multiplier=3.0, minimum=0.0)
    assert spec.deadline([], 10, [1.0, 2.0, 4.0]) == pytest.approx(6.0)
    # once this round's median is known too, the smaller of the two counts
    assert spec.deadline([1.0] * 5, 10, [1.0, 2.0, 4.0]) == pytest.approx(3.0)
    assert spec.deadline([9.0] * 5, 10, [1.0, 2.0, 4.0]) == pytest.approx(6.0)


def test_the_deadline_is_never_below_the_minimum_and_off_when_disabled() -> None:
    spec = Speculation(enabled=True, quantile=0.5, multiplier=3.0, minimum=2.0)
    assert spec.deadline([0.1] * 10, 10, None) == 2.0
    assert Speculation(enabled=False).deadline([1.0] * 10, 10, [1.0]) is None


def test_speculation_settings_are_read_from_the_config_section() -> None:
    spec = Speculation.from_config({"enabled": True, "quantile": 0.25, "multiplier": 2, "minimum": "1500ms"})
    assert spec == Speculation(enabled=True, quantile=0.25, multiplier=2.0, minimum=1.5)


def test_the_round_wakes_up_at_the_deadline_or_every_poll_interval() -> None:
    assert next_wakeup(None, 0.0) == POLL_SECONDS
    assert next_wakeup(100.0, 1.0) == POLL_SECONDS  # far away: poll for lost updates meanwhile
    assert next_wakeup(1.2, 1.0) == pytest.approx(0.2)  # the deadline falls before the next poll
    assert next_wakeup(1.0, 0.999) == 0.01  # never busy-loops
    assert next_wakeup(1.0, 2.0) == POLL_SECONDS  # already past: late updates were handled


# --- replicated updates ----------------------------------------------------------------
def replicated(values: list[float], pending: int = 0, missing: int = 0) -> PartitionRound:
    pr = PartitionRound(0, 7, 2, missing=missing)
    pr.results = [(f"w{i}", update(v)) for i, v in enumerate(values)]
    pr.attempts = [Attempt(f"k{i}", f"w{i}", 0.0, "replica", settled=True) for i in range(len(values))]
    pr.attempts += [Attempt(f"p{i}", f"p{i}", 0.0, "replica") for i in range(pending)]
    return pr


def test_a_quorum_accepts_and_names_the_agreeing_results() -> None:
    verdict = settle(replicated([1.0, 5.0, 1.0]), 1e-7, 1e-10, max_replicas=5)
    assert verdict.action == round_policy.ACCEPT
    assert verdict.group == (0, 2)  # result 1 is the minority


def test_without_a_quorum_the_round_waits_for_running_or_waiting_copies() -> None:
    assert settle(replicated([1.0], pending=1), 1e-7, 1e-10, 5).action == round_policy.WAIT
    assert settle(replicated([1.0, 5.0], pending=1), 1e-7, 1e-10, 5).action == round_policy.WAIT
    assert settle(replicated([1.0, 5.0], missing=1), 1e-7, 1e-10, 5).action == round_policy.WAIT


def test_a_disagreement_gets_one_more_replica_until_max_replicas() -> None:
    assert settle(replicated([1.0, 5.0]), 1e-7, 1e-10, max_replicas=3).action == round_policy.REPLICATE
    verdict = settle(replicated([1.0, 5.0, 9.0]), 1e-7, 1e-10, max_replicas=3)
    assert verdict.action == round_policy.FAIL
    assert len(verdict.spread) == 2 and all(s > 1.0 for s in verdict.spread)


def test_the_waiting_reason_names_the_setting_the_need_and_what_the_region_has() -> None:
    text = waiting_reason("verify=3", 3, False, "hosts-and-owners", 1, "eu", 4, 2)
    assert text.startswith("waiting for nodes: verify=3 needs 3 independent nodes")
    assert "(nodes of different owners on different hosts) for every update;" in text
    assert "region 'eu' has 1 now (4 partition(s) of round 2 wait)" in text
    assert "for every checked update" in waiting_reason("verify='adaptive'", 2, True, "nodes", 1, "eu", 1, 0)


# --- a node's answer -------------------------------------------------------------------
def test_a_node_answer_gives_each_partition_its_outcome() -> None:
    reply = {"status": "OK", "updates": [[3, b"blob"]], "errors": [[4, "boom"]], "invalid": [[5, "bad"]], "missing": [6]}
    outcomes, default = read_reply("tcp://n:1", reply)
    assert outcomes[3] == b"blob"
    assert outcomes[4] == NodeFailed("boom")
    assert isinstance(outcomes[5], wire.WireError) and "bad" in str(outcomes[5])
    assert isinstance(outcomes[6], Declined)
    assert isinstance(default, wire.WireError) and "did not answer for a partition" in str(default)


@pytest.mark.parametrize(
    "reply, kind, text",
    [
        (None, Declined, "no grid_update handler"),
        ({"status": "paused"}, Declined, "paused"),
        ({"status": "nonsense"}, wire.WireError, "answered a round request with"),
        ("not a dict", wire.WireError, "answered a round request with"),
        ({"status": "OK", "updates": [["x", b""]]}, wire.WireError, "malformed round reply"),
    ],
)
def test_an_answer_without_updates_says_why_for_every_partition(reply, kind, text) -> None:
    outcomes, default = read_reply("tcp://n:1", reply)
    assert outcomes == {}
    assert isinstance(default, kind)
    assert text in (default.why if isinstance(default, Declined) else str(default))


# --- purity ----------------------------------------------------------------------------
def test_the_policy_imports_nothing_that_awaits_or_talks_to_nodes() -> None:
    tree = ast.parse(Path(round_policy.__file__).read_text())
    hints = {  # `if TYPE_CHECKING:` blocks hold type hints, not imports
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    imported = set()
    for node in ast.walk(tree):  # function-level imports included
        if isinstance(node, ast.Import) and id(node) not in hints:
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and id(node) not in hints:
            imported.add(node.module or "")
    assert "grid.scheduler.verify" in imported  # the walk sees the imports
    assert not {name.split(".")[0] for name in imported} & {"asyncio", "distributed", "time", "socket"}, imported
    assert not {name for name in imported if name.startswith("grid.scheduler.")} - {"grid.scheduler.verify"}, imported
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.AsyncFunctionDef, ast.Await))]


def test_late_after_is_the_multiple_of_the_median_never_below_the_minimum() -> None:
    from grid.scheduler.round_policy import late_after

    assert late_after(0.5, 3.0, 2.0) == 2.0  # 1.5 s would be earlier than the minimum
    assert late_after(1.0, 3.0, 2.0) == 3.0
    assert late_after(4.0, 1.5, 0.0) == 6.0
