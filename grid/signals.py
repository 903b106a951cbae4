"""Serve a distributed server until SIGTERM/SIGINT or until it ends by itself."""

from __future__ import annotations

import asyncio
import signal
from typing import Any


async def serve_until_signal(server: Any, ready: Any = None) -> bool:
    """Wait for SIGTERM/SIGINT or for ``server.finished()``.

    Parameters
    ----------
    server : distributed Server (Scheduler, Nanny, ...), already started
    ready : callable, optional
        Called with ``server`` once the signal handlers are installed.

    Returns
    -------
    bool
        True when a signal asked to stop, False when the server ended on its own.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(server)
    finished = asyncio.ensure_future(server.finished())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([finished, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopper.cancel()
    return stop.is_set()
