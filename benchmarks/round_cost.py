"""What a round costs on the scheduler, phase by phase, and which change makes it cheaper.

A benchmark-only copy of the grid's round loop (``RegionRun.run_round`` +
``_reduce`` + the driver's state update) runs inside the scheduler's process
and event loop, as the real driver does, with the same public pieces:
``grid.node.tasks.partition_update``, ``grid.wire``, ``jobs.merge`` rules and
an asynchronous ``distributed.Client``. The scheduler is an in-process
``distributed.Scheduler`` (worker-saturation inf, as grid schedulers run);
the nodes are in-process workers (1 thread) in node-host processes, one
partition per node. Variants run side by side, one round of each in turn,
from the same data:

A  the driver as it is: one ``client.map`` per round with the state blob in
   every task; ``client.gather`` (through the scheduler); sequential merge
   (``jobs.aggregate.weighted_mean`` loops)
B  the state scattered once per round to every node
   (``client.scatter(broadcast=True)``) and passed to the tasks as a future
C  A with the merge vectorised: ``np.stack`` + one weighted sum per array
D  A with the results gathered straight from the nodes (``gather(direct=True)``;
   the driver's client lives in the scheduler process, so the scheduler's relay
   hop is an extra copy)
E  A with every node pushing its result blob over the node's already-open
   worker->scheduler stream (``Worker.batched_send`` to a scheduler stream
   handler) instead of being gathered: no per-partition request/response
F  no task graph: one ``client.run`` per round (the scheduler's ``broadcast``:
   one request and one reply per node, arguments serialised once), each node
   updating the partitions it holds
and combinations (D+C, E+C, B+E+C).

Variants that use node-to-node transfers (B) run last and stop when a node
host nears its open-file limit; a variant whose round fails or times out is
reported with its reason and dropped.

Per round it reports wall time by phase (submit: ``client.map`` returns;
run: until every task is finished; gather; decode+check; merge; encode), the
scheduler process's CPU time (``time.process_time``: scheduler, driver client
and all their threads) and the bytes through the scheduler process's TCP
comms (external: to/from nodes; the driver client's loopback hop to its own
scheduler is counted apart as internal).

    python -m benchmarks.round_cost [--partitions 100,250,500,1000] [--features 20,5000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import pickle
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import machine, table
from benchmarks.region_scale import (
    Processes,
    comm_totals,
    host_stats,
    install_comm_counters,
    load_line,
    start_nodes,
)
from grid.logs import quiet_distributed

PUSH_OP = "bench-grid-result"


# ======================================================================================
# Node side of variant E (runs on the nodes)
# ======================================================================================
def partition_update_push(request: dict, state_blob: Any, partition: Any, round_no: int, index: int, topic: str) -> int:
    """``partition_update``, then send the blob over this worker's stream to the scheduler."""
    from distributed import get_worker

    from grid.node.tasks import partition_update

    blob = partition_update(request, state_blob, partition, round_no, index)
    worker = get_worker()
    # from the task thread: queue it on the worker's loop, ahead of this task's "task-finished"
    worker.loop.add_callback(worker.batched_send, {"op": PUSH_OP, "topic": topic, "index": index, "blob": blob})
    return len(blob)


def node_round_run(request: dict, state_blob: Any, part_prefix: str, round_no: int, dask_worker: Any = None) -> list:
    """Variant F: no task graph; run the round's update on every partition this node holds.

    Called with ``client.run`` (scheduler ``broadcast`` -> one RPC per node, on the node's event loop).
    """
    from grid.node.tasks import partition_update

    out = []
    for key in [k for k in dask_worker.data.keys() if isinstance(k, str) and k.startswith(part_prefix)]:
        index = int(key.rsplit("-", 1)[1])
        out.append((index, partition_update(request, state_blob, dask_worker.data[key], round_no, index)))
    return out


