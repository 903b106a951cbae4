"""This region's share of jobs, and the regions it dials: one extension of the grid's scheduler plugin.

A job trains on the partitions of every region of its placement. Its share
on each region is a :class:`~grid.scheduler.driver.RegionRun`, kept here
(``runs``) whether the job's home is this region (the jobs extension
attaches it, ``grid/scheduler/job_handlers.py``) or another one, whose
scheduler calls the handlers this extension registers:

* ``grid_attach``: check the request and the owner's dataset, make the run;
* ``grid_region_round``: one round on this region, the regional aggregate
  back as a wire blob;
* ``grid_detach``: free the run (and the job's own data).

Only other schedulers may call them (``SCHEDULER_ONLY`` in
``grid/scheduler/access.py``). The other way round, :meth:`RegionShare.peer_address`
says which address this scheduler dials for another region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grid import config, wire
from grid.protocol.requests import check_request
from grid.scheduler import recovery
from grid.scheduler.access import is_tls
from grid.scheduler.driver import RegionRun
from grid.scheduler.replies import error_reply
from jobs.spec import SpecError, resolve_class

if TYPE_CHECKING:
    from grid.scheduler.datasets import Dataset
    from grid.scheduler.plugin import GridSchedulerPlugin


class RegionShare:
    """The region runs of one scheduler, the handlers other regions call, and its peers.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        The region's grid plugin (its datasets and settings are read here).
    """

    #: what a job's share of this region is made of (a subclass may instrument it)
    run_class: type[RegionRun] = RegionRun

    def __init__(self, plugin: "GridSchedulerPlugin") -> None:
        self.plugin = plugin
        self.region = plugin.region
        self.runs: dict[str, RegionRun] = {}
        #: other regions this scheduler may dial (besides grid.scheduler.peers): region -> address
        self.peers: dict[str, str] = {}

    def install(self) -> None:
        self.plugin.scheduler.handlers.update(
            {"grid_attach": self.attach, "grid_detach": self.detach, "grid_region_round": self.region_round}
        )

    def peer_address(self, region: str, claimed: str) -> str:
        """The address this scheduler dials for ``region``: the one its operator configured.

        A job request names the regions it trains in, with the addresses the
        client knows; a scheduler never dials an address a request names (a
        listener an attacker runs would read this scheduler's requests and
        answer them). On TLS grids a region must be one of
        ``grid.scheduler.peers``; plaintext grids authenticate nobody, so
        there the client's address is used when no peer is configured.
        """
        peers = {**(config.get("scheduler.peers") or {}), **self.peers}
        if region in peers:
            return str(peers[region])
        if self.plugin.scheduler is not None and is_tls(self.plugin.scheduler):
            known = ", ".join(sorted(peers)) or "none"
            raise ValueError(
                f"region {region!r} is not a peer of region {self.region!r} (peers: {known}); a scheduler dials only "
                f"the regions its operator lists: `grid scheduler --peer {region}=ADDRESS` or grid.scheduler.peers"
            )
        return str(claimed)

    # --- a job's run on this region ------------------------------------------------
    def attach_local(self, job_id: str, request: dict, dataset: "Dataset") -> None:
        """Make the job's run on this region's partitions of ``dataset``."""
        previous = self.runs.pop(job_id, None)
        if previous is not None:  # attached again by a home scheduler that restarted
            previous.close()
        self.runs[job_id] = self.run_class(self.plugin, job_id, request, dataset)
        dataset.users.add(job_id)

    def detach_local(self, job_id: str, drop_dataset: bool) -> None:
        """Free the job's run on this region and, with ``drop_dataset``, its own data."""
        run = self.runs.pop(job_id, None)
        if run is None:
            return
        run.close()
        run.dataset.users.discard(job_id)
        if drop_dataset and run.dataset.job_owned:  # the scheduler's record decides, not the client's flag
            self.plugin.datasets.store.drop(run.dataset.name)
            recovery.forget_recipe(self.plugin, run.dataset.name)

    # --- handlers: called by the job's home scheduler ------------------------------
    def attach(self, job_id: str, request: dict, dataset: str, home: str = "", owner: str | None = None) -> dict:
        try:
            resolve_class(request["estimator"]["class"], self.plugin.allowed_modules)
            check_request(request)
            # the home scheduler names the job's owner: the dataset must be theirs (None: an older home)
            self.attach_local(job_id, request, self.plugin.datasets.dataset_for(None, dataset, owner))
        except (KeyError, SpecError, ValueError, TypeError, PermissionError) as exc:
            return error_reply(exc)
        return {"status": "OK"}

    def detach(self, job_id: str, drop_dataset: bool = False) -> dict:
        self.detach_local(job_id, drop_dataset)
        return {"status": "OK"}

    async def region_round(self, job_id: str, round_no: int, state: bytes | None) -> dict:
        run = self.runs.get(job_id)
        if run is None:
            return error_reply(KeyError(f"job {job_id!r} is not attached to region {self.region!r}"))
        try:
            result = await run.run_round(round_no, state)
        except Exception as exc:  # noqa: BLE001 - the home scheduler decides what a failure means
            return error_reply(exc)
        return {
            "status": "OK",
            "state": wire.encode(result["state"]),
            "weight": result["weight"],
            "metrics": result["metrics"],
        }
