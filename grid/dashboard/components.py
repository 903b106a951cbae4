"""Bokeh components of the grid dashboard and the readers that feed them.

Everything shown here comes from what the regional schedulers report
through the grid's RPC handlers (``grid_info``, ``grid_jobs``,
``grid_job``); nothing imports the scheduler side of the grid.

Two layers:

* **Views** (:class:`GridView` and its two readers) ask the schedulers and
  keep the last answers: :class:`GridClientView` through a
  :class:`grid.Grid` (synchronous, handy in scripts and tests),
  :class:`GridRPCView` through asynchronous RPC calls (used by the Bokeh
  server, which must not block its event loop). A view also remembers nodes
  it saw before so that a node that vanished is shown as ``gone``.
* **Components** follow distributed's ``DashboardComponent`` habit: a
  ``source`` (a ``ColumnDataSource``), a ``root`` (a Bokeh model) and an
  ``update()`` method that copies the view's last snapshot into ``source``.
  They need no browser and no Bokeh server, so they are unit-testable.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    CustomJS,
    DataRange1d,
    DataTable,
    Div,
    HoverTool,
    HTMLTemplateFormatter,
    LinearAxis,
    NumberFormatter,
    NumeralTickFormatter,
    StringFormatter,
    TableColumn,
)
from bokeh.plotting import figure
from distributed.dashboard.components import DashboardComponent
from distributed.utils import has_keyword

#: node states the dashboard always counts (the scheduler may report others too)
NODE_STATES = ("active", "paused", "quarantined")
#: shown for a node that a region reported before and no longer does
GONE = "gone"
#: shown for a region whose scheduler did not answer
UNREACHABLE = "unreachable"
#: state of the last known nodes of an unreachable region
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------
# formatting helpers
# ---------------------------------------------------------------------------------------
def _num(value: Any, default: float = 0.0) -> float:
    """A float for the table, ``default`` for missing or non-numeric values."""
    if value is None or isinstance(value, bool):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out


def _nan(value: Any) -> float:
    """A float, or NaN (shown as ``-``) for a missing value."""
    return _num(value, math.nan)


def format_duration(seconds: float) -> str:
    """``"0.4 s"``, ``"12.3 s"``, ``"3m 05s"``, ``"2h 03m"``."""
    seconds = max(0.0, _num(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m {s:02d}s"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h {rest // 60:02d}m"


def format_size(n: float) -> str:
    """Bytes in three significant digits: ``"508 MiB"``, ``"23.5 GiB"``, ``"1.64 KiB"``."""
    n = max(0.0, _num(n))
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= 0.95 * size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def format_memory(used: float, limit: float) -> str:
    """``"508 MiB / 23.5 GiB"`` (or just the used bytes when there is no limit)."""
    if limit and limit > 0:
        return f"{format_size(used)} / {format_size(limit)}"
    return format_size(used)


def _safe_link(url: Any) -> str:
    """Only plain http(s) links are rendered as links."""
    if isinstance(url, str) and (url.startswith("http://") or url.startswith("https://")):
        return url
    return ""


# ---------------------------------------------------------------------------------------
# views: what the schedulers report
# ---------------------------------------------------------------------------------------
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
        t = _num(reply.get("time"), now)
        previous = self._tasks.get(region)
        self._tasks[region] = (t, float(total))
        if previous is not None and t > previous[0]:
            self._rates[region] = max(0.0, (float(total) - previous[1]) / (t - previous[0]))

    def _set_error(self, region: str, message: str) -> None:
        self.errors[region] = message
        self.info.pop(region, None)

    def _set_jobs(self, jobs: Iterable[dict]) -> None:
        self.jobs = sorted(jobs, key=lambda j: _num(j.get("submitted")), reverse=True)
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


Handler = Callable[..., Any]


async def call_handler(func: Handler, **kwargs: Any) -> Any:
    """Call a scheduler handler in-process, as distributed dispatches a message to it.

    A handler that takes ``comm`` gets ``comm=None``: the caller is the
    scheduler's own process (its ``/grid`` page), which sees everything.
    """
    result = func(comm=None, **kwargs) if has_keyword(func, "comm") else func(**kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


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
                return await call_handler(self.local[region][handler], **kwargs)
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


# ---------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------
#: pixel heights of table parts (Bokeh's DataTable has a fixed height; the tables resize with their rows)
_HEADER_PX = 28
_ROW_PX = 25


def _table(source: ColumnDataSource, columns: list[TableColumn], **kwargs: Any) -> DataTable:
    kwargs.setdefault("index_position", None)
    kwargs.setdefault("autosize_mode", "none")
    kwargs.setdefault("row_height", _ROW_PX)
    kwargs.setdefault("reorderable", False)
    width = sum(c.width for c in columns) + 14  # room for a vertical scroll bar
    kwargs.setdefault("width", width)
    table = DataTable(source=source, columns=columns, **kwargs)
    # BokehJS 3.9 redraws a DataTable only when its row *indices* change, so new data
    # with as many rows as before stayed unseen; tell the table's view explicitly.
    source.js_on_change("data", CustomJS(args={"table": table}, code="table.view.change.emit();"))
    return table


def _table_height(rows: int, visible: tuple[int, int]) -> int:
    """Height showing ``rows`` rows, at least ``visible[0]``, at most ``visible[1]`` (then it scrolls)."""
    return _HEADER_PX + _ROW_PX * min(max(rows, visible[0]), visible[1]) + 4


def _col(field: str, title: str, width: int, formatter: Any = None) -> TableColumn:
    return TableColumn(field=field, title=title, width=width, formatter=formatter or StringFormatter())


def _title(text: str, note: str = "") -> str:
    note = f' <span style="font-weight:400;color:#57606a">{note}</span>' if note else ""
    return f'<div style="font-size:14px;font-weight:600;margin:6px 0 2px 0">{text}{note}</div>'


class GridComponent(DashboardComponent):
    """Base of the grid components: a view, a selection, a ``source`` and a ``root``."""

    def __init__(self, view: GridView, selection: Selection | None = None) -> None:
        super().__init__()
        self.view = view
        self.selection = selection if selection is not None else Selection()
        self._updating = False

    def update(self) -> None:  # type: ignore[override]
        """Copy the view's last snapshot into ``source``."""
        raise NotImplementedError

    def _highlight(self, key: str, value: Any) -> None:
        """Keep the highlighted row on ``value`` after the data was replaced (not a user's click)."""
        values = self.source.data.get(key, [])
        indices = [values.index(value)] if value in values else []
        if list(self.source.selected.indices) != indices:
            self._updating = True
            try:
                self.source.selected.indices = indices
            finally:
                self._updating = False


