"""Where the dashboard's data comes from: readers of the regional schedulers, and what one session looks at.

Everything shown on the page comes from what the regional schedulers report
through the grid's RPC handlers (``grid_info``, ``grid_jobs``,
``grid_job``); nothing imports the scheduler side of the grid.

A view (:class:`GridView`) keeps the last answers and interprets them; its
two readers fetch them: :class:`GridClientView` through a
:class:`grid.Grid` (synchronous, handy in scripts and tests),
:class:`GridRPCView` through asynchronous RPC calls (used by the Bokeh
server, which must not block its event loop). A view also remembers nodes
it saw before so that a node that vanished is shown as ``gone``.
:class:`Selection` is the region and job one page session looks at.
No Bokeh here: the components (:mod:`grid.dashboard.components`) read a view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grid.dashboard.formatting import number
from grid.handlers import call_handler

#: node states the dashboard always counts (the scheduler may report others too)
NODE_STATES = ("active", "paused", "quarantined")
#: shown for a node that a region reported before and no longer does
GONE = "gone"
#: shown for a region whose scheduler did not answer
UNREACHABLE = "unreachable"
#: state of the last known nodes of an unreachable region
UNKNOWN = "unknown"


class GridView:
    """The last answers of every region's scheduler, plus what the dashboard derives.

    Subclasses fetch (:class:`GridClientView`, :class:`GridRPCView`); this
    class only keeps and interprets the replies, so every component reads
    the same snapshot.

    Parameters
    ----------
    regions : mapping of str to str
        Region name to scheduler address, in display order.
    gone_ttl : float, default 600
        Seconds a vanished node stays listed as ``gone``.

    Attributes
    ----------
    info : dict of str to dict
        Last ``grid_info`` reply per region that answered.
    errors : dict of str to str
        Why a region did not answer on the last refresh.
    jobs : list of dict
        Job summaries of every region, newest first.
    details : dict of str to dict
        ``grid_job`` replies (summary plus ``history``) of the jobs asked for
        with :meth:`refresh_job`.
    updated : float or None
        Wall-clock time of the last refresh.
    """

    def __init__(self, regions: Mapping[str, str], *, gone_ttl: float = 600.0) -> None:
        self.regions: dict[str, str] = dict(regions)
        self.gone_ttl = float(gone_ttl)
        self.info: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.jobs: list[dict] = []
        self.details: dict[str, dict] = {}
        self.updated: float | None = None
        self._fresh: set[str] = set()  # jobs whose detail was fetched after the last job list
        self._nodes: dict[str, dict[str, dict]] = {r: {} for r in self.regions}
        self._tasks: dict[str, tuple[float, float]] = {}
        self._rates: dict[str, float] = {}

    # --- ingestion (called by the readers) --------------------------------------------
    def _set_info(self, region: str, reply: Any, now: float) -> None:
        if not isinstance(reply, dict) or reply.get("status") != "OK":
            message = reply.get("message", reply) if isinstance(reply, dict) else reply
            self._set_error(region, f"grid_info failed: {message}")
            return
        self.info[region] = reply
        self.errors.pop(region, None)
        seen = self._nodes.setdefault(region, {})
        current = set()
        for w in reply.get("workers", []):
            current.add(w["address"])
            seen[w["address"]] = {**w, "last_seen": now}
        for address in list(seen):
            if address in current:
                continue
            node = seen[address]
            if node.get("state") != GONE:
                seen[address] = {**node, "state": GONE, "status": GONE, "cpu": 0.0, "executing": 0}
            if now - node["last_seen"] > self.gone_ttl:
                del seen[address]
        self._update_rate(region, reply, now)

    def _update_rate(self, region: str, reply: dict, now: float) -> None:
        total = reply.get("tasks_done")
        if total is None:
            counts = [w.get("tasks_done") for w in reply.get("workers", [])]
            total = sum(counts) if counts and all(c is not None for c in counts) else None
        if total is None:
            self._rates[region] = 0.0
            return
        t = number(reply.get("time"), now)
        previous = self._tasks.get(region)
        self._tasks[region] = (t, float(total))
        if previous is not None and t > previous[0]:
            self._rates[region] = max(0.0, (float(total) - previous[1]) / (t - previous[0]))

    def _set_error(self, region: str, message: str) -> None:
        self.errors[region] = message
        self.info.pop(region, None)

    def _set_jobs(self, jobs: Iterable[dict]) -> None:
        self.jobs = sorted(jobs, key=lambda j: number(j.get("submitted")), reverse=True)
        self._fresh.clear()
        known = {j["id"] for j in self.jobs}
        for job_id in list(self.details):
            if job_id not in known:
                del self.details[job_id]

    def _set_detail(self, job_id: str, reply: Any) -> None:
        if isinstance(reply, dict) and reply.get("status") == "OK":
            self.details[job_id] = reply["job"]
            self._fresh.add(job_id)
        else:
            self.details.pop(job_id, None)

    def _home_address(self, job_id: str) -> tuple[str, str] | None:
        for job in self.jobs:
            if job["id"] == job_id and job.get("home") in self.regions:
                return job["home"], self.regions[job["home"]]
        home = job_id.rsplit("-", 1)[0]
        if home in self.regions:
            return home, self.regions[home]
        return None

    # --- what the components read ---------------------------------------------------
    def nodes(self, region: str) -> list[dict]:
        """Nodes of ``region``: those reported now, then those gone, by name.

        While the region is unreachable its last known nodes are listed with
        state ``unknown``.
        """
        nodes = list(self._nodes.get(region, {}).values())
        if region in self.errors:
            nodes = [n if n.get("state") == GONE else {**n, "state": UNKNOWN, "cpu": 0.0} for n in nodes]
        return sorted(nodes, key=lambda n: (n.get("state") == GONE, str(n.get("name")), n["address"]))

    def tasks_per_second(self, region: str) -> float:
        """Tasks finished per second on ``region`` between the last two refreshes.

        ``0.0`` until the scheduler reports a cumulative ``tasks_done`` count
        (per region or per node) in ``grid_info``.
        """
        return self._rates.get(region, 0.0)

    def job(self, job_id: str | None) -> dict | None:
        """The newest summary (or detail) of a job, ``None`` if unknown."""
        if job_id is None:
            return None
        detail = self.details.get(job_id, {})
        for job in self.jobs:
            if job["id"] == job_id:
                # whichever was fetched last wins
                return {**job, **detail} if job_id in self._fresh else {**detail, **job}
        return detail or None

    def history(self, job_id: str | None) -> list[dict]:
        """The rounds of a job fetched by :meth:`refresh_job` (empty if none)."""
        if job_id is None:
            return []
        return list(self.details.get(job_id, {}).get("history", []))

    def default_job(self) -> str | None:
        """The job to show when the user picked none: newest running, else newest."""
        for job in self.jobs:
            if job.get("status") == "running":
                return job["id"]
        return self.jobs[0]["id"] if self.jobs else None


def _reply_of(value: Any, what: str) -> Any:
    if isinstance(value, BaseException):
        return {"status": "error", "message": f"{what}: {type(value).__name__}: {value}"}
    return value


class GridClientView(GridView):
    """A :class:`GridView` that asks through a connected :class:`grid.Grid`.

    Synchronous: call :meth:`refresh` (and :meth:`refresh_job`) from ordinary
    Python code, e.g. a script or a test.

    Parameters
    ----------
    grid : grid.Grid
        A connected grid (``Grid.local`` or ``Grid.connect``).
    gone_ttl : float, default 600
        Seconds a vanished node stays listed as ``gone``.
    """

    def __init__(self, grid: Any, *, gone_ttl: float = 600.0) -> None:
        super().__init__({r: grid.spec.regions[r].address for r in grid.regions}, gone_ttl=gone_ttl)
        self.grid = grid

    def _call(self, region: str, handler: str, **kwargs: Any) -> Any:
        client = self.grid.client(region)
        try:
            return client.sync(getattr(client.scheduler, handler), **kwargs)
        except Exception as exc:  # noqa: BLE001 - an unreachable region is shown, not raised
            return exc

    def refresh(self) -> None:
        """Ask every region for ``grid_info`` and ``grid_jobs``."""
        now = time.time()
        jobs: list[dict] = []
        for region in self.regions:
            info = _reply_of(self._call(region, "grid_info"), f"region {region}")
            self._set_info(region, info, now)
            if region in self.errors:
                continue
            reply = _reply_of(self._call(region, "grid_jobs"), f"region {region}")
            if isinstance(reply, dict) and reply.get("status") == "OK":
                jobs.extend(reply["jobs"])
        self._set_jobs(jobs)
        self.updated = now

    def refresh_job(self, job_id: str) -> None:
        """Fetch one job's summary and round history from its home region."""
        home = self._home_address(job_id)
        if home is None:
            self.details.pop(job_id, None)
            return
        self._set_detail(job_id, _reply_of(self._call(home[0], "grid_job", job_id=job_id), "grid_job"))


