"""What nodes send about their tasks, made harmless before anyone reads it.

Dask lets a worker ship pickles in its task reports: the class of a result
(``task-finished``'s ``type``) and the exception and traceback of a failure
(``task-erred``). The scheduler keeps them opaque, but any client that hears
of the task unpickles them, and the grid's own driver is such a client,
living in the scheduler's process. A node is untrusted, so the grid replaces
these fields, through the scheduler's stream-handler table (an extension
point; distributed's code is untouched):

* ``type`` is dropped (clients then simply do not know the result's class);
* the exception becomes a :class:`grid.errors.NodeTaskError` made *here*
  from the node's plain-text ``exception_text``, and the traceback is
  dropped (its text stays in ``traceback_text``).

Results themselves reach the driver as raw numeric buffers (``grid.wire``)
through a client that accepts only msgpack-serialised data.
"""

from __future__ import annotations

from typing import Any

from distributed.protocol.serialize import Serialize

from grid.errors import NodeRefusedTask, NodeTaskError


def install(scheduler: Any, on_finished: Any = None) -> None:
    """Wrap the scheduler's ``task-finished`` and ``task-erred`` stream handlers.

    ``on_finished(key, worker)``, when given, learns which node produced each
    result (the driver needs it to quarantine the sender of a bad update).
    """
    finished = scheduler.stream_handlers["task-finished"]
    erred = scheduler.stream_handlers["task-erred"]

    def task_finished(**msg: Any) -> Any:
        msg["type"] = None
        if on_finished is not None:
            on_finished(msg.get("key"), msg.get("worker"))
        return finished(**msg)

    def task_erred(**msg: Any) -> Any:
        text = str(msg.get("exception_text") or "the task failed")[:2000]
        worker = msg.get("worker", "?")
        # only the type's name is read from the node's text, never an object of its making
        kind = NodeRefusedTask if text.startswith("PermissionError") else NodeTaskError
        msg["exception"] = Serialize(kind(f"on node {worker}: {text}"))
        msg["traceback"] = None
        return erred(**msg)

    scheduler.stream_handlers["task-finished"] = task_finished
    scheduler.stream_handlers["task-erred"] = task_erred