class GridHeader(GridComponent):
    """One line saying what the grid has and how to use the page.

    ``source`` has one row: ``regions``, ``reachable``, ``nodes``, ``threads``,
    ``jobs_running``, ``updated``.
    """

    def __init__(self, view: GridView, selection: Selection | None = None, *, title: str = "dask-grid", width: int = 1260) -> None:
        super().__init__(view, selection)
        self.title = title
        self.source = ColumnDataSource(
            {k: [] for k in ("regions", "reachable", "nodes", "threads", "jobs_running", "updated")}
        )
        self.root = Div(text="", width=width, name="grid-header")

    def update(self) -> None:
        v = self.view
        nodes = sum(1 for r in v.info for n in v.nodes(r) if n.get("state") != GONE)
        threads = sum(int(_num(i.get("nthreads"))) for i in v.info.values())
        running = sum(1 for j in v.jobs if j.get("status") == "running")
        updated = time.strftime("%H:%M:%S", time.localtime(v.updated)) if v.updated else "never"
        self.source.data = {
            "regions": [len(v.regions)],
            "reachable": [len(v.info)],
            "nodes": [nodes],
            "threads": [threads],
            "jobs_running": [running],
            "updated": [updated],
        }
        down = [r for r in v.regions if r in v.errors]
        warn = f' <b style="color:#b00020">Unreachable: {html.escape(", ".join(down))}.</b>' if down else ""
        self.root.text = (
            f'<div style="font-size:20px;font-weight:600">{html.escape(self.title)}</div>'
            f'<div style="font-size:13px;color:#24292f">{len(v.regions)} region(s) · {nodes} node(s) · '
            f"{threads} thread(s) · {running} job(s) running · updated {updated} (live).{warn}"
            ' <span style="color:#57606a">Click a region to list its nodes, a job to plot its rounds.</span></div>'
        )


