"""What the grid's scheduler handlers answer besides their own data.

A handler never raises to its caller: it answers ``{"status": "OK", ...}`` or
:func:`error_reply` (the client turns it into an exception with
``grid.errors.check_reply``). A reply that names nodes goes to a caller that
may not see them through :func:`without_node_names`.
"""

from __future__ import annotations

from typing import Any


def error_reply(exc: BaseException) -> dict:
    """The reply of a handler that refuses: the exception's type and message."""
    return {"status": "error", "type": type(exc).__name__, "message": str(exc)}


def without_node_names(out: dict) -> dict:
    """A job's summary, history or result for a caller that may not see node names (a data scientist
    on a TLS grid): the nodes a verify="adaptive" job names become placeholders, numbered in order."""
    names: dict[str, str] = {}

    def hide(by_region: Any) -> Any:
        if not isinstance(by_region, dict):
            return by_region
        return {r: [names.setdefault(n, f"node-{len(names)}") for n in nodes] for r, nodes in by_region.items()}

    out = dict(out)
    if out.get("history"):
        out["history"] = [
            {**h, **{k: hide(h[k]) for k in ("unverified_nodes", "caught") if k in h}} for h in out["history"]
        ]
    if out.get("tainted"):
        tainted = out["tainted"]
        out["tainted"] = {**tainted, "node": hide({"": [tainted["node"]]})[""][0]}
    return out
