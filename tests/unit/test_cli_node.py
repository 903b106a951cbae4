"""``grid node``'s refusals (grid/cli_node.py): named before the node starts.

A running node's behaviour is tests/system/test_node_cli.py.
"""

from __future__ import annotations

from click.testing import CliRunner

from grid.cli import main


def test_allow_admin_tasks_needs_tls_on_a_community_node():
    result = CliRunner().invoke(main, ["node", "--region", "eu", "--scheduler", "tcp://127.0.0.1:1", "--community", "--allow-admin-tasks"])
    assert result.exit_code == 2 and "--allow-admin-tasks needs a TLS grid" in result.output
