"""Dial-out nodes against open ones: rounds, rounds over a delayed link, partition delivery.

A dial-out node (``grid node --dial-out``, a machine behind NAT or a
firewall) is never dialed: its scheduler sends it round requests on the
grid channel the node opened (``grid-call`` / ``grid-reply``,
``grid/scheduler/channels.py``) and the node reads its partitions from the
region's store over connections it opens (``grid_store_read``,
``grid/scheduler/store.py``). An open node is dialed by its scheduler
(``grid_update``) and receives its partitions by scatter. This benchmark
runs both kinds side by side in one run, on the same data and jobs:

1. ``rounds``: problem (b) of ``benchmarks.sgd`` (2,000,000 x 50 binary, 1.6M
   training rows; ``--quick``: 60,000) on ``Grid.local(regions={"eu": 2})``
   (2 node processes of one thread), placed once with ``g.scatter``, one
   ``jobs.SGDClassifier`` job: median round seconds of open nodes (the direct
   engine) and of dial-out nodes, and their ratio (goal <= 1.2x).
2. ``wan``: the same job with every node 50 ms (``--delay``) one way from its
   scheduler: real ``grid scheduler`` and ``grid node`` processes, the nodes
   dialing the scheduler through a relay that delays every byte in each
   direction (``tests/system/relay.py``; 100 ms round-trip time). Median
   round and compute seconds, and (round - compute) / RTT (goal <= 1.5 for
   dial-out nodes). Open nodes are dialed by the scheduler at their own
   address, so only the connections they open cross the delayed link: their
   row shows what the link does not cost them, not a like-for-like WAN.
3. ``delivery``: MB/s of partition delivery to 4 nodes of ``Grid.local``,
   ~400 MB placed with 2 replicas: ``g.scatter`` to open nodes (the
   scheduler scatters to each holder) against ``g.scatter`` to dial-out
   nodes, timed until every node has fetched what it was granted from the
   store (the scheduler's pending fetch calls, read with
   ``run_on_scheduler``).
4. ``regions``: the same job over two regions of 2 dial-out nodes each, home
   ``eu``: the home scheduler dials ``us`` directly, then through the relay
   (50 ms one way); the round time the link adds, in round-trip times.

    python -m benchmarks.dial_out            # full sizes (a few minutes, ~4 GB)
    python -m benchmarks.dial_out --quick    # small sizes, a correctness check (~1 minute)
    python -m benchmarks.dial_out --sections wan --delay 0.1

Section ``wan`` starts ``grid`` processes and imports the relay from
``tests/system``: run it from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks.common import machine, table
from benchmarks.sgd import Problem, make_problem, quiet
from grid.polling import wait_until

#: dial-out median round over the direct engine's on open nodes, at most
GOAL_ROUND_RATIO = 1.2
#: a dial-out round over a delayed link: (round - compute) / RTT, at most
GOAL_WAN_RTTS = 1.5
SECTIONS = ("rounds", "wan", "delivery", "regions")
MB = 1e6

METHOD = """\
method:
  * every variant runs on a fresh grid; its node processes are warmed up with a 1-round fit on 64
    rows first (fresh processes import numpy / scikit-learn on their first update); the grid says
    each node's kind (grid status "reach": open or dial-out) and the benchmark checks it.
  * placement = g.scatter until every node holds its partitions: for open nodes g.scatter
    returns then; for dial-out nodes it returns once the scheduler has stored the partitions and
    granted them, and the clock runs on until every node has answered its fetch call.
  * rounds: median over the job's rounds (and over --repeat runs, open and dial-out alternating) of
    the driver's round seconds from job.history; compute = the slowest partition update of the
    round measured on its node (compute_seconds); beyond compute = round - compute.
  * max |coef diff|: the models of all variants must be the same (rounds do not depend on how a
    node is reached)."""


# --------------------------------------------------------------------------------------
# grid helpers
# --------------------------------------------------------------------------------------
def reach_kinds(g: Any, region: str = "eu") -> list[str]:
    """The kind of every node of ``region`` as its scheduler sees it (open, dial-out, checking ...)."""
    return sorted(w["reach"] for w in g.status()[region]["workers"])


def wait_nodes(g: Any, n: int, kind: str, timeout: float = 120.0) -> None:
    """Wait until ``region`` eu has ``n`` nodes, every one of kind ``kind``."""
    try:
        wait_until(lambda: reach_kinds(g) == [kind] * n, timeout, f"{n} {kind} nodes")
    except TimeoutError:
        raise TimeoutError(
            f"expected {n} {kind} nodes in region eu, the scheduler sees {reach_kinds(g)}; "
            "a node that should dial out needs grid.node.dial-out set before it starts"
        ) from None


def store_progress(client: Any) -> dict:
    """The region's partition store as its scheduler sees it now (``run_on_scheduler``).

    ``pending``: fetch calls to dial-out nodes not answered yet; ``served``:
    bytes read from the store so far; ``node_bytes``: bytes of the partitions
    each node holds, in Dask's memory (open nodes) or granted from the store
    (dial-out nodes)."""

    # defined here, so that it is pickled by value: a `grid scheduler` process cannot import benchmarks
    def progress(dask_scheduler: Any) -> dict:
        plugin = dask_scheduler.plugins["grid"]
        store = plugin.dial_out.store
        node_bytes = {}
        for address, ws in dask_scheduler.workers.items():
            held = sum(size for key, size in store.sizes.items() if address in store.held_by(key))
            node_bytes[address] = held + sum(ts.nbytes for ts in ws.has_what)
        return {"pending": len(plugin.dial_out.prefetches), "served": store.bytes_served, "node_bytes": node_bytes}

    return client.run_on_scheduler(progress)


def wait_delivered(client: Any, timeout: float = 900.0) -> dict:
    """Wait until no dial-out node has a fetch call pending; the store's progress then."""
    return wait_until(lambda: (lambda p: p if p["pending"] == 0 else None)(store_progress(client)),
                      timeout, "every dial-out node to fetch its partitions", interval=0.02)


