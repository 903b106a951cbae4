"""The connect-back check's settings, the grid channel's timeout and the node profiles the check reads (no cluster)."""

from __future__ import annotations

import dask
import pytest

from grid.protocol.nodes import PROFILE_KEY, node_profile, profile_of
from grid.scheduler.reach import NodeReach


def test_a_bad_node_connect_timeout_is_named_with_the_fix() -> None:
    with dask.config.set({"grid.scheduler.node-connect-timeout": "0s"}):
        with pytest.raises(ValueError, match=r"node-connect-timeout must be a positive duration, got '0s'; e.g. 3s"):
            NodeReach(scheduler=None)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("node-checks", 0, r"node-checks must be a whole number of checks of at least 1, got 0; e.g. 32"),
        ("node-checks", "8", r"node-checks must be a whole number of checks of at least 1, got '8'; e.g. 32"),
        ("node-checks", True, r"node-checks must be a whole number .* got True"),
        ("node-recheck-interval", "0s", r"node-recheck-interval must be a positive duration, got '0s'; e.g. 30s"),
        ("node-recheck-interval", "-1s", r"grid.scheduler.node-recheck-interval must be a duration such as 30s .*got '-1s'"),
        ("node-connect-timeout", "soon", r"grid.scheduler.node-connect-timeout must be a duration such as 30s .*got 'soon'"),
    ],
)
def test_bad_connect_back_check_settings_are_named_with_the_fix(key, value, message) -> None:
    with dask.config.set({f"grid.scheduler.{key}": value}):
        with pytest.raises(ValueError, match=message):
            NodeReach(scheduler=None)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({PROFILE_KEY: node_profile(True)}, {"dial-out": True, "calls": True}),
        ({PROFILE_KEY: node_profile(False)}, {"dial-out": False, "calls": True}),
        ({}, {}),  # a stock worker
        (None, {}),
        ({PROFILE_KEY: "dial-out"}, {}),  # a registration is untrusted: anything else is no profile
        ({PROFILE_KEY: {"dial-out": "yes"}}, {}),
        ({PROFILE_KEY: {"dial-out": True, "calls": 2}}, {"dial-out": True, "calls": False}),
    ],
)
def test_a_node_profile_is_read_from_its_registration_or_ignored(extra, expected) -> None:
    assert profile_of(extra) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("0s", r"grid.scheduler.channel-timeout must be a positive duration, got '0s'; e.g. 10s"),
        ("soon", r"grid.scheduler.channel-timeout must be a duration such as 30s .*got 'soon'"),
    ],
)
def test_a_bad_channel_timeout_is_named_with_the_fix(value, message) -> None:
    from grid.scheduler.dial_out import channel_timeout

    with dask.config.set({"grid.scheduler.channel-timeout": value}):
        with pytest.raises(ValueError, match=message):
            channel_timeout()
    assert channel_timeout() == 10.0  # the default
