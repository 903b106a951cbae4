"""One region's limits: many lightweight nodes on one grid scheduler.

One ``distributed.Scheduler`` with the grid plugin runs in its own process
(created in Python, asyncio, not the CLI), so that its CPU time is the
scheduler's alone; the job driver lives in that process by design and is
counted with it. ``K`` node-host processes each run ``--per-process``
``distributed.Worker`` objects (1 thread each) in one event loop. A real grid
client (``Grid.connect``) places one partition per node with
``Grid.scatter(partition_rows=...)`` (tiny partitions: compute is negligible)
and runs a ``jobs.SGDClassifier`` job of a few rounds.

Measured per round, inside the scheduler process (a benchmark subclass of
the grid plugin snapshots counters at every round boundary; grid/ is not
changed):

* scheduler CPU: ``time.process_time`` of the scheduler process (all its
  threads: event loop, the driver, offload threads);
* round latency beyond the compute: ``history seconds - compute_seconds``;
* bytes through the scheduler: distributed's TCP comm ``write``/``read`` are
  wrapped in the scheduler process and count every payload byte; bytes between
  the scheduler and the driver's own client (both in this process, a loopback
  hop no real network sees) are counted apart as "internal";
* the longest event-loop stall (distributed's own ``tick-duration`` digest).

Each size runs one job per round engine (``--engines tasks,direct``: the
task graph of before and the per-node requests of ``grid/node/rounds.py``),
on the same nodes and data, and prints the ratios side by side.

``--dial-out`` (or ``dial-out`` in ``--engines``) adds a third variant: the
same job on the same data with the direct engine, on ``n`` **dial-out**
nodes (``grid.node.dial-out``: the scheduler never dials them; round
requests travel on each node's grid channel, partitions come from the
region's store). Those nodes are other workers than the open ones, so the
variant runs after them on a fresh scheduler and fresh node hosts; its
placement is timed until every node has fetched what it was granted. It is
printed next to the direct engine on open nodes, and against the direct
engine's figures at 1,000 nodes in docs/scale.md.

Sizes run in increasing order and the benchmark stops at the first size that
fails (workers not up in time, a job error or timeout, lost workers), and says
why.

    python -m benchmarks.region_scale [--nodes 100,250,500,1000] [--quick] [--dial-out]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
import weakref
from collections import defaultdict
from typing import Any

from benchmarks.common import machine, table
from grid.logs import quiet_distributed
from grid.polling import wait_until

MiB = 1 << 20
#: the variant of ``--engines`` that runs the direct engine on dial-out nodes
DIAL_OUT = "dial-out"
#: the direct engine on 1,000 open nodes (docs/scale.md, section 0): round seconds, scheduler CPU ms per update
ANCHOR_NODES, ANCHOR_ROUND_S, ANCHOR_CPU_MS = 1000, 1.08, 0.571

# ======================================================================================
# Byte counters on distributed's TCP comms (installed in the process being measured)
# ======================================================================================
#: (local address, peer address) -> [bytes in, bytes out, messages in, messages out]
COMM_BYTES: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
_STREAM_KEY: "weakref.WeakKeyDictionary[Any, tuple[str, str]]" = weakref.WeakKeyDictionary()
_INSTALLED = False


def install_comm_counters() -> None:
    """Count the payload bytes of every TCP/TLS comm message of this process.

    Writes: the byte count ``TCP.write`` returns (frames plus distributed's
    8-byte length prefix). Reads: every ``read_bytes_rw`` of the stream plus
    the 8-byte prefix. Keyed by (local, peer) address.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    from distributed.comm import tcp

    orig_write, orig_read, orig_read_rw = tcp.TCP.write, tcp.TCP.read, tcp.read_bytes_rw

    async def write(self: Any, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        n = await orig_write(self, msg, serializers=serializers, on_error=on_error)
        c = COMM_BYTES[(self._local_addr, self._peer_addr)]
        c[1] += n
        c[3] += 1
        return n

    async def read(self: Any, deserializers: Any = None) -> Any:
        key = (self._local_addr, self._peer_addr)
        if self.stream is not None:
            _STREAM_KEY[self.stream] = key
        msg = await orig_read(self, deserializers=deserializers)
        c = COMM_BYTES[key]
        c[0] += 8
        c[2] += 1
        return msg

    async def read_bytes_rw(stream: Any, n: int) -> Any:
        key = _STREAM_KEY.get(stream)
        if key is not None:
            COMM_BYTES[key][0] += n
        return await orig_read_rw(stream, n)

    tcp.TCP.write = write
    tcp.TCP.read = read
    tcp.read_bytes_rw = read_bytes_rw
    _INSTALLED = True


def comm_totals() -> dict[str, int]:
    """Bytes and messages in/out of this process, external vs. internal.

    A comm is internal when both of its ends are in this process (its
    reversed address pair is also known): e.g. the grid driver's own client
    talking to its scheduler over loopback.
    """
    keys = set(COMM_BYTES)
    out = dict.fromkeys(("ext_in", "ext_out", "ext_msgs_in", "ext_msgs_out", "int_in", "int_out"), 0)
    for key, (bi, bo, mi, mo) in list(COMM_BYTES.items()):
        if (key[1], key[0]) in keys:
            out["int_in"] += bi
            out["int_out"] += bo
        else:
            out["ext_in"] += bi
            out["ext_out"] += bo
            out["ext_msgs_in"] += mi
            out["ext_msgs_out"] += mo
    return out


def rss_mib(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss / MiB


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (uptime; {os.cpu_count()} cores)"


# ======================================================================================
# The scheduler process: the grid plugin, instrumented by subclassing
# ======================================================================================
def _instrumented_plugin_class() -> type:
    from grid.scheduler.driver import RegionRun
    from grid.scheduler.job_handlers import JobsExtension
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.region_share import RegionShare

    class InstrumentedRegionRun(RegionRun):
        async def run_round(self, round_no: int, state_blob: bytes | None) -> dict:
            self.plugin.snapshot("round_start", round_no, self.job_id)
            profiler = self.plugin.profiler if round_no > 1 else None  # round 1 pays one-off costs
            if profiler is not None:
                profiler.enable()  # the event loop's thread: the round, and every handler that runs meanwhile
            try:
                return await super().run_round(round_no, state_blob)
            finally:
                if profiler is not None:
                    profiler.disable()
                self.plugin.snapshot("region_done", round_no, self.job_id)

    class BenchRegionShare(RegionShare):
        run_class = InstrumentedRegionRun

    class BenchJobs(JobsExtension):
        async def finish_job(self, record: Any) -> None:
            plugin = self.plugin
            plugin.snapshot("job_done", record.rounds_done, record.id)
            if plugin.profiler is not None:  # one profile per job: rounds 2 and later
                kind = "-dial-out" if plugin.dial_out.reach.counts().get("dial-out") else ""
                path = os.path.join(plugin.profile_dir, f"{plugin._engine}{kind}-{len(plugin.scheduler.workers)}.pstats")
                plugin.profiler.dump_stats(path)
                plugin.profiler = cProfile.Profile()
            await super().finish_job(record)

    class BenchGridPlugin(GridSchedulerPlugin):
        """The grid plugin plus counters snapshotted at every round boundary."""

        region_share_class = BenchRegionShare
        jobs_class = BenchJobs

        def __init__(self, region: str, profile_dir: str | None = None) -> None:
            super().__init__(region)
            self.snapshots: list[dict] = []
            self._max_tick = 0.0
            self.profile_dir = profile_dir
            self.profiler: Any = None
            self._engine = "direct"

        async def start(self, scheduler: Any) -> None:
            await super().start(scheduler)
            scheduler.handlers["bench_stats"] = self.bench_stats
            scheduler.handlers["bench_idle"] = self.bench_idle
            scheduler.handlers["bench_engine"] = self.bench_engine
            scheduler.handlers["bench_store"] = self.bench_store
            digest = scheduler.digest_metric

            def digest_metric(name: Any, value: float) -> None:  # the loop's own tick probe
                if name == "tick-duration" and value > self._max_tick:
                    self._max_tick = value
                digest(name, value)

            scheduler.digest_metric = digest_metric

        def snapshot(self, event: str, round_no: int, job_id: str) -> None:
            snap = {
                "event": event,
                "round": round_no,
                "job": job_id,
                "wall": time.perf_counter(),
                "cpu": time.process_time(),
                "workers": len(self.scheduler.workers),
                "max_tick": self._max_tick,
                **comm_totals(),
            }
            self._max_tick = 0.0
            self.snapshots.append(snap)

        def bench_stats(self, comm: Any = None) -> dict:
            return {
                "snapshots": list(self.snapshots),
                "rss_mib": rss_mib(),
                "workers": len(self.scheduler.workers),
                "cpu": time.process_time(),
                **comm_totals(),
            }

        def bench_engine(self, comm: Any = None, engine: str = "direct") -> dict:
            """Switch ``grid.scheduler.round-engine`` in this process (read at every round)."""
            import dask

            dask.config.set({"grid.scheduler.round-engine": engine})
            self._engine = engine
            if self.profile_dir is not None and self.profiler is None:
                self.profiler = cProfile.Profile()
            return {"status": "OK", "engine": engine}

        def bench_store(self, comm: Any = None) -> dict:
            """Fetch calls to dial-out nodes not answered yet, bytes the store served, and the nodes' kinds."""
            return {"pending": len(self.dial_out.prefetches), "served": self.dial_out.store.bytes_served, "reach": self.dial_out.reach.counts()}

        async def bench_idle(self, comm: Any = None, seconds: float = 3.0) -> dict:
            """Scheduler CPU and bytes over a measurement window with no job running."""
            c0, w0, b0 = time.process_time(), time.perf_counter(), comm_totals()
            await asyncio.sleep(seconds)  # a measurement window, not synchronisation
            c1, w1, b1 = time.process_time(), time.perf_counter(), comm_totals()
            return {
                "cpu_share": (c1 - c0) / (w1 - w0),
                "bytes_per_s": (b1["ext_in"] + b1["ext_out"] - b0["ext_in"] - b0["ext_out"]) / (w1 - w0),
                "msgs_per_s": (b1["ext_msgs_in"] - b0["ext_msgs_in"]) / (w1 - w0),
            }

    return BenchGridPlugin


def scheduler_main(conn: Any, region: str, host: str, profile_dir: str | None = None) -> None:
    """Process target: one grid scheduler (instrumented) until told to stop.

    ``profile_dir``: write a cProfile of each job's rounds (the second and later) there.
    """
    async def main() -> None:
        from distributed import Scheduler

        from grid import config

        quiet_distributed()

        install_comm_counters()
        plugin = _instrumented_plugin_class()(region, profile_dir)
        with config.scheduler_settings():
            scheduler = Scheduler(host=host, port=0, dashboard=False, dashboard_address=":0", plugins=[plugin])
            await scheduler
        try:
            conn.send({"address": scheduler.address, "pid": os.getpid(), "rss_mib": rss_mib()})
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, conn.recv)  # "stop"
        finally:
            await scheduler.close()

    try:
        asyncio.run(main())
    except Exception:  # noqa: BLE001 - report to the parent, which decides
        conn.send({"error": traceback.format_exc()})


# ======================================================================================
# Node hosts: many in-process workers per process
# ======================================================================================
#: distributed settings of node-host processes: per-worker housekeeping that
#: only exists because many workers share one process here (system monitor,
#: statistical profiler, 20 ms loop-tick probe) is slowed down or switched
#: off; heartbeats and every scheduler-facing message are left as they are.
NODE_HOST_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "30s",
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.profile.enabled": False,
    "distributed.comm.timeouts.connect": "60s",
}


