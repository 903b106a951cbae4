"""What the trust boundary costs: rounds on a TLS grid with the guarded comm against distributed's own.

``python -m benchmarks.guard [--quick] [--repeat N]``

1. Problem (b) of ``benchmarks.sgd`` (2,000,000 x 50 binary; ``--quick``:
   60,000) trained by ``jobs.SGDClassifier`` for 10 rounds on an embedded TLS
   grid (``Grid.local(tls=True)``, one region of 2 node processes), once with
   the scheduler's process on the grid's guarded ``tls://`` backend and once
   on distributed's stock one, alternating, ``--repeat`` times each. Every
   message the scheduler reads from a node is checked in the guarded runs.
   (The node processes always run the guarded backend; what they read from
   their scheduler is trusted and read exactly as distributed reads it.)
2. The per-message cost of :func:`grid.protocol.payload.check_frames` on the
   messages of a round (a node's ``grid_update`` answer, a heartbeat) and of
   placing data (a ``scatter`` of partitions), against the scheduler CPU per
   update that ``benchmarks.region_scale`` measures at 500 nodes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.common import machine, table

#: scheduler CPU per update at 500 nodes and messages per update (docs/scale.md, round requests)
REGION_SCALE_CPU_PER_UPDATE_S = 0.347e-3
REGION_SCALE_MESSAGES_PER_UPDATE = 2.2


def _backend(guarded: bool) -> None:
    from distributed.comm import registry
    from distributed.comm.tcp import TLSBackend

    from grid.protocol.comm import GuardedTLSBackend

    registry.backends["tls"] = GuardedTLSBackend() if guarded else TLSBackend()


def rounds_on_tls(problem: Any, guarded: bool, rounds: int, parts: int) -> dict[str, float]:
    """Median round and overhead of one job of ``rounds`` rounds on a fresh TLS grid."""
    from grid import Grid
    from jobs import SGDClassifier

    _backend(guarded)
    try:
        with Grid.local(regions={"eu": 2}, dashboard=False, tls=True) as g:
            SGDClassifier(rounds=1).fit(problem.X_test[:64], problem.y_test[:64], grid=g)  # warm the node processes
            rows = math.ceil(len(problem.y_train) / parts)
            start = time.perf_counter()
            data = g.scatter(problem.X_train, problem.y_train, partition_rows=rows)
            placement = time.perf_counter() - start
            model = g.submit(SGDClassifier(loss="log_loss", rounds=rounds, random_state=0), data).result()
            history = model.history_
            g.drop(data)
    finally:
        _backend(True)
    round_s = [h["seconds"] for h in history]
    compute_s = [h["compute_seconds"] for h in history]
    return {
        "round": statistics.median(round_s),
        "overhead": statistics.median(r - c for r, c in zip(round_s, compute_s)),
        "placement": placement,
        "coef": np.asarray(model.coef_).copy(),
    }


def per_message_cost(n_features: int = 50) -> list[tuple[str, int, float]]:
    """(message, bytes, seconds per check) for typical messages from untrusted peers."""
    from distributed.protocol import dumps, to_serialize

    from grid import wire
    from grid.protocol.payload import check_frames

    rng = np.random.default_rng(0)
    blob = wire.encode({"coef": rng.standard_normal((1, n_features)), "intercept": rng.standard_normal(1)})
    partition = (rng.standard_normal((250_000, n_features)), rng.integers(0, 2, 250_000), None)
    messages = {
        "grid_update answer (2 updates)": {"status": "OK", "updates": [[0, blob], [1, blob]], "missing": [], "errors": [], "invalid": []},
        "heartbeat_worker": {"op": "heartbeat_worker", "address": "tls://10.0.0.1:40000", "now": 1.0,
                             "metrics": {"cpu": 1.0, "memory": 2**30, "task_counts": {"memory": 8}}, "executing": {}},
        "task-finished batch (8)": [{"op": "task-finished", "key": f"k-{i}", "nbytes": 800, "typename": "bytes",
                                     "startstops": [{"action": "compute", "start": 1.0, "stop": 2.0}]} for i in range(8)],
        "scatter (1 partition, 100 MB)": {"op": "scatter", "data": {"grid-part-x-0": to_serialize(partition)}, "client": "c", "broadcast": False},
    }
    out = []
    for name, msg in messages.items():
        frames = dumps(msg)
        size = sum(len(memoryview(f).cast("B")) for f in frames)
        n = 2000 if size < 1e6 else 200
        start = time.perf_counter()
        for _ in range(n):
            check_frames(frames)
        out.append((name, size, (time.perf_counter() - start) / n))
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.sgd import make_problem, quiet

    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60,000 rows instead of 2,000,000")
    parser.add_argument("--repeat", type=int, default=3, help="jobs per backend, alternating (default 3)")
    args = parser.parse_args(argv)
    print(machine(), flush=True)
    problem = make_problem("binary", args.quick)
    print(problem.title, flush=True)
    runs: dict[bool, list[dict]] = {True: [], False: []}
    with quiet():
        for _ in range(args.repeat):
            for guarded in (False, True):
                runs[guarded].append(rounds_on_tls(problem, guarded, rounds=10, parts=8))
    rows = []
    for what in ("round", "overhead", "placement"):
        stock = statistics.median(r[what] for r in runs[False])
        guarded = statistics.median(r[what] for r in runs[True])
        rows.append([f"{what} s (median of {args.repeat})", f"{stock:.4f}", f"{guarded:.4f}", f"{guarded / stock:.3f}"])
    print("\nTLS grid, 1 region x 2 nodes, jobs.SGDClassifier 10 rounds, 8 partitions")
    print(table(["", "distributed's TLS comm", "grid guarded comm", "guarded / stock"], rows))
    same = all(np.array_equal(r["coef"], runs[False][0]["coef"]) for r in runs[True] + runs[False])
    print(f"same model with both comms: {same}")
    goal = statistics.median(r["round"] for r in runs[True]) / statistics.median(r["round"] for r in runs[False])
    print(f"round time guarded/stock {goal:.3f} (goal <= 1.05): {'PASS' if goal <= 1.05 else 'MISS'}")

    costs = per_message_cost()
    print("\nCheck of one message from an untrusted peer (grid.protocol.payload.check_frames)")
    print(table(["message", "bytes", "us per check"], [[n, f"{b:,}", f"{s * 1e6:.1f}"] for n, b, s in costs]))
    per_update = costs[0][2] / 2 * REGION_SCALE_MESSAGES_PER_UPDATE  # an answer carries 2 updates
    share = per_update / REGION_SCALE_CPU_PER_UPDATE_S
    print(
        f"per update at 500 nodes: {REGION_SCALE_MESSAGES_PER_UPDATE} messages x {costs[0][2] / 2 * 1e6:.1f} us = "
        f"{per_update * 1e6:.1f} us against {REGION_SCALE_CPU_PER_UPDATE_S * 1e3:.3f} ms of scheduler CPU per update "
        f"({share:.1%}; goal <= 5%): {'PASS' if share <= 0.05 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
