"""``grid node``: a Dask worker (through distributed's Nanny) that joins one region.

The node checks, before it starts, that the scheduler serves the region it
was told to join. On SIGTERM or SIGINT it asks the scheduler to *retire* it,
so the partitions only it holds are copied to other nodes first, and only
then closes; a stock ``dask worker`` would just close. When the scheduler
does not answer (its host is gone) the node closes without it within seconds,
and a second signal ends it at once.

A node whose scheduler is not there yet, or goes away, waits for it and joins
again by itself under the same name and options: distributed's worker does not
reconnect (its process ends with its scheduler connection), so the node starts
new worker processes once the scheduler answers again. Attempts are spaced by
exponential backoff with full jitter (``grid.node.reconnect``), so a restarted
scheduler is not met by every node at the same instant, until the operator
stops the node or its ``death_timeout`` (``grid node --death-timeout``, as
``dask worker``'s) passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable
from typing import Any

from distributed import Nanny
from distributed.comm import CommClosedError
from distributed.core import rpc
from dask.utils import parse_timedelta

from grid import config
from grid.node.community import CommunityMode
from grid.node.rounds import STARTUP_INFORMATION, NodeRounds
from grid.signals import StopSignals

logger = logging.getLogger("grid.node")


def default_name() -> str:
    """Host name plus process id: unique on one host; pass --name for a stable identity."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _connection_args(security: Any) -> dict:
    from distributed.security import Security

    return (security or Security()).get_connection_args("client")


async def check_region(scheduler: str, region: str, security: Any = None, timeout: float = 30) -> None:
    """Refuse to join a scheduler that serves another region (or no grid at all).

    Raises
    ------
    OSError
        The scheduler did not answer within ``timeout`` seconds (nothing
        listens there, or it hangs): worth trying again later.
    RuntimeError
        It answered, but not as a grid scheduler of ``region``: trying again
        does not help.
    """
    connection_args = _connection_args(security)
    async with rpc(scheduler, connection_args=connection_args, timeout=timeout) as r:
        try:
            info = await asyncio.wait_for(r.grid_info(), timeout)
        except OSError:  # unreachable, refused, closed or timed out (TimeoutError is an OSError)
            raise
        except Exception as exc:  # noqa: BLE001 - say what is wrong in grid terms
            raise RuntimeError(
                f"the scheduler at {scheduler} did not answer as a grid scheduler ({exc}); "
                "start it with `grid scheduler --region ...`"
            ) from None
    if info.get("region") != region:
        raise RuntimeError(
            f"the scheduler at {scheduler} serves region {info.get('region')!r}, not {region!r}; "
            "pass the right --region or --scheduler"
        )


async def scheduler_reachable(scheduler: str, security: Any = None, timeout: float = 5) -> bool:
    """Whether the scheduler answers a grid call within ``timeout`` seconds.

    A scheduler whose host vanished or hangs does not refuse the connection, it
    never answers; a node that is stopping must not wait for it longer than this.
    """
    try:
        async with rpc(scheduler, connection_args=_connection_args(security), timeout=timeout) as r:
            await asyncio.wait_for(r.grid_info(), timeout)
        return True
    except Exception:  # noqa: BLE001 - unreachable, refused or hung: all mean "cannot retire"
        return False


async def retire(nanny: Nanny, scheduler: str, security: Any = None) -> None:
    """Retire through the scheduler (data copied off first), then close."""
    address = nanny.worker_address
    connection_args = _connection_args(security)
    if address:
        timeout = config.seconds("node.retire-timeout")
        try:
            async with rpc(scheduler, connection_args=connection_args, timeout=timeout) as r:
                await asyncio.wait_for(r.retire_workers(workers=[address], close_workers=False, remove=True), timeout)
            logger.info("node %s retired from %s", address, scheduler)
        except Exception as exc:  # noqa: BLE001 - close anyway; the scheduler may be gone
            logger.warning("could not retire %s gracefully (%s); closing", address, exc)
    await close_nanny(nanny, "grid-node-retired")


#: seconds a nanny may take to close its worker before the worker process is killed
CLOSE_TIMEOUT = 5


