"""Idle-only nodes: yield the host to its owner, run grid work when it is idle.

A volunteer lends a machine on the understanding that the grid never gets in
the owner's way. This module gives a node BOINC's two main preferences:

``suspend_cpu_usage`` -> ``cpu_threshold`` and ``pause_after``
    When processes *other than the node* use more than ``cpu_threshold`` of
    all the host's cores, averaged over the last ``pause_after`` seconds, the
    node is **paused**.
``idle_time_to_run`` -> ``idle_time_to_run``
    A paused node **resumes** once other processes have stayed at or below
    ``cpu_threshold`` for ``idle_time_to_run`` seconds in a row.

Pausing uses the mechanism of distributed's own memory monitor: the worker's
status becomes ``Status.paused``. The worker then starts no new task, the
scheduler sends it none and shows it as paused (``g.status()``, ``grid
status``, the dashboard); a task already executing finishes and its result is
kept. Tasks already queued on the node wait there until it resumes.

BOINC decides "idle" from keyboard and mouse input; grid nodes are mostly
headless, so here "idle" means "other processes use little CPU".

Two further settings limit what the node takes while it runs:

``cpu_share``
    The share of the host's cores the node may use. It is enforced by the
    kernel through CPU affinity: every thread of the node's processes is
    pinned to ``max(1, floor(cpu_share * allowed cores))`` cores, so the node
    can never use more than that many cores at once. The granularity is one
    core; for a finer cap run the node under a cgroup CPU quota (systemd
    ``CPUQuota=``, a Kubernetes CPU limit).
``nice``
    Every thread of the node runs at this niceness (default 19, the lowest
    priority), so the kernel gives the owner's programs the CPU first even
    before the node pauses. Priority is only ever lowered, never raised.

Settings live under ``grid.node.idle`` in ``dask.config`` (see
:data:`DEFAULTS`). Two ways to install the policy on a node:

* ``Nanny(..., plugins={idle_plugin()})`` (what ``grid node --idle-only``
  does), or
* as a worker preload, with no code change anywhere:
  ``DASK_DISTRIBUTED__WORKER__PRELOAD=grid.node.idle grid node ...`` — the
  preload's :func:`dask_setup` installs :func:`idle_plugin` with the
  configured settings.

The node's own CPU (subtracted from the host's) is the CPU of the worker
process, its descendants and its nanny.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import psutil
from dask.utils import parse_timedelta
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin
from tornado.ioloop import PeriodicCallback

from grid import config

logger = logging.getLogger("grid.node.idle")

#: Defaults of ``grid.node.idle.*`` (used when the config does not set a key).
DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "cpu-threshold": 0.25,
    "pause-after": "5s",
    "idle-time-to-run": "60s",
    "interval": "500ms",
    "cpu-share": 1.0,
    "nice": 19,
}

#: Name of the worker plugin, of its periodic callback and of its metric.
PLUGIN_NAME = "grid-idle"
#: Event topic of pause / resume decisions (``Client.get_events(EVENT_TOPIC)``).
EVENT_TOPIC = "grid-node-idle"


class IdleConfigError(ValueError):
    """An idle-only setting is out of range; the message names the key and the fix."""


def _setting(key: str, value: Any) -> Any:
    """``value`` if given, else ``grid.node.idle.<key>`` from dask.config, else the default."""
    if value is not None:
        return value
    return config.get(f"node.idle.{key}", DEFAULTS[key])


def _duration(key: str, value: Any) -> float:
    try:
        seconds = float(parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError):
        raise IdleConfigError(
            f"grid.node.idle.{key} is {value!r}; use a duration >= 0 such as '5s' or a number of seconds"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise IdleConfigError(f"grid.node.idle.{key} is {value!r}; it must be a finite duration >= 0")
    return seconds


def _fraction(key: str, value: Any) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if isinstance(value, bool) or not (0.0 < share <= 1.0):
        raise IdleConfigError(
            f"grid.node.idle.{key} is {value!r}; it must be a share of all cores in (0, 1], e.g. 0.25"
        )
    return share


def _nice(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise IdleConfigError(
            f"grid.node.idle.nice is {value!r}; it must be an integer from 0 (unchanged) to 19 (lowest priority)"
        )
    return value


# --- the decision, pure ------------------------------------------------------------------
class IdlePolicy:
    """When to pause and when to resume, given samples of other processes' CPU use.

    Pure logic (no clock, no psutil, no Dask): feed it samples with
    :meth:`observe` and it answers ``"pause"``, ``"resume"`` or ``None``.

    Parameters
    ----------
    cpu_threshold : float
        Share of all cores (0, 1] that other processes may use before the node
        yields.
    pause_after : float
        Seconds over which the others' use is averaged before pausing; 0
        pauses on the first busy sample.
    idle_time_to_run : float
        Seconds the host must stay at or below the threshold, every sample,
        before a paused node resumes; 0 resumes on the first idle sample.
    """

    def __init__(self, cpu_threshold: float, pause_after: float, idle_time_to_run: float) -> None:
        self.cpu_threshold = cpu_threshold
        self.pause_after = pause_after
        self.idle_time_to_run = idle_time_to_run
        self.paused = False
        self.idle_since: float | None = None
        self._samples: deque[tuple[float, float]] = deque()  # (seconds covered, share)

    def busy_share(self) -> float | None:
        """Time-weighted mean of the others' share over the last ``pause_after`` seconds.

        ``None`` until samples covering that long have been seen.
        """
        covered = weighted = 0.0
        for dt, share in reversed(self._samples):
            covered += dt
            weighted += dt * share
            if covered >= self.pause_after - 1e-9:
                return weighted / covered if covered > 0 else None
        return None

    def observe(self, now: float, share: float, dt: float) -> str | None:
        """Take one sample: others used ``share`` of all cores in the ``dt`` seconds up to ``now``.

        Returns
        -------
        "pause", "resume" or None
            The transition to make now, if any.
        """
        self._samples.append((dt, share))
        # keep just enough history for the pause window
        covered = sum(d for d, _ in self._samples)
        while len(self._samples) > 1 and covered - self._samples[0][0] >= self.pause_after:
            covered -= self._samples.popleft()[0]
        busy = share > self.cpu_threshold
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now - dt
        if not self.paused:
            mean = self.busy_share()
            if mean is not None and mean > self.cpu_threshold:
                self.paused = True
                return "pause"
            return None
        if self.idle_since is not None and now - self.idle_since >= self.idle_time_to_run - 1e-9:
            self.paused = False
            self._samples.clear()  # a fresh pause window after resuming
            return "resume"
        return None


# --- measuring ---------------------------------------------------------------------------
def _busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds (all cores) from ``psutil.cpu_times()``."""
    fields = times._asdict()
    # guest time is already counted in user/nice on Linux
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


