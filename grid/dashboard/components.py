"""The Bokeh components of the grid page, and the page that places them.

One idea: every module-level piece here turns a :class:`~grid.dashboard.views.GridView`
snapshot into Bokeh models (hence the length). The components follow
distributed's ``DashboardComponent`` habit: a ``source`` (a
``ColumnDataSource``), a ``root`` (a Bokeh model) and an ``update()`` method
that copies the view's last snapshot into ``source``. They need no browser
and no Bokeh server, so they are unit-testable. Where the data comes from is
:mod:`grid.dashboard.views`; how numbers are written is
:mod:`grid.dashboard.formatting`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
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

from grid.dashboard.formatting import format_duration, format_memory, format_size, number, number_or_nan, safe_link
from grid.dashboard.views import GONE, NODE_STATES, UNREACHABLE, GridView, Selection

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
        threads = sum(int(number(i.get("nthreads"))) for i in v.info.values())
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
            memory = sum(number(n.get("memory")) for n in live)
            limit = sum(number(n.get("memory_limit")) for n in live)
            jobs = [j for j in v.jobs if j.get("home") == region]
            data["region"].append(region)
            data["status"].append("ok" if info is not None else (UNREACHABLE if region in v.errors else "connecting"))
            data["nodes"].append(len(live))
            for state in NODE_STATES:
                data[state].append(counts.get(state, 0))
            data["gone"].append(counts[GONE])
            data["threads"].append(int(number(info.get("nthreads"))) if info else 0)
            data["memory"].append(memory)
            data["memory_limit"].append(limit)
            data["memory_text"].append(format_memory(memory, limit) if info else "-")
            data["tasks_per_s"].append(v.tasks_per_second(region))
            data["jobs_running"].append(sum(1 for j in jobs if j.get("status") == "running"))
            data["jobs_total"].append(len(jobs))
            data["dashboard"].append(safe_link(info.get("dashboard")) if info else "")
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
            data["cpu"].append(0.0 if gone else number(n.get("cpu")))
            data["memory"].append(number(n.get("memory")))
            data["memory_limit"].append(number(n.get("memory_limit")))
            data["memory_text"].append("-" if gone else format_memory(number(n.get("memory")), number(n.get("memory_limit"))))
            data["threads"].append(int(number(n.get("nthreads"))))
            data["executing"].append(0 if gone else int(number(n.get("executing"))))
            data["stored"].append(int(number(n.get("stored"))))
            for key in ("tasks_done", "verified", "rejected"):
                data[key].append(int(number(n.get(key))))
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
            done, total = int(number(j.get("rounds_done"))), int(number(j.get("rounds")))
            data["id"].append(j["id"])
            data["owner"].append(str(j.get("owner", "")))
            data["estimator"].append(str(j.get("estimator", "")))
            data["status"].append(str(j.get("status", "")))
            data["round"].append(f"{done}/{total}")
            data["rounds_done"].append(done)
            data["rounds"].append(total)
            data["loss"].append(number_or_nan(j.get("loss")))
            data["score"].append(number_or_nan(j.get("score")))
            data["elapsed"].append(number(j.get("elapsed")))
            data["elapsed_text"].append(format_duration(number(j.get("elapsed"))))
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
            seconds = number(h.get("seconds"))
            samples = number(h.get("samples"))
            data["round"].append(int(number(h.get("round"))))
            data["loss"].append(number_or_nan(h.get("loss")))
            data["score"].append(number_or_nan(h.get("score")))
            data["samples"].append(samples)
            data["seconds"].append(seconds)
            data["samples_per_s"].append(samples / seconds if seconds > 0 else 0.0)
            data["bytes_cross_region"].append(number(h.get("bytes_cross_region")))
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
            f"round {int(number(job.get('rounds_done')))}/{int(number(job.get('rounds')))}",
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