# ======================================================================================
# Merges
# ======================================================================================
def merge_loop(rule: Any, states: list[dict], weights: list[float], previous: dict | None) -> dict:
    """The driver's merge as it is (``SGDJobRule.merge``: Python loops over partitions)."""
    from jobs.aggregate import weighted_mean

    return rule.merge(states, weights, weighted_mean, previous=previous)


def _stacked_mean(states: list[dict], name: str, f: np.ndarray) -> np.ndarray:
    """Weighted sum of one array over partitions, added strictly in partition order.

    ``sum(axis=0)`` of a stack adds whole rows one after another when rows are
    wide, but sums a narrow stack (e.g. intercepts of shape (1,)) pairwise;
    ``cumsum`` is sequential in every case, so narrow arrays use it.
    """
    S = np.stack([np.asarray(s[name], dtype=np.float64) for s in states])
    weighted = f.reshape((-1,) + (1,) * (S.ndim - 1)) * S
    if S[0].size < 64:
        return np.cumsum(weighted, axis=0)[-1]
    return weighted.sum(axis=0)


def merge_stack(rule: Any, states: list[dict], weights: list[float], previous: dict | None) -> dict:
    """``SGDJobRule.merge`` with every weighted mean as one ``np.stack`` + weighted sum.

    Same operations in the same (partition) order as the loops, so the result
    is the same to the bit (checked in the table).
    """
    w = [float(x) for x in weights]
    total = float(sum(w))
    f = np.array([x / total for x in w])
    out = {name: _stacked_mean(states, name, f) for name in ("coef", "intercept", "center", "scale")}
    t0 = float(states[0]["t0"])
    out["t"] = t0 + sum(float(s["t"]) - float(s["t0"]) for s in states)
    out["t0"] = t0
    out["eta_base"] = sum(float(s["eta_base"]) * wt for s, wt in zip(states, w)) / total
    out["epoch_loss"] = sum(float(s["epoch_loss"]) * wt for s, wt in zip(states, w)) / total
    for key in ("eta_scale", "best_loss", "no_improve"):
        out[key] = float(states[0][key])
    return out


def merge_tree(rule: Any, states: list[dict], weights: list[float], previous: dict | None, fan: int = 32) -> dict:
    """A fixed-shape two-level tree: stacked means of groups of ``fan`` partitions, then of the groups."""
    groups = [(states[i : i + fan], weights[i : i + fan]) for i in range(0, len(states), fan)]
    partial = [merge_stack(rule, s, w, previous) for s, w in groups]
    return merge_stack(rule, partial, [float(sum(w)) for _, w in groups], previous)


MERGES = {"loop": merge_loop, "stack": merge_stack, "tree": merge_tree}


# ======================================================================================
# The instrumented round loop
# ======================================================================================
@dataclass
class Variant:
    name: str
    state: str = "embed"  # "embed" | "broadcast"
    results: str = "gather"  # "gather" | "direct" | "push" | "run"
    merge: str = "loop"  # "loop" | "stack"
    blob: bytes | None = None
    previous: dict | None = None
    rounds: list[dict] = field(default_factory=list)
    status: str = "ok"
    fds_per_node: float = float("nan")


VARIANTS = [
    Variant("A (as is)"),
    Variant("B broadcast state", state="broadcast"),
    Variant("C stacked merge", merge="stack"),
    Variant("D direct gather", results="direct"),
    Variant("E pushed results", results="push"),
    Variant("D+C", results="direct", merge="stack"),
    Variant("E+C", results="push", merge="stack"),
    Variant("B+E+C", state="broadcast", results="push", merge="stack"),
    Variant("F no task graph", results="run"),
]


def _on_push(store: dict, worker: str = "", topic: str = "", index: int = -1, blob: bytes = b"", **_: Any) -> None:
    """Scheduler stream handler of variant E (the grid would check that ``worker`` ran that task)."""
    store[topic][int(index)] = blob


