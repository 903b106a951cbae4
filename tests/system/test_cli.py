"""`grid up`, `grid status`, `grid jobs`, `grid cancel` as a user runs them."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from click.testing import CliRunner

from grid import Grid
from grid.cli import main
from tests.conftest import wait_for
from tests.system.procs import GRID, grid_processes

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_grid_up_serves_clients_and_stops_cleanly():
    with grid_processes() as procs:
        spec_file = os.path.join(procs.workdir, "grid.yaml")
        up = procs.spawn([GRID, "up", "--regions", "eu=1,us=1", "--file", spec_file], "up")
        wait_for(lambda: os.path.exists(spec_file) or up.poll() is not None, timeout=90, what="grid.yaml")
        assert up.poll() is None, procs.log(up)
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 2  # the nodes of both regions
        from sklearn.datasets import make_classification
        from sklearn.linear_model import SGDClassifier

        from jobs import PartialFit

        X, y = make_classification(n_samples=3000, n_features=8, random_state=0)
        with Grid.connect(spec_file) as g:
            assert set(g.status()) == {"eu", "us"}
            done = g.submit(PartialFit(SGDClassifier(), rounds=2), X, y)
            done.result(timeout=120)
            long = g.submit(PartialFit(SGDClassifier(), rounds=100_000), X, y)
            wait_for(lambda: long.info()["rounds_done"] >= 1, timeout=60, what="a round")

        runner = CliRunner()
        status = runner.invoke(main, ["status", "--grid", spec_file])
        assert status.exit_code == 0, status.output
        assert "region eu" in status.output and "region us" in status.output and "active" in status.output

        jobs = runner.invoke(main, ["jobs", "--grid", spec_file])
        assert jobs.exit_code == 0, jobs.output
        assert done.id in jobs.output and long.id in jobs.output and "running" in jobs.output

        cancel = runner.invoke(main, ["cancel", long.id, "--grid", spec_file])
        assert cancel.exit_code == 0, cancel.output
        assert f"{long.id}: cancelled" in cancel.output
        unknown = runner.invoke(main, ["cancel", "eu-000000000000", "--grid", spec_file])
        assert unknown.exit_code == 1 and "no job" in unknown.output

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, procs.log(up)
        assert not os.path.exists(spec_file)
        wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), timeout=30, what="nodes gone")


def test_node_refuses_a_scheduler_of_another_region():
    with grid_processes() as procs:
        _, address = procs.scheduler("eu")
        node = procs.node("us", address, "wrong")
        assert node.wait(timeout=60) == 1
        assert "serves region 'eu', not 'us'" in procs.log(node)
