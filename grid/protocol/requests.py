"""Job requests and job states: what a client sends to submit a job, and what schedulers report.

Both sides use this module: ``Grid.submit`` checks a request before any data
moves, so a user learns of a bad setting at once; a scheduler's
``grid_submit`` and ``grid_attach`` check it again, because a client may be
anyone's. Job states are what ``grid_job`` and ``grid_jobs`` answer.
"""

from __future__ import annotations

from jobs.plain import PlainDataError, check_plain

#: every state a job can be in, and the ones it never leaves
STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})

#: the ``verify`` value that asks for adaptive replication instead of a fixed quorum
ADAPTIVE = "adaptive"


def check_request(request: dict) -> None:
    """Reject a job request that is not plain data, or bad ``verify`` / ``partial_participation`` settings.

    Every place that accepts a job request calls this (``Grid.submit``
    before sending it, the scheduler's ``grid_submit`` and ``grid_attach``
    before registering or forwarding it), so a request that reaches a node
    holds nothing but plain data (:func:`jobs.plain.check_plain`).

    Raises
    ------
    jobs.plain.PlainDataError
        Naming the first field that is not plain data (a ``ValueError``).
    ValueError
        Naming the setting, the value and what is allowed. (A region with
        too few independent nodes for ``verify`` is not an error: the job
        waits for them, and says so in its status.)
    """
    check_plain(request, "request")
    if not isinstance(request, dict):
        raise PlainDataError(f"a job request must be a dict, got {type(request).__name__}")
    verify = request.get("verify", 1)
    if isinstance(verify, str):
        if verify != ADAPTIVE:
            raise ValueError(
                f"verify must be an integer >= 1 (nodes computing each update) or 'adaptive' (replicate "
                f"untrusted nodes' updates, spot-check trusted ones), got {verify!r:.80}"
            )
    elif isinstance(verify, bool) or not isinstance(verify, int) or verify < 1:
        raise ValueError(
            f"verify must be an integer >= 1 (nodes computing each update) or 'adaptive', got {verify!r:.80}"
        )
    if not isinstance(request.get("partial_participation", False), bool):
        raise ValueError(
            f"partial_participation must be True or False, got {request.get('partial_participation')!r:.80}"
        )
    if verify != 1 and request.get("mode") == "sequential":
        raise ValueError(
            f"verify={verify} needs mode='average': a sequential job passes one state from node to node, "
            "so there is no independent update to compare; use mode='average' or verify=1"
        )
