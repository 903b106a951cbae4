"""joblib on the grid: scikit-learn's ``n_jobs`` parallelism on a region's nodes.

``parallel_config(client)`` is joblib's own dask backend (``DaskDistributedBackend``)
registered under the name ``"dask-grid"`` with three changes, each measured in
docs/performance.md:

* ``n_jobs=-1`` (or ``None``) means every thread of the region, and at least two,
  so that a one-thread region runs the tasks on its node instead of joblib
  falling back to running them one by one in this process.
* Data named in ``scatter=`` is placed on every node of the region once per
  client and reused by later blocks (a cache keyed by the data's dask token),
  instead of being broadcast again at every block.
* Nodes are warmed for the block: scikit-learn's model-selection code is imported
  and, on glibc nodes whose malloc Dask pinned with ``MALLOC_TRIM_THRESHOLD_``,
  the trim and mmap thresholds are lifted while a block runs (restored after):
  with the pinned thresholds every array a fit allocates is a fresh ``mmap``
  and a scikit-learn fit ran ~35% slower on a node than in a plain process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import joblib
from distributed import Client, Future
from joblib._dask import DaskDistributedBackend

logger = logging.getLogger("grid.parallel")

BACKEND_NAME = "dask-grid"


class _TaskFailed:
    """The outcome of a joblib batch whose Dask task failed (not the user's code inside it)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class GridDaskBackend(DaskDistributedBackend):
    """joblib's ``DaskDistributedBackend`` with ``n_jobs`` counted in the region's threads.

    Parameters
    ----------
    placed : sequence of (object, Future), optional
        Arguments already on the nodes: a task argument that *is* one of these
        objects is sent as its future (joblib's ``scatter=`` without the
        broadcast at every block).
    **kwargs
        ``DaskDistributedBackend``'s: ``client``, ``wait_for_workers_timeout``
        and ``Client.submit`` keywords.
    """

    def __init__(self, *, placed: Sequence[tuple[Any, Future]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if placed:
            self._scatter = [obj for obj, _ in placed]  # keeps the ids valid while the backend lives
            self.data_futures = {id(obj): fut for obj, fut in placed}

    def submit(self, func: Any, callback: Any = None) -> Any:
        """joblib's submit; a batch whose Dask task itself failed also completes its callback.

        joblib's dask backend wraps each batch so that exceptions of the user's
        code come back as results, and calls ``callback`` only for results. A
        task that fails outside that wrapper (a community node refuses the
        task, a worker cannot unpickle it) only fails the batch's future, and
        ``Parallel`` would wait for the callback forever. Here the callback
        gets the error too, and :meth:`retrieve_result_callback` raises it in
        ``Parallel``, which then stops and raises the node's reason.
        """
        future = super().submit(func, callback)
        if callback is not None:

            def failed(f: Any) -> None:
                if not f.cancelled() and f.exception() is not None:
                    callback(_TaskFailed(f.exception()))

            future.add_done_callback(failed)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        if isinstance(out, _TaskFailed):
            raise out.error
        return super().retrieve_result_callback(out)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        threads = super().effective_n_jobs(n_jobs)  # waits for a node if there is none yet
        if n_jobs is None or n_jobs == -1:
            return max(threads, 2)
        if n_jobs < 0:
            return max(threads + 1 + n_jobs, 1)
        return n_jobs


joblib.register_parallel_backend(BACKEND_NAME, GridDaskBackend)


# --- data placed once per client ---------------------------------------------------------------
_placed: "weakref.WeakKeyDictionary[Client, dict[str, Future]]" = weakref.WeakKeyDictionary()
_placed_lock = threading.Lock()


def _token(obj: Any) -> str | None:
    """The dask token of ``obj``'s content, or None when it has no deterministic one."""
    import dask
    from dask.base import tokenize

    try:
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            return tokenize(obj)
    except Exception:  # noqa: BLE001 - any object without a stable token is scattered per block
        return None


def placed_keys(client: Client) -> list[str]:
    """Keys of the data :func:`parallel_config` keeps on ``client``'s nodes for later blocks."""
    with _placed_lock:
        return [f.key for f in _placed.get(client, {}).values()]


def release_placed(client: Client) -> None:
    """Release the data kept on ``client``'s nodes by earlier ``scatter=`` blocks."""
    with _placed_lock:
        futures = list(_placed.pop(client, {}).values())
    for f in futures:
        f.release()


def _place(client: Client, objs: Sequence[Any], cache: bool) -> tuple[list[tuple[Any, Future]], list[Future]]:
    """Futures of ``objs`` on every node: reused from the cache, else broadcast now.

    Returns the (object, future) pairs and the futures to release at the end of
    the block (those not kept in the cache).
    """
    tokens = [_token(obj) if cache else None for obj in objs]
    with _placed_lock:
        cached = dict(_placed.get(client, {}))
    found = {tok: fut for tok, fut in cached.items() if tok in tokens and fut.status == "finished"}
    # one transfer per distinct piece of data (scatter=[X, X] or two equal copies: one)
    missing: dict[Any, Any] = {}
    for obj, tok in zip(objs, tokens):
        if tok not in found:
            missing.setdefault(tok if tok is not None else ("id", id(obj)), obj)
    sent: dict[Any, Future] = {}
    if missing:
        futures = client.scatter(list(missing.values()), broadcast=True, hash=False)
        sent = dict(zip(missing, futures))
    temporary = [fut for key, fut in sent.items() if isinstance(key, tuple)]
    with _placed_lock:
        kept = _placed.setdefault(client, {})
        for key, fut in sent.items():
            if not isinstance(key, tuple):
                old = kept.get(key)
                kept[key] = fut
                if old is not None and old is not fut:
                    old.release()  # lost or cancelled: replaced
    pairs = []
    for obj, tok in zip(objs, tokens):
        key = tok if tok is not None else ("id", id(obj))
        pairs.append((obj, found[key] if key in found else sent[key]))
    return pairs, temporary


# --- warm nodes ---------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TUNED = {"trim": 128 << 20, "mmap": 32 << 20}
_GLIBC_DEFAULT = 128 << 10  # glibc's static trim and mmap thresholds
_node_lock = threading.Lock()
_node_blocks = 0


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


def _pinned_malloc() -> bool:
    """True when this process's glibc malloc runs with fixed thresholds (Dask's nanny sets them)."""
    return any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"))


def node_enter() -> dict:
    """Run on a node (``Client.run``) when a joblib block starts: warm it for scikit-learn tasks."""
    global _node_blocks
    with _node_lock:
        _node_blocks += 1
        tuned = False
        if _node_blocks == 1 and _pinned_malloc() and (libc := _libc()) is not None:
            tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _TUNED["mmap"]) and libc.mallopt(_M_TRIM_THRESHOLD, _TUNED["trim"]))
    with contextlib.suppress(ImportError):
        import sklearn.model_selection._validation  # noqa: F401 - what GridSearchCV's tasks run
    return {"blocks": _node_blocks, "malloc_tuned": tuned}


def node_exit() -> dict:
    """Run on a node when a joblib block ends: the last one restores malloc and trims."""
    global _node_blocks
    with _node_lock:
        _node_blocks = max(_node_blocks - 1, 0)
        restored = False
        if _node_blocks == 0 and _pinned_malloc() and (libc := _libc()) is not None:
            trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", _GLIBC_DEFAULT))
            mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", _GLIBC_DEFAULT))
            restored = bool(libc.mallopt(_M_TRIM_THRESHOLD, trim) and libc.mallopt(_M_MMAP_THRESHOLD, mmap))
            libc.malloc_trim(0)
    return {"blocks": _node_blocks, "malloc_restored": restored}


@contextlib.contextmanager
def _warm_nodes(client: Client) -> Iterator[None]:
    """``node_enter`` on every node now, ``node_exit`` on the same nodes after. Best effort."""
    try:
        entered = list(client.run(node_enter, on_error="ignore"))
    except PermissionError as exc:  # a TLS grid's client certificate: plain Dask tasks would be refused too
        raise PermissionError(f"joblib on the grid runs plain Dask tasks on the nodes: {exc}") from None
    except Exception:  # noqa: BLE001 - e.g. `run` blocked by distributed.scheduler.blocked-handlers
        logger.debug("could not warm the nodes for joblib", exc_info=True)
        entered = []
    try:
        yield
    finally:
        if entered and client.status == "running":
            try:
                client.run(node_exit, workers=entered, on_error="ignore")
            except Exception:  # noqa: BLE001 - a node may be gone; the others are restored
                logger.debug("could not restore the nodes after joblib", exc_info=True)


@contextlib.contextmanager
def parallel_config(
    client: Client,
    *,
    scatter: Sequence[Any] | None = None,
    cache: bool = True,
    warm: bool = True,
    **kwargs: Any,
) -> Iterator[None]:
    """joblib's dask backend bound to ``client`` (one region), for a ``with`` block.

    Parameters
    ----------
    client : distributed.Client
        A client of the region whose nodes run the tasks.
    scatter : list of objects, optional
        Arguments the tasks will see again and again (the training ``X`` and
        ``y``). Each is placed on every node of the region before the block, so
        no task waits for it, and is passed to the tasks as a future.
    cache : bool, default True
        Keep the ``scatter`` data on the nodes after the block, keyed by its
        dask token (its content), so later blocks on the same data skip the
        transfer. It is released when the client (the grid) closes, or by
        :func:`release_placed`. With ``cache=False`` it is released when the
        block exits. Objects without a deterministic token are never kept.
    warm : bool, default True
        Before the block, import scikit-learn's model-selection code on every
        node and, on glibc nodes whose malloc Dask pinned
        (``MALLOC_TRIM_THRESHOLD_``), lift the malloc trim/mmap thresholds
        until the last block on that node exits. Best effort: skipped when the
        scheduler refuses ``run``.
    **kwargs
        ``joblib.parallel_config`` arguments (``n_jobs``, ``verbose``, ...) and
        joblib dask backend arguments (``wait_for_workers_timeout``, default 30,
        and ``Client.submit`` keywords such as ``resources``).

    Notes
    -----
    ``n_jobs=-1`` (scikit-learn's ``n_jobs=-1``, or ``None`` inside the block)
    means every thread of the region, and at least 2: with one thread in all,
    joblib would otherwise run the tasks one by one in this process.
    """
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    if scatter is not None and not isinstance(scatter, (list, tuple)):
        raise TypeError(f"scatter must be a list or tuple of the objects to place, got {type(scatter).__name__}")
    kwargs.setdefault("wait_for_workers_timeout", 30)
    with contextlib.ExitStack() as stack:
        if warm:
            stack.enter_context(_warm_nodes(client))  # first: a refused certificate fails here, before any transfer
        pairs, temporary = _place(client, list(scatter), cache) if scatter else ([], [])
        try:
            stack.enter_context(joblib.parallel_config(backend=BACKEND_NAME, client=client, placed=pairs, **kwargs))
            yield
        finally:
            for fut in temporary:
                fut.release()
