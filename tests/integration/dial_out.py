"""An embedded TLS region whose nodes dial out and cannot be dialed, for in-process tests.

The nodes advertise an address nothing listens on (``contact_address``), so
any attempt to dial one fails at once: what works was served entirely over
connections the nodes opened.
"""

from __future__ import annotations

import asyncio

import dask
from distributed import Worker
from distributed.utils import sync
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.node.rounds import STARTUP_INFORMATION, NodeRounds
from grid.security.certs import issue
from jobs import PartialFit

#: ports nothing listens on: a node advertising one can never be dialed
UNREACHABLE_PORTS = iter(range(1, 100))
#: a value no honest reply carries: the victim's rows are made of it
SECRET = 7.123456789012345


def job(rounds: int = 3) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=rounds, partition_rows=1000)


class DialOutGrid:
    """An embedded TLS region whose nodes dial out and cannot be dialed."""

    def __init__(self, state_dir: str | None = None) -> None:
        # a durable region keeps its jobs in ``state_dir`` (grid.scheduler.state-dir)
        with dask.config.set({"grid.scheduler.state-dir": state_dir}):
            self.g = Grid.local(regions={"eu": 0}, processes=False, dashboard=False, tls=True)
        self.cluster = self.g._local.clusters["eu"]
        self.throwaway = self.g._local.throwaway
        self.address = self.g.spec.regions["eu"].address
        self.workers: dict[str, Worker] = {}
        self.certs: dict[str, object] = {}

    @property
    def plugin(self):
        return self.cluster.scheduler.plugins["grid"]

    def add_node(self, name: str, rounds: bool = True, profile: bool = True, reachable: bool = False) -> Worker:
        """A node nothing can dial; ``profile=False``: a stock worker (no grid profile, so it is checked);
        ``reachable=True``: an open node, listening where it says."""
        cert = self.certs[name] = issue(self.throwaway.ca, "node", name, region="eu")

        async def start() -> Worker:
            unreachable = None if reachable else f"tls://127.0.0.1:{next(UNREACHABLE_PORTS)}"
            with dask.config.set({"grid.node.dial-out": not reachable}):
                worker = Worker(
                    self.address, security=cert.security(), nthreads=1, host="127.0.0.1",
                    contact_address=unreachable,
                    plugins={NodeRounds()} if rounds else set(),
                    startup_information=STARTUP_INFORMATION if profile else {},
                )
                return await worker

        self.workers[name] = sync(self.cluster.loop, start)
        return self.workers[name]

    def stop_scheduler(self) -> None:
        """Stop the region's scheduler before its nodes, as `grid scheduler` does on SIGTERM."""
        self.cluster.sync(self.cluster.scheduler.close)

    def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(*(w.close() for w in self.workers.values()), return_exceptions=True)

        try:
            sync(self.cluster.loop, stop)
        finally:
            self.g.close()
