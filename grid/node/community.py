"""Community mode: a node lends CPU to grid jobs, not a shell.

Installed on every ``grid node`` unless ``--no-community`` is given. The
worker plugin

* turns every task that would run anything but the grid's own job functions
  (``grid.node.tasks``) into a task that fails with ``PermissionError``: the
  task's function, every task nested in its arguments (dask runs those
  first) and every object in them that could run code of its own (a function
  passed as data, an instance of an arbitrary class) are checked
  (:func:`refusal`);
* refuses the worker handlers that run code sent by a peer (``run``,
  ``run_coroutine``, ``plugin-add``, ``upload_file``, actor calls) unless the
  peer presents a TLS certificate of role ``scheduler`` or ``admin`` (the
  scheduler itself forwards such calls only from admin certificates). On a
  plaintext grid nobody is authenticated, so they are refused to everyone.

With ``allow_admin_tasks`` (``grid node --allow-admin-tasks``) a node of a TLS
grid also runs plain Dask tasks (``g.joblib()``, ``g.client()``): on a TLS
grid the scheduler accepts task graphs from admin certificates only (a client
certificate cannot submit one), so every task that reaches the node from its
scheduler is then an admin's or the grid's own. The code handlers above stay
closed to every peer but the scheduler and admin certificates. On a plaintext
grid nobody is authenticated, so the allowance has no effect there.

It works through distributed's extension points: a ``WorkerPlugin`` whose
``setup`` replaces entries of the worker's handler tables.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import numpy as np
from dask._task_spec import Alias, DataNode, Dict, List, NestedContainer, Set, Task, TaskRef, Tuple
from distributed.diagnostics.plugin import WorkerPlugin

from grid.handlers import call_handler

logger = logging.getLogger("grid.node")

#: modules whose functions a community node runs
ALLOWED_TASK_MODULES = ("grid.node.tasks",)
#: worker handlers that execute code from the caller
CODE_HANDLERS = ("run", "run_coroutine", "plugin-add", "plugin-remove", "upload_file", "actor_execute", "actor_attribute")
#: peer roles allowed to call them (TLS grids)
TRUSTED_ROLES = frozenset({"scheduler", "admin"})


def refused(reason: str) -> None:
    """The body every refused task runs instead of its own function."""
    raise PermissionError(reason)


#: argument values that are data and nothing else
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
_NUMBERS = frozenset({type(None), bool, int, float})
_NUMPY_SCALARS = frozenset(t for t in np.sctypeDict.values() if t not in (np.object_, np.void))
#: dask's containers of task arguments (they rebuild a list, tuple, set or dict)
_DASK_CONTAINERS = frozenset({List, Tuple, Set, Dict})


def allowed_function(func: Any) -> bool:
    """Whether ``func`` is one of the grid's job functions.

    It must be a Python function defined in an allowed module and be the very
    object that module holds under its name: a function pickled by value
    (cloudpickle) can claim any ``__module__`` and ``__qualname__``. Helpers
    (names starting with ``_``) are not job functions.
    """
    if type(func) is not types.FunctionType or func.__module__ not in ALLOWED_TASK_MODULES:
        return False
    module = sys.modules.get(func.__module__)  # a task that really names it imported it while unpickling
    name = func.__name__
    return (
        module is not None
        and type(name) is str
        and not name.startswith("_")
        and func.__qualname__ == name
        and vars(module).get(name) is func
    )


def function_name(func: Any) -> str:
    """``module.qualname`` of a function or class; the type of any other object."""
    if isinstance(func, (types.FunctionType, types.BuiltinFunctionType, type)):
        name = f"{getattr(func, '__module__', None) or '?'}.{getattr(func, '__qualname__', '?')}"
        if (
            type(func) is types.FunctionType
            and func.__module__ in ALLOWED_TASK_MODULES
            and vars(sys.modules.get(func.__module__) or types).get(func.__qualname__) is not func
        ):
            name += " (not the grid's own function: a function sent by value that only claims its name)"
        return name
    kind = type(func)
    return f"a {kind.__module__}.{kind.__qualname__} object"


def _key(key: Any) -> str:
    # repr of plain keys only: repr of an arbitrary object runs its own code
    return f"{key!r:.40}" if type(key) in _SCALARS else f"<{type(key).__qualname__}>"


def refusal(run_spec: Any) -> str | None:
    """What in a task a community node does not run, in words; None when it runs all of it.

    The task must be a ``Task`` of a grid job function (:func:`allowed_function`).
    Its arguments, walked to the bottom, may hold only

    * more such tasks (dask runs a nested task before the task that holds it),
      dask's containers ``List``, ``Tuple``, ``Set`` and ``Dict`` with their
      own function, and references to other tasks' results (``Alias``,
      ``TaskRef``), and ``DataNode`` values that are data;
    * data: None, numbers, strings, bytes, numpy scalars and arrays without
      Python objects in them, and lists, tuples, sets and dicts of those.

    Anything else could run code of its own when the grid function uses it: a
    function or ``functools.partial`` passed as data (the grid's functions
    never take callables, but scikit-learn calls e.g. a callable ``init``), an
    instance of an arbitrary class, a ``GraphNode`` of another kind.
    """
    if type(run_spec) is not Task:
        if isinstance(run_spec, Task):  # a subclass of Task may run anything in its own __call__
            return f"{function_name(run_spec.func)} (in a {type(run_spec).__qualname__} task)"
        return f"a {type(run_spec).__qualname__} task"
    if not allowed_function(run_spec.func):
        return function_name(run_spec.func)
    stack: list[tuple[Any, str]] = [(run_spec, "")]
    while stack:
        obj, where = stack.pop()
        kind = type(obj)
        if kind in _SCALARS or kind is TaskRef or kind is Alias or kind in _NUMPY_SCALARS:
            continue
        if (kind is Task or kind in _DASK_CONTAINERS) and (type(obj.args) is not tuple or type(obj.kwargs) is not dict):
            return f"a {kind.__qualname__} task with arguments of its own kind (in {where or 'the task'})"
        if kind is Task:
            if not allowed_function(obj.func):
                return f"{function_name(obj.func)} (a task nested in {where})"
            prefix = f"{where}." if where else ""
            stack.extend((a, f"{prefix}args[{i}]") for i, a in enumerate(obj.args))
            stack.extend((v, f"{prefix}kwargs[{_key(k)}]") for k, v in obj.kwargs.items())
        elif kind in _DASK_CONTAINERS:
            # unpickling restores every slot, so a container's function is whatever the sender put there
            kw = obj.kwargs
            if (
                obj.func is not NestedContainer.to_container
                or len(kw) != 1
                or not all(type(k) is str for k in kw)
                or kw.get("constructor") is not kind.constructor
            ):
                return f"{function_name(obj.func)} (a {kind.__name__} container in {where} with a function of its own)"
            stack.extend((a, f"{where}[{i}]") for i, a in enumerate(obj.args))
        elif kind is DataNode:
            stack.append((obj.value, where))
        elif kind is list or kind is tuple or kind is set or kind is frozenset:
            if not set(map(type, obj)) <= _NUMBERS:  # vectors of numbers need no walk
                stack.extend((v, f"{where}[{i}]") for i, v in enumerate(obj))
        elif kind is dict:
            for k, v in obj.items():
                stack.append((k, f"a key of {where}"))
                stack.append((v, f"{where}[{_key(k)}]"))
        elif kind is np.ndarray and not obj.dtype.hasobject:
            continue
        elif callable(obj):
            return f"{function_name(obj)} (passed as data in {where}; grid job functions take no callables)"
        else:
            return f"{function_name(obj)} (in {where}; grid job functions take plain data only)"
    return None


class CommunityMode(WorkerPlugin):
    """Run only the grid's job functions on this node."""

    name = "grid-community-mode"
    idempotent = True

    def __init__(self, allow_admin_tasks: bool = False) -> None:
        self.refused_tasks = 0
        self.allow_admin_tasks = allow_admin_tasks

    def setup(self, worker: Any) -> None:
        self.worker = worker
        for op in CODE_HANDLERS:
            if op in worker.handlers:
                worker.handlers[op] = self._guard(op, worker.handlers[op])
        scheduler = str(getattr(getattr(worker, "scheduler", None), "address", "") or "")
        if self.allow_admin_tasks:
            if scheduler.startswith("tls://"):
                # only an admin certificate can put a task graph on a TLS scheduler
                logger.info("community node %r runs admins' plain Dask tasks (--allow-admin-tasks)", worker.name)
                return
            logger.warning(
                "community node %r ignores --allow-admin-tasks: its scheduler %s is not TLS, so no admin is "
                "authenticated; use TLS, or --no-community on a private grid",
                worker.name, scheduler,
            )
        compute = worker.stream_handlers["compute-task"]

        def guarded_compute(**msg: Any) -> Any:
            run_spec = msg.get("run_spec")
            name = None if run_spec is None else refusal(run_spec)
            if name is not None:
                reason = (
                    f"node {worker.name!r} runs in community mode and only runs grid job functions; "
                    f"it refused {name} (task {msg.get('key')!r}). Submit training through Grid.submit; "
                    "for plain Dask work (g.joblib(), g.client()) use an admin certificate on a node started with "
                    "`grid node --allow-admin-tasks` (TLS grids), or a private node (`grid node --no-community`)."
                )
                logger.warning("refused task %r: %s", msg.get("key"), name)
                self.refused_tasks += 1
                msg["run_spec"] = Task(msg.get("key"), refused, reason)
            return compute(**msg)

        worker.stream_handlers["compute-task"] = guarded_compute

    def _guard(self, op: str, handler: Any) -> Any:
        async def guarded(comm: Any = None, **msg: Any) -> Any:
            if not self._trusted(comm):
                raise PermissionError(
                    f"node {self.worker.name!r} runs in community mode: {op!r} is accepted only from its "
                    "scheduler (admin certificates go through the scheduler)"
                )
            return await call_handler(handler, comm, msg)

        return guarded

    def _trusted(self, comm: Any) -> bool:
        # a plaintext grid authenticates nobody, so nobody may run code on a community node
        return peer_role(comm) in TRUSTED_ROLES


def _extra_info(comm: Any) -> dict:
    """What the comm knows of its peer (``peercert`` only on TLS)."""
    return getattr(comm, "extra_info", None) or {}


def peer_role(comm: Any) -> str | None:
    """The grid role of the TLS peer on ``comm``; None on plaintext or for a certificate
    without a grid identity."""
    info = _extra_info(comm)
    if "peercert" not in info:
        return None
    from grid.security.identity import identity_from_peercert

    try:
        return identity_from_peercert(info["peercert"]).role
    except Exception:  # noqa: BLE001 - a certificate without a grid identity has no role
        return None


def is_tls_peer(comm: Any) -> bool:
    return "peercert" in _extra_info(comm)
