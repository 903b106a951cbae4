"""The grid dashboard as a Bokeh server application, and the ``/grid`` page of a scheduler.

``grid dashboard --grid grid.yaml`` serves one page with every region of a
grid (:func:`make_application`, :func:`serve`, :data:`dashboard`). Each
browser session gets its own document, its own :class:`GridRPCView` and a
periodic callback that refreshes the view and every component.

:func:`register_scheduler_page` adds the same page, as ``/grid``, to a
scheduler's own Dask dashboard, through the extension points distributed
itself uses for its pages (a Bokeh ``BokehTornado`` made by
``distributed.dashboard.core.BokehApplication`` and added to the
scheduler's ``http_application``); nothing in distributed is patched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import click
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document

from grid import config as grid_config
from grid.dashboard.components import grid_layout, make_components
from grid.dashboard.views import GridRPCView, Selection

logger = logging.getLogger("grid.dashboard")

#: default refresh interval of a page, in milliseconds (the issue asks for <= 1 s)
DEFAULT_INTERVAL_MS = 500

ViewFactory = Callable[[], GridRPCView]


def grid_document(doc: Document, view: GridRPCView, *, interval_ms: int = DEFAULT_INTERVAL_MS, title: str = "dask-grid") -> dict:
    """Fill a Bokeh document with the grid page and keep it live.

    Parameters
    ----------
    doc : bokeh.document.Document
        The session's document.
    view : GridRPCView
        The session's reader; closed when the session ends.
    interval_ms : int, default 500
        Refresh period.
    title : str
        Page heading.

    Returns
    -------
    dict of str to GridComponent
        The components placed on the page.
    """
    selection = Selection()
    components = make_components(view, selection)
    components["header"].title = title
    for c in components.values():
        c.update()
    doc.add_root(grid_layout(components))
    doc.title = title
    busy = False

    async def tick() -> None:
        nonlocal busy
        if busy:  # the previous refresh still waits on a slow region
            return
        busy = True
        try:
            await view.refresh()
            job_id = selection.job_id(view)
            if job_id is not None:
                await view.refresh_job(job_id)
            for c in components.values():
                c.update()
        except Exception:  # noqa: BLE001 - a page must survive one bad refresh
            logger.exception("grid dashboard refresh failed")
        finally:
            busy = False

    doc.add_next_tick_callback(tick)
    doc.add_periodic_callback(tick, interval_ms)

    def closed(session_context: Any) -> None:
        try:
            asyncio.get_running_loop().create_task(view.close())
        except RuntimeError:  # no loop any more: the server is stopping
            pass

    doc.on_session_destroyed(closed)
    return components


def make_application(view_factory: ViewFactory, *, interval_ms: int = DEFAULT_INTERVAL_MS, title: str = "dask-grid") -> Application:
    """A Bokeh application: one :func:`grid_document` per browser session.

    Parameters
    ----------
    view_factory : callable
        Returns a fresh :class:`GridRPCView` for each session.
    interval_ms : int, default 500
    title : str
    """

    def make_doc(doc: Document) -> None:
        grid_document(doc, view_factory(), interval_ms=interval_ms, title=title)

    return Application(FunctionHandler(make_doc))


def certificate_note(spec: Any) -> str | None:
    """Why the dashboard of ``spec`` would see less than the whole grid, if it would.

    On a TLS grid the dashboard connects with the certificate of the spec's
    ``tls`` section. An observer (or admin) certificate sees every job and
    node; a client certificate sees only that user's jobs and node counts.

    Parameters
    ----------
    spec : str, dict or GridSpec

    Returns
    -------
    str or None
        A message naming the certificate and the fix, or None when the
        certificate sees the whole grid (or the grid is plaintext).
    """
    from cryptography import x509

    from grid.security.identity import identity_from_certificate
    from grid.spec import load_spec

    spec = load_spec(spec)
    if spec.tls is None:
        return None
    try:
        with open(spec.tls.cert, "rb") as f:
            identity = identity_from_certificate(x509.load_pem_x509_certificate(f.read()))
    except Exception:  # noqa: BLE001 - the schedulers judge the certificate; this is advice only
        return None
    if identity.role != "client":
        return None
    return (
        f"the grid spec's certificate ({spec.tls.cert}) is the client certificate of {identity.name!r}: "
        f"the schedulers show this dashboard only {identity.name}'s jobs and node counts. For every job and "
        "node of the grid, issue an observer certificate (`grid certs issue observer dashboard`) and name it "
        "in the spec's tls section"
    )


def serve(
    spec: Any,
    *,
    port: int = 8790,
    host: str = "127.0.0.1",
    interval_ms: int = DEFAULT_INTERVAL_MS,
    allow_websocket_origin: list[str] | None = None,
    io_loop: Any = None,
) -> Any:
    """Start a Bokeh server with the grid page at ``/`` (not yet running its loop).

    Parameters
    ----------
    spec : str, dict or GridSpec
        The grid spec (e.g. the ``grid.yaml`` that ``grid up`` writes).
    port : int, default 8790
        0 picks a free port; read it back from ``server.port``.
    host : str, default "127.0.0.1"
        Interface to listen on; ``0.0.0.0`` for every interface.
    interval_ms : int, default 500
    allow_websocket_origin : list of str, optional
        Default ``["*"]``, as distributed's dashboard (the page is read-only).
    io_loop : tornado.ioloop.IOLoop, optional

    Returns
    -------
    bokeh.server.server.Server
        Started; ``server.io_loop.start()`` runs it.

    Notes
    -----
    On a TLS grid, give the spec an observer certificate
    (``grid certs issue observer NAME``): it sees every job and node and can
    change nothing. With a client certificate the page works but shows only
    that user's jobs; a warning says so, once per server.
    """
    from bokeh.server.server import Server

    from grid.spec import load_spec

    spec = load_spec(spec)
    note = certificate_note(spec)
    if note is not None:
        logger.warning("grid dashboard: %s", note)

    def view_factory() -> GridRPCView:
        return GridRPCView.from_spec(spec)

    app = make_application(view_factory, interval_ms=interval_ms)
    kwargs: dict[str, Any] = {}
    if io_loop is not None:
        kwargs["io_loop"] = io_loop
    server = Server(
        {"/": app},
        port=port,
        address=host,
        allow_websocket_origin=allow_websocket_origin or ["*"],
        check_unused_sessions_milliseconds=2000,
        unused_session_lifetime_milliseconds=5000,
        **kwargs,
    )
    server.start()
    return server


def dashboard_url(server: Any, host: str) -> str:
    """The address a browser on this machine opens."""
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{server.port}/"


@click.command("dashboard")
@click.option("--grid", "grid_file", default="grid.yaml", show_default=True, help="Grid spec (YAML) naming the regions; `grid up` writes one.")
@click.option("--port", default=8790, show_default=True, type=click.IntRange(min=0, max=65535), help="Port of the dashboard (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on; 0.0.0.0 for every interface.")
@click.option("--interval", default=DEFAULT_INTERVAL_MS, show_default=True, type=click.IntRange(min=100, max=1000), help="Refresh period in milliseconds.")
def dashboard(grid_file: str, port: int, host: str, interval: int) -> None:
    """Serve the grid dashboard: every region, node and job, live in a browser.

    On a TLS grid, name an observer certificate (`grid certs issue observer
    dashboard`) in the spec's tls section: it sees every job and node and
    changes nothing. A client certificate shows only that user's jobs.
    """
    from tornado.ioloop import IOLoop

    from grid.spec import SpecError, load_spec

    try:
        spec = load_spec(grid_file)
    except (FileNotFoundError, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        server = serve(spec, port=port, host=host, interval_ms=interval)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    loop = IOLoop.current()

    def stop(*_: Any) -> None:
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"grid dashboard: {dashboard_url(server, host)}  (regions: {', '.join(spec.regions)}; Ctrl-C to stop)")
    try:
        loop.start()
    finally:
        server.stop()
        click.echo("grid dashboard stopped")


# ---------------------------------------------------------------------------------------
# the /grid page of a scheduler's own dashboard
# ---------------------------------------------------------------------------------------
_PAGES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

#: path of the page on a scheduler's dashboard
SCHEDULER_PAGE = "/grid"


def _dask_bokeh_app(scheduler: Any) -> Any:
    """distributed's own Bokeh app on this scheduler, ``None`` when the dashboard is off."""
    from bokeh.server.tornado import BokehTornado

    http_app = getattr(scheduler, "http_application", None)
    for app in getattr(http_app, "applications", []):
        if isinstance(app, BokehTornado):
            return app
    return None