class Region:
    """An in-process scheduler, its nodes (in host processes) and one partition per node."""

    def __init__(self, scheduler: Any, client: Any, parts: list[Any], request: dict, workers: list[str]) -> None:
        from jobs.merge import state_rule
        from jobs.spec import resolve_class

        self.scheduler = scheduler
        self.client = client
        self.parts = parts
        self.indices = list(range(len(parts)))
        self.request = request
        self.workers = workers
        self.rule = state_rule(resolve_class(request["estimator"]["class"], ("jobs.", "sklearn.")))
        # one handler per scheduler, results filed by topic (the round's key prefix)
        if not hasattr(scheduler, "bench_pushed"):
            scheduler.bench_pushed = defaultdict(dict)
            scheduler.stream_handlers[PUSH_OP] = functools.partial(_on_push, scheduler.bench_pushed)
        self.pushed: dict[str, dict[int, bytes]] = scheduler.bench_pushed
        self.max_tick = 0.0
        digest = scheduler.digest_metric

        def digest_metric(name: Any, value: float) -> None:  # the scheduler loop's own tick probe
            if name == "tick-duration" and value > self.max_tick:
                self.max_tick = value
            digest(name, value)

        scheduler.digest_metric = digest_metric

    async def round(self, v: Variant, round_no: int) -> dict:
        from distributed import wait

        from grid import wire
        from grid.node.tasks import partition_update
        from grid.scheduler.driver import combine_metrics

        client, n = self.client, len(self.parts)
        prefix = f"rc-{v.name.split()[0]}-f{self.request['n_features']}-r{round_no}"
        marks = {"start": (time.perf_counter(), time.process_time())}
        cpu0, bytes0 = time.process_time(), comm_totals()
        self.max_tick = 0.0
        state_arg: Any = v.blob
        extra: list[Any] = []
        if v.state == "broadcast" and v.blob is not None:
            state_arg = await client.scatter(v.blob, broadcast=True, hash=False)
            extra.append(state_arg)
        marks["state"] = (time.perf_counter(), time.process_time())
        futures: list[Any] = []
        if v.results == "run":
            marks["submit"] = (time.perf_counter(), time.process_time())
            replies = await client.run(node_round_run, self.request, state_arg,
                                       f"rc-part-{self.request['n_features']}-", round_no, workers=self.workers)
            marks["run"] = (time.perf_counter(), time.process_time())
            pairs = sorted(pair for reply in replies.values() for pair in reply)
            if [i for i, _ in pairs] != self.indices:
                raise RuntimeError(f"{v.name}: the nodes answered for {len(pairs)} of {n} partitions")
            blobs = [b for _, b in pairs]
        else:
            futures = client.map(
                partition_update_push if v.results == "push" else partition_update,
                [self.request] * n, [state_arg] * n, self.parts, [round_no] * n, self.indices,
                *([[prefix] * n] if v.results == "push" else []),
                key=[f"{prefix}-p{i}" for i in self.indices],
            )
            marks["submit"] = (time.perf_counter(), time.process_time())
            await wait(futures)
            marks["run"] = (time.perf_counter(), time.process_time())
            if v.results == "push":
                got = self.pushed.pop(prefix, {})
                if len(got) != n:
                    raise RuntimeError(f"{v.name}: {len(got)} of {n} pushed results arrived before their tasks finished")
                blobs = [got[i] for i in self.indices]
            else:
                blobs = await client.gather(futures, direct=(v.results == "direct"))
        marks["gather"] = (time.perf_counter(), time.process_time())
        layout = None
        states, metas = [], []
        for blob in blobs:
            arrays, meta = wire.decode(blob, max_bytes=256 << 20)
            if layout is None:
                layout = wire.layout(arrays)
            wire.check_shapes(arrays, layout)
            states.append(arrays)
            metas.append(meta)
        marks["decode"] = (time.perf_counter(), time.process_time())
        weights = [m["samples"] for m in metas]
        merged = MERGES[v.merge](self.rule, states, weights, v.previous)
        metrics = combine_metrics(metas, weights)
        marks["merge"] = (time.perf_counter(), time.process_time())
        state = self.rule.server_update(v.previous, merged, self.request, round_no)
        v.previous, v.blob = state, wire.encode(state)
        for f in futures + extra:
            f.release()
        marks["encode"] = (time.perf_counter(), time.process_time())
        cpu1, bytes1 = time.process_time(), comm_totals()
        phases = list(marks)
        out = {p: marks[p][0] - marks[q][0] for q, p in zip(phases, phases[1:])}
        out.update({f"cpu_{p}": marks[p][1] - marks[q][1] for q, p in zip(phases, phases[1:])})
        out.update(
            seconds=marks["encode"][0] - marks["start"][0],
            cpu=cpu1 - cpu0,
            bytes_in=bytes1["ext_in"] - bytes0["ext_in"],
            bytes_out=bytes1["ext_out"] - bytes0["ext_out"],
            internal=(bytes1["int_in"] + bytes1["int_out"]) - (bytes0["int_in"] + bytes0["int_out"]),
            compute=max(m["seconds"] for m in metas),
            loss=metrics.get("loss", float("nan")),
            blob_bytes=len(blobs[0]),
            stall=self.max_tick,
        )
        v.rounds.append(out)
        return out


