"""How the dashboard writes numbers: durations, byte sizes, memory, and values a scheduler left out.

Every table and summary line of the page formats through these functions, so
a missing or malformed field of a scheduler's reply shows the same way
everywhere (``0``, ``-`` or no link) instead of breaking the page.
"""

from __future__ import annotations

import math
from typing import Any


def number(value: Any, default: float = 0.0) -> float:
    """A float for the table, ``default`` for missing or non-numeric values."""
    if value is None or isinstance(value, bool):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out


def number_or_nan(value: Any) -> float:
    """A float, or NaN (shown as ``-``) for a missing value."""
    return number(value, math.nan)


def format_duration(seconds: float) -> str:
    """``"0.4 s"``, ``"12.3 s"``, ``"3m 05s"``, ``"2h 03m"``."""
    seconds = max(0.0, number(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m {s:02d}s"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h {rest // 60:02d}m"


def format_size(n: float) -> str:
    """Bytes in three significant digits: ``"508 MiB"``, ``"23.5 GiB"``, ``"1.64 KiB"``."""
    n = max(0.0, number(n))
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= 0.95 * size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def format_memory(used: float, limit: float) -> str:
    """``"508 MiB / 23.5 GiB"`` (or just the used bytes when there is no limit)."""
    if limit and limit > 0:
        return f"{format_size(used)} / {format_size(limit)}"
    return format_size(used)


def safe_link(url: Any) -> str:
    """Only plain http(s) links are rendered as links."""
    if isinstance(url, str) and (url.startswith("http://") or url.startswith("https://")):
        return url
    return ""
