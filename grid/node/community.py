"""Community mode: a node lends CPU to grid jobs, not a shell.

Installed on every ``grid node`` unless ``--no-community`` is given. The
worker plugin

* turns every task whose function is not one of the grid's own job functions
  (``grid.node.tasks``) into a task that fails with ``PermissionError``;
* refuses the worker handlers that run code sent by a peer (``run``,
  ``run_coroutine``, ``plugin-add``, ``upload_file``, actor calls) unless the
  peer presents a TLS certificate of role ``scheduler`` or ``admin`` (the
  scheduler itself forwards such calls only from admin certificates). On a
  plaintext grid nobody is authenticated, so they are refused to everyone.

It works through distributed's extension points: a ``WorkerPlugin`` whose
``setup`` replaces entries of the worker's handler tables.
"""

from __future__ import annotations

import logging
from typing import Any

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


def allowed_function(func: Any) -> bool:
    module = getattr(func, "__module__", None) or ""
    return module in ALLOWED_TASK_MODULES


class CommunityMode(WorkerPlugin):
    """Run only the grid's job functions on this node."""

    name = "grid-community-mode"
    idempotent = True

    def __init__(self) -> None:
        self.refused_tasks = 0

    def setup(self, worker: Any) -> None:
        self.worker = worker
        compute = worker.stream_handlers["compute-task"]

        def guarded_compute(**msg: Any) -> Any:
            run_spec = msg.get("run_spec")
            func = getattr(run_spec, "func", None)
            if run_spec is not None and not allowed_function(func):
                from dask._task_spec import Task

                name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
                reason = (
                    f"node {worker.name!r} runs in community mode and only runs grid job functions; "
                    f"it refused {name} (task {msg.get('key')!r}). Submit training through Grid.submit, "
                    "or start the node with `grid node --no-community` on a private grid."
                )
                logger.warning("refused task %r: %s is not a grid job function", msg.get("key"), name)
                self.refused_tasks += 1
                msg["run_spec"] = Task(msg.get("key"), refused, reason)
            return compute(**msg)

        worker.stream_handlers["compute-task"] = guarded_compute
        for op in CODE_HANDLERS:
            if op in worker.handlers:
                worker.handlers[op] = self._guard(op, worker.handlers[op])

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
    from grid.security.certs import identity_from_peercert

    try:
        return identity_from_peercert(info["peercert"]).role
    except Exception:  # noqa: BLE001 - a certificate without a grid identity has no role
        return None


def is_tls_peer(comm: Any) -> bool:
    return "peercert" in _extra_info(comm)