class RegionsTable(GridComponent):
    """One row per region: nodes by state, threads, memory, tasks/s and its Dask dashboard.

    Clicking a row selects the region whose nodes :class:`NodesTable` lists.
    ``tasks_per_s`` is 0 until the scheduler reports a cumulative
    ``tasks_done`` (see :meth:`GridView.tasks_per_second`).
    """

    FIELDS = (
        "region", "status", "nodes", "active", "paused", "quarantined", "gone", "threads",
        "memory", "memory_limit", "memory_text", "tasks_per_s", "jobs_running", "jobs_total",
        "dashboard", "address",
    )  # fmt: skip
    VISIBLE_ROWS = (2, 5)

    def __init__(self, view: GridView, selection: Selection | None = None) -> None:
        super().__init__(view, selection)
        self.source = ColumnDataSource({k: [] for k in self.FIELDS}, name="grid-regions")
        link = HTMLTemplateFormatter(
            template='<% if (value) { %><a href="<%- value %>" target="_blank">open</a><% } %>'
        )
        status = HTMLTemplateFormatter(
            template='<span style="color:<%= value == "ok" ? "#1a7f37" : "#b00020" %>"><%- value %></span>'
        )
        columns = [
            _col("region", "Region", 54),
            _col("status", "Scheduler", 78, status),
            _col("active", "Active", 48, NumberFormatter(format="0")),
            _col("paused", "Paused", 52, NumberFormatter(format="0")),
            _col("quarantined", "Quarantined", 80, NumberFormatter(format="0")),
            _col("gone", "Gone", 42, NumberFormatter(format="0")),
            _col("threads", "Threads", 56, NumberFormatter(format="0")),
            _col("memory_text", "Memory used / limit", 124),
            _col("tasks_per_s", "Tasks/s", 54, NumberFormatter(format="0.0")),
            _col("dashboard", "Dask dashboard", 96, link),
        ]
        self.table = _table(self.source, columns, height=_table_height(0, self.VISIBLE_ROWS), name="grid-regions-table")
        self.root = column(Div(text=_title("Regions", "(nodes by state)"), width=self.table.width), self.table)
        self.source.selected.on_change("indices", self._on_select)

    def _on_select(self, attr: str, old: list[int], new: list[int]) -> None:
        if new and not self._updating:
            regions = self.source.data["region"]
            if new[0] < len(regions):
                self.selection.region = regions[new[0]]

    def update(self) -> None:
        v = self.view
        data: dict[str, list] = {k: [] for k in self.FIELDS}
        for region, address in v.regions.items():
            info = v.info.get(region)
            nodes = v.nodes(region)
            counts = {s: 0 for s in (*NODE_STATES, GONE)}
            for n in nodes:
                state = n.get("state", "active")
                counts[state] = counts.get(state, 0) + 1
            live = [n for n in nodes if n.get("state") != GONE]
            memory = sum(_num(n.get("memory")) for n in live)
            limit = sum(_num(n.get("memory_limit")) for n in live)
            jobs = [j for j in v.jobs if j.get("home") == region]
            data["region"].append(region)
            data["status"].append("ok" if info is not None else (UNREACHABLE if region in v.errors else "connecting"))
            data["nodes"].append(len(live))
            for state in NODE_STATES:
                data[state].append(counts.get(state, 0))
            data["gone"].append(counts[GONE])
            data["threads"].append(int(_num(info.get("nthreads"))) if info else 0)
            data["memory"].append(memory)
            data["memory_limit"].append(limit)
            data["memory_text"].append(format_memory(memory, limit) if info else "-")
            data["tasks_per_s"].append(v.tasks_per_second(region))
            data["jobs_running"].append(sum(1 for j in jobs if j.get("status") == "running"))
            data["jobs_total"].append(len(jobs))
            data["dashboard"].append(_safe_link(info.get("dashboard")) if info else "")
            data["address"].append(address)
        self.source.data = data
        self.table.height = _table_height(len(data["region"]), self.VISIBLE_ROWS)
        self._highlight("region", self.selection.region_name(v))


