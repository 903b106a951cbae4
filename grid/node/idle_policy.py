"""The idle-only decision, pure: its settings, their checks, and when to pause or resume.

No clock, no psutil, no Dask: :class:`IdlePolicy` is a small state machine fed
with samples of other processes' CPU use, so it is tested without processes.
What the settings mean is told in :mod:`grid.node.idle`, which installs the
policy on a worker.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from dask.utils import parse_timedelta

from grid import config

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


class IdleConfigError(ValueError):
    """An idle-only setting is out of range; the message names the key and the fix."""


# --- the settings and their checks ---------------------------------------------------------
def setting(key: str, value: Any) -> Any:
    """``value`` if given, else ``grid.node.idle.<key>`` from dask.config, else the default.

    Parameters
    ----------
    key : str
        A key of :data:`DEFAULTS`, such as ``"cpu-share"``.
    value : object or None
        The value passed by the caller; ``None`` means "from the config".

    Returns
    -------
    object
        The value, unchecked.
    """
    if value is not None:
        return value
    return config.get(f"node.idle.{key}", DEFAULTS[key])


def check_duration(key: str, value: Any) -> float:
    """``value`` (a duration such as ``"5s"`` or a number of seconds) in seconds.

    Raises
    ------
    IdleConfigError
        If it is not a finite duration >= 0, naming ``grid.node.idle.<key>``.
    """
    try:
        seconds = float(parse_timedelta(value, default="seconds"))
    except (TypeError, ValueError, KeyError):
        raise IdleConfigError(
            f"grid.node.idle.{key} is {value!r}; use a duration >= 0 such as '5s' or a number of seconds"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise IdleConfigError(f"grid.node.idle.{key} is {value!r}; it must be a finite duration >= 0")
    return seconds


def check_share(key: str, value: Any) -> float:
    """``value`` as a share of all cores in (0, 1].

    Raises
    ------
    IdleConfigError
        If it is not a number in (0, 1] (booleans are refused), naming ``grid.node.idle.<key>``.
    """
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if isinstance(value, bool) or not (0.0 < share <= 1.0):
        raise IdleConfigError(
            f"grid.node.idle.{key} is {value!r}; it must be a share of all cores in (0, 1], e.g. 0.25"
        )
    return share


def check_nice(value: Any) -> int:
    """``value`` as a niceness from 0 (priority unchanged) to 19 (lowest priority).

    Raises
    ------
    IdleConfigError
        If it is not an integer in 0..19 (booleans are refused).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise IdleConfigError(
            f"grid.node.idle.nice is {value!r}; it must be an integer from 0 (unchanged) to 19 (lowest priority)"
        )
    return value


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
    nice_value = check_nice(setting("nice", nice))
    raw_interval = setting("interval", interval)
    interval_s = check_duration("interval", raw_interval)
    if interval_s <= 0:
        raise IdleConfigError(f"grid.node.idle.interval must be > 0, got {raw_interval!r}; e.g. '500ms'")
    return IdleSettings(
        cpu_threshold=check_share("cpu-threshold", setting("cpu-threshold", cpu_threshold)),
        pause_after=check_duration("pause-after", setting("pause-after", pause_after)),
        idle_time_to_run=check_duration("idle-time-to-run", setting("idle-time-to-run", idle_time_to_run)),
        interval=interval_s,
        cpu_share=check_share("cpu-share", setting("cpu-share", cpu_share)),
        nice=nice_value,
    )


# --- the decision ------------------------------------------------------------------------
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