def kill_worker_processes(nannies: list[Nanny]) -> None:
    """SIGKILL the worker process of every nanny (a worker that hangs on its way out)."""
    for nanny in nannies:
        process = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def close_nanny(nanny: Nanny, reason: str) -> None:
    """Close ``nanny`` and its worker; kill the worker process when closing hangs."""
    try:
        await asyncio.wait_for(nanny.close(timeout=CLOSE_TIMEOUT, reason=reason), CLOSE_TIMEOUT + 2)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker still waiting for a scheduler that is gone
        logger.warning("node %s did not close in time (%s); killing its worker process", nanny.worker_address, exc)
        kill_worker_processes([nanny])


async def stop_nodes(nannies: list[Nanny], scheduler: str, security: Any = None) -> None:
    """Retire every worker through the scheduler when it answers; close them without it when not."""
    if await scheduler_reachable(scheduler, security):
        await asyncio.gather(*(retire(n, scheduler, security) for n in nannies))
    else:
        logger.warning("scheduler %s does not answer: closing without retiring (its data is not copied off)", scheduler)
        await asyncio.gather(*(close_nanny(n, "grid-node-stopped-without-scheduler") for n in nannies))


#: exit status of `grid node` when no scheduler answered for its death timeout
#: (at start, or after its scheduler went away): non-zero, so systemd's
#: Restart=on-failure brings the node back (EX_TEMPFAIL)
EXIT_LOST_SCHEDULER = 75
#: exit status after a second SIGTERM/SIGINT cut the graceful stop short
EXIT_FORCED = 1

