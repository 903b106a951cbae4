"""Shared fixtures: in-process grids and real grid processes.

Where a test lives says what it needs, and its markers come from there
(:func:`pytest_collection_modifyitems`), so ``make test-fast`` (``-m "not slow
and not system and not browser"``) runs every test that starts no real process:

* ``tests/unit/``: pure code, no cluster;
* ``tests/integration/``: in-process clusters (``Grid.local(processes=False)``,
  ``distributed.utils_test``);
* ``tests/system/``: real ``grid scheduler`` / ``grid node`` or worker processes
  (marked ``system``);
* ``tests/browser/``: headless Chromium (marked ``browser``);
* ``tests/deploy/``: the Helm chart, systemd units and the container build,
  with the tools they name.

Long tests are marked ``slow`` in their module, wherever they live; CI runs them all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds (:func:`grid.polling.wait_until`)."""
    from grid.polling import wait_until  # here: importing grid installs its comm checks, which not every test wants

    return wait_until(predicate, timeout=timeout, what=what, interval=interval)


#: the marker every test of a folder of tests/ carries
FOLDER_MARKERS = {"system": "system", "browser": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        try:
            folder = Path(str(item.fspath)).relative_to(tests).parts[0]
        except ValueError:  # a test outside tests/ (e.g. a doctest elsewhere)
            continue
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(marker)


@pytest.fixture(autouse=True)
def no_embedded_grid_outlives_its_test():
    """Close the process's embedded grid (started by a fit without any grid) after each test.

    A user's process keeps it until it exits; a test session is many users in one
    process, and distributed's leak checks in later tests would find its node processes.
    """
    yield
    client = sys.modules.get("grid.client")
    if client is not None and client._owned:
        client._close_owned()


@pytest.fixture(scope="session")
def classification_data():
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=5, random_state=0)
    return X.astype(np.float64), y


@pytest.fixture
def grid3():
    """A fresh in-process grid for one test: region eu with three threaded nodes."""
    from grid import Grid

    with Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
        yield g


@pytest.fixture(scope="module")
def grid2():
    """An in-process grid: regions eu and us with one threaded node each."""
    from grid import Grid

    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module", params=["tcp", "tls"])
def any_grid(request):
    """The same in-process grid in plaintext and on mutual TLS (throw-away CA, a client certificate)."""
    from grid import Grid

    g = Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False, tls=request.param == "tls")
    try:
        yield g
    finally:
        g.close()
