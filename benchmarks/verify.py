"""What verification costs: ``verify=1``, ``verify=2`` and ``verify="adaptive"`` side by side.

On ``benchmarks.sgd``'s problem (b) (2,000,000 x 50 binary, 1.6M training rows;
``--quick``: 60,000 rows) placed once with ``g.scatter`` on a 4-node region of
``Grid.local`` (4 node processes of one thread), each mode trains the same
``jobs.SGDClassifier`` for ``--rounds`` rounds:

* **updates computed** per job: every partition update the nodes computed
  for it (accepted ones, the copies verification ran, rounds a replay threw
  away; the nodes' ``tasks_done``), and that count against ``verify=1`` (the
  compute ratio);
* **wall time** from submit to result, and against ``verify=1``;
* adaptive verification is measured once its nodes are trusted (after
  ``--warm`` verified jobs), as it runs in a long-lived grid;
* **replay cost**: one trusted node then corrupts every update it computes
  from round 1 (a worker plugin installed by the benchmark, as a cheating
  volunteer would patch its node), and an adaptive job runs: the rounds
  replayed, the updates computed and the wall time against the clean
  adaptive job; then another node does the same from the middle round. The model must equal the clean ``verify=2`` model: a replayed job that
  does not is reported as a failure.

    python -m benchmarks.verify            # ~3 minutes on 2 cores
    python -m benchmarks.verify --quick    # small data, a correctness check (< 1 minute)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from benchmarks.common import machine, table
from benchmarks.sgd import make_problem, quiet


class CorruptUpdates(WorkerPlugin):
    """From round ``from_round`` (1-based) on, every partition update the node computes comes
    back with its float arrays shifted by +1."""

    name = "benchmark-corrupt-updates"

    def __init__(self, from_round: int = 1) -> None:
        self.from_round = from_round

    def setup(self, worker: Any) -> None:
        import grid.node.tasks as tasks
        from grid import wire

        honest = tasks.partition_update
        from_round = self.from_round

        def partition_update(request: Any, state_blob: Any, partition: Any, round_no: int, index: int) -> bytes:
            blob = honest(request, state_blob, partition, round_no, index)
            if round_no + 1 < from_round:
                return blob
            arrays, meta = wire.decode(blob)
            return wire.encode({k: v + 1.0 if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}, meta)

        tasks.partition_update = partition_update


def _updates_done(g: Any) -> int:
    """Partition updates the region's nodes computed so far (rounds a replay discarded, and
    those of nodes quarantined since, too): the scheduler's running total."""
    return int(g.status()["eu"]["tasks_done"])


def _job(g: Any, data: Any, rounds: int, verify: Any) -> dict[str, Any]:
    import jobs

    est = jobs.SGDClassifier(loss="log_loss", max_iter=rounds, random_state=0)
    done_before = _updates_done(g)
    start = time.perf_counter()
    job = g.submit(est, data, verify=verify)
    fitted = job.result()
    wall = time.perf_counter() - start
    history = job.history
    return {
        "wall": wall,
        "updates": _updates_done(g) - done_before,
        "accepted": sum(int(h["updates"]) for h in history),
        "unverified": sum(int(h.get("unverified", 0)) for h in history),
        "replayed": [h["replayed_from"] for h in history if "replayed_from" in h],
        "coef": fitted.coef_.copy(),
        "rounds": len(history),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data: a correctness check")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each job (default 10)")
    parser.add_argument("--warm", type=int, default=3, help="verified jobs before adaptive is measured (default 3)")
    args = parser.parse_args(argv)

    from grid import Grid

    problem = make_problem("binary", args.quick)
    print(machine())
    print(f"problem {problem.title}; a 4-node region; {args.rounds} rounds per job")
    out: dict[str, dict[str, Any]] = {}
    with quiet(), Grid.local(regions={"eu": 4}, threads_per_node=1, dashboard=False) as g:
        start = time.perf_counter()
        data = g.scatter(problem.X_train, problem.y_train)
        print(f"placed with g.scatter in {time.perf_counter() - start:.1f}s (not counted below)")
        _job(g, data, 1, 1)  # fresh node processes import scikit-learn on their first update
        out["verify=1"] = _job(g, data, args.rounds, 1)
        out["verify=2"] = _job(g, data, args.rounds, 2)
        for _ in range(args.warm):  # the nodes earn trust
            _job(g, data, args.rounds, 2)
        out["adaptive (trusted nodes)"] = _job(g, data, args.rounds, "adaptive")
        # two cheaters one after the other (a caught one is quarantined): from the first round, and
        # from the middle one, to see the replay cost grow with the rounds before the catch
        for from_round in (1, max(2, args.rounds // 2)):
            cheater = sorted(w["address"] for w in g.status()["eu"]["workers"])[0]

            async def install(dask_worker: Any, from_round: int = from_round) -> None:
                await dask_worker.plugin_add(plugin=CorruptUpdates(from_round), name=CorruptUpdates.name)

            g.client("eu").run(install, workers=[cheater])
            out[f"adaptive, a node corrupting from round {from_round}"] = _job(g, data, args.rounds, "adaptive")
        g.drop(data)

    base = out["verify=1"]
    clean = out["verify=2"]["coef"]
    rows = []
    for name, r in out.items():
        same = float(np.max(np.abs(r["coef"] - clean)))
        rows.append([
            name, r["updates"], f"{r['updates'] / base['updates']:.2f}x", f"{r['wall']:.2f}",
            f"{r['wall'] / base['wall']:.2f}x", r["unverified"],
            ", ".join(f"from round {k}" for k in r["replayed"]) or "-", f"{same:.1e}",
        ])
    print(table(["mode", "updates computed", "vs verify=1", "wall s", "vs verify=1", "accepted unchecked",
                 "replayed", "max |coef - verify=2|"], rows))
    clean_adaptive = out["adaptive (trusted nodes)"]
    for name, r in out.items():
        if "corrupting" in name:
            print(f"replay cost, {name}: {r['updates'] - clean_adaptive['updates']} more updates and "
                  f"{r['wall'] - clean_adaptive['wall']:.2f}s more than the clean adaptive job")
    # updates are deterministic: every mode gives one model, unless a corrupted update stayed in it
    ok = all(float(np.max(np.abs(r["coef"] - clean))) <= 1e-9 for r in out.values())
    print("models: every job equals the verify=2 model (1e-9): " + ("PASS" if ok else "FAIL"))
    return out


if __name__ == "__main__":
    main()