class ErrorCounter(logging.Handler):
    """Counts distributed's ERROR records in a node host (and keeps the first few)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(f"{record.name}: {record.getMessage()[:160]}")


def node_host_main(conn: Any, address: str, names: list[str], host: str, batch: int, dial_out: bool = False) -> None:
    """Process target: ``len(names)`` workers (1 thread each) in one event loop.

    ``dial_out``: the workers register as dial-out grid nodes (as ``grid node
    --dial-out`` does), so the scheduler never dials them.
    Answers "stats" (RSS, distributed errors logged so far) and "stop" on its pipe.
    """
    import warnings

    import dask

    dask.config.set(NODE_HOST_CONFIG)
    # read by each worker's grid profile when it registers (grid.node.rounds.profile)
    dask.config.set({"grid.node.dial-out": dial_out})
    # hundreds of workers creating their scratch directories at once on a loaded box
    warnings.filterwarnings("ignore", message="Creating scratch directories is taking")

    async def main() -> None:
        from distributed import Worker

        quiet_distributed()
        errors = ErrorCounter()
        dlog = logging.getLogger("distributed")
        for h in list(dlog.handlers):  # counted, not printed: the parent reports them
            dlog.removeHandler(h)
        dlog.addHandler(errors)
        dlog.propagate = False
        for name in ("asyncio", "tornado"):  # e.g. accept() failing with EMFILE, once per event loop turn
            other = logging.getLogger(name)
            other.addHandler(errors)
            other.propagate = False
        import grid.node.tasks  # noqa: F401 - what partition tasks import, loaded once up front
        from grid.node.rounds import STARTUP_INFORMATION

        # open nodes register as before (no grid profile: the scheduler checks it can dial them);
        # dial-out nodes send the profile that says so, as every `grid node` does
        profile = {"startup_information": STARTUP_INFORMATION} if dial_out else {}
        base = rss_mib()
        workers: list[Any] = []
        try:
            for i in range(0, len(names), batch):
                group = [
                    Worker(address, nthreads=1, memory_limit=0, name=name, host=host, dashboard=False, **profile)
                    for name in names[i : i + batch]
                ]
                workers.extend(group)
                await asyncio.gather(*[w.start() for w in group])
            conn.send({"ready": len(workers), "pid": os.getpid(), "base_rss_mib": base, "rss_mib": rss_mib()})
            loop = asyncio.get_running_loop()
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg != "stats":
                    break
                conn.send({"rss_mib": rss_mib(), "errors": errors.count, "first_errors": list(errors.first),
                           "fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1,
                           "fd_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0],
                           "running": sum(w.status.name == "running" for w in workers)})
        finally:
            await asyncio.wait_for(asyncio.gather(*[w.close(timeout=5) for w in workers], return_exceptions=True), 60)

    try:
        asyncio.run(main())
    except Exception:  # noqa: BLE001
        try:
            conn.send({"error": traceback.format_exc()})
        except Exception:  # noqa: BLE001 - the parent may be gone
            pass


def host_stats(procs: "Processes", timeout: float = 60.0) -> list[dict]:
    """Ask every node host for its RSS and the errors its workers logged so far."""
    out = []
    for proc, conn in procs.children:
        if proc.name.startswith("node-host"):
            conn.send("stats")
            out.append(procs.receive(conn, timeout, proc.name))
    return out


class Processes:
    """Child processes started by a benchmark, stopped (and if need be killed) by id."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.children: list[tuple[Any, Any]] = []  # (process, parent end of its pipe)

    def start(self, target: Any, *args: Any, name: str | None = None) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(child, *args), daemon=True, name=name)
        proc.start()
        child.close()
        self.children.append((proc, parent))
        return proc, parent

    @staticmethod
    def receive(conn: Any, timeout: float, what: str) -> dict:
        if not conn.poll(timeout):
            raise TimeoutError(f"{what}: no answer within {timeout:g}s")
        msg = conn.recv()
        if "error" in msg:
            raise RuntimeError(f"{what} failed:\n{msg['error']}")
        return msg

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the children: all but the first at once, then the first (the scheduler).

        Each is asked to stop through its pipe and joined; one that does not
        exit in time is terminated, then killed, by its own process handle.
        """
        phases = [self.children[1:], self.children[:1]]
        for phase in phases:
            for proc, conn in phase:
                try:
                    conn.send("stop")
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + timeout
            for proc, conn in phase:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
                conn.close()
        self.children = []


def start_nodes(procs: Processes, address: str, n: int, per_process: int, host: str = "127.0.0.1",
                prefix: str = "node", timeout: float = 600.0, dial_out: bool = False) -> list[dict]:
    """Start ``n`` workers in ``ceil(n / per_process)`` host processes; wait until all are up."""
    names = [f"{prefix}-{i:06d}" for i in range(n)]
    conns = []
    for i in range(0, n, per_process):
        _, conn = procs.start(node_host_main, address, names[i : i + per_process], host, 25, dial_out,
                              name=f"node-host-{i // per_process}")
        conns.append(conn)
    deadline = time.monotonic() + timeout
    return [
        procs.receive(conn, max(1.0, deadline - time.monotonic()), f"node host {k}") for k, conn in enumerate(conns)
    ]


def wait_for_workers(client: Any, n: int, timeout: float) -> None:
    """Wait until ``n`` workers are registered (distributed polls the scheduler)."""
    client.wait_for_workers(n, timeout=timeout)


# ======================================================================================
# One size
# ======================================================================================
def per_round(snapshots: list[dict], history: list[dict], job_id: str) -> list[dict]:
    """Per-round deltas between the scheduler's snapshots at round boundaries."""
    snaps = [s for s in snapshots if s["job"] == job_id]
    starts = {s["round"]: s for s in snaps if s["event"] == "round_start"}
    region_done = {s["round"]: s for s in snaps if s["event"] == "region_done"}
    end = next(s for s in snaps if s["event"] == "job_done")
    rows = []
    for h in history:
        r = h["round"] - 1
        a = starts[r]
        b = starts.get(r + 1, end)
        rows.append(
            {
                "round": h["round"],
                "seconds": h["seconds"],
                "compute": h["compute_seconds"],
                "overhead": h["seconds"] - h["compute_seconds"],
                "region_seconds": region_done[r]["wall"] - a["wall"],
                "cpu": b["cpu"] - a["cpu"],
                "bytes_in": b["ext_in"] - a["ext_in"],
                "bytes_out": b["ext_out"] - a["ext_out"],
                "msgs": (b["ext_msgs_in"] - a["ext_msgs_in"]) + (b["ext_msgs_out"] - a["ext_msgs_out"]),
                "internal": (b["int_in"] - a["int_in"]) + (b["int_out"] - a["int_out"]),
                "max_tick": max(region_done[r]["max_tick"], b["max_tick"]),
                "workers": b["workers"],
                "updates": h["updates"],
            }
        )
    return rows