class HostCpuSampler:
    """CPU used by processes other than the node, as a share of all the host's cores.

    Parameters
    ----------
    own : callable returning a list of psutil.Process
        The node's processes (asked again at every sample, so children that
        come and go are counted).
    """

    def __init__(self, own: Any) -> None:
        self._own = own
        self._last_host = _busy_and_total(psutil.cpu_times())
        self._last_own: dict[int, float] = {}
        self._last_time = time.monotonic()
        self._own_seconds()  # baseline

    def _own_seconds(self) -> float:
        """CPU seconds the node's processes used since the previous call."""
        delta = 0.0
        now: dict[int, float] = {}
        for proc in self._own():
            try:
                t = proc.cpu_times()
                created = proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            used = t.user + t.system
            now[proc.pid] = used
            if proc.pid in self._last_own:
                delta += used - self._last_own[proc.pid]
            elif created >= time.time() - (time.monotonic() - self._last_time):
                delta += used  # born since the previous sample
        self._last_own = now
        return max(0.0, delta)

    def sample(self) -> tuple[float, float]:
        """Share of all cores (0..1) used by other processes since the previous sample, and its seconds."""
        busy, total = _busy_and_total(psutil.cpu_times())
        own = self._own_seconds()
        now = time.monotonic()
        d_busy = busy - self._last_host[0]
        d_total = total - self._last_host[1]
        dt = now - self._last_time
        self._last_host = (busy, total)
        self._last_time = now
        if d_total <= 0:
            return 0.0, dt
        return min(1.0, max(0.0, (d_busy - own) / d_total)), dt


# --- limiting the node's own use ----------------------------------------------------------
def _thread_ids(proc: psutil.Process) -> list[int]:
    try:
        return [t.id for t in proc.threads()]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