#: a scheduler handler, as in a scheduler's ``handlers`` table
Handler = Callable[..., Any]


class GridRPCView(GridView):
    """A :class:`GridView` that asks the schedulers with asynchronous RPC calls.

    Runs in an event loop (the Bokeh server's, or a scheduler's): call
    ``await view.refresh()`` and ``await view.refresh_job(job_id)``, and
    ``await view.close()`` at the end. A region that does not answer within
    ``timeout`` is listed as unreachable; the others are still shown.

    Parameters
    ----------
    regions : mapping of str to str
        Region name to scheduler address.
    security : distributed.Security, optional
        TLS material for ``tls://`` addresses.
    timeout : float, default 3
        Seconds to wait for one region's answer.
    local : mapping of str to mapping, optional
        Region name to a scheduler's ``handlers`` dict, called in-process
        instead of over the network (the ``/grid`` page of a scheduler uses
        this for its own region).
    gone_ttl : float, default 600
        Seconds a vanished node stays listed as ``gone``.
    """

    def __init__(
        self,
        regions: Mapping[str, str],
        *,
        security: Any = None,
        timeout: float = 3.0,
        local: Mapping[str, Mapping[str, Handler]] | None = None,
        gone_ttl: float = 600.0,
    ) -> None:
        super().__init__(regions, gone_ttl=gone_ttl)
        self.security = security
        self.timeout = float(timeout)
        self.local = dict(local or {})
        self._pool: Any = None

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> "GridRPCView":
        """A view of the regions of a grid spec (YAML path, dict or ``GridSpec``)."""
        from grid.spec import load_spec

        spec = load_spec(spec)
        security = spec.tls.security() if spec.tls else None
        return cls({name: r.address for name, r in spec.regions.items()}, security=security, **kwargs)

    async def _get_pool(self) -> Any:
        if self._pool is None:
            from distributed.core import ConnectionPool

            args = self.security.get_connection_args("client") if self.security else {}
            self._pool = await ConnectionPool(limit=64, timeout=self.timeout, connection_args=args)
        return self._pool

    async def _call(self, region: str, handler: str, **kwargs: Any) -> Any:
        try:
            if region in self.local:
                # no comm: the caller is the scheduler's own process (its /grid page), which sees everything
                return await call_handler(self.local[region][handler], None, kwargs)
            pool = await self._get_pool()
            call: Awaitable[Any] = getattr(pool(self.regions[region]), handler)(**kwargs)
            return await asyncio.wait_for(call, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable region is shown, not raised
            return exc

    async def refresh(self) -> None:
        """Ask every region (concurrently) for ``grid_info`` and ``grid_jobs``."""
        regions = list(self.regions)
        infos = await asyncio.gather(*[self._call(r, "grid_info") for r in regions])
        now = time.time()
        for region, info in zip(regions, infos):
            self._set_info(region, _reply_of(info, f"region {region}"), now)
        live = [r for r in regions if r not in self.errors]
        replies = await asyncio.gather(*[self._call(r, "grid_jobs") for r in live])
        jobs: list[dict] = []
        for reply in replies:
            if isinstance(reply, dict) and reply.get("status") == "OK":
                jobs.extend(reply["jobs"])
        self._set_jobs(jobs)
        self.updated = now

    async def refresh_job(self, job_id: str) -> None:
        """Fetch one job's summary and round history from its home region."""
        home = self._home_address(job_id)
        if home is None:
            self.details.pop(job_id, None)
            return
        reply = await self._call(home[0], "grid_job", job_id=job_id)
        self._set_detail(job_id, _reply_of(reply, "grid_job"))

    async def close(self) -> None:
        """Close the view's connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


@dataclass
class Selection:
    """What one dashboard session looks at.

    Attributes
    ----------
    region : str or None
        Region whose nodes are listed (``None``: the first region).
    job : str or None
        Job picked by a click (``None``: follow the newest running job).
    """

    region: str | None = None
    job: str | None = None

    def region_name(self, view: GridView) -> str | None:
        """The selected region, or the first one."""
        if self.region in view.regions:
            return self.region
        return next(iter(view.regions), None)

    def job_id(self, view: GridView) -> str | None:
        """The picked job while the grid knows it, else :meth:`GridView.default_job`."""
        if self.job is not None and view.job(self.job) is not None:
            return self.job
        return view.default_job()
