"""Serve a distributed server until SIGTERM/SIGINT or until it ends by itself."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any


class StopSignals:
    """SIGTERM/SIGINT handling installed before a server starts, so that a signal during
    startup stops it too instead of killing the process with its children behind.

    Parameters
    ----------
    on_next_signal : callable, optional
        Called with the signal number for every SIGTERM/SIGINT after the first,
        while the caller is still stopping (e.g. to exit at once: an operator
        who signals twice does not want to wait). Without it later signals are
        ignored.
    """

    def __init__(self, on_next_signal: Callable[[int], Any] | None = None) -> None:
        self.on_next_signal = on_next_signal
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._handle, sig)

    def _handle(self, sig: int) -> None:
        if not self.event.is_set():
            self.event.set()
        elif self.on_next_signal is not None:
            self.on_next_signal(sig)

    @property
    def stopped(self) -> bool:
        """Whether a signal asked to stop."""
        return self.event.is_set()

    async def until(self, awaitable: Any) -> bool:
        """Wait for ``awaitable`` or a signal, whichever comes first; cancel ``awaitable`` on a signal.

        Returns
        -------
        bool
            True when a signal asked to stop (``awaitable`` then did not finish).
        """
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled() and not self.stopped:
            task.result()  # a failure of the awaitable itself
        return self.stopped

    async def serve(self, server: Any, ready: Any = None) -> bool:
        """Wait for a signal or for ``server.finished()`` (all of them, given a sequence).

        Returns
        -------
        bool
            True when a signal asked to stop, False when the server ended on its own.
        """
        servers = list(server) if isinstance(server, (list, tuple)) else [server]
        if ready is not None:
            ready(server)
        return await self.until(asyncio.gather(*(s.finished() for s in servers)))


async def serve_until_signal(server: Any, ready: Any = None, *, on_next_signal: Callable[[int], Any] | None = None) -> bool:
    """Wait for SIGTERM/SIGINT or for ``server.finished()``.

    Parameters
    ----------
    server : distributed Server (Scheduler, Nanny, ...) or a sequence of them, already started
        With several, "ended on its own" means all of them ended.
    ready : callable, optional
        Called with ``server`` once the signal handlers are installed.
    on_next_signal : callable, optional
        As for :class:`StopSignals`.

    Returns
    -------
    bool
        True when a signal asked to stop, False when the server ended on its own.
    """
    return await StopSignals(on_next_signal).serve(server, ready)
