"""The network lab fixture of the system tests (``tests/system/netns.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system import netns


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    """A fresh network lab, removed after the test.

    Where the machine cannot build one the test fails with the reason
    (:class:`netns.LabUnavailable`): tests that need isolated hosts do not skip.
    """
    with netns.Lab() as lab:
        yield lab
