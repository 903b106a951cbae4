"""``grid node``: a Dask worker (through distributed's Nanny) that joins one region.

The node checks, before it starts, that the scheduler serves the region it
was told to join. On SIGTERM or SIGINT it asks the scheduler to *retire* it,
so the partitions only it holds are copied to other nodes first, and only
then closes; a stock ``dask worker`` would just close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from distributed import Nanny
from distributed.core import rpc

from grid import config
from grid.node.community import CommunityMode
from grid.node.rounds import NodeRounds
from grid.signals import serve_until_signal

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


async def retire(nanny: Nanny, scheduler: str, security: Any = None) -> None:
    """Retire through the scheduler (data copied off first), then close."""
    address = nanny.worker_address
    connection_args = _connection_args(security)
    if address:
        timeout = config.seconds("node.retire-timeout")
        try:
            async with rpc(scheduler, connection_args=connection_args) as r:
                await asyncio.wait_for(r.retire_workers(workers=[address], close_workers=False, remove=True), timeout)
            logger.info("node %s retired from %s", address, scheduler)
        except Exception as exc:  # noqa: BLE001 - close anyway; the scheduler may be gone
            logger.warning("could not retire %s gracefully (%s); closing", address, exc)
    await nanny.close(reason="grid-node-retired")


#: exit status of `grid node` when its worker ended without being told to stop
#: (e.g. the scheduler went away): non-zero, so systemd's Restart=on-failure
#: brings the node back (EX_TEMPFAIL)
EXIT_LOST_SCHEDULER = 75


async def run_node(
    scheduler: str,
    region: str,
    *,
    nthreads: int = 1,
    memory_limit: str | int = "auto",
    name: str | None = None,
    security: Any = None,
    community: bool = True,
    plugins: tuple = (),
    ready: Any = None,
) -> int:
    """Run one node until SIGTERM/SIGINT (retire gracefully) or the nanny ends.

    Returns
    -------
    int
        The process exit status: 0 after a requested stop,
        :data:`EXIT_LOST_SCHEDULER` when the node ended on its own.
    """
    await check_region(scheduler, region, security)
    nanny = Nanny(
        scheduler,
        nthreads=nthreads,
        memory_limit=memory_limit,
        name=name or default_name(),
        security=security,
        silence_logs=False,
        plugins=(*((CommunityMode(),) if community else ()), NodeRounds(), *plugins),
    )
    await nanny
    logger.info("node %s joined region %s at %s", nanny.worker_address, region, scheduler)
    stopped = await serve_until_signal(nanny, ready)
    if stopped:
        await retire(nanny, scheduler, security)
    return 0 if stopped else EXIT_LOST_SCHEDULER
