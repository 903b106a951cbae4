"""Waiting for a condition by asking again: the one poll loop of the tests and the benchmarks.

For code that can only ask (another process's state, a scheduler's answer)
and has no event to wait on. The interval is how often to ask, not a guess at
how long the condition takes; the timeout bounds the wait and names what did
not happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Parameters
    ----------
    predicate : callable
        Asked first at once, then every ``interval`` seconds.
    timeout : float, default=30.0
        Seconds to wait at most.
    what : str, default="condition"
        What is awaited, for the error message.
    interval : float, default=0.05
        Seconds between two calls.

    Returns
    -------
    object
        The first truthy value ``predicate`` returned.

    Raises
    ------
    TimeoutError
        ``predicate`` stayed falsy for ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # how often to ask, not a guess at how long the condition takes