def _peers() -> dict[str, str]:
    """Other regions to show on a scheduler's page: ``grid.dashboard.grid-spec`` in dask.config."""

    from grid.spec import load_spec

    spec = grid_config.get("dashboard.grid-spec")
    if not spec:
        return {}
    try:
        return {name: r.address for name, r in load_spec(spec).regions.items()}
    except Exception as exc:  # noqa: BLE001 - the page still shows this region
        logger.warning("grid.dashboard.grid-spec is not usable (%s); the /grid page shows this region only", exc)
        return {}


def _region_of(scheduler: Any) -> str | None:
    """The region a scheduler serves: its grid plugin's, else its ``grid_info`` handler's answer."""
    plugin = getattr(scheduler, "plugins", {}).get("grid")
    if isinstance(getattr(plugin, "region", None), str):
        return plugin.region
    handler = scheduler.handlers.get("grid_info")
    if handler is None:
        return None
    from distributed.utils import has_keyword

    reply = handler(comm=None) if has_keyword(handler, "comm") else handler()
    if inspect.isawaitable(reply):  # a wrapped, asynchronous handler: pass region= instead
        reply.close()
        return None
    return reply.get("region") if isinstance(reply, dict) else None


def register_scheduler_page(
    scheduler: Any,
    regions: Mapping[str, str] | None = None,
    *,
    region: str | None = None,
    interval_ms: int = DEFAULT_INTERVAL_MS,
) -> Any:
    """Serve the grid page as ``/grid`` on a scheduler's own Dask dashboard.

    Call it from the grid scheduler plugin's ``start()`` (after the grid
    handlers are registered). The page reads this scheduler's region through
    its handlers in-process and other regions over RPC; it also appears as
    "Grid" in the navigation bar of Dask's own pages.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    regions : mapping of str to str, optional
        Other regions to show (name to scheduler address). Default: the
        regions of the grid spec named by ``grid.dashboard.grid-spec`` in
        dask.config, if set; else only this scheduler's region.
    region : str, optional
        This scheduler's region (default: its grid plugin's ``region``).
    interval_ms : int, default 500

    Returns
    -------
    bokeh.server.tornado.BokehTornado or None
        ``None`` (and nothing is served) when the scheduler has no Bokeh
        dashboard, or when the page is already registered.
    """
    if scheduler in _PAGES:
        return None
    dask_app = _dask_bokeh_app(scheduler)
    if dask_app is None:
        return None
    own = region or _region_of(scheduler)
    if own is None:
        return None
    from tornado.ioloop import IOLoop

    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables

    security = getattr(scheduler, "security", None)
    handlers = scheduler.handlers

    def grid_page(server: Any, extra: dict, doc: Document) -> None:
        # the other regions are looked up per page view, so a grid spec written
        # after the scheduler started (e.g. by `grid up`) is picked up
        peers = dict(regions) if regions is not None else _peers()
        addresses = {own: scheduler.address, **{r: a for r, a in peers.items() if r != own}}
        view = GridRPCView(addresses, security=security, local={own: handlers})
        grid_document(doc, view, interval_ms=interval_ms, title=f"dask-grid (from region {own})")
        _use_dask_template(doc, extra)

    variables = template_variables(scheduler)
    app = BokehApplication({SCHEDULER_PAGE: grid_page}, scheduler, prefix=dask_app.prefix, template_variables=variables)
    scheduler.http_application.add_application(app)
    app.initialize(IOLoop.current())
    app.start()
    pages = variables.get("pages")
    if isinstance(pages, list) and "grid" not in pages:
        pages.append("grid")  # the "Grid" link in the navigation bar of Dask's pages
    _PAGES[scheduler] = app
    return app


def _use_dask_template(doc: Document, extra: dict) -> None:
    """Render the page inside Dask's dashboard template (its navigation bar)."""
    import os

    import distributed
    from jinja2 import Environment, FileSystemLoader

    templates = os.path.join(os.path.dirname(distributed.__file__), "http", "templates")
    if os.path.exists(os.path.join(templates, "simple.html")):
        env = Environment(loader=FileSystemLoader(templates))
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)


def unregister_scheduler_page(scheduler: Any) -> None:
    """Stop serving ``/grid`` on ``scheduler`` (call it from the plugin's ``close()``)."""
    app = _PAGES.pop(scheduler, None)
    if app is None:
        return
    try:
        app.stop()
    except Exception:  # noqa: BLE001 - the scheduler is closing anyway
        logger.debug("error stopping the /grid page", exc_info=True)
    applications = getattr(getattr(scheduler, "http_application", None), "applications", None)
    if applications is not None and app in applications:
        applications.remove(app)


if __name__ == "__main__":  # pragma: no cover - `python -m grid.dashboard.app`
    dashboard()
