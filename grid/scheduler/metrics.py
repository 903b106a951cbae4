"""Grid metrics on the scheduler's Prometheus endpoint (``/metrics``).

distributed serves ``/metrics`` on every scheduler's HTTP port by writing
``prometheus_client.REGISTRY``. :func:`register_metrics` adds the grid's
collector to that registry; the grid plugin calls it from ``start()`` and
:func:`unregister_metrics` from ``close()``.

One collector serves every live grid plugin of the process and labels each
series with ``region``: ``Grid.local`` runs one scheduler per region in one
process, and a metric family may appear only once in an exposition, so one
collector per plugin would not do. In that case every scheduler's
``/metrics`` shows every region of the process; a deployed scheduler runs
alone in its process and shows its own region.

Metrics (every one labelled ``region``):

=====================================  ========  ==============================================
``grid_jobs{status}``                  gauge     jobs in the registry, by status (all five)
``grid_rounds_done_total``             counter   rounds finished by the region's jobs
``grid_samples_total``                 counter   samples trained on in those rounds
``grid_samples_per_second``            gauge     sum over running jobs of their last round's rate
``grid_job_rounds_done{job,estimator}`` gauge    rounds done of each running job
``grid_job_rounds{job,estimator}``     gauge     rounds asked for, of each running job
``grid_job_samples_per_second{job}``   gauge     last round's samples/s of each running job
``grid_job_loss{job}``                 gauge     last round's loss of each running job
``grid_nodes{state}``                  gauge     nodes by state (active, paused, quarantined, ...)
``grid_verification_rejects_total``    counter   node updates rejected by verification
=====================================  ========  ==============================================

Counters stay monotonic when the registry forgets old finished jobs: the
collector keeps the counts of jobs it saw go.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from grid.protocol.requests import STATUSES  # job statuses, all exported (0 included)

logger = logging.getLogger("grid.metrics")

#: node states always exported (0 included); the scheduler may report others
NODE_STATES = ("active", "paused", "quarantined")


@dataclass
class _PluginState:
    """What the collector remembers of one plugin: counts of jobs that left its registry."""

    plugin: "weakref.ref[Any]"
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # job id -> (rounds, samples)
    retired_rounds: int = 0
    retired_samples: float = 0.0


class GridCollector:
    """A Prometheus collector over every registered grid scheduler plugin."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugins: dict[int, _PluginState] = {}

    # --- membership --------------------------------------------------------------------
    def add(self, plugin: Any) -> None:
        with self._lock:
            self._plugins.setdefault(id(plugin), _PluginState(weakref.ref(plugin)))

    def remove(self, plugin: Any) -> None:
        with self._lock:
            self._plugins.pop(id(plugin), None)

    def __len__(self) -> int:
        with self._lock:
            self._plugins = {k: s for k, s in self._plugins.items() if s.plugin() is not None}
            return len(self._plugins)

    # --- prometheus_client protocol ----------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        """The metric families (without samples), for the registry's name check."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Every grid metric of every live plugin, labelled by region."""
        families = self._families()
        by_name = {f.name: f for f in families}
        with self._lock:
            states = list(self._plugins.values())
        for state in states:
            plugin = state.plugin()
            if plugin is None or plugin.scheduler is None:
                continue
            try:
                self._collect_plugin(plugin, state, by_name)
            except Exception:  # noqa: BLE001 - /metrics must answer even if one region is odd
                logger.exception("grid metrics of region %s failed", plugin.region)
        return iter(families)

    # --- implementation ----------------------------------------------------------------
    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("grid_jobs", "Jobs in the region's registry, by status", labels=["region", "status"]),
            CounterMetricFamily("grid_rounds_done", "Rounds finished by the region's jobs", labels=["region"]),
            CounterMetricFamily("grid_samples", "Samples trained on in the rounds of the region's jobs", labels=["region"]),
            GaugeMetricFamily(
                "grid_samples_per_second", "Samples per second of the region's running jobs (last round each)", labels=["region"]
            ),
            GaugeMetricFamily("grid_job_rounds_done", "Rounds done of a running job", labels=["region", "job", "estimator"]),
            GaugeMetricFamily("grid_job_rounds", "Rounds asked for by a running job", labels=["region", "job", "estimator"]),
            GaugeMetricFamily(
                "grid_job_samples_per_second", "Samples per second of a running job's last round", labels=["region", "job"]
            ),
            GaugeMetricFamily("grid_job_loss", "Training loss of a running job's last round", labels=["region", "job"]),
            GaugeMetricFamily("grid_nodes", "Nodes of the region, by state", labels=["region", "state"]),
            CounterMetricFamily(
                "grid_verification_rejects", "Node updates rejected by verification", labels=["region"]
            ),
        ]

    def _collect_plugin(self, plugin: Any, state: _PluginState, f: dict[str, Metric]) -> None:
        region = str(plugin.region)
        records = list(plugin.jobs.registry.all())

        by_status = dict.fromkeys(STATUSES, 0)
        current: dict[str, tuple[int, float]] = {}
        rate_total = 0.0
        for record in records:
            by_status[record.status] = by_status.get(record.status, 0) + 1
            history = list(record.history)
            samples = float(sum(float(h.get("samples", 0.0)) for h in history))
            current[record.id] = (int(record.rounds_done), samples)
            if record.status == "running":
                estimator = str(record.request.get("estimator", {}).get("class", "?")).rpartition(":")[2]
                f["grid_job_rounds_done"].add_metric([region, record.id, estimator], int(record.rounds_done))
                f["grid_job_rounds"].add_metric([region, record.id, estimator], int(record.rounds))
                if history:
                    last = history[-1]
                    seconds = float(last.get("seconds") or 0.0)
                    rate = float(last.get("samples", 0.0)) / seconds if seconds > 0 else 0.0
                    rate_total += rate
                    f["grid_job_samples_per_second"].add_metric([region, record.id], rate)
                    f["grid_job_loss"].add_metric([region, record.id], float(last.get("loss", float("nan"))))
        with self._lock:
            for job_id, (rounds, samples) in state.seen.items():
                if job_id not in current:  # the registry forgot it: keep its counts
                    state.retired_rounds += rounds
                    state.retired_samples += samples
            state.seen = current
            rounds_total = state.retired_rounds + sum(r for r, _ in current.values())
            samples_total = state.retired_samples + sum(s for _, s in current.values())

        for status, n in by_status.items():
            f["grid_jobs"].add_metric([region, status], n)
        f["grid_rounds_done"].add_metric([region], rounds_total)
        f["grid_samples"].add_metric([region], samples_total)
        f["grid_samples_per_second"].add_metric([region], rate_total)

        nodes = dict.fromkeys(NODE_STATES, 0)
        for ws in list(plugin.scheduler.workers.values()):
            s = plugin.ledger.node_state(ws)
            nodes[s] = nodes.get(s, 0) + 1
        for s, n in nodes.items():
            f["grid_nodes"].add_metric([region, s], n)
        f["grid_verification_rejects"].add_metric([region], plugin.ledger.verification_rejects)


