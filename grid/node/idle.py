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

This module is the worker plugin that samples and pauses the worker; the
decision and its settings are pure (:mod:`grid.node.idle_policy`), measuring
and limiting the node's processes is :mod:`grid.node.host_cpu`. Their public
names are importable from here too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psutil
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin
from tornado.ioloop import PeriodicCallback

from grid.node.host_cpu import BASE_CORES_ENV, HostCpuSampler, allowed_cores, apply_process_limits, thread_ids
from grid.node.idle_policy import DEFAULTS, IdleConfigError, IdlePolicy, IdleSettings, idle_settings

__all__ = [
    "BASE_CORES_ENV", "DEFAULTS", "EVENT_TOPIC", "HostCpuSampler", "IdleConfigError", "IdleOnlyPlugin",
    "IdlePolicy", "IdleSettings", "PLUGIN_NAME", "allowed_cores", "apply_process_limits", "dask_setup",
    "idle_plugin", "idle_settings",
]

logger = logging.getLogger("grid.node.idle")

#: Name of the worker plugin, of its periodic callback and of its metric.
PLUGIN_NAME = "grid-idle"
#: Event topic of pause / resume decisions (``Client.get_events(EVENT_TOPIC)``).
EVENT_TOPIC = "grid-node-idle"


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
        tids = set(thread_ids(psutil.Process()))
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
