"""The ``grid`` command's refusals (grid/cli.py): named before anything starts.

What the commands do once a grid runs is tests/system/test_cli.py.
"""

from __future__ import annotations

from click.testing import CliRunner

from grid.cli import main


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["status", "--grid", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    bad = runner.invoke(main, ["up", "--regions", "eu"])
    assert bad.exit_code == 2 and "NAME=NODES" in bad.output
    bad_region = runner.invoke(main, ["scheduler", "--region", "EU!"])
    assert bad_region.exit_code == 2 and "lowercase" in bad_region.output