class NodesTable(GridComponent):
    """The nodes of the selected region: state, reach, CPU, memory, tasks and verification.

    Nodes that the region reported before and no longer does are listed as
    ``gone`` (for ``gone_ttl`` seconds of the view). ``tasks_done``,
    ``verified`` and ``rejected`` are 0 until the scheduler reports them
    per node in ``grid_info``.
    """

    FIELDS = (
        "name", "address", "state", "reach", "cpu", "memory", "memory_limit", "memory_text", "threads",
        "executing", "stored", "tasks_done", "verified", "rejected",
    )  # fmt: skip
    VISIBLE_ROWS = (2, 5)

    def __init__(self, view: GridView, selection: Selection | None = None) -> None:
        super().__init__(view, selection)
        self.source = ColumnDataSource({k: [] for k in self.FIELDS}, name="grid-nodes")
        state = HTMLTemplateFormatter(
            template=(
                '<span style="color:<%= value == "active" ? "#1a7f37" : (value == "gone" ? "#b00020" : "#9a6700") %>">'
                "<%- value %></span>"
            )
        )
        columns = [
            _col("name", "Node", 92),
            _col("state", "State", 62, state),
            # open: the scheduler dials it; dial-out: it opens every connection itself (NAT, firewall)
            _col("reach", "Reach", 58),
            _col("cpu", "CPU %", 46, NumberFormatter(format="0")),
            _col("memory_text", "Memory used / limit", 124),
            _col("tasks_done", "Tasks done", 72, NumberFormatter(format="0,0")),
            _col("verified", "Verified", 58, NumberFormatter(format="0,0")),
            _col("rejected", "Rejected", 62, NumberFormatter(format="0,0")),
        ]
        self.table = _table(self.source, columns, height=_table_height(0, self.VISIBLE_ROWS), name="grid-nodes-table")
        self.title = Div(text="", width=self.table.width, name="grid-nodes-title")
        self.root = column(self.title, self.table)

    def update(self) -> None:
        region = self.selection.region_name(self.view)
        data: dict[str, list] = {k: [] for k in self.FIELDS}
        nodes = self.view.nodes(region) if region else []
        for n in nodes:
            gone = n.get("state") == GONE
            data["name"].append(str(n.get("name", n["address"])))
            data["address"].append(n["address"])
            data["state"].append(str(n.get("state", "active")))
            data["reach"].append(str(n.get("reach", "")))
            data["cpu"].append(0.0 if gone else _num(n.get("cpu")))
            data["memory"].append(_num(n.get("memory")))
            data["memory_limit"].append(_num(n.get("memory_limit")))
            data["memory_text"].append("-" if gone else format_memory(_num(n.get("memory")), _num(n.get("memory_limit"))))
            data["threads"].append(int(_num(n.get("nthreads"))))
            data["executing"].append(0 if gone else int(_num(n.get("executing"))))
            data["stored"].append(int(_num(n.get("stored"))))
            for key in ("tasks_done", "verified", "rejected"):
                data[key].append(int(_num(n.get(key))))
        self.source.data = data
        self.table.height = _table_height(len(nodes), self.VISIBLE_ROWS)
        error = self.view.errors.get(region or "")
        if region is None:
            note = ""
        elif error:
            note = f'<span style="color:#b00020">(unreachable: {html.escape(error)})</span>'
        else:
            note = "(gone: left or lost in the last minutes)" if any(s == GONE for s in data["state"]) else ""
        where = f" of region {html.escape(region)}" if region else ""
        self.title.text = _title(f"Nodes{where}", note)


