"""Fixtures of the in-process cluster tests."""

from __future__ import annotations

import dask
import pytest


@pytest.fixture
def short_connect_timeout():
    """Connect timeout of 3 s instead of distributed's 30 s, for tests that quarantine a node.

    A settling copy that runs on a node without the partition fetches it from a
    holder; when that holder is a cheater quarantined meanwhile, distributed retries
    the refused connection until its connect timeout before asking the other holder
    (docs/reliability.md, "Not covered"). The model is the same either way; a short
    timeout only keeps such tests short.
    """
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        yield


@pytest.fixture
def dial_out_grid():
    """An embedded TLS region of two dial-out nodes nothing can dial (tests/integration/dial_out.py)."""
    from tests.conftest import wait_for
    from tests.integration.dial_out import DialOutGrid

    grid = DialOutGrid()
    try:
        grid.add_node("vol-a")
        grid.add_node("vol-b")
        wait_for(lambda: grid.g.status()["eu"]["nodes"]["active"] == 2, timeout=30, what="2 nodes")
        channels = grid.plugin.dial_out.channels
        wait_for(lambda: all(channels.is_open(w.address) for w in grid.workers.values()), timeout=30, what="their grid channels")
        yield grid
    finally:
        grid.close()