#: the cores a node's process tree could use before any cpu-share pinning (inherited by children)
BASE_CORES_ENV = "GRID_NODE_BASE_CORES"


def _base_cores() -> list[int]:
    """Cores available before pinning: remembered in the environment so that the worker
    process the Nanny spawns (which inherits the pinned affinity) does not shrink it again."""
    remembered = os.environ.get(BASE_CORES_ENV)
    if remembered:
        try:
            return sorted(int(c) for c in remembered.split(","))
        except ValueError:
            pass
    cores = sorted(os.sched_getaffinity(0))
    os.environ[BASE_CORES_ENV] = ",".join(map(str, cores))
    return cores


def allowed_cores(cpu_share: float) -> list[int] | None:
    """The cores a node with ``cpu_share`` may use: the last ``max(1, floor(share * n))`` of the
    ``n`` cores the node could use before pinning.

    Idempotent: applying it again, or in a child process, gives the same cores.
    ``None`` when ``cpu_share`` is 1 or the platform cannot pin threads.
    """
    cpu_share = _fraction("cpu-share", cpu_share)
    if cpu_share >= 1.0 or not hasattr(os, "sched_getaffinity"):
        return None
    base = _base_cores()
    k = max(1, math.floor(cpu_share * len(base) + 1e-9))
    return base[-k:]


def apply_process_limits(
    cpu_share: float | None = None, nice: int | None = None, pid: int | None = None
) -> dict[str, Any]:
    """Lower the priority of a process (every thread, and its children) and pin it to its CPU share.

    On Linux both niceness and affinity belong to each *thread*, so every
    thread is set one by one; threads started later inherit the setting of
    the thread that starts them. Priority is only lowered: a thread already
    nicer than ``nice`` keeps its niceness.

    Parameters
    ----------
    cpu_share : float, optional
        Share of the host's cores (0, 1]; default ``grid.node.idle.cpu-share``.
    nice : int, optional
        Niceness 0..19 (0 leaves priority alone); default ``grid.node.idle.nice``.
    pid : int, optional
        The process (default: this one).

    Returns
    -------
    dict
        ``{"cores": [...] or None, "nice": int, "threads": n}``: what was applied.
    """
    cpu_share = _fraction("cpu-share", _setting("cpu-share", cpu_share))
    nice = _nice(_setting("nice", nice))
    cores = allowed_cores(cpu_share)
    root = psutil.Process(pid)
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    n = 0
    for proc in procs:
        for tid in _thread_ids(proc):
            try:
                if nice and hasattr(os, "getpriority"):
                    if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                        os.setpriority(os.PRIO_PROCESS, tid, nice)
                if cores is not None:
                    os.sched_setaffinity(tid, cores)
                n += 1
            except (ProcessLookupError, PermissionError):
                continue  # the thread ended meanwhile
        if not hasattr(os, "getpriority") and nice:  # pragma: no cover - not Linux
            try:
                proc.nice(max(proc.nice(), nice))
            except (psutil.Error, TypeError):
                pass
    return {"cores": cores, "nice": nice, "threads": n}


# --- the worker plugin --------------------------------------------------------------------
@dataclass
class IdleSettings:
    """Validated idle-only settings (seconds and shares)."""

    cpu_threshold: float
    pause_after: float
    idle_time_to_run: float
    interval: float
    cpu_share: float
    nice: int

    def to_config(self) -> dict[str, Any]:
        """These settings as ``grid.node.idle`` config (for ``dask.config.set``)."""
        return {
            "grid.node.idle.cpu-threshold": self.cpu_threshold,
            "grid.node.idle.pause-after": f"{self.pause_after}s",
            "grid.node.idle.idle-time-to-run": f"{self.idle_time_to_run}s",
            "grid.node.idle.interval": f"{self.interval}s",
            "grid.node.idle.cpu-share": self.cpu_share,
            "grid.node.idle.nice": self.nice,
        }