def node_groups(engines: list[str]) -> list[tuple[bool, list[str]]]:
    """The variants grouped by the nodes they run on: (dial_out, variants), open nodes first."""
    groups = []
    open_engines = [e for e in engines if e != DIAL_OUT]
    if open_engines:
        groups.append((False, open_engines))
    if DIAL_OUT in engines:
        groups.append((True, [DIAL_OUT]))
    return groups


def run_size(n: int, args: argparse.Namespace) -> dict:
    """Every variant of ``args.engines`` on ``n`` nodes: open nodes first, then dial-out ones. Never raises."""
    out: dict[str, Any] = {"nodes": n, "hosts": -(-n // args.per_process), "status": "ok", "phases": {}, "engines": {}}
    coefs: dict[str, Any] = {}
    for dial_out, engines in node_groups(args.engines):
        phase = run_nodes(n, args, engines, dial_out)
        out["engines"].update(phase.pop("engines", {}))
        coefs.update(phase.pop("coefs", {}))
        for engine in engines:
            out["phases"][engine] = phase
        if phase["status"] != "ok":
            out["status"] = f"dial-out nodes: {phase['status']}" if dial_out else phase["status"]
            break
    if coefs:
        import numpy as np

        first = next(iter(coefs.values()))
        out["max_coef_diff"] = max(float(np.max(np.abs(c - first))) for c in coefs.values())
    return out


def run_nodes(n: int, args: argparse.Namespace, engines: list[str], dial_out: bool = False) -> dict:
    """Start a region of ``n`` nodes (open, or dial-out), train once per variant, measure, tear down.

    Never raises: a failure is the ``status`` of the returned measurements.
    """
    import numpy as np
    from sklearn.datasets import make_classification

    from grid import Grid
    from jobs import SGDClassifier

    out: dict[str, Any] = {"status": "ok"}
    procs = Processes()
    step = "scheduler start"
    try:
        t0 = time.perf_counter()
        _, sconn = procs.start(scheduler_main, "eu", "127.0.0.1", args.profile)
        sched = procs.receive(sconn, 60, "scheduler")
        address = sched["address"]
        step = "node start"
        hosts = start_nodes(procs, address, n, args.per_process, timeout=args.timeout, dial_out=dial_out)
        out["node_rss_mib"] = sum(h["rss_mib"] for h in hosts)
        out["host_base_mib"] = statistics.mean(h["base_rss_mib"] for h in hosts)
        out["per_node_mib"] = (out["node_rss_mib"] - out["host_base_mib"] * len(hosts)) / n
        step = "connect"
        g = Grid.connect({"regions": {"eu": address}}, timeout=60)
        try:
            client = g.client("eu")
            wait_for_workers(client, n, args.timeout)
            out["startup_s"] = time.perf_counter() - t0
            if dial_out:
                reach = client.sync(client.scheduler.bench_store)["reach"]
                if reach.get("dial-out") != n:
                    raise RuntimeError(f"{n} nodes started to dial out, the scheduler sees {reach}")
            step = "scatter"
            X, y = make_classification(
                n_samples=n * args.rows, n_features=args.features, n_informative=min(10, args.features),
                random_state=0,
            )
            t1 = time.perf_counter()
            data = g.scatter(X.astype(np.float64), y, partition_rows=args.rows)
            if dial_out:  # placed once every node has fetched the partitions it was granted
                wait_until(lambda: client.sync(client.scheduler.bench_store)["pending"] == 0, args.timeout,
                           "every dial-out node to fetch its partitions", interval=0.1)
            out["scatter_s"] = time.perf_counter() - t1
            assert data.n_partitions == n, (data.n_partitions, n)
            step = "idle measurement"
            idle = client.sync(client.scheduler.bench_idle, seconds=args.idle_window)
            out["idle_cpu_share"] = idle["cpu_share"]
            out["idle_bytes_per_s"] = idle["bytes_per_s"]
            out["idle_msgs_per_s"] = idle["msgs_per_s"]
            # one job per round engine on the same nodes and data, one after the other
            jobs = {}
            models = {}
            for engine in engines:
                step = f"job ({engine})"
                # dial-out nodes take round requests only from the direct engine (no task runs on them)
                client.sync(client.scheduler.bench_engine, engine="direct" if engine == DIAL_OUT else engine)
                job = g.submit(SGDClassifier(rounds=args.rounds, random_state=0), data)
                models[engine] = job.result(timeout=args.timeout)
                jobs[engine] = job
            stats = client.sync(client.scheduler.bench_stats)
            hstats = host_stats(procs)
            out["node_errors"] = sum(h["errors"] for h in hstats)
            out["first_node_errors"] = [e for h in hstats for e in h["first_errors"]][:3]
            out["node_rss_mib"] = sum(h["rss_mib"] for h in hstats)
            out["per_node_mib"] = (out["node_rss_mib"] - out["host_base_mib"] * len(hosts)) / n
            out["sched_rss_mib"] = stats["rss_mib"]
            out["engines"] = {engine: per_round(stats["snapshots"], job.history, job.id) for engine, job in jobs.items()}
            out["coefs"] = {engine: np.asarray(m.coef_).copy() for engine, m in models.items()}
            lost = [r for rounds in out["engines"].values() for r in rounds if r["workers"] < n]
            if lost:
                out["status"] = f"lost workers: {min(r['workers'] for r in lost)} of {n} left during the job"
            elif out["node_errors"]:
                out["status"] = f"{out['node_errors']} node errors, e.g. {out['first_node_errors'][0]}"
            g.drop(data)
        finally:
            g.close()
    except Exception as exc:  # noqa: BLE001 - the failure is the measurement
        out["status"] = f"failed at {step}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
    finally:
        procs.stop()
    return out


def summarise(res: dict, engine: str) -> dict:
    rounds = (res.get("engines") or {}).get(engine) or []
    steady = rounds[1:] or rounds  # round 1 also pays one-off costs (first graph, layouts)
    med = lambda key: statistics.median(r[key] for r in steady) if steady else float("nan")  # noqa: E731
    n = res["nodes"]
    return {
        "round_s": med("seconds"),
        "compute_s": med("compute"),
        "overhead_s": med("overhead"),
        "cpu_s": med("cpu"),
        "cpu_ms_per_task": 1000 * med("cpu") / n if steady else float("nan"),
        "kib_in": med("bytes_in") / 1024,
        "kib_out": med("bytes_out") / 1024,
        "bytes_per_task": (med("bytes_in") + med("bytes_out")) / n if steady else float("nan"),
        "msgs_per_task": med("msgs") / n if steady else float("nan"),
        "max_tick_ms": 1000 * max((r["max_tick"] for r in rounds), default=float("nan")),
        "first_round_s": rounds[0]["seconds"] if rounds else float("nan"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,250,500,1000", help="comma-separated node counts, run in order")
    parser.add_argument("--quick", action="store_true", help="a fast check: 50 and 100 nodes, 3 rounds")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-process", type=int, default=50, help="workers per node-host process")
    parser.add_argument("--rows", type=int, default=32, help="rows per partition (one partition per node)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--idle-window", type=float, default=5.0, help="seconds of idle scheduler measured")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for startup and for the job")
    parser.add_argument("--per-round", action="store_true", help="also print every round of every size")
    parser.add_argument("--engines", default="tasks,direct",
                        help="grid.scheduler.round-engine values to run side by side (the first is the 'before'); "
                        f"'{DIAL_OUT}': the direct engine on dial-out nodes")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="write a cProfile of the scheduler's event loop during each job's rounds 2 and later to "
                        "DIR/<engine>-<nodes>.pstats (it slows the scheduler: figures of such a run are not comparable)")
    parser.add_argument("--dial-out", action="store_true",
                        help=f"also run the direct engine on n dial-out nodes (adds '{DIAL_OUT}' to --engines)")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.dial_out and DIAL_OUT not in args.engines:
        args.engines.append(DIAL_OUT)
    if not args.engines:
        parser.error("--engines names no variant; e.g. --engines tasks,direct")
    if args.profile is not None:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    if args.quick:
        sizes, args.rounds, args.idle_window = [50, 100], 3, 2.0
    quiet_distributed()
    print(f"One region: 1 grid scheduler (own process) + N nodes ({args.per_process} in-process workers per host "
          f"process, 1 thread each); one {args.rows} x {args.features} partition per node; "
          f"jobs.SGDClassifier, {args.rounds} rounds, one job per round engine ({', '.join(args.engines)}) "
          f"on the same nodes", flush=True)
    if DIAL_OUT in args.engines:
        print(f"'{DIAL_OUT}': the direct engine on another N nodes that dial out (a fresh scheduler and node hosts, "
              "after the open nodes); its scatter s lasts until every node has fetched its partitions", flush=True)
    print(f"machine: {machine()}")
    print(f"before: {load_line()}", flush=True)
    results = []
    for n in sizes:
        t = time.perf_counter()
        res = run_size(n, args)
        res["wall_s"] = time.perf_counter() - t
        results.append(res)
        print(f"  {n} nodes: {res['status']} ({res['wall_s']:.0f}s)", flush=True)
        if res["status"] != "ok":
            break
    print(f"after: {load_line()}")
    rows, ratios, dial_rows = [], [], []
    nan = float("nan")
    open_engines = [e for e in args.engines if e != DIAL_OUT]
    for res in results:
        summaries = {engine: summarise(res, engine) for engine in args.engines}
        for engine, s in summaries.items():
            phase = res["phases"].get(engine, {})
            rows.append(
                (
                    res["nodes"], engine, res["hosts"], phase.get("startup_s", nan), phase.get("scatter_s", nan),
                    s["first_round_s"], s["round_s"], s["compute_s"], s["overhead_s"], s["cpu_s"], s["cpu_ms_per_task"],
                    s["kib_in"], s["kib_out"], s["bytes_per_task"], s["msgs_per_task"], s["max_tick_ms"],
                    100 * phase.get("idle_cpu_share", nan), phase.get("sched_rss_mib", nan),
                    phase.get("per_node_mib", nan), phase.get("node_rss_mib", nan) / 1024,
                    phase.get("node_errors", "-"), phase.get("status", "not run"),
                )
            )
        if open_engines:
            before = summaries[open_engines[0]]
            for engine in open_engines[1:]:
                s = summaries[engine]
                ratio = lambda k: before[k] / s[k] if s[k] else nan  # noqa: E731
                ratios.append((res["nodes"], f"{open_engines[0]} / {engine}", ratio("round_s"), ratio("overhead_s"),
                               ratio("cpu_s"), ratio("bytes_per_task"), ratio("msgs_per_task"),
                               res.get("max_coef_diff", nan)))
        if DIAL_OUT in summaries:
            dial = summaries[DIAL_OUT]
            direct = summaries.get("direct")  # None: not run this time ("-"; the anchor below still applies)
            over = lambda k: (dial[k] / direct[k] if direct[k] else nan) if direct else "-"  # noqa: E731
            dial_rows.append((
                res["nodes"], direct["round_s"] if direct else "-", dial["round_s"], over("round_s"), over("overhead_s"),
                direct["cpu_ms_per_task"] if direct else "-", dial["cpu_ms_per_task"], over("cpu_ms_per_task"),
                over("bytes_per_task"), over("msgs_per_task"), res["phases"].get(DIAL_OUT, {}).get("scatter_s", nan),
                res.get("max_coef_diff", nan),
            ))
    print()
    print("Per round: median of rounds 2.. (round 1 also builds the job's partition handles and layouts)")
    print(
        table(
            ["nodes", "engine", "host procs", "startup s", "scatter s", "round 1 s", "round s", "compute s",
             "beyond compute s", "sched CPU s", "sched CPU ms/task", "KiB in", "KiB out", "bytes/task",
             "msgs/task", "max loop stall ms", "idle sched CPU %", "sched RSS MiB", "MiB/node", "node hosts GiB", "node errors", "status"],
            rows,
        )
    )
    if ratios:
        print()
        print("Before / after, same run, same nodes (> 1: the second engine is cheaper); "
              "max |coef diff| between the engines' models")
        print(table(["nodes", "ratio", "round time", "beyond compute", "sched CPU", "bytes/task", "msgs/task",
                     "max |coef diff|"], ratios))
    if dial_rows:
        print()
        print(f"Dial-out nodes next to the direct engine on open nodes, same run, same data (dial-out / direct: > 1 "
              f"costs more); anchor: the direct engine at {ANCHOR_NODES:,} open nodes in docs/scale.md, "
              f"{ANCHOR_ROUND_S:g} s round, {ANCHOR_CPU_MS:g} ms scheduler CPU per update; max |coef diff| between "
              "every variant's model")
        print(table(["nodes", "round s direct", "round s dial-out", "round dial-out / direct",
                     "beyond compute dial-out / direct", "sched CPU ms/update direct", "sched CPU ms/update dial-out",
                     "CPU dial-out / direct", "bytes/task dial-out / direct", "msgs/task dial-out / direct",
                     "dial-out placement s (until fetched)", "max |coef diff|"], dial_rows))
        at_anchor = [r for r in dial_rows if r[0] == ANCHOR_NODES]
        for r in at_anchor:
            print(f"at {ANCHOR_NODES:,} nodes against the anchor: round {r[2] / ANCHOR_ROUND_S:.2f}x, "
                  f"scheduler CPU per update {r[6] / ANCHOR_CPU_MS:.2f}x")
    if args.per_round:
        detail = []
        for res in results:
            for engine, rounds in (res.get("engines") or {}).items():
                detail.extend(
                    (res["nodes"], engine, r["round"], r["seconds"], r["compute"], r["overhead"], r["region_seconds"],
                     r["cpu"], r["bytes_in"] / 1024, r["bytes_out"] / 1024, r["internal"] / 1024,
                     1000 * r["max_tick"], r["workers"])
                    for r in rounds
                )
        print()
        print(table(["nodes", "engine", "round", "seconds", "compute s", "beyond compute s", "region run_round s",
                     "sched CPU s", "KiB in", "KiB out", "KiB internal", "max stall ms", "workers"], detail))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
