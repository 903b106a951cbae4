"""The node's processes on its host, measured and limited with psutil and the kernel.

:class:`HostCpuSampler` measures the CPU that processes *other than the node*
use; :func:`apply_process_limits` lowers the node's priority and pins it to
its CPU share (``grid.node.idle.cpu-share`` and ``grid.node.idle.nice``, told
in :mod:`grid.node.idle`). ``grid node --cpu-share`` uses the limits without
the idle-only policy.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import psutil

from grid.node.idle_policy import check_nice, check_share, setting


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
def thread_ids(proc: psutil.Process) -> list[int]:
    """The ids of ``proc``'s threads; empty if it ended or may not be inspected."""
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
    cpu_share = check_share("cpu-share", cpu_share)
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
    cpu_share = check_share("cpu-share", setting("cpu-share", cpu_share))
    nice = check_nice(setting("nice", nice))
    cores = allowed_cores(cpu_share)
    root = psutil.Process(pid)
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    n = 0
    for proc in procs:
        for tid in thread_ids(proc):
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