def idle_settings(
    cpu_threshold: float | None = None,
    idle_time_to_run: float | str | None = None,
    *,
    pause_after: float | str | None = None,
    interval: float | str | None = None,
    cpu_share: float | None = None,
    nice: int | None = None,
) -> IdleSettings:
    """Validate idle-only settings; any left out come from ``grid.node.idle.*``.

    Raises
    ------
    IdleConfigError
        Naming the setting, its value and the allowed range.
    """
    nice_value = _nice(_setting("nice", nice))
    raw_interval = _setting("interval", interval)
    interval_s = _duration("interval", raw_interval)
    if interval_s <= 0:
        raise IdleConfigError(f"grid.node.idle.interval must be > 0, got {raw_interval!r}; e.g. '500ms'")
    return IdleSettings(
        cpu_threshold=_fraction("cpu-threshold", _setting("cpu-threshold", cpu_threshold)),
        pause_after=_duration("pause-after", _setting("pause-after", pause_after)),
        idle_time_to_run=_duration("idle-time-to-run", _setting("idle-time-to-run", idle_time_to_run)),
        interval=interval_s,
        cpu_share=_fraction("cpu-share", _setting("cpu-share", cpu_share)),
        nice=nice_value,
    )


class IdleOnlyPlugin(WorkerPlugin):
    """Pause the worker while the host is busy with other work; run it when idle.

    Install with :func:`idle_plugin`. On setup it lowers the worker's
    priority and pins it to its CPU share (:func:`apply_process_limits`),
    then samples every ``interval``. It also takes over distributed's
    memory pause (``distributed.worker.memory.pause``), which would otherwise
    resume a node this plugin paused: the node is paused while the host is
    busy *or* its memory is above the pause fraction, and runs otherwise.

    Each decision is logged, sent as an event on topic :data:`EVENT_TOPIC`,
    and the last measurement travels in the worker's heartbeat as the metric
    ``grid-idle`` (``WorkerState.metrics["grid-idle"]`` on the scheduler).
    """

    name = PLUGIN_NAME

    def __init__(self, settings: IdleSettings) -> None:
        self.settings = settings
        self._reset()

    def _reset(self) -> None:
        self.worker: Any = None
        self.policy: IdlePolicy | None = None
        self.sampler: HostCpuSampler | None = None
        self.last_share: float | None = None
        self.reason: str | None = None  # why the node is paused now
        self.transitions: list[dict[str, Any]] = []
        self._owns_pause = False
        self._memory_pause: float | bool = False
        self._threads_limited: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}  # sent to the worker process: settings only

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self._reset()

    # --- lifecycle ---------------------------------------------------------------------
    def setup(self, worker: Any) -> None:
        s = self.settings
        self.worker = worker
        self.policy = IdlePolicy(s.cpu_threshold, s.pause_after, s.idle_time_to_run)
        self.sampler = HostCpuSampler(self._own_processes)
        self._limit_threads()
        mm = worker.memory_manager
        self._memory_pause = mm.memory_pause_fraction
        if self._memory_pause is not False:
            mm.memory_pause_fraction = False  # one owner of the paused state: this plugin
        if worker.status == Status.paused:
            self._owns_pause, self.reason = True, "memory"
        worker.metrics[PLUGIN_NAME] = self.metric
        pc = PeriodicCallback(self.tick, s.interval * 1000)
        worker.periodic_callbacks[PLUGIN_NAME] = pc
        pc.start()
        logger.info(
            "idle-only node: pauses when other processes use > %.0f%% of %d cores for %.1fs, "
            "resumes after %.1fs idle; cpu-share %.2f, nice %d",
            100 * s.cpu_threshold, psutil.cpu_count() or 1, s.pause_after, s.idle_time_to_run, s.cpu_share, s.nice,
        )

    def teardown(self, worker: Any) -> None:
        pc = worker.periodic_callbacks.pop(PLUGIN_NAME, None)
        if pc is not None:
            pc.stop()
        worker.metrics.pop(PLUGIN_NAME, None)
        if self._memory_pause is not False:
            worker.memory_manager.memory_pause_fraction = self._memory_pause
        if self._owns_pause and worker.status == Status.paused:
            worker.status = Status.running

    # --- measuring and deciding ----------------------------------------------------------
    def _own_processes(self) -> list[psutil.Process]:
        me = psutil.Process()
        procs = [me]
        try:
            procs += me.children(recursive=True)
            if getattr(self.worker, "nanny", None):
                parent = me.parent()
                if parent is not None:
                    procs.append(parent)
        except psutil.Error:
            pass
        return procs

    def _limit_threads(self) -> None:
        tids = set(_thread_ids(psutil.Process()))
        if tids - self._threads_limited:
            apply_process_limits(self.settings.cpu_share, self.settings.nice)
            self._threads_limited = tids

    def _memory_busy(self) -> bool:
        frac = self._memory_pause
        mm = self.worker.memory_manager
        if frac is False or not mm.memory_limit:
            return False
        return self.worker.monitor.get_process_memory() / mm.memory_limit > frac

    def metric(self, worker: Any) -> dict[str, Any]:
        """What the heartbeat carries: the last share of others' CPU and the pause reason."""
        return {
            "others_cpu": self.last_share,
            "paused_by": self.reason,
            "cpu_threshold": self.settings.cpu_threshold,
        }

    def tick(self) -> None:
        """Sample, decide, and pause or resume the worker (runs every ``interval``)."""
        assert self.sampler is not None and self.policy is not None
        worker = self.worker
        self._limit_threads()
        share, dt = self.sampler.sample()
        self.last_share = share
        self.policy.observe(time.monotonic(), share, dt)
        memory = self._memory_busy()
        reason = "host-busy" if self.policy.paused else "memory" if memory else None
        if reason and worker.status == Status.running:
            self._owns_pause = True
            self.reason = reason
            worker.status = Status.paused
            self._record("pause", reason, share)
        elif reason is None and self._owns_pause and worker.status == Status.paused:
            self._owns_pause = False
            previous, self.reason = self.reason, None
            worker.status = Status.running
            self._record("resume", previous, share)
        elif reason and self._owns_pause:
            self.reason = reason

    def _record(self, action: str, reason: str | None, share: float) -> None:
        s = self.settings
        msg = {
            "action": action,
            "reason": reason,
            "others_cpu": round(share, 4),
            "cpu_threshold": s.cpu_threshold,
            "time": time.time(),
        }
        self.transitions.append(msg)
        if action == "pause" and reason == "host-busy":
            logger.info(
                "pausing node: other processes used %.0f%% of the host CPU over %.1fs (threshold %.0f%%); "
                "resumes after %.1fs idle",
                100 * (self.policy.busy_share() or share), s.pause_after, 100 * s.cpu_threshold, s.idle_time_to_run,
            )
        else:
            logger.info("%s node (%s): other processes use %.0f%% of the host CPU", action, reason, 100 * share)
        try:
            self.worker.log_event(EVENT_TOPIC, msg)
        except Exception:  # noqa: BLE001 - an event is informational; never fail a decision
            pass


