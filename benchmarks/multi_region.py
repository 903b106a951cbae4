"""Many regions: the cost of the cross-region combine and the bytes that cross regions.

``N`` grid schedulers (``distributed.Scheduler`` with the grid plugin) and
``--workers`` in-process workers per region (1 thread each) run in one event
loop of this process, on real TCP sockets; a grid client (``Grid.connect``)
places data with ``Grid.scatter`` and runs a ``jobs.SGDClassifier`` job over
all regions, its home in the first one. For two model sizes and two data sizes
per region it reports, per round (median of rounds 2..):

* ``bytes_cross_region`` from ``job.history`` (the driver's own count of the
  state sent to, and the aggregates received from, the other regions);
* the home driver's time around the combine: the round's seconds at home
  minus the time the home waited for all regions' aggregates (merge of the
  regional aggregates, server update, encoding of the next state, history);
* the regions' own round time (slowest ``run_round`` of any region), and the
  cross-region wait beyond it (RPC, serialisation, queueing on the shared loop).

Timings come from a benchmark subclass of the grid plugin that wraps the
round calls (grid/ is not changed). All schedulers share one event loop and
two cores here, so region round times are inflated by the others running at
the same moment; the bytes are exact.

    python -m benchmarks.multi_region [--regions 2,8,32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

from benchmarks.common import machine, table
from benchmarks.region_scale import load_line, rss_mib
from grid.logs import quiet_distributed


def _plugin_class() -> type:
    from grid.scheduler.driver import RegionRun
    from grid.scheduler.job_handlers import JobsExtension
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.region_share import RegionShare

    class TimedRegionRun(RegionRun):
        async def run_round(self, round_no: int, state_blob: bytes | None) -> dict:
            start = time.perf_counter()
            try:
                return await super().run_round(round_no, state_blob)
            finally:
                self.plugin.region_rounds.append((self.job_id, round_no, start, time.perf_counter()))

    class TimedRegionShare(RegionShare):
        run_class = TimedRegionRun

    class TimedJobs(JobsExtension):
        def submit(self, comm: Any, request: dict, placement: dict, owner: str = "") -> dict:
            reply = super().submit(comm, request, placement, owner)
            driver = self.drivers.get(reply.get("id", ""))
            if driver is not None:  # its task has not started yet: wrap before the first round
                inner = driver._parallel_round
                job_id = reply["id"]

                async def parallel_round(round_no: int, blob: bytes | None) -> Any:
                    start = time.perf_counter()
                    try:
                        return await inner(round_no, blob)
                    finally:
                        self.plugin.home_waits.append((job_id, round_no, start, time.perf_counter()))

                driver._parallel_round = parallel_round
            return reply

    class TimedGridPlugin(GridSchedulerPlugin):
        """The grid plugin plus wall-clock marks around each region round and each combine."""

        region_share_class = TimedRegionShare
        jobs_class = TimedJobs

        def __init__(self, region: str) -> None:
            super().__init__(region)
            self.region_rounds: list[tuple[str, int, float, float]] = []
            self.home_waits: list[tuple[str, int, float, float]] = []

    return TimedGridPlugin


class InProcessGrid:
    """N schedulers with the grid plugin and their workers, in one event loop thread."""

    def __init__(self, n_regions: int, workers: int) -> None:
        self.n_regions = n_regions
        self.workers_per_region = workers
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="regions", daemon=True)
        self.schedulers: list[Any] = []
        self.workers: list[Any] = []
        self.plugins: dict[str, Any] = {}
        self.thread.start()

    def run(self, coro: Any, timeout: float = 300.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> dict[str, str]:
        return self.run(self._start())

    async def _start(self) -> dict[str, str]:
        from distributed import Scheduler, Worker

        from grid import config

        quiet_distributed()
        cls = _plugin_class()
        addresses = {}
        for i in range(self.n_regions):
            name = f"r{i:02d}"
            plugin = cls(name)
            with config.scheduler_settings():
                s = Scheduler(host="127.0.0.1", port=0, dashboard=False, dashboard_address=":0", plugins=[plugin])
                await s
            self.schedulers.append(s)
            self.plugins[name] = plugin
            addresses[name] = s.address
        for name, address in addresses.items():
            group = [
                Worker(address, nthreads=1, memory_limit=0, name=f"{name}-node-{j}", host="127.0.0.1")
                for j in range(self.workers_per_region)
            ]
            await asyncio.gather(*[w.start() for w in group])
            self.workers.extend(group)
        return addresses

    def close(self) -> None:
        import logging

        quiet_distributed(logging.CRITICAL)  # heartbeats racing the teardown are not results

        async def _close() -> None:
            await asyncio.gather(*[w.close(timeout=5) for w in self.workers], return_exceptions=True)
            await asyncio.gather(*[s.close() for s in self.schedulers], return_exceptions=True)

        try:
            if self.schedulers or self.workers:
                self.run(_close(), timeout=120)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            if not self.thread.is_alive():
                self.loop.close()


def one_job(g: Any, grid: InProcessGrid, features: int, rows_per_region: int, args: argparse.Namespace) -> dict:
    """Place data (rows_per_region on every region), run a job, return per-round figures."""
    import numpy as np
    from sklearn.datasets import make_classification

    from jobs import SGDClassifier

    n = grid.n_regions
    X, y = make_classification(
        n_samples=n * rows_per_region, n_features=features, n_informative=min(10, features), random_state=0
    )
    parts_per_region = grid.workers_per_region
    data = g.scatter(X.astype(np.float64), y, partition_rows=rows_per_region // parts_per_region)
    del X, y
    try:
        job = g.submit(SGDClassifier(rounds=args.rounds, random_state=0), data, home="r00")
        job.result(timeout=args.timeout)
        history = job.history
    finally:
        g.drop(data)
    home = grid.plugins["r00"]
    waits = {r: (b - a) for j, r, a, b in home.home_waits if j == job.id}
    region_round: dict[int, float] = {}
    for plugin in grid.plugins.values():
        for j, r, a, b in plugin.region_rounds:
            if j == job.id:
                region_round[r] = max(region_round.get(r, 0.0), b - a)
    rounds = []
    for h in history:
        r = h["round"] - 1
        rounds.append(
            {
                "seconds": h["seconds"],
                "combine": h["seconds"] - waits[r],
                "region": region_round[r],
                "wait_beyond": waits[r] - region_round[r],
                "bytes": h["bytes_cross_region"],
                "regions": h["regions"],
            }
        )
    steady = rounds[1:] or rounds
    med = lambda k: statistics.median(x[k] for x in steady)  # noqa: E731
    state_bytes = 8 * (3 * features + 1)  # coef (1 x f), center, scale, intercept: float64
    return {
        "regions": n,
        "features": features,
        "rows_per_region": rows_per_region,
        "round_s": med("seconds"),
        "region_s": med("region"),
        "wait_beyond_s": med("wait_beyond"),
        "combine_ms": 1000 * med("combine"),
        "bytes": med("bytes"),
        "bytes_later_rounds": sorted({x["bytes"] for x in rounds[1:]}),
        "bytes_round1": rounds[0]["bytes"],
        "bytes_per_remote": med("bytes") / max(1, n - 1),
        "state_bytes": state_bytes,
        "combine_us_per_region": 1e6 * med("combine") / n,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", default="2,8,32", help="comma-separated region counts")
    parser.add_argument("--quick", action="store_true", help="a fast check: 2 and 4 regions, 3 rounds")
    parser.add_argument("--features", default="50,5000", help="model sizes (binary classifier: features)")
    parser.add_argument("--rows", default="64,512", help="rows per region (data size), to show independence")
    parser.add_argument("--workers", type=int, default=2, help="in-process workers per region")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    regions = [int(s) for s in args.regions.split(",") if s.strip()]
    features = [int(s) for s in args.features.split(",") if s.strip()]
    rows = [int(s) for s in args.rows.split(",") if s.strip()]
    if args.quick:
        regions, rows, args.rounds = [2, 4], [64, 256], 3
    quiet_distributed()
    from grid import Grid

    print(f"Many regions: N in-process grid schedulers x {args.workers} in-process workers, one event loop, TCP; "
          f"jobs.SGDClassifier (binary), {args.rounds} rounds, home r00")
    print(f"machine: {machine()}")
    print(f"before: {load_line()}", flush=True)
    results = []
    for n in regions:
        grid = InProcessGrid(n, args.workers)
        try:
            addresses = grid.start()
            with Grid.connect({"regions": addresses}, timeout=60) as g:
                for f in features:
                    for r in rows:
                        res = one_job(g, grid, f, r, args)
                        res["rss_mib"] = rss_mib()
                        results.append(res)
                        print(f"  {n} regions, {f} features, {r} rows/region: round {res['round_s']:.3f}s, "
                              f"combine {res['combine_ms']:.2f} ms, {res['bytes']:,.0f} B across regions", flush=True)
        finally:
            grid.close()
    print(f"after: {load_line()}")
    print()
    print("Per round (median of rounds 2..). bytes across regions = job.history['bytes_cross_region']; "
          "state = the float64 model state (coef, center, scale, intercept)")
    print(
        table(
            ["regions", "features", "rows/region", "state bytes", "bytes across regions", "bytes per remote region",
             "home round s", "slowest region round s", "cross-region wait beyond it s", "home combine ms",
             "combine us/region"],
            [
                (x["regions"], x["features"], x["rows_per_region"], x["state_bytes"], x["bytes"], x["bytes_per_remote"],
                 x["round_s"], x["region_s"], x["wait_beyond_s"], x["combine_ms"], x["combine_us_per_region"])
                for x in results
            ],
        )
    )
    same = all(
        len({x["bytes"] for x in results if x["regions"] == n and x["features"] == f}) == 1
        for n in regions
        for f in features
    )
    later_same = all(len(x["bytes_later_rounds"]) == 1 for x in results)
    first = sorted({(x["features"], x["bytes_round1"]) for x in results if x["regions"] == regions[-1]})
    first_text = ", ".join(f"{f} features: {b:,} B" for f, b in first)
    print(f"bytes across regions independent of rows per region: {'yes' if same else 'NO'}; "
          f"rounds 2.. of every job the same: {'yes' if later_same else 'NO'} (round 1 sends no state out, "
          f"only the aggregates come back; at {regions[-1]} regions {first_text})")
    return results


if __name__ == "__main__":
    main()
