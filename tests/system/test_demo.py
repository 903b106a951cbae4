"""``grid demo`` as ``make demo`` runs it: the four stories, their figures, and no log lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.slow]

GRID = Path(sys.executable).with_name("grid")
#: a progress bar of one job: "<region>-<12 hex> <label>..." (tqdm redraws it with \r)
PROGRESS_BAR = re.compile(r"^(eu|us)-[0-9a-f]{12} ")


@pytest.fixture(scope="module")
def demo_run():
    done = subprocess.run([str(GRID), "demo", "--rows", "200000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the demo's output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_grid_sgd_reaches_the_lbfgs_target_beside_the_anchors(demo_run):
    out = demo_run.stdout
    target = _number(r"target: test accuracy (\d\.\d+)", out)
    lbfgs = _number(r"full-batch lbfgs's (\d\.\d+)", out)
    assert target == pytest.approx(lbfgs - 0.005, abs=1e-4)
    grid_row = re.search(r"grid jobs\.SGDClassifier \(eu, 2 nodes\)\s+([\d.]+)s\s+(\d+) rounds?\s+(\d\.\d+)\s+1\.0x", out)
    assert grid_row, out
    assert float(grid_row.group(3)) >= target, "the grid's row is the first job that reached the target"
    serial_row = re.search(r"serial scikit-learn SGDClassifier\s+(>=)?([\d.]+)s\s+(\d+) epochs?\s+(\d\.\d+)\s+(>=)?([\d.]+)x", out)
    assert serial_row, out
    assert float(serial_row.group(4)) >= target or serial_row.group(1) == ">=", "an anchor short of the target says so"
    assert re.search(r"placed the training rows on region eu's 2 nodes in [\d.]+s", out), "placement is timed apart"


def test_two_region_job_counts_the_bytes_that_crossed(demo_run):
    crossed = _number(r"crossed regions per round: ([\d,]+) bytes", demo_run.stdout)
    rows_mib = _number(r"the ([\d,]+) MiB of rows never left", demo_run.stdout)
    # a 50-feature binary model and its round metadata: kilobytes, never the rows
    assert 0 < crossed < 64 * 1024 < rows_mib * 2**20


def test_exact_merge_and_verified_job(demo_run):
    out = demo_run.stdout
    assert _number(r"variances from GaussianNB\(\)\.fit on all rows: ([\d.e+-]+)", out) < 1e-9
    assert "predictions identical" in out
    assert re.search(r"(\d+) partition updates, each also computed on a second node \(\1 replicas\): all agreed", out), out
    assert _number(r"max \|coef difference\| from the unverified job: ([\d.e+-]+)", out) == 0.0


def test_dashboard_links_and_no_log_lines(demo_run):
    assert re.search(r"dashboard of eu: http://127\.0\.0\.1:\d+/grid", demo_run.stdout)
    assert re.search(r"dashboard of us: http://127\.0\.0\.1:\d+/grid", demo_run.stdout)
    # stderr holds the progress bars and nothing else: no logging, no warnings
    segments = [s for s in re.split(r"[\r\n]+", demo_run.stderr) if s.strip()]
    assert segments, "one progress bar per job"
    strays = [s for s in segments if not PROGRESS_BAR.match(s)]
    assert not strays, strays[:10]
    jobs = {s.split(" ")[0] for s in segments}
    assert len(jobs) >= 4, "at least one bar for each story's job"
    assert not re.search(r"INFO|WARNING|Warning|Traceback", demo_run.stdout)
