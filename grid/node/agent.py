"""``grid node``: a Dask worker (through distributed's Nanny) that joins one region.

The node checks, before it starts, that the scheduler serves the region it
was told to join. On SIGTERM or SIGINT it asks the scheduler to *retire* it,
so the partitions only it holds are copied to other nodes first, and only
then closes; a stock ``dask worker`` would just close. When the scheduler
does not answer (its host is gone) the node closes without it within seconds,
and a second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from distributed import Nanny
from distributed.core import rpc
from dask.utils import parse_timedelta

from grid import config
from grid.node.community import CommunityMode
from grid.node.rounds import NodeRounds
from grid.signals import StopSignals

logger = logging.getLogger("grid.node")


def default_name() -> str:
    """Host name plus process id: unique on one host; pass --name for a stable identity."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _connection_args(security: Any) -> dict:
    from distributed.security import Security

    return (security or Security()).get_connection_args("client")


async def check_region(scheduler: str, region: str, security: Any = None, timeout: float = 30) -> None:
    """Refuse to join a scheduler that serves another region (or no grid at all)."""
    connection_args = _connection_args(security)
    async with rpc(scheduler, connection_args=connection_args, timeout=timeout) as r:
        try:
            info = await r.grid_info()
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


#: exit status of `grid node` when its worker ended without being told to stop
#: (e.g. the scheduler went away): non-zero, so systemd's Restart=on-failure
#: brings the node back (EX_TEMPFAIL)
EXIT_LOST_SCHEDULER = 75
#: exit status after a second SIGTERM/SIGINT cut the graceful stop short
EXIT_FORCED = 1


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
    **nanny_kwargs: Any,
) -> int:
    """Run a node (``nworkers`` worker processes) until SIGTERM/SIGINT or until its workers end.

    On the first signal each worker retires through the scheduler when the
    scheduler answers (its data copied off first, within
    ``grid.node.retire-timeout``), and closes without it when it does not; a
    second signal kills the workers and exits at once.

    Parameters
    ----------
    nworkers : int
        Worker processes (one Nanny each), as ``dask worker --nworkers``;
        with more than one, each is named ``NAME-i``.
    worker_kwargs : list of dict, optional
        Per-worker Nanny keywords (e.g. ports), one dict per worker.
    **nanny_kwargs
        Further ``distributed.Nanny`` keywords shared by all workers
        (``host``, ``contact_address``, ``resources``, ``lifetime``, ...).

    Returns
    -------
    int
        The process exit status: 0 after a requested stop,
        :data:`EXIT_LOST_SCHEDULER` when the node ended on its own
        (0 when that was its ``lifetime``),
        :data:`EXIT_FORCED` after a second signal.
    """
    await check_region(scheduler, region, security)
    started = time.monotonic()
    base = name or default_name()
    per_worker = worker_kwargs or [{} for _ in range(nworkers)]
    nannies = [
        Nanny(
            scheduler,
            nthreads=nthreads,
            memory_limit=memory_limit,
            name=base if nworkers == 1 else f"{base}-{i}",
            security=security,
            silence_logs=False,
            plugins=(
                *((CommunityMode(allow_admin_tasks=allow_admin_tasks),) if community else ()),
                NodeRounds(),
                *plugins,
            ),
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
    try:
        stopped = await signals.until(asyncio.gather(*nannies))
    except BaseException:
        await asyncio.gather(*(close_nanny(n, "grid-node-failed-to-start") for n in nannies), return_exceptions=True)
        raise
    if stopped:
        logger.info("stopped while starting")
        await asyncio.gather(*(close_nanny(n, "grid-node-stopped") for n in nannies))
        return 0
    for nanny in nannies:
        logger.info("node %s joined region %s at %s", nanny.worker_address, region, scheduler)
    stopped = await signals.serve(nannies if nworkers > 1 else nannies[0], ready)
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
    return EXIT_LOST_SCHEDULER