def idle_plugin(
    cpu_threshold: float | None = None,
    idle_time_to_run: float | str | None = None,
    *,
    pause_after: float | str | None = None,
    interval: float | str | None = None,
    cpu_share: float | None = None,
    nice: int | None = None,
) -> IdleOnlyPlugin:
    """The idle-only worker plugin; settings left out come from ``grid.node.idle.*``.

    Parameters
    ----------
    cpu_threshold : float, optional
        Share of all cores (0, 1] other processes may use (BOINC's
        ``suspend_cpu_usage``); default 0.25.
    idle_time_to_run : float or str, optional
        Seconds (or a duration like ``"60s"``) the host must be idle before a
        paused node resumes; default 60 s.
    pause_after : float or str, optional
        Seconds over which the others' use is averaged before pausing; default 5 s.
    interval : float or str, optional
        Sampling interval; default 500 ms.
    cpu_share : float, optional
        Share of the host's cores (0, 1] the node may use (CPU affinity); default 1.
    nice : int, optional
        Niceness of the node's threads, 0 (unchanged) to 19; default 19.

    Returns
    -------
    IdleOnlyPlugin
        Pass it to the node's worker: ``Nanny(..., plugins={plugin})``.

    Raises
    ------
    IdleConfigError
        For a setting out of range, naming it.
    """
    return IdleOnlyPlugin(
        idle_settings(
            cpu_threshold,
            idle_time_to_run,
            pause_after=pause_after,
            interval=interval,
            cpu_share=cpu_share,
            nice=nice,
        )
    )


async def dask_setup(worker: Any) -> None:
    """Worker preload entry point: ``--preload grid.node.idle`` installs the configured plugin."""
    await worker.plugin_add(plugin=idle_plugin(), name=PLUGIN_NAME, catch_errors=False)