class JobsTable(GridComponent):
    """Every job of the grid, newest first: status, round k/N, last loss and score.

    Clicking a row picks the job that :class:`JobProgress` plots.
    """

    FIELDS = (
        "id", "owner", "estimator", "status", "round", "rounds_done", "rounds", "loss", "score",
        "elapsed", "elapsed_text", "home", "regions", "note",
    )  # fmt: skip
    VISIBLE_ROWS = (2, 5)

    def __init__(self, view: GridView, selection: Selection | None = None) -> None:
        super().__init__(view, selection)
        self.source = ColumnDataSource({k: [] for k in self.FIELDS}, name="grid-jobs")
        status = HTMLTemplateFormatter(
            template=(
                '<span style="color:<%= value == "running" ? "#0550ae" : (value == "done" ? "#1a7f37" : '
                '(value == "failed" ? "#b00020" : "#57606a")) %>"><%- value %></span>'
            )
        )
        columns = [
            _col("id", "Job", 160),
            _col("owner", "Owner", 200),
            _col("estimator", "Estimator", 190),
            _col("status", "Status", 80, status),
            _col("round", "Round", 96),
            _col("loss", "Last loss", 90, NumberFormatter(format="0.0000")),
            _col("score", "Last score", 90, NumberFormatter(format="0.0000")),
            _col("elapsed_text", "Elapsed", 80),
            _col("home", "Home region", 90),
            _col("regions", "Regions", 130),
            _col("note", "Waiting for / error", 420),
        ]
        self.table = _table(self.source, columns, height=_table_height(0, self.VISIBLE_ROWS), name="grid-jobs-table")
        self.title = Div(
            text=_title(
                "Jobs",
                "(newest first; score: accuracy for classifiers, R² for regressors, on the training partitions)",
            ),
            width=self.table.width,
        )
        self.root = column(self.title, self.table)
        self.source.selected.on_change("indices", self._on_select)

    def _on_select(self, attr: str, old: list[int], new: list[int]) -> None:
        if new and not self._updating:
            ids = self.source.data["id"]
            if new[0] < len(ids):
                self.selection.job = ids[new[0]]

    def update(self) -> None:
        data: dict[str, list] = {k: [] for k in self.FIELDS}
        for summary in self.view.jobs:
            j = self.view.job(summary["id"]) or summary
            done, total = int(_num(j.get("rounds_done"))), int(_num(j.get("rounds")))
            data["id"].append(j["id"])
            data["owner"].append(str(j.get("owner", "")))
            data["estimator"].append(str(j.get("estimator", "")))
            data["status"].append(str(j.get("status", "")))
            data["round"].append(f"{done}/{total}")
            data["rounds_done"].append(done)
            data["rounds"].append(total)
            data["loss"].append(_nan(j.get("loss")))
            data["score"].append(_nan(j.get("score")))
            data["elapsed"].append(_num(j.get("elapsed")))
            data["elapsed_text"].append(format_duration(_num(j.get("elapsed"))))
            data["home"].append(str(j.get("home", "")))
            data["regions"].append(", ".join(j.get("regions") or []))
            data["note"].append(str(j.get("waiting") or j.get("error") or ""))
        self.source.data = data
        self.table.height = _table_height(len(data["id"]), self.VISIBLE_ROWS)
        # only a picked job is highlighted, so that a click on any row (even the one
        # followed automatically) picks it
        self._highlight("id", self.selection.job if self.selection.job_id(self.view) == self.selection.job else None)