#: seconds one attempt to reach the scheduler may take; one that does not answer
#: within it (nothing listens, or its host hangs) is not there (as scheduler_reachable)
PROBE_TIMEOUT = 5
#: seconds new worker processes may take to start and register once the scheduler
#: answered; after that (it went away again in between) the node waits for it anew
START_TIMEOUT = 60


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential backoff with full jitter.

    Uniform in ``[0, min(cap, base * 2**attempt)]`` ("full jitter"): the
    nodes of a region that lost their scheduler at the same moment spread
    their attempts out instead of all meeting the restarted scheduler at
    once, while the expected wait still doubles up to ``cap / 2``.

    Parameters
    ----------
    attempt : int
        Failed attempts so far, minus one (0 after the first failure).
    base, cap : float
        Seconds: the first upper bound, and the largest one.
    rng : random.Random, optional
        Source of randomness (default: the ``random`` module's).

    Returns
    -------
    float
    """
    upper = min(cap, base * 2 ** min(attempt, 62))  # min(): 2**attempt must not overflow a float
    return (rng or random).uniform(0, upper)


def _failure_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (a nanny wraps its worker's failure twice)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def _start_failure_is_transient(exc: BaseException, rejoining: bool) -> bool:
    """Whether a worker that failed to start should try again later instead of ending the node.

    A start that timed out, or whose connection to the scheduler closed, means
    the scheduler went away between answering and the end of the start: wait
    for it again. After the node lost its scheduler every failed start is
    tried again (with backoff): the scheduler may still list the node's
    previous worker under its name until it notices that one is gone, and the
    old worker process may still hold its port; the worker process's reason
    does not reach the nanny, so the two cannot be told from a lasting refusal.
    At the first start, a failure of any other kind (a quarantined or
    duplicate name, a port in use) ends the node with status 1, as a stock
    ``dask worker`` does.
    """
    if rejoining:
        return True
    return any(isinstance(e, (TimeoutError, ConnectionError, CommClosedError)) for e in _failure_chain(exc))


def _refusal(exc: BaseException, scheduler: str) -> RuntimeError:
    """A failed first start, with where to look: the worker's reason is in the log above."""
    root = _failure_chain(exc)[-1]
    return RuntimeError(
        f"the worker could not join the scheduler at {scheduler} ({root}); the log above and the scheduler's "
        "log say why (e.g. a quarantined node, or a --name another live node uses)"
    )


async def _result_until(signals: StopSignals, awaitable: Awaitable[Any]) -> tuple[bool, Any]:
    """:meth:`StopSignals.until` that also returns the awaitable's result (None after a signal)."""
    box: list[Any] = []

    async def run() -> None:
        box.append(await awaitable)

    stopped = await signals.until(run())
    return stopped, (box[0] if box else None)


async def wait_for_scheduler(
    scheduler: str, region: str, security: Any = None, *, deadline: float | None = None, rng: random.Random | None = None
) -> bool:
    """Ask the scheduler for its region until it answers; back off between attempts.

    Each attempt waits at most :data:`PROBE_TIMEOUT` seconds; between attempts
    the node sleeps :func:`backoff_delay` seconds (``grid.node.reconnect.base``
    doubling up to ``grid.node.reconnect.cap``, full jitter). One INFO line
    per failed attempt.

    Parameters
    ----------
    deadline : float, optional
        ``time.monotonic()`` after which to give up; None waits until cancelled.

    Returns
    -------
    bool
        True once the scheduler answered as the grid scheduler of ``region``,
        False when ``deadline`` passed first.

    Raises
    ------
    RuntimeError
        The scheduler answered, but serves another region or no grid.
    """
    base, cap = config.seconds("node.reconnect.base"), config.seconds("node.reconnect.cap")
    attempt = 0
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        timeout = PROBE_TIMEOUT if left is None else max(0.1, min(PROBE_TIMEOUT, left))
        try:
            await check_region(scheduler, region, security, timeout=timeout)
            return True
        except OSError as exc:
            delay = backoff_delay(attempt, base, cap, rng)
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            attempt += 1
            why = str(exc) or f"no answer within {timeout:g} s"
            logger.info("scheduler %s not reachable (attempt %d: %s); next attempt in %.1f s", scheduler, attempt, why, delay)
            await asyncio.sleep(delay)


async def run_node(
    scheduler: str,
    region: str,
    *,
    nthreads: int = 1,
    memory_limit: str | int = "auto",
    name: str | None = None,
    security: Any = None,
    community: bool = True,
    allow_admin_tasks: bool = False,
    plugins: tuple = (),
    ready: Any = None,
    nworkers: int = 1,
    worker_kwargs: list[dict] | None = None,
    death_timeout: float | None = None,
    **nanny_kwargs: Any,
) -> int:
    """Run a node (``nworkers`` worker processes) until SIGTERM/SIGINT, its lifetime or its death timeout.

    The node waits for the scheduler before it starts its workers, and again
    whenever the scheduler goes away: then it starts new worker processes
    under the same names and options once the scheduler answers (see
    :func:`wait_for_scheduler`). On the first signal each worker retires
    through the scheduler when the scheduler answers (its data copied off
    first, within ``grid.node.retire-timeout``), and closes without it when it
    does not; a signal while the node waits for its scheduler ends it at once;
    a second signal kills the workers and exits at once.

    Parameters
    ----------
    nworkers : int
        Worker processes (one Nanny each), as ``dask worker --nworkers``;
        with more than one, each is named ``NAME-i``.
    worker_kwargs : list of dict, optional
        Per-worker Nanny keywords (e.g. ports), one dict per worker.
    death_timeout : float, optional
        Seconds to wait for a scheduler (at start, or after it went away)
        before giving up, as ``dask worker --death-timeout``; None waits
        until stopped.
    **nanny_kwargs
        Further ``distributed.Nanny`` keywords shared by all workers
        (``host``, ``contact_address``, ``resources``, ``lifetime``, ...).

    Returns
    -------
    int
        The process exit status: 0 after a requested stop (also while
        waiting for the scheduler) or after the node's ``lifetime``,
        :data:`EXIT_LOST_SCHEDULER` when no scheduler answered for
        ``death_timeout`` seconds, :data:`EXIT_FORCED` after a second signal.

    Raises
    ------
    RuntimeError
        The scheduler serves another region or no grid, or refused the
        node's workers (e.g. a quarantined node).
    """
    base = name or default_name()
    per_worker = worker_kwargs or [{} for _ in range(nworkers)]
    nannies: list[Nanny] = []

    def new_nannies() -> list[Nanny]:
        # the same names, certificate, ports and plugins at every (re)join: the same node to the scheduler
        return [
            Nanny(
                scheduler,
                nthreads=nthreads,
                memory_limit=memory_limit,
                name=base if nworkers == 1 else f"{base}-{i}",
                security=security,
                silence_logs=False,
                # distributed's bound on a start: a scheduler that went away again after it answered
                # fails the start (TimeoutError) instead of leaving the worker retrying every 0.1 s
                death_timeout=START_TIMEOUT,
                plugins=(
                    *((CommunityMode(allow_admin_tasks=allow_admin_tasks),) if community else ()),
                    NodeRounds(),
                    *plugins,
                ),
                # the node's grid profile (dial-out or open) travels with its registration
                startup_information=STARTUP_INFORMATION,
                **nanny_kwargs,
                **per_worker[i],
            )
            for i in range(nworkers)
        ]

    def force(sig: int) -> None:
        logger.warning("second signal %s: killing the workers and exiting now", signal.Signals(sig).name)
        kill_worker_processes(nannies)
        os._exit(EXIT_FORCED)

    # handlers first: a signal while the workers start (or wait for a scheduler that is gone) stops them too
    signals = StopSignals(on_next_signal=force)
    waiting_since = time.monotonic()  # the death timeout counts from the start, then from each loss
    joined_before = False
    failed_starts = 0  # in a row: spaced like unanswered attempts, so a refusal does not spin
    while True:
        deadline = None if death_timeout is None else waiting_since + death_timeout
        if failed_starts:
            delay = backoff_delay(failed_starts - 1, config.seconds("node.reconnect.base"), config.seconds("node.reconnect.cap"))
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            logger.info("the workers did not join %s (start %d failed); next attempt in %.1f s", scheduler, failed_starts, delay)
            if await signals.until(asyncio.sleep(delay)):
                logger.info("stopped while waiting for the scheduler")
                return 0
        stopped, reached = await _result_until(signals, wait_for_scheduler(scheduler, region, security, deadline=deadline))
        if stopped:
            logger.info("stopped while waiting for the scheduler")
            return 0
        if not reached:
            logger.warning(
                "no scheduler answered at %s for %s s (--death-timeout): exiting with status %d",
                scheduler, death_timeout, EXIT_LOST_SCHEDULER,
            )
            return EXIT_LOST_SCHEDULER
        started = time.monotonic()
        nannies = new_nannies()
        try:
            stopped = await signals.until(asyncio.gather(*nannies))
        except Exception as exc:
            await asyncio.gather(*(close_nanny(n, "grid-node-failed-to-start") for n in nannies), return_exceptions=True)
            if _start_failure_is_transient(exc, rejoining=joined_before):
                failed_starts += 1
                continue
            raise _refusal(exc, scheduler) from exc
        except BaseException:
            await asyncio.gather(*(close_nanny(n, "grid-node-failed-to-start") for n in nannies), return_exceptions=True)
            raise
        if stopped:
            logger.info("stopped while starting")
            await asyncio.gather(*(close_nanny(n, "grid-node-stopped") for n in nannies))
            return 0
        failed_starts = 0
        for nanny in nannies:
            logger.info("node %s joined region %s at %s", nanny.worker_address, region, scheduler)
        stopped = await signals.serve(nannies if nworkers > 1 else nannies[0], None if joined_before else ready)
        joined_before = True
        if stopped:
            logger.info("node stopping on a signal (a second one ends it at once)")
            await stop_nodes(nannies, scheduler, security)
            return 0
        # a worker ends on its own when its scheduler is gone, or when its --lifetime is over
        await asyncio.gather(*(close_nanny(n, "grid-node-ended") for n in nannies if n.status.name != "closed"))
        lifetime = nanny_kwargs.get("lifetime")
        if lifetime and time.monotonic() - started >= parse_timedelta(lifetime) - parse_timedelta(nanny_kwargs.get("lifetime_stagger") or 0):
            logger.info("node ended after its lifetime of %s", lifetime)
            return 0
        waiting_since = time.monotonic()
        logger.warning(
            "lost the scheduler at %s; joining it again as %r when it answers (%s)",
            scheduler, base, "until stopped" if death_timeout is None else f"for up to {death_timeout:g} s",
        )
