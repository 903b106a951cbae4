"""What ``Grid.joblib()`` runs on a node (grid/parallel.py), called in this process.

The backend on a grid's nodes is tests/integration/test_joblib_on_grid.py.
"""

from __future__ import annotations

from grid.parallel import node_enter, node_exit


def test_node_warm_up_is_counted_and_undone():
    first = node_enter()
    second = node_enter()
    assert second["blocks"] == first["blocks"] + 1
    assert node_exit()["blocks"] == first["blocks"]
    assert node_exit()["blocks"] == first["blocks"] - 1
