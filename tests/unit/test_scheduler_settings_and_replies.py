"""Scheduler pieces that need no cluster: a setting checked when the plugin is made, what a handler's reply hides."""

from __future__ import annotations

import dask
import pytest


def test_a_bad_round_engine_setting_is_named_when_the_scheduler_starts() -> None:
    from grid.scheduler.plugin import GridSchedulerPlugin

    with dask.config.set({"grid.scheduler.round-engine": "fast"}):
        with pytest.raises(ValueError, match=r"grid.scheduler.round-engine must be one of 'direct', 'tasks', got 'fast'.*DASK_GRID__SCHEDULER__ROUND_ENGINE"):
            GridSchedulerPlugin("eu")


def test_data_scientists_on_tls_grids_see_placeholders_not_node_names() -> None:
    from grid.scheduler.replies import without_node_names

    out = {
        "history": [{"round": 1, "unverified_nodes": {"eu": ["alice-1", "bob-2"]}},
                    {"round": 2, "replayed_from": 1, "caught": {"eu": ["bob-2"]}}],
        "tainted": {"node": "bob-2", "region": "eu", "rounds": [1], "evidence": {"reason": "r"}},
    }
    hidden = without_node_names(out)
    assert hidden["history"][0]["unverified_nodes"] == {"eu": ["node-0", "node-1"]}
    assert hidden["history"][1]["caught"] == {"eu": ["node-1"]}, "one node, one placeholder"
    assert hidden["tainted"]["node"] == "node-1" and hidden["tainted"]["rounds"] == [1]
    assert out["tainted"]["node"] == "bob-2", "the record itself is unchanged"