async def place_partitions(client: Any, workers: list[str], features: int, rows: int, seed: int = 0) -> list[Any]:
    """One partition (rows x features) on each worker, in worker-name order; returns their futures."""
    from sklearn.datasets import make_classification

    n = len(workers)
    X, y = make_classification(n_samples=n * rows, n_features=features, n_informative=min(10, features),
                               random_state=seed)
    futures: list[Any] = []
    for start in range(0, n, 50):
        batch = await asyncio.gather(
            *[
                client.scatter({f"rc-part-{features}-{i}": (X[i * rows : (i + 1) * rows], y[i * rows : (i + 1) * rows], None)},
                               workers=[workers[i]], hash=False)
                for i in range(start, min(n, start + 50))
            ]
        )
        futures.extend(f for d in batch for f in d.values())
    return futures


def merge_micro(rule: Any, states: list[dict], weights: list[float], previous: dict | None, repeat: int) -> dict:
    """Time the merges alone on one round's decoded states; check them against the loop."""
    out = {}
    ref = merge_loop(rule, states, weights, previous)
    for name, fn in MERGES.items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            got = fn(rule, states, weights, previous)
            times.append(time.perf_counter() - t)
        diff = max(float(np.max(np.abs(np.asarray(got[k]) - np.asarray(ref[k])))) for k in ref)
        out[name] = {"ms": 1000 * min(times), "max_abs_diff": diff}
    return out