class JobProgress(GridComponent):
    """Rounds of the selected job: loss and score, samples/s, bytes across regions.

    ``source`` has one row per finished round with ``round``, ``loss``,
    ``score``, ``samples``, ``seconds``, ``samples_per_s`` and
    ``bytes_cross_region``; ``root`` is a summary line over three plots.
    """

    FIELDS = ("round", "loss", "score", "samples", "seconds", "samples_per_s", "bytes_cross_region")
    LOSS_COLOR = "#d62728"
    SCORE_COLOR = "#1f77b4"

    def __init__(self, view: GridView, selection: Selection | None = None, *, width: int = 1260, height: int = 270) -> None:
        super().__init__(view, selection)
        self.source = ColumnDataSource({k: [] for k in self.FIELDS}, name="grid-job-rounds")
        self.job_id: str | None = None
        self.summary = Div(text="", width=width, name="grid-job-summary")
        w_loss = int(width * 0.42)
        w_rest = (width - w_loss) // 2
        common: dict[str, Any] = dict(height=height, toolbar_location=None, x_axis_label="round", min_border_left=60)

        self.loss_figure = figure(
            width=w_loss, title="Loss (red, left axis) and score (blue, right axis)", name="grid-job-loss", **common
        )
        loss = self.loss_figure.line("round", "loss", source=self.source, color=self.LOSS_COLOR, line_width=2)
        self.loss_figure.scatter("round", "loss", source=self.source, color=self.LOSS_COLOR, size=4)
        self.loss_figure.y_range = DataRange1d(renderers=[loss])
        self.loss_figure.yaxis.axis_label = "loss"
        self.loss_figure.yaxis.axis_label_text_color = self.LOSS_COLOR
        score_range = DataRange1d()
        self.loss_figure.extra_y_ranges = {"score": score_range}
        score = self.loss_figure.line(
            "round", "score", source=self.source, color=self.SCORE_COLOR, line_width=2, y_range_name="score"
        )
        score_range.renderers = [score]
        self.loss_figure.add_layout(
            LinearAxis(y_range_name="score", axis_label="score", axis_label_text_color=self.SCORE_COLOR), "right"
        )
        self.loss_figure.add_tools(
            HoverTool(tooltips=[("round", "@round"), ("loss", "@loss{0.0000}"), ("score", "@score{0.0000}")], renderers=[loss])
        )

        self.rate_figure = figure(width=w_rest, title="Samples per second, per round", name="grid-job-rate", **common)
        rate = self.rate_figure.line("round", "samples_per_s", source=self.source, color="#2ca02c", line_width=2)
        self.rate_figure.yaxis.formatter = NumeralTickFormatter(format="0.[0]a")
        self.rate_figure.yaxis.axis_label = "samples/s"
        self.rate_figure.y_range.start = 0
        self.rate_figure.add_tools(HoverTool(tooltips=[("round", "@round"), ("samples/s", "@samples_per_s{0,0}")], renderers=[rate]))

        self.bytes_figure = figure(width=w_rest, title="Bytes crossing regions, per round", name="grid-job-bytes", **common)
        bars = self.bytes_figure.vbar(x="round", top="bytes_cross_region", width=0.8, source=self.source, color="#9467bd")
        self.bytes_figure.yaxis.formatter = NumeralTickFormatter(format="0,0")
        self.bytes_figure.yaxis.axis_label = "bytes"
        self.bytes_figure.y_range.start = 0
        self.bytes_figure.add_tools(
            HoverTool(tooltips=[("round", "@round"), ("bytes", "@bytes_cross_region{0,0}")], renderers=[bars])
        )
        for fig in (self.loss_figure, self.rate_figure, self.bytes_figure):
            fig.title.text_font_size = "13px"

        self.root = column(self.summary, row(self.loss_figure, self.rate_figure, self.bytes_figure))

    def update(self) -> None:
        job_id = self.selection.job_id(self.view)
        self.job_id = job_id
        history = self.view.history(job_id)
        data: dict[str, list] = {k: [] for k in self.FIELDS}
        for h in history:
            seconds = _num(h.get("seconds"))
            samples = _num(h.get("samples"))
            data["round"].append(int(_num(h.get("round"))))
            data["loss"].append(_nan(h.get("loss")))
            data["score"].append(_nan(h.get("score")))
            data["samples"].append(samples)
            data["seconds"].append(seconds)
            data["samples_per_s"].append(samples / seconds if seconds > 0 else 0.0)
            data["bytes_cross_region"].append(_num(h.get("bytes_cross_region")))
        self.source.data = data
        self.summary.text = self._summary(job_id, history, data)

    def _summary(self, job_id: str | None, history: list[dict], data: dict[str, list]) -> str:
        if job_id is None:
            return _title("Rounds of a job", "(no job yet: submit one and its rounds appear here)")
        job = self.view.job(job_id) or {}
        how = (
            "picked by a click"
            if self.selection.job == job_id
            else "shown: the newest running job, else the newest job; click a job above to pick another"
        )
        parts = [
            f"status <b>{html.escape(str(job.get('status', '?')))}</b>",
            f"round {int(_num(job.get('rounds_done')))}/{int(_num(job.get('rounds')))}",
        ]
        if history:
            rates = data["samples_per_s"][-10:]
            crossed = data["bytes_cross_region"]
            parts += [
                f"last loss {data['loss'][-1]:.4f}",
                f"last score {data['score'][-1]:.4f}",
                f"{sum(rates) / len(rates):,.0f} samples/s (mean of the last {len(rates)} rounds)",
                f"{format_size(sum(crossed) / len(crossed))} across regions per round",
            ]
        error = job.get("error")
        if error:
            parts.append(f'<span style="color:#b00020">{html.escape(str(error))}</span>')
        return _title(f"Rounds of job {html.escape(job_id)}", f"({how})") + (
            f'<div style="font-size:13px">{" · ".join(parts)}</div>'
        )


def make_components(view: GridView, selection: Selection | None = None, *, width: int = 1260) -> dict[str, GridComponent]:
    """Every component of the grid page, sharing one view and one selection.

    Parameters
    ----------
    view : GridView
    selection : Selection, optional
    width : int, default 1260
        Page width in pixels (fits a 1280 px wide window).

    Returns
    -------
    dict of str to GridComponent
        ``header``, ``regions``, ``nodes``, ``jobs`` and ``job``.
    """
    selection = selection if selection is not None else Selection()
    return {
        "header": GridHeader(view, selection, width=width),
        "regions": RegionsTable(view, selection),
        "nodes": NodesTable(view, selection),
        "jobs": JobsTable(view, selection),
        "job": JobProgress(view, selection, width=width),
    }


def grid_layout(components: Mapping[str, GridComponent]) -> Any:
    """The page: header; regions beside nodes; jobs; rounds of the selected job."""
    return column(
        components["header"].root,
        row(components["regions"].root, components["nodes"].root, spacing=12),
        components["jobs"].root,
        components["job"].root,
        name="grid-page",
    )
