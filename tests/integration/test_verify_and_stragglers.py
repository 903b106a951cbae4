"""Verified results, adaptive replication, speculative copies of late updates and partial participation.

In-process grids (nodes are threads of this process). Faults are injected on
one node only: a worker plugin that corrupts the results that node computes,
or a local step that blocks on that node until the test releases it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dask
import numpy as np
import pytest
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from sklearn.linear_model import SGDClassifier

import grid.node.tasks as node_tasks
from grid import Grid, wire
from grid.keys import GRID_PREFIX, is_partition
from jobs import PartialFit
from tests.conftest import wait_for
from tests.integration.reference import assert_same_model, fedavg


class CorruptUpdates(WorkerPlugin):
    """Every partition update the node it is installed on computes: float arrays shifted by +1."""

    name = "corrupt-updates"

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed's signature
        self.worker = worker
        # updates asked of the node directly (grid/node/rounds.py) come back shifted too
        handler = worker.handlers["grid_update"]

        async def corrupted(comm, **msg):  # noqa: ANN001, ANN003, ANN202
            reply = await handler(comm, **msg)
            reply["updates"] = [[i, shifted(blob)] for i, blob in reply["updates"]]
            return reply

        worker.handlers["grid_update"] = corrupted

    def transition(self, key, start, finish, **kwargs) -> None:  # noqa: ANN001
        if finish != "memory" or not (isinstance(key, str) and key.startswith(GRID_PREFIX) and not is_partition(key)):
            return
        self.worker.data[key] = shifted(self.worker.data[key])


def shifted(blob: bytes) -> bytes:
    """An update blob with every float array shifted by +1."""
    arrays, meta = wire.decode(blob)
    return wire.encode({k: v + 1.0 if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}, meta)


def corrupt(g: Grid, region: str, name: str) -> None:
    """Install :class:`CorruptUpdates` on the one node called ``name`` (its own instance)."""

    async def install(dask_worker) -> None:  # noqa: ANN001
        await dask_worker.plugin_add(plugin=CorruptUpdates(), name="corrupt-updates")

    address = next(w["address"] for w in g.status()[region]["workers"] if w["dask_name"] == name)
    g.client(region).run(install, workers=[address])


def estimator(rounds: int = 3) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=0), rounds=rounds, partition_rows=1000)


def node_names(g: Grid, region: str) -> list[str]:
    return sorted(w["dask_name"] for w in g.status()[region]["workers"])


def node_addresses(g: Grid, region: str) -> list[str]:
    return sorted(w["address"] for w in g.status()[region]["workers"])


@pytest.fixture
def block_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """Make the local step block on one node (address ``target``) until ``release`` is set."""
    real = node_tasks.local_step
    control = {"target": None, "release": threading.Event(), "blocked": threading.Event()}

    def local_step(kind: str):  # noqa: ANN202
        step = real(kind)

        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if get_worker().address == control["target"] and not control["release"].is_set():
                control["blocked"].set()
                control["release"].wait(timeout=120)
            return step(*args, **kwargs)

        return run

    monkeypatch.setattr(node_tasks, "local_step", local_step)
    try:
        yield control
    finally:
        control["release"].set()


def test_verify_2_outvotes_a_corrupting_node_and_quarantines_it_with_evidence(grid3: Grid, classification_data) -> None:
    X, y = classification_data
    clean = grid3.submit(estimator(), X, y).result(timeout=120)
    target = node_names(grid3, "eu")[0]
    corrupt(grid3, "eu", target)

    job = grid3.submit(estimator(), X, y, verify=2)
    verified = job.result(timeout=120)

    # the accepted updates are the honest replicas': the same model as the clean run, exactly
    np.testing.assert_array_equal(verified.estimator_.coef_, clean.estimator_.coef_)
    np.testing.assert_array_equal(verified.estimator_.intercept_, clean.estimator_.intercept_)
    status = grid3.status()["eu"]
    quarantined = {q["identity"]: q for q in status["quarantined"]}
    assert set(quarantined) == {target}
    record = quarantined[target]
    assert "disagreed" in record["reason"]
    assert record["evidence"]["job"] == job.id
    assert record["evidence"]["difference_in_tolerances"] > 1
    assert target not in record["evidence"]["agreeing_nodes"]
    assert target not in {w["dask_name"] for w in status["workers"]}
    assert status["verification_rejects"] >= 1
    history = job.history
    assert sum(h["replicas"] for h in history) >= len(history) * 4  # 4 partitions, each replicated
    assert sum(h["quarantined"] for h in history) == 1
    assert all(w["verified"] > 0 for w in status["workers"])


def test_verify_replicates_every_update_of_every_round_however_long_a_node_agreed(classification_data) -> None:
    # nodes that agreed on every result of a long job earn no way out of being checked
    X, y = classification_data
    with Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
        reference = g.submit(estimator(rounds=6), X, y).result(timeout=120)
        job = g.submit(estimator(rounds=6), X, y, verify=2)
        fitted = job.result(timeout=120)
        history = job.history
        records = g.client("eu").sync(g.client("eu").scheduler.grid_info)["workers"]
    assert [h["replicas"] for h in history] == [4] * 6, "each of the 4 partitions gets its second copy, every round"
    assert sum(h["quarantined"] for h in history) == 0
    assert sum(w["verified"] for w in records) == 6 * 4 * 2, "every copy agreed with its quorum"
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)


def test_a_late_update_gets_a_speculative_copy_and_the_model_is_unchanged(block_node: dict, classification_data) -> None:
    X, y = classification_data
    with dask.config.set({"grid.scheduler.speculation.minimum": "300ms"}):
        with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
            reference = g.submit(estimator(), X, y).result(timeout=120)
            block_node["target"] = node_addresses(g, "eu")[0]
            job = g.submit(estimator(), X, y)
            fitted = job.result(timeout=120)
            assert block_node["blocked"].is_set(), "the slow node never got a task: the test proves nothing"
            block_node["release"].set()
            history = job.history
    assert sum(h["speculative"] for h in history) >= 1
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)


def test_partial_participation_skips_a_late_region_and_the_weights_say_so(block_node: dict, classification_data) -> None:
    X, y = classification_data
    with dask.config.set({"grid.scheduler.partial-participation.minimum": "300ms"}):
        with Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False) as g:
            block_node["target"] = node_addresses(g, "us")[0]
            job = g.submit(estimator(rounds=5), X, y, partial_participation=True)
            wait_for(lambda: any(h.get("skipped_regions") for h in job.history), timeout=60, what="a skipped round")
            block_node["release"].set()
            fitted = job.result(timeout=120)
            history = job.history
    skipped = [h for h in history if h.get("skipped_regions")]
    assert skipped and all(list(h["skipped_regions"]) == ["us"] and set(h["region_weights"]) == {"eu"} for h in skipped), [(h.get("skipped_regions"), h.get("region_weights")) for h in history]
    assert set(history[-1]["region_weights"]) == {"eu", "us"}, "the region did not come back after it recovered"
    # 4 partitions of 1000 rows, in region order on equal regions: eu holds 0 and 1, us 2 and 3; a round
    # that skipped us is the mean of eu's updates alone, and the others of all four
    held = {"eu": [0, 1], "us": [2, 3]}
    assert all(w == 2000.0 for h in history for w in h["region_weights"].values()), history
    merged = [[i for region in h["region_weights"] for i in held[region]] for h in history]
    assert_same_model(fitted, fedavg(SGDClassifier(random_state=0), X, y, rounds=5, partition_rows=1000, merged=merged))


def test_without_partial_participation_a_late_region_is_waited_for(block_node: dict, classification_data) -> None:
    X, y = classification_data
    with dask.config.set({"grid.scheduler.partial-participation.minimum": "100ms"}):
        with Grid.local(regions={"eu": 1, "us": 1}, processes=False, dashboard=False) as g:
            block_node["target"] = node_addresses(g, "us")[0]
            job = g.submit(estimator(rounds=2), X, y)
            wait_for(lambda: block_node["blocked"].is_set(), timeout=60, what="the us node to block")
            assert job.status == "running" and not job.history
            block_node["release"].set()
            job.result(timeout=120)
            history = job.history
    assert len(history) == 2
    assert all(set(h["region_weights"]) == {"eu", "us"} and "skipped_regions" not in h for h in history)


def test_bad_verification_settings_fail_before_any_data_moves(classification_data) -> None:
    X, y = classification_data
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
        with pytest.raises(ValueError, match="needs mode='average'"):
            g.submit(PartialFit(SGDClassifier(), rounds=1, mode="sequential"), X, y, verify=2)
        with pytest.raises(ValueError, match="verify must be an integer >= 1"):
            g.submit(estimator(), X, y, verify=0)
        with pytest.raises(ValueError, match="partial_participation must be True or False"):
            g.submit(estimator(), X, y, partial_participation="yes")
        assert not g.status()["eu"]["datasets"]
        served = g.submit(estimator(rounds=1), X, y, verify=2).result(timeout=120)
        assert_same_model(served, fedavg(SGDClassifier(random_state=0), X, y, rounds=1, partition_rows=1000))


def test_a_quorum_larger_than_the_region_waits_for_nodes_and_says_so(classification_data) -> None:
    X, y = classification_data
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
        reference = g.submit(estimator(rounds=2), X, y).result(timeout=120)
        job = g.submit(estimator(rounds=2), X, y, verify=3)
        waiting = wait_for(lambda: job.info().get("waiting"), timeout=60, what="the job to say it waits")
        assert "verify=3 needs 3 independent nodes (distinct nodes)" in waiting and "has 2 now" in waiting
        assert job.status == "running" and not job.history, "no update was accepted with fewer than 3 votes"
        g._local.scale("eu", 3)
        fitted = job.result(timeout=120)
        assert "waiting" not in job.info()
        history = job.history
    assert [h["replicas"] for h in history] == [2 * 4, 2 * 4], "every partition got its 2 further copies"
    np.testing.assert_array_equal(fitted.estimator_.coef_, reference.estimator_.coef_)


def test_node_records_survive_a_scheduler_restart_on_its_state_dir(tmp_path, classification_data) -> None:
    X, y = classification_data
    with dask.config.set({"grid.scheduler.state-dir": str(tmp_path)}):
        with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
            g.submit(estimator(rounds=2), X, y, verify=2).result(timeout=120)
            before = {w["dask_name"]: w["verified"] for w in g.status()["eu"]["workers"]}
        assert (tmp_path / "eu" / "reliability.json").exists()
        assert all(v >= 4 for v in before.values()), before  # 4 partitions x 2 rounds, each on both nodes
        with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:  # same node names
            wait_for(lambda: len(g.status()["eu"]["workers"]) == 2, timeout=30, what="2 nodes")
            after = {w["dask_name"]: w["verified"] for w in g.status()["eu"]["workers"]}
    assert after == before
