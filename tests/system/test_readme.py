"""Every Python block of README.md runs as written, so the README cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from grid import Grid

pytestmark = [pytest.mark.system, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert blocks, "README.md has no Python blocks"
    return blocks


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "snippet.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_a_readme_block_runs_as_written(index, tmp_path):
    code = python_blocks()[index]
    if "grid.yaml" in code:  # the grid spec a user gets from `grid up --file grid.yaml`
        with Grid.local(regions={"eu": 1}, dashboard=False) as g:
            g.spec.write(str(tmp_path / "grid.yaml"))
            # the block ends with the grid it connected; ask it something so the block is exercised
            result = run(code + "\nprint(sorted(g.status()))\ng.close()\n", tmp_path)
    else:
        result = run(code, tmp_path)
    assert result.returncode == 0, f"README block {index + 1} failed:\n{code}\n--- stderr ---\n{result.stderr[-4000:]}"
    if "grid.yaml" in code:
        assert "['eu']" in result.stdout, result.stdout
