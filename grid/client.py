"""``Grid``: the data scientist's handle on a grid of regions.

One idea, hence the length: the methods a user calls on a grid (connect or
start one, place data, submit and list jobs, joblib, status) and which grid
an estimator's ``fit`` uses when none is given (:func:`default_grid`), which
``Grid.__enter__`` sets. Each method is a thin front: placing partitions is
:mod:`grid.placement`, a submitted job's handle :mod:`grid.job`, checking a
job request :mod:`grid.protocol.requests`.
"""

from __future__ import annotations

import contextlib
import atexit
import contextvars
import json
import getpass
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from distributed import Client

from grid import config
from grid.errors import GridConnectionError, GridWarning, UnknownRegion, check_reply
from grid.job import Job
from grid.placement import PlacedData, drop_on, place, place_files
from grid.protocol.requests import check_request
from grid.spec import GridSpec, load_spec
from jobs.data import DataError, Files, partition

logger = logging.getLogger("grid.client")

_current: contextvars.ContextVar[list["Grid"]] = contextvars.ContextVar("grid_current", default=[])


def default_owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Grid:
    """A grid of regions, each an ordinary Dask scheduler with the grid plugin.

    Create one with :meth:`Grid.local` (an embedded grid, one ``LocalCluster``
    per region) or :meth:`Grid.connect` (real regional schedulers). Used as a
    context manager it is the default grid of ``est.fit`` inside the block
    and is closed at the end, like a dask ``Client``.
    """

    def __init__(self, spec: GridSpec, clients: dict[str, Client], *, owner: str | None = None, _local: Any = None) -> None:
        self.spec = spec
        self._clients = clients
        self.owner = owner or default_owner()
        self._local = _local
        self._closed = False

    # --- construction ------------------------------------------------------------------
    @classmethod
    def local(cls, regions: Mapping[str, int] | None = None, **kwargs: Any) -> "Grid":
        """Start an embedded grid: one ``LocalCluster`` of worker processes per region.

        Parameters
        ----------
        regions : dict of str to int, default ``{"eu": 1, "us": 1}``
            Nodes per region.
        threads_per_node : int, optional
            Default ``grid.local.threads-per-node``.
        memory_limit : str, optional
            Default ``grid.local.memory-limit``.
        dashboard : bool, optional
            Serve each region's Dask dashboard (default ``grid.local.dashboard``).
        processes : bool, default True
            Nodes as worker processes (the real thing); False runs them as
            threads of this process, which starts faster (tests).
        tls : bool, default False
            Run the whole grid on mutual TLS with a throw-away CA: schedulers
            and nodes get certificates of their region, this grid's client a
            data scientist's (``client``) certificate.
        """
        from grid.local import LocalGrid

        local = LocalGrid(regions or {"eu": 1, "us": 1}, **kwargs)
        try:
            security = local.spec.tls.security() if local.spec.tls else None
            clients = {
                name: Client(cluster.scheduler_address, security=security, set_as_default=False)
                for name, cluster in local.clusters.items()
            }
        except BaseException:
            local.close()
            raise
        return cls(local.spec, clients, _local=local)

    @classmethod
    def connect(cls, spec: str | Mapping | GridSpec, *, timeout: float | str | None = None, owner: str | None = None) -> "Grid":
        """Connect to the regional schedulers named by a grid spec (file path or dict).

        Raises
        ------
        GridConnectionError
            Naming the region, the address and the timeout when a scheduler
            cannot be reached.
        grid.spec.SpecError
            When the spec is invalid.
        """
        spec = load_spec(spec)
        security = spec.tls.security() if spec.tls else None
        clients: dict[str, Client] = {}
        try:
            for name, region in spec.regions.items():
                t = region.connect_timeout or (timeout if timeout is not None else config.get("connect-timeout"))
                from dask.utils import parse_timedelta

                t = float(parse_timedelta(t))
                try:
                    clients[name] = Client(region.address, timeout=t, security=security, set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise GridConnectionError(
                        f"region {name!r}: could not reach its scheduler at {region.address} "
                        f"within {t:g}s ({type(exc).__name__}: {exc}). Check that `grid scheduler "
                        f"--region {name}` runs there, or raise the timeout (grid.connect-timeout)."
                    ) from None
                info = clients[name].sync(clients[name].scheduler.grid_info)
                if not isinstance(info, dict) or info.get("region") != name:
                    raise GridConnectionError(
                        f"region {name!r}: the scheduler at {region.address} serves region "
                        f"{info.get('region') if isinstance(info, dict) else '?'!r}; fix the grid spec"
                    )
        except BaseException:
            for c in clients.values():
                c.close()
            raise
        return cls(spec, clients, owner=owner)

    # --- regions -------------------------------------------------------------------------
    @property
    def regions(self) -> list[str]:
        return list(self.spec.regions)

    def _check_region(self, region: str) -> None:
        if region not in self._clients:
            raise UnknownRegion(f"unknown region {region!r}; this grid has regions {self.regions}")

    def client(self, region: str | None = None) -> Client:
        """A plain ``distributed.Client`` of one region (default: the first)."""
        region = region or self.regions[0]
        self._check_region(region)
        return self._clients[region]

    def _info(self, region: str) -> dict:
        client = self.client(region)
        return check_reply(client.sync(client.scheduler.grid_info), f"region {region!r}")

    def status(self) -> dict[str, dict]:
        """Per region: address, dashboard, nodes (with their state), threads and job counts."""
        return {r: self._info(r) for r in self.regions}

    # --- data ------------------------------------------------------------------------------
    def _regions_arg(self, regions: str | list[str] | None) -> list[str]:
        if regions is None:
            return self.regions
        if isinstance(regions, str):
            regions = [regions]
        regions = list(regions)
        if not regions:
            raise ValueError("regions=[] names no region; leave it out to use them all")
        for r in regions:
            self._check_region(r)
        return regions

    def scatter(
        self,
        X: Any,
        y: Any = None,
        *,
        regions: str | list[str] | None = None,
        partition_rows: int | str = "auto",
        sample_weight: Any = None,
    ) -> PlacedData:
        """Place partitions of ``X``/``y`` on the nodes once, for many jobs.

        Each partition is held by two nodes of its region where the region has
        two or more. Returns a handle that :meth:`submit` and ``est.fit``
        accept in place of ``X, y``. Free it with :meth:`drop`.
        """
        regions = self._regions_arg(regions)
        if isinstance(X, Files):
            if y is not None or sample_weight is not None:
                raise ValueError("a Files dataset names its target itself (target=...); do not pass y")
            return place_files(self, X, regions, job_owned=False, owner=self.owner)
        parts = partition(X, y, partition_rows=partition_rows, sample_weight=sample_weight)
        return place(self, parts, regions, job_owned=False, owner=self.owner)

    def drop(self, data: PlacedData) -> None:
        """Release a placed dataset on every region (refused while a job uses it)."""
        for region in data.regions:
            client = self.client(region)
            check_reply(client.sync(client.scheduler.grid_drop_dataset, name=data.name), f"dropping {data.name}")
        data._dropped = True

    # --- jobs ------------------------------------------------------------------------------
    def submit(
        self,
        estimator: Any,
        X: Any = None,
        y: Any = None,
        *,
        regions: str | list[str] | None = None,
        home: str | None = None,
        sample_weight: Any = None,
        verify: int | str | None = None,
        partial_participation: bool = False,
    ) -> Job:
        """Submit a training job and return at once.

        Every check (parameters, data, regions) runs before any data moves.

        Parameters
        ----------
        estimator : job estimator (``jobs.PartialFit``, ...)
        X, y : training data, or ``X`` a :class:`PlacedData` from :meth:`scatter`
        regions : str or list of str, optional
            Regions to train on (default: all; ignored for placed data).
        home : str, optional
            Region whose scheduler runs the job (default: the first region used).
        sample_weight : array-like, optional
            One weight per row of ``X``, cut into partitions with it.
        verify : int or "adaptive", optional
            Nodes that compute each partition update (default
            ``grid.jobs.verify``, 1). With 2 or more, an update is accepted only
            when that many distinct nodes agree; a node in the minority is
            quarantined (see docs/reliability.md). ``"adaptive"`` replicates
            the updates of nodes that have not earned trust and spot-checks
            trusted ones at random (``grid.scheduler.verify.adaptive``); a node
            caught later makes the job replay the rounds it went unchecked in,
            or, once the job ended, taints it (:meth:`Job.result` warns,
            :meth:`Job.rerun` trains it again). ``mode="average"`` only.
        partial_participation : bool, default=False
            Skip, for one round, a region that misses the round's deadline
            instead of waiting for it; the round's weights then leave it out
            and the history names it. Makes the model depend on timing.
        """
        if not hasattr(estimator, "_job_request"):
            raise TypeError(
                f"{type(estimator).__name__} is not a grid job estimator; wrap it: "
                f"jobs.PartialFit({type(estimator).__name__}(...))"
            )
        request = estimator._job_request()  # validates every parameter
        request["verify"] = int(config.get("jobs.verify")) if verify is None else verify
        request["partial_participation"] = partial_participation
        check_request(request)
        classification = estimator._is_classifier()
        if isinstance(X, PlacedData):
            if y is not None or sample_weight is not None:
                raise ValueError("pass y and sample_weight to Grid.scatter with X, not again to submit()")
            if X._dropped:
                raise ValueError(f"dataset {X.name} was dropped; place it again with Grid.scatter")
            for r in X.regions:
                self._check_region(r)
            data = X
        elif isinstance(X, Files):
            if y is not None or sample_weight is not None:
                raise ValueError("a Files dataset names its target itself (target=...); do not pass y")
            regions_list = self._regions_arg(regions)
            data = place_files(self, X, regions_list, job_owned=True, owner=self.owner)
        else:
            regions_list = self._regions_arg(regions)
            parts = partition(
                X,
                y,
                partition_rows=request.get("partition_rows", "auto"),
                classification=classification,
                sample_weight=sample_weight,
            )
            data = None
        home = home or (list(data.regions)[0] if data else regions_list[0])
        self._check_region(home)
        if data is not None and classification and data.classes is None and not data.pending:  # pending: the scheduler checks
            if data.job_owned:
                for r in data.regions:
                    drop_on(self, r, data.name)
            raise DataError(
                "this classifier needs class labels, but the data has none or a continuous target; "
                "pass y, or name the label column with Files(..., target=...)"
            )
        if data is None:
            data = place(self, parts, regions_list, job_owned=True, owner=self.owner)
        if classification:
            request["classes"] = data.classes
        request["n_features"] = data.n_features
        placement = {
            r: {"address": where["address"], "dataset": data.name, "job_owned": data.job_owned}
            for r, where in data.regions.items()
        }
        client = self.client(home)
        try:
            reply = check_reply(
                client.sync(client.scheduler.grid_submit, request=request, placement=placement, owner=self.owner),
                "submit",
            )
        except BaseException:
            if data.job_owned:
                for r in data.regions:
                    drop_on(self, r, data.name)
            raise
        return Job(self, reply["id"], estimator)

    def job(self, job_id: str) -> Job:
        """Reattach to a job by id (from any process connected to its home region)."""
        job = Job(self, job_id)
        self._check_region(job.home)
        job.info()  # raises KeyError for an unknown id
        return job

    def jobs(self) -> list[dict]:
        """Summaries of every job known to the grid's schedulers, oldest first."""
        out = []
        for r in self.regions:
            client = self.client(r)
            out.extend(check_reply(client.sync(client.scheduler.grid_jobs), f"region {r!r}")["jobs"])
        return sorted(out, key=lambda j: j["submitted"])

    # --- joblib ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def joblib(
        self,
        region: str | None = None,
        *,
        scatter: list | tuple | None = None,
        cache: bool = True,
        warm: bool = True,
        **kwargs: Any,
    ) -> Iterator[None]:
        """Run joblib (and scikit-learn's ``n_jobs``) on one region's nodes.

        ``with g.joblib(scatter=[X, y]): GridSearchCV(..., n_jobs=-1).fit(X, y)``.
        ``n_jobs=-1`` means every thread of the region (at least 2, so that a
        one-thread region still runs the tasks on its node).

        Parameters
        ----------
        region : str, optional
            The region whose nodes run the tasks (default: the first).
        scatter : list of objects, optional
            Arguments the tasks see again and again (the training ``X``,
            ``y``): placed on every node of the region before the block and
            passed to the tasks as futures.
        cache : bool, default True
            Keep the ``scatter`` data on the nodes for later blocks on the same
            data (matched by its dask token, i.e. its content) until the grid
            closes; False releases it when the block exits.
        warm : bool, default True
            Prepare the nodes for the block (import scikit-learn; lift the
            malloc thresholds Dask pins, until the block exits). Best effort.
        **kwargs
            ``joblib.parallel_config`` arguments (``n_jobs``, ``verbose``, ...)
            and joblib dask backend arguments (``wait_for_workers_timeout``,
            ``Client.submit`` keywords). See :func:`grid.parallel.parallel_config`.

        Raises
        ------
        UnknownRegion
            When ``region`` is not a region of this grid.
        PermissionError
            On a TLS grid whose certificate is not an admin's (plain Dask tasks
            need one).
        """
        from grid.parallel import parallel_config

        if region is not None and not isinstance(region, str):
            raise TypeError(f"region must be a region name (str), got {type(region).__name__}; this grid has regions {self.regions}")
        with parallel_config(self.client(region), scatter=scatter, cache=cache, warm=warm, **kwargs):
            yield

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the clients (and, for a local grid, its schedulers and nodes)."""
        if self._closed:
            return
        self._closed = True
        for c in self._clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing must go on for the others
                logger.debug("error closing client", exc_info=True)
        if self._local is not None:
            self._local.close()

    @contextlib.contextmanager
    def as_current(self) -> Iterator["Grid"]:
        """Make this grid the default of ``est.fit`` for the block, without closing it.

        Like ``distributed.Client.as_current``, plus what a dask ``Client``
        does with ``set_as_default``: other threads of this process (thread
        pools, joblib's threading backend) see it too, and job estimators
        pickled in the block and unpickled in a child process of this one
        (joblib's loky workers, ``multiprocessing``) connect to it.
        """
        _current.set([*_current.get(), self])
        with _process_lock:
            _process_stack.append(self)
        try:
            yield self
        finally:
            stack = _current.get()
            if stack and stack[-1] is self:
                _current.set(stack[:-1])
            with _process_lock:
                for i in range(len(_process_stack) - 1, -1, -1):
                    if _process_stack[i] is self:
                        del _process_stack[i]
                        break

    def __enter__(self) -> "Grid":
        self._as_current = self.as_current()
        self._as_current.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        block = self.__dict__.pop("_as_current", None)
        if block is not None:
            block.__exit__(None, None, None)
        self.close()

    def connection_recipe(self) -> dict:
        """Plain data another process of this machine connects to this grid with.

        The spec (addresses and certificate files), the owner, and this
        process's id: :func:`default_grid` uses a recipe only in a child
        process of the process that wrote it, so an estimator pickled to disk
        inside a ``with grid:`` block does not reach for the grid later.
        """
        return {"spec": self.spec.to_dict(), "owner": self.owner, "pid": os.getpid()}

    def __repr__(self) -> str:
        return f"<Grid regions={self.regions}>"

    def dashboard_links(self) -> dict[str, str | None]:
        return {r: self._info(r).get("dashboard") for r in self.regions}


def current_grid() -> Grid | None:
    """The grid of the innermost enclosing ``with grid:`` block, if any.

    The block's own context first (so concurrent asyncio tasks keep their
    own grid), else the latest block still open in any thread of this process.
    """
    stack = _current.get()
    if stack:
        return stack[-1]
    with _process_lock:
        return _process_stack[-1] if _process_stack else None


def default_grid(grid: Grid | None = None, *, recipe: Mapping | None = None) -> Grid:
    """The grid an estimator's ``fit`` uses.

    In order: the given grid; the current one (:func:`current_grid`); the
    grid of ``recipe`` (:meth:`Grid.connection_recipe`, carried by an
    estimator pickled inside a ``with grid:`` block) when this process is a
    child of the one that wrote it; else this process's embedded local grid,
    started on first use (and said so once) and closed when the process exits.
    """
    if grid is not None:
        return grid
    current = current_grid()
    if current is not None:
        return current
    if recipe is not None and recipe.get("pid") == os.getppid():
        return _inherited_grid(recipe)
    return _embedded_grid()


#: ``with grid:`` blocks open in any thread of this process, innermost last
_process_stack: list[Grid] = []
_process_lock = threading.Lock()
#: grids opened by this process on its own: the embedded one and inherited ones
_owned: dict[str, Grid] = {}


def _inherited_grid(recipe: Mapping) -> Grid:
    key = json.dumps({"spec": recipe["spec"], "owner": recipe["owner"]}, sort_keys=True)
    with _process_lock:
        g = _owned.get(key)
        if g is None or g._closed:
            g = _owned[key] = Grid.connect(recipe["spec"], owner=recipe["owner"])
    return g


def _embedded_grid() -> Grid:
    with _process_lock:
        g = _owned.get("embedded")
        if g is None or g._closed:
            regions = {"eu": 1, "us": 1}
            g = _owned["embedded"] = Grid.local(regions)
            warnings.warn(
                "no grid given: started an embedded local grid ("
                + ", ".join(f"{r}: {n} node" for r, n in regions.items())
                + ") that this process keeps until it exits; pass grid=, or fit inside "
                "`with Grid.connect(spec):` or `with Grid.local():` to choose the grid",
                GridWarning,
                stacklevel=4,
            )
    return g


@atexit.register
def _close_owned() -> None:
    with _process_lock:
        owned = list(_owned.values())
        _owned.clear()
    for g in owned:
        try:
            g.close()
        except Exception:  # noqa: BLE001 - the interpreter is exiting; close the others
            logger.debug("error closing a grid at exit", exc_info=True)
