"""The replica policy's emptiest-node choice (grid/scheduler/replicas.py: NodeLoads), without a cluster."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from grid.scheduler.replicas import NodeLoads


@dataclass(eq=False)
class Node:
    """What NodeLoads reads of a distributed WorkerState: a hashable node with an address."""

    address: str


@dataclass(eq=False)
class Partition:
    """What NodeLoads reads of a distributed TaskState."""

    nbytes: int
    who_has: set = field(default_factory=set)


def _scan(loads: dict, eligible: set, exclude: set):
    free = [ws for ws in eligible if ws not in exclude]
    return min(free, key=lambda ws: (loads.get(ws, 0), ws.address)) if free else None


def test_the_emptiest_node_is_the_one_a_scan_of_every_node_finds() -> None:
    """Random holdings, exclusions and load changes: always the scan's answer (ties: lowest address)."""
    rng = random.Random(0)
    for trial in range(50):
        nodes = [Node(f"tcp://10.0.0.{i}:{rng.randrange(1000, 1010)}") for i in range(rng.randrange(1, 30))]
        tasks = [Partition(rng.choice([0, 1, 8, 8, 64]), set(rng.sample(nodes, rng.randrange(0, min(3, len(nodes)) + 1))))
                 for _ in range(rng.randrange(0, 40))]
        eligible = {ws for ws in nodes if rng.random() < 0.8}
        loads = NodeLoads(nodes, tasks, eligible)
        expected = {ws: 0 for ws in nodes}
        for ts in tasks:
            for ws in ts.who_has:
                expected[ws] += max(ts.nbytes, 1)
        for step in range(60):
            exclude = set(rng.sample(nodes, rng.randrange(0, len(nodes) + 1)))
            assert loads.emptiest(exclude) is _scan(expected, eligible, exclude), (trial, step)
            ws, delta = rng.choice(nodes), rng.choice([-8, -1, 1, 8, 64])
            loads.add(ws, delta)
            expected[ws] += delta
            assert loads[ws] == expected[ws]


def test_only_eligible_nodes_are_returned_and_none_when_all_are_excluded() -> None:
    a, b, c = Node("tcp://a:1"), Node("tcp://b:1"), Node("tcp://c:1")
    loads = NodeLoads([a, b, c], [Partition(100, {a})], eligible={a, b})
    assert loads.emptiest(set()) is b  # c holds nothing but may not receive a copy
    assert loads.emptiest({b}) is a
    assert loads.emptiest({a, b}) is None
    loads.add(b, 200)
    assert loads.emptiest(set()) is a and loads[b] == 200 and loads[c] == 0