_collector: GridCollector | None = None
_registered_in: CollectorRegistry | None = None
_module_lock = threading.Lock()


def register_metrics(plugin: Any, registry: CollectorRegistry | None = None) -> GridCollector:
    """Export ``plugin``'s grid metrics on the scheduler's ``/metrics``.

    Safe to call for several plugins of one process (one per region) and
    more than once for the same plugin.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        Its ``region``, ``scheduler`` (``.workers``), ``jobs.registry``
        (``.all()`` of job records) and ``ledger`` (``node_state(ws)``,
        ``verification_rejects``) are read.
    registry : prometheus_client.CollectorRegistry, optional
        Default: ``prometheus_client.REGISTRY``, the one distributed serves.

    Returns
    -------
    GridCollector
        The process-wide collector.
    """
    global _collector, _registered_in
    registry = registry if registry is not None else REGISTRY
    with _module_lock:
        if _collector is None:
            _collector = GridCollector()
        if _registered_in is not registry:
            if _registered_in is not None:
                _registered_in.unregister(_collector)
            registry.register(_collector)
            _registered_in = registry
        _collector.add(plugin)
        return _collector


def unregister_metrics(plugin: Any) -> None:
    """Stop exporting ``plugin``'s metrics; the collector leaves the registry with the last plugin."""
    global _collector, _registered_in
    with _module_lock:
        if _collector is None:
            return
        _collector.remove(plugin)
        if len(_collector) == 0 and _registered_in is not None:
            _registered_in.unregister(_collector)
            _registered_in = None
            _collector = None