@contextlib.contextmanager
def local_grid(nodes: int, dial_out: bool) -> Iterator[Any]:
    """``Grid.local`` of one region ``eu`` whose nodes are open or dial out, checked."""
    import dask

    from grid import Grid

    # node processes take the config of this process when they start (LocalCluster's nannies)
    with dask.config.set({"grid.node.dial-out": dial_out}), Grid.local(regions={"eu": nodes}, dashboard=False) as g:
        wait_nodes(g, nodes, "dial-out" if dial_out else "open")
        yield g


def warm_up(g: Any, problem: Problem) -> None:
    from jobs import SGDClassifier

    SGDClassifier(rounds=1).fit(problem.X_test[:64], problem.y_test[:64], grid=g)


def train(g: Any, problem: Problem, rounds: int, parts: int) -> dict:
    """Place problem (b) once, wait until every node holds it, run one job; its rounds."""
    from jobs import SGDClassifier

    rows = math.ceil(len(problem.y_train) / parts)
    start = time.perf_counter()
    data = g.scatter(problem.X_train, problem.y_train, partition_rows=rows)
    wait_delivered(g.client("eu"))
    placement = time.perf_counter() - start
    start = time.perf_counter()
    model = g.submit(SGDClassifier(loss="log_loss", rounds=rounds, random_state=0), data).result()
    job_seconds = time.perf_counter() - start
    g.drop(data)
    return {
        "placement": placement,
        "job": job_seconds,
        "round": [h["seconds"] for h in model.history_],
        "compute": [h["compute_seconds"] for h in model.history_],
        "coef": np.asarray(model.coef_).copy(),
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over the rounds of every run of one variant."""
    rounds = [r for run in runs for r in run["round"]]
    compute = [c for run in runs for c in run["compute"]]
    return {
        "placement": statistics.median(run["placement"] for run in runs),
        "job": statistics.median(run["job"] for run in runs),
        "round1": statistics.median(run["round"][0] for run in runs),
        "round": statistics.median(rounds),
        "compute": statistics.median(compute),
        "beyond": statistics.median(r - c for r, c in zip(rounds, compute)),
        "n_rounds": len(rounds),
        "coef": runs[-1]["coef"],
    }


def coef_diff(results: dict[str, dict]) -> float:
    coefs = [r["coef"] for r in results.values()]
    return max(float(np.max(np.abs(c - coefs[0]))) for c in coefs)


def _verdict(value: float, goal: float) -> str:
    return "PASS" if value <= goal else "MISS"


# --------------------------------------------------------------------------------------
# 1. rounds on Grid.local
# --------------------------------------------------------------------------------------
VARIANTS = {False: "open nodes, direct engine (grid_update)", True: "dial-out nodes (grid-call on the node's grid channel)"}


def run_rounds(problem: Problem, rounds: int, parts: int, repeat: int) -> dict[str, dict]:
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(repeat):
        for dial_out in (False, True):  # alternating: a load change hits both alike
            with local_grid(2, dial_out) as g:
                warm_up(g, problem)
                runs[dial_out].append(train(g, problem, rounds, parts))
    return {VARIANTS[k]: summarise(v) for k, v in runs.items()}


def report_rounds(problem: Problem, results: dict[str, dict], rounds: int, repeat: int) -> str:
    lines = [f"## 1. Rounds: {problem.title}, Grid.local 1 region x 2 nodes, {rounds} rounds x {repeat} run(s) per variant"]
    lines.append(table(
        ["nodes", "placement s", "round 1 s", "median round s", "compute s", "beyond compute s", "job s"],
        [(name, r["placement"], r["round1"], r["round"], r["compute"], r["beyond"], r["job"]) for name, r in results.items()],
    ))
    direct, dial = results[VARIANTS[False]], results[VARIANTS[True]]
    ratio = dial["round"] / direct["round"]
    lines.append(table(
        ["measure", "direct engine, open nodes", "dial-out nodes", "dial-out / direct", "goal", "verdict"],
        [
            ("median round s", direct["round"], dial["round"], f"{ratio:.2f}x", f"<= {GOAL_ROUND_RATIO:g}x",
             _verdict(ratio, GOAL_ROUND_RATIO)),
            ("beyond compute s", direct["beyond"], dial["beyond"], f"{dial['beyond'] / direct['beyond']:.2f}x", "-", "-"),
            ("placement s", direct["placement"], dial["placement"],
             f"{dial['placement'] / direct['placement']:.2f}x", "-", "-"),
        ],
    ))
    lines.append(f"max |coef diff| between the variants' models: {coef_diff(results):.1e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# 2. rounds over a delayed link: real processes, nodes dial the scheduler through a relay
# --------------------------------------------------------------------------------------
def _wan_tools() -> tuple[Any, Any, Any]:
    try:
        from tests.system.procs import grid_processes
        from tests.system.relay import Relay, Wan
    except ImportError as exc:
        raise ImportError(
            f"section 'wan' uses the relay and process helpers of tests/system ({exc}); run "
            "`python -m benchmarks.dial_out` from the repository root, or leave the section out "
            "with --sections rounds,delivery"
        ) from None
    return grid_processes, Relay, Wan


def run_wan_variant(problem: Problem, dial_out: bool, rounds: int, parts: int, delay: float) -> dict:
    """One ``grid scheduler`` and 2 ``grid node`` processes dialing it through a delaying relay."""
    from grid import Grid

    grid_processes, Relay, Wan = _wan_tools()
    relay = Relay()
    try:
        with grid_processes() as procs:
            _, address = procs.scheduler("eu")
            # every connection a node opens goes through the relay: delay seconds each way
            hop = relay.add(address.split("://", 1)[1], source="127.0.0.1", wan=Wan(delay=delay))
            for i in range(2):
                procs.node(
                    "eu", f"tcp://{hop}", f"{'dial' if dial_out else 'open'}-{i}", community=False,
                    # no memory limit: both nodes hold the whole training set (2 replicas), and
                    # distributed would spill or pause them under the helper's 1 GiB
                    args=("--dial-out" if dial_out else "--no-dial-out", "--memory-limit", "0", "--host", "127.0.0.1"),
                )
            with Grid.connect({"regions": {"eu": address}}, timeout=60) as g:
                wait_nodes(g, 2, "dial-out" if dial_out else "open")
                warm_up(g, problem)
                return train(g, problem, rounds, parts)
    finally:
        relay.close()  # after the processes: no node sees its link go away while it runs


def run_wan(problem: Problem, rounds: int, parts: int, delay: float) -> dict[str, dict]:
    return {VARIANTS[d]: summarise([run_wan_variant(problem, d, rounds, parts, delay)]) for d in (False, True)}


def report_wan(problem: Problem, results: dict[str, dict], rounds: int, delay: float) -> str:
    rtt = 2 * delay
    lines = [f"## 2. Rounds over a delayed link: {delay * 1e3:g} ms one way (RTT {rtt * 1e3:g} ms) between every "
             f"node and its scheduler; {problem.title}; grid scheduler + 2 grid node processes; {rounds} rounds"]
    rows = []
    for dial_out in (False, True):
        r = results[VARIANTS[dial_out]]
        per_rtt = r["beyond"] / rtt
        rows.append((
            VARIANTS[dial_out], "every byte, both ways" if dial_out else "only what the node opens (see below)",
            r["placement"], r["round1"], r["round"], r["compute"], r["beyond"], f"{per_rtt:.2f}",
            f"<= {GOAL_WAN_RTTS:g}" if dial_out else "-", _verdict(per_rtt, GOAL_WAN_RTTS) if dial_out else "-",
        ))
    lines.append(table(
        ["nodes", "crosses the delayed link", "placement s", "round 1 s", "median round s", "compute s",
         "round - compute s", "(round - compute) / RTT", "goal", "verdict"],
        rows,
    ))
    lines.append(
        "open nodes: the scheduler dials each node at its own address (grid_update, scatter), so round "
        "requests, answers and partitions do not cross the delayed link; only the connections the node opens "
        "(registration, heartbeats, its stream, its grid channel) do. Their row is what an open node does not pay, not a WAN "
        "measurement. The client talks to the scheduler directly."
    )
    lines.append(f"max |coef diff| between the variants' models: {coef_diff(results):.1e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# 3. partition delivery throughput
# --------------------------------------------------------------------------------------
DELIVERY = {False: "open nodes (scatter from the scheduler)", True: "dial-out nodes (fetch from the store)"}


def delivery_variant(dial_out: bool, nodes: int, X: np.ndarray, y: np.ndarray, parts: int, repeat: int) -> dict:
    """The fastest of ``repeat`` placements of ``X, y`` in ``parts`` partitions, until every node holds its own."""
    rows = math.ceil(len(y) / parts)
    best: dict | None = None
    with local_grid(nodes, dial_out) as g:
        client = g.client("eu")
        warm = g.scatter(X[: 8 * nodes], y[: 8 * nodes], partition_rows=8)  # connections, node-side imports
        wait_delivered(client)
        g.drop(warm)
        for _ in range(repeat):
            served = store_progress(client)["served"]
            start = time.perf_counter()
            data = g.scatter(X, y, partition_rows=rows)
            returned = time.perf_counter() - start
            progress = wait_delivered(client)
            seconds = time.perf_counter() - start
            node_bytes = sorted(progress["node_bytes"].values())
            run = {
                "returned": returned,
                "seconds": seconds,
                "node_bytes": node_bytes,
                "served": progress["served"] - served,
                "partitions": data.n_partitions,
            }
            g.drop(data)
            if best is None or run["seconds"] < best["seconds"]:
                best = run
    assert best is not None
    return best


def run_delivery(nodes: int, megabytes: float, parts: int, repeat: int) -> tuple[dict[str, dict], float]:
    features = 50
    n = int(megabytes * MB / (8 * (features + 1)))  # float64 X and y
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, features))
    y = rng.integers(0, 2, n).astype(np.float64)
    size = (X.nbytes + y.nbytes) / MB
    out = {DELIVERY[d]: delivery_variant(d, nodes, X, y, parts, repeat) for d in (False, True)}
    return out, size


def report_delivery(results: dict[str, dict], nodes: int, size_mb: float, repeat: int) -> str:
    lines = [f"## 3. Partition delivery: {size_mb:,.0f} MB placed with g.scatter on Grid.local 1 region x {nodes} "
             f"nodes, 2 replicas; fastest of {repeat} placement(s)"]
    rows = []
    for name, r in results.items():
        total = sum(r["node_bytes"]) / MB
        per_node = [b / MB / r["seconds"] for b in r["node_bytes"]]
        rows.append((
            name, r["partitions"], f"{total:,.0f}", f"{min(r['node_bytes']) / MB:,.0f}-{max(r['node_bytes']) / MB:,.0f}",
            r["returned"], r["seconds"], f"{statistics.median(per_node):,.1f}", f"{total / r['seconds']:,.1f}",
            f"{r['served'] / MB:,.0f}",
        ))
    lines.append(table(
        ["nodes", "partitions", "MB delivered (all copies)", "MB per node", "g.scatter returned s",
         "every node holds its partitions s", "MB/s per node (median)", "MB/s aggregate", "MB read from the store"],
        rows,
    ))
    open_, dial = results[DELIVERY[False]], results[DELIVERY[True]]
    ratio = (sum(dial["node_bytes"]) / dial["seconds"]) / (sum(open_["node_bytes"]) / open_["seconds"])
    lines.append(f"aggregate MB/s, dial-out / open: {ratio:.2f}x. Open nodes: the scheduler scatters each partition "
                 "to its holders one after another; dial-out nodes: each reads its partitions from the store in "
                 "chunks of grid.scheduler.store-chunk, its partitions concurrently. Both also write every "
                 "partition to the region's store on the scheduler.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# 4. cross-region rounds over a delayed link between schedulers
# --------------------------------------------------------------------------------------
def run_regions(problem: Problem, rounds: int, delay: float) -> dict[str, dict]:
    """A job over regions eu (home) and us, with the home dialing us directly, then through a
    relay that delays every byte ``delay`` seconds each way (the operator's ``--peer us=ADDRESS``)."""
    import dask

    from grid import Grid
    from jobs import SGDClassifier

    _, Relay, Wan = _wan_tools()
    relay = Relay()
    out: dict[str, dict] = {}
    try:
        with dask.config.set({"grid.node.dial-out": True}), Grid.local(regions={"eu": 2, "us": 2}, dashboard=False) as g:
            for region in ("eu", "us"):
                wait_nodes_in(g, region, 2, "dial-out")
            warm_up(g, problem)
            home = g._local.clusters["eu"].scheduler.plugins["grid"]
            direct = g.spec.regions["us"].address
            delayed = "tcp://" + relay.add(direct.split("://", 1)[1], source="127.0.0.1", wan=Wan(delay=delay))
            rows = math.ceil(len(problem.y_train) / 4)
            data = g.scatter(problem.X_train, problem.y_train, partition_rows=rows, regions=["eu", "us"])
            wait_delivered(g.client("eu"))
            wait_delivered(g.client("us"))
            for label, address in (("direct", direct), ("delayed", delayed)):
                home.region_share.peers["us"] = address  # what `grid scheduler --peer us=ADDRESS` configures
                model = g.submit(SGDClassifier(loss="log_loss", rounds=rounds, random_state=0), data).result()
                out[label] = summarise([{
                    "placement": 0.0, "job": 0.0,
                    "round": [h["seconds"] for h in model.history_],
                    "compute": [h["compute_seconds"] for h in model.history_],
                    "coef": np.asarray(model.coef_).copy(),
                    "bytes": [h.get("bytes_cross_region", 0) for h in model.history_],
                }])
                out[label]["bytes"] = statistics.median(h.get("bytes_cross_region", 0) for h in model.history_)
            home.region_share.peers["us"] = direct
            g.drop(data)
    finally:
        relay.close()
    return out


def wait_nodes_in(g: Any, region: str, n: int, kind: str, timeout: float = 120.0) -> None:
    wait_until(
        lambda: [w.get("reach") for w in g.status()[region]["workers"]] == [kind] * n,
        timeout, f"{n} {kind} nodes in region {region}",
    )


def report_regions(problem: Problem, results: dict[str, dict], rounds: int, delay: float) -> str:
    rtt = 2 * delay
    direct, delayed = results["direct"], results["delayed"]
    added = delayed["round"] - direct["round"]
    lines = [f"## 4. Cross-region rounds: regions eu (home) and us, 2 dial-out nodes each, {problem.title} split "
             f"over both; the home scheduler dials us directly, then through a link delayed {delay * 1e3:g} ms "
             f"one way (RTT {rtt * 1e3:g} ms); {rounds} rounds"]
    lines.append(table(
        ["link between the schedulers", "median round s", "compute s", "bytes across regions per round"],
        [("direct", direct["round"], direct["compute"], f"{direct['bytes']:,.0f}"),
         (f"{rtt * 1e3:g} ms RTT", delayed["round"], delayed["compute"], f"{delayed['bytes']:,.0f}")],
    ))
    per_rtt = added / rtt
    lines.append(
        f"a cross-region round is one request and its answer between the schedulers (the state out, the "
        f"regional aggregate back): the delayed link added {added:.3f} s = {per_rtt:.2f} RTT per round "
        f"(goal <= {GOAL_WAN_RTTS:g}: {_verdict(per_rtt, GOAL_WAN_RTTS)})"
    )
    lines.append(f"max |coef diff| between the two: {coef_diff(results):.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dial_out", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (60k rows, 40 MB, 4 rounds): a correctness check")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per job (default 10, --quick 4)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per variant in sections rounds and delivery (default 2, --quick 1)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of problem (b); default one per node")
    parser.add_argument("--delay", type=float, default=0.05, help="one-way node delay of section wan, seconds")
    parser.add_argument("--delivery-mb", type=float, default=None, help="MB placed in section delivery (default 400, --quick 40)")
    parser.add_argument("--delivery-nodes", type=int, default=4, help="nodes of section delivery")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    rounds = args.rounds or (4 if args.quick else 10)
    repeat = args.repeat or (1 if args.quick else 2)
    megabytes = args.delivery_mb or (40.0 if args.quick else 400.0)

    started = time.perf_counter()
    print(f"# Dial-out nodes: python -m benchmarks.dial_out{' --quick' if args.quick else ''}")
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(METHOD)
    out: dict[str, Any] = {}
    with quiet():
        problem = make_problem("binary", args.quick) if {"rounds", "wan", "regions"} & set(sections) else None
        if "rounds" in sections:
            out["rounds"] = run_rounds(problem, rounds, args.partitions, repeat)
            print()
            print(report_rounds(problem, out["rounds"], rounds, repeat), flush=True)
        if "wan" in sections:
            out["wan"] = run_wan(problem, rounds, args.partitions, args.delay)
            print()
            print(report_wan(problem, out["wan"], rounds, args.delay), flush=True)
        if "delivery" in sections:
            # as many partitions as nodes: with 2 replicas every node receives 2 of them
            out["delivery"], size = run_delivery(args.delivery_nodes, megabytes, args.delivery_nodes, repeat)
            print()
            print(report_delivery(out["delivery"], args.delivery_nodes, size, repeat), flush=True)
        if "regions" in sections:
            out["regions"] = run_regions(problem, rounds, args.delay)
            print()
            print(report_regions(problem, out["regions"], rounds, args.delay), flush=True)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s; "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return out


if __name__ == "__main__":
    main()
