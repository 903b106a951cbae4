"""Calling a distributed handler the way distributed's Server does.

The grid wraps entries of the handler tables of schedulers and nodes (role
checks, quarantine, community mode); each wrapper hands the call on with this.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def expects_comm(handler: Callable) -> bool:
    """Whether ``handler``'s first parameter is ``comm`` (as distributed checks)."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False
    return bool(params) and next(iter(params)) == "comm"


async def call_handler(handler: Callable, comm: Any, msg: dict) -> Any:
    """Call ``handler`` with or without ``comm``, awaiting its result if needed."""
    result = handler(comm, **msg) if expects_comm(handler) else handler(**msg)
    if inspect.isawaitable(result):
        result = await result
    return result
