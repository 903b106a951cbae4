"""The backoff between a waiting node's attempts to reach its scheduler."""

from __future__ import annotations

import random

import dask.config

from grid import config
from grid.node.agent import backoff_delay


def test_backoff_doubles_from_base_up_to_cap_with_full_jitter():
    rng = random.Random(0)
    base, cap = 1.0, 60.0
    for attempt, bound in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (50, 60.0), (10_000, 60.0)]:
        delays = [backoff_delay(attempt, base, cap, rng) for _ in range(500)]
        assert all(0 <= d <= bound for d in delays), (attempt, max(delays))
        # full jitter: spread over the whole range, so nodes that lost a scheduler together do not retry together
        assert min(delays) < 0.1 * bound and max(delays) > 0.9 * bound, (attempt, min(delays), max(delays))


def test_backoff_settings_are_dask_config_keys():
    assert config.seconds("node.reconnect.base") == 1 and config.seconds("node.reconnect.cap") == 60
    with dask.config.set({"grid.node.reconnect.cap": "5s"}):
        assert config.seconds("node.reconnect.cap") == 5


def _nanny_failure(root: BaseException) -> RuntimeError:
    """A failure as a nanny reports it: RuntimeError from RuntimeError from the worker's error."""
    try:
        try:
            try:
                raise root
            except BaseException as exc:
                raise RuntimeError("Worker failed to start.") from exc
        except RuntimeError as exc:
            raise RuntimeError("Nanny failed to start.") from exc
    except RuntimeError as exc:
        return exc


def test_which_start_failures_wait_for_the_scheduler_again():
    from distributed.comm import CommClosedError

    from grid.node.agent import _start_failure_is_transient

    # what a nanny reports when its worker process was refused: the worker's reason stays in that process
    refused = RuntimeError("Nanny failed to start worker process")
    in_use = OSError(98, "Address already in use")
    # the scheduler went away during the start: wait for it again, at the first start too
    assert _start_failure_is_transient(_nanny_failure(TimeoutError()), rejoining=False)
    assert _start_failure_is_transient(_nanny_failure(CommClosedError("Stream is closed")), rejoining=False)
    # at the first start a refusal (quarantined or duplicate name) or a taken port ends the node
    assert not _start_failure_is_transient(_nanny_failure(refused), rejoining=False)
    assert not _start_failure_is_transient(_nanny_failure(in_use), rejoining=False)
    # right after a loss the scheduler may still list the old worker, or the old process hold its port
    assert _start_failure_is_transient(_nanny_failure(refused), rejoining=True)
    assert _start_failure_is_transient(_nanny_failure(in_use), rejoining=True)