async def run_size(n: int, features_list: list[int], args: argparse.Namespace) -> list[dict]:
    from distributed import Client, Scheduler

    from grid import config, wire
    from grid.node.tasks import partition_update
    from jobs import SGDClassifier

    quiet_distributed()
    install_comm_counters()
    results = []
    procs = Processes()
    with config.scheduler_settings():
        scheduler = Scheduler(host="127.0.0.1", port=0, dashboard=False, dashboard_address=":0")
        await scheduler
    client = None
    try:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: start_nodes(procs, scheduler.address, n, args.per_process,
                                                             timeout=args.timeout))
        client = await Client(scheduler.address, asynchronous=True)  # the default: distributed.wait uses it
        await client.wait_for_workers(n, timeout=args.timeout)
        workers = sorted(scheduler.workers, key=lambda a: str(scheduler.workers[a].name))
        regions: dict[int, tuple[Region, list[Variant]]] = {}
        for features in features_list:
            parts = await place_partitions(client, workers, features, args.rows)
            request = SGDClassifier(rounds=args.rounds)._job_request()
            request["classes"] = [0, 1]
            request["n_features"] = features
            variants = [Variant(v.name, v.state, v.results, v.merge) for v in VARIANTS
                        if not args.variants or v.name.split()[0] in args.variants]
            regions[features] = (Region(scheduler, client, parts, request, workers), variants)
        # Phase 1: every variant without worker-to-worker traffic; phase 2: the broadcast ones
        # (replication opens node-to-node connections that stay pooled; they go last so that
        # they cannot disturb the others, and stop before the node hosts run out of descriptors)
        for phase in ("direct", "broadcast"):
            for features, (region, variants) in regions.items():
                group = [v for v in variants if (v.state == "broadcast") == (phase == "broadcast")]
                for round_no in range(args.rounds):  # one round of every variant in turn: the same load
                    for v in group:
                        if v.status != "ok":
                            continue
                        try:
                            await asyncio.wait_for(region.round(v, round_no), args.round_timeout)
                        except Exception as exc:  # noqa: BLE001 - a failing variant is a result
                            v.status = f"failed in round {round_no + 1}: {type(exc).__name__}: {exc}"[:160]
                    stats = await loop.run_in_executor(None, host_stats, procs)
                    fds = sum(h["fds"] for h in stats) / n
                    worst = max(h["fds"] / h["fd_limit"] for h in stats)
                    for v in group:
                        v.fds_per_node = fds
                        if v.status == "ok" and worst > args.fd_stop:
                            v.status = (f"stopped after round {round_no + 1}: a node host reached {worst:.0%} of its "
                                        f"open-file limit ({fds:.0f} fds per node)")
        for features, (region, variants) in regions.items():
            n_done = [v for v in variants if v.status == "ok"]
            ref_v = variants[0]
            # the merge alone, on the decoded states of one more round of A
            blobs = await client.gather(client.map(
                partition_update, [region.request] * n, [ref_v.blob] * n, region.parts, [args.rounds] * n,
                region.indices, key=[f"rc-micro-{features}-p{i}" for i in region.indices]))
            decoded = [wire.decode(b) for b in blobs]
            micro = merge_micro(region.rule, [d[0] for d in decoded], [d[1]["samples"] for d in decoded],
                                ref_v.previous, repeat=5)
            ref = ref_v.previous
            for v in variants:
                diff = (max(float(np.max(np.abs(np.asarray(v.previous[k]) - np.asarray(ref[k]))))
                            for k in ("coef", "intercept")) if v in n_done and v.previous else float("nan"))
                results.append({"n": n, "features": features, "variant": v, "diff_vs_A": diff, "micro": micro,
                                "request_pickle": len(pickle.dumps(region.request)),
                                "state_blob": len(ref_v.blob or b"")})
            for f in region.parts:
                f.release()
    finally:
        if client is not None:
            await client.close()
        await loop.run_in_executor(None, procs.stop)
        await scheduler.close()
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="100,250,500,1000", help="partitions = nodes (one per node)")
    parser.add_argument("--features", default="20,5000", help="model sizes (binary classifier: features)")
    parser.add_argument("--rows", type=int, default=8, help="rows per partition")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (the first is not counted)")
    parser.add_argument("--per-process", type=int, default=50, help="workers per node-host process")
    parser.add_argument("--variants", default="", help="comma-separated variant letters (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the nodes to start")
    parser.add_argument("--round-timeout", type=float, default=180.0, help="a variant's round taking longer fails it")
    parser.add_argument("--fd-stop", type=float, default=0.8,
                        help="stop a variant when a node host has used this share of its open-file limit")
    parser.add_argument("--quick", action="store_true", help="a fast check: 50 and 100 partitions, 3 rounds")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.partitions.split(",") if s.strip()]
    features = [int(s) for s in args.features.split(",") if s.strip()]
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    if args.quick:
        sizes, args.rounds = [50, 100], 3
    quiet_distributed()
    print(f"Round cost: the grid's round loop in the scheduler process, one partition ({args.rows} rows) per node, "
          f"jobs.SGDClassifier (binary); {args.rounds} rounds per variant, interleaved; median of rounds 2..")
    print(f"machine: {machine()}")
    print(f"before: {load_line()}", flush=True)
    results: list[dict] = []
    for n in sizes:
        t = time.perf_counter()
        results.extend(asyncio.run(run_size(n, features, args)))
        print(f"  {n} partitions done ({time.perf_counter() - t:.0f}s); {load_line()}", flush=True)
    print(f"after: {load_line()}")
    nan = float("nan")
    phases = ("state", "submit", "run", "gather", "decode", "merge", "encode")
    rows, cpu_rows, summary = [], [], {}
    for res in results:
        v: Variant = res["variant"]
        steady = v.rounds[1:] or v.rounds
        med = (lambda k: statistics.median(r[k] for r in steady)) if steady else (lambda k: nan)  # noqa: E731
        n = res["n"]
        key = (n, res["features"], v.name)
        summary[key] = {"round": med("seconds"), "cpu": med("cpu"), "bytes": med("bytes_in") + med("bytes_out"),
                        "stall": med("stall")}
        rows.append((n, res["features"], v.name, med("seconds"), *[med(p) for p in phases], med("compute"),
                     f"{len(v.rounds)} rounds" + ("" if v.status == "ok" else f"; {v.status}")))
        cpu_rows.append((n, res["features"], v.name, med("cpu"), 1000 * med("cpu") / n,
                         *[1000 * med(f"cpu_{p}") / n for p in phases], med("bytes_in") / 1024,
                         med("bytes_out") / 1024, med("internal") / 1024, 1000 * med("stall"), res["diff_vs_A"],
                         v.fds_per_node))
    print()
    print("1. Wall time per round by phase, seconds (median of rounds 2..). state: scatter of the state (B); "
          "submit: client.map returns; run: until every task is finished; gather; decode+check; merge; encode")
    print(table(["partitions", "features", "variant", "round s", *phases, "compute s (slowest task)", "status"], rows))
    print()
    print("2. Scheduler-process CPU per round (scheduler + driver client, all threads), total and ms per partition "
          "by phase; bytes = the scheduler process's external TCP bytes (internal = the driver client's loopback "
          "hop); loop stall = longest event-loop tick; fds/node = node-host open files per node afterwards")
    print(table(["partitions", "features", "variant", "CPU s", "CPU ms/partition", *[f"{p} ms/p" for p in phases],
                 "KiB in", "KiB out", "KiB internal", "loop stall ms", "max |state - A|", "fds/node"], cpu_rows))
    print()
    print("3. Against A (as is), same run: ratio A / variant (> 1: the variant is cheaper)")
    ratio = lambda a, b: a / b if b and b == b and a == a else nan  # noqa: E731
    ratio_rows = []
    for (n, f, name), x in summary.items():
        a = summary.get((n, f, VARIANTS[0].name))
        if a is None or name == VARIANTS[0].name:
            continue
        ratio_rows.append((n, f, name, ratio(a["round"], x["round"]), ratio(a["cpu"], x["cpu"]),
                           ratio(a["bytes"], x["bytes"]), ratio(a["stall"], x["stall"])))
    print(table(["partitions", "features", "variant", "round time A/v", "scheduler CPU A/v", "bytes A/v",
                 "loop stall A/v"], ratio_rows))
    print()
    seen = set()
    micro_rows = []
    for res in results:
        key = (res["n"], res["features"])
        if key in seen:
            continue
        seen.add(key)
        m = res["micro"]
        micro_rows.append((res["n"], res["features"], res["state_blob"], res["request_pickle"], m["loop"]["ms"],
                           m["stack"]["ms"], m["tree"]["ms"], m["loop"]["ms"] / m["stack"]["ms"],
                           m["stack"]["max_abs_diff"], m["tree"]["max_abs_diff"]))
    print("4. The merge alone (best of 5, one round's decoded states): sequential loop vs np.stack vs 2-level tree")
    print(table(["partitions", "features", "state blob B", "request pickle B", "loop ms", "stack ms", "tree ms",
                 "loop/stack", "stack max|diff|", "tree max|diff|"], micro_rows))
    return results


if __name__ == "__main__":
    main()
