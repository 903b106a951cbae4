"""``verify="adaptive"``: trusted nodes are spot-checked, and a node caught later costs a replay.

Adaptive replication accepts some updates of trusted nodes unchecked. What it
guarantees: the job replays every round from the first one a caught node went
unchecked in, so the model equals a fully verified run whenever the cheater is
caught before the job ends; a cheater caught after the job ended taints the
job (``Job.result`` warns, ``Job.rerun`` trains it again without the node).

In-process grids (nodes are threads of this process); the cheating node runs a
worker plugin that corrupts the updates it computes.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask
import numpy as np
import pytest
from distributed.diagnostics.plugin import WorkerPlugin
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.errors import GridWarning
from grid.keys import GRID_PREFIX, is_partition
from jobs import PartialFit
from tests.integration.test_verify_and_stragglers import corrupt, node_names, shifted

#: node name -> updates it computed and updates it corrupted (nodes are threads of this process)
COMPUTED: dict[str, list[int]] = {}


class CorruptOneIn20(WorkerPlugin):
    """Corrupts (shifts by +1) the k-th update its node computes for every k % 20 == 19, and only those.

    Deterministic: whether an update is corrupted depends only on how many the
    node computed before it, in the order it computed them.
    """

    name = "corrupt-one-in-20"

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed's signature
        self.worker = worker
        self.counts = COMPUTED.setdefault(str(worker.name), [0, 0])
        handler = worker.handlers["grid_update"]

        async def sometimes_corrupted(comm, **msg):  # noqa: ANN001, ANN003, ANN202
            reply = await handler(comm, **msg)
            reply["updates"] = [[i, self.maybe(blob)] for i, blob in reply["updates"]]
            return reply

        worker.handlers["grid_update"] = sometimes_corrupted

    def maybe(self, blob: bytes) -> bytes:
        k = self.counts[0]
        self.counts[0] += 1
        if k % 20 != 19:
            return blob
        self.counts[1] += 1
        return shifted(blob)

    def transition(self, key, start, finish, **kwargs) -> None:  # noqa: ANN001
        if finish != "memory" or not (isinstance(key, str) and key.startswith(GRID_PREFIX) and not is_partition(key)):
            return
        self.worker.data[key] = self.maybe(self.worker.data[key])


def corrupt_one_in_20(g: Grid, region: str, name: str) -> None:
    async def install(dask_worker) -> None:  # noqa: ANN001
        await dask_worker.plugin_add(plugin=CorruptOneIn20(), name="corrupt-one-in-20")

    COMPUTED.pop(name, None)
    address = next(w["address"] for w in g.status()[region]["workers"] if w["dask_name"] == name)
    g.client(region).run(install, workers=[address])


def _job(seed: int, rounds: int, partition_rows: int) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=seed), rounds=rounds, partition_rows=partition_rows)


def quarantined(g: Grid, region: str = "eu") -> dict[str, dict]:
    return {r["identity"]: r for r in g.status()[region]["quarantined"]}


def plugin_of(g: Grid, region: str = "eu") -> Any:
    return g._local.clusters[region].scheduler.plugins["grid"]  # processes=False: it lives in this process


def assert_same_model(a: Any, b: Any, what: str) -> None:
    np.testing.assert_allclose(a.estimator_.coef_, b.estimator_.coef_, rtol=0, atol=1e-9, err_msg=what)
    np.testing.assert_allclose(a.estimator_.intercept_, b.estimator_.intercept_, rtol=0, atol=1e-9, err_msg=what)


pytestmark = pytest.mark.usefixtures("short_connect_timeout")  # tests/integration/conftest.py


#: test (b): trust after 3 agreeing results, floor 0.5; the cheater corrupts 1 update in 20. Each corrupted
#: update it computes is checked with probability >= 0.5 (1 as a replica or while untrusted), so it survives
#: n corrupted updates with probability <= 0.5 ** n: the bound below fails a seed with probability <= 0.4 %.
FLOOR = 0.5
MAX_CORRUPTED = 8
ONE_IN_20_SEEDS = range(6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", ONE_IN_20_SEEDS)
def test_a_1_in_20_cheater_is_caught_within_the_bound_and_the_model_is_the_clean_one(seed: int) -> None:
    X, y = make_classification(n_samples=2000, n_features=8, random_state=seed)
    rounds = 30  # 20 partitions: the cheater computes about 7 updates a round, so it corrupts one every ~3 rounds
    settings = {"grid.scheduler.verify.adaptive.trust-after": 3, "grid.scheduler.verify.adaptive.floor": FLOOR}
    with dask.config.set(settings), Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
        data = g.scatter(X, y, partition_rows=100)
        clean = g.submit(_job(seed, rounds, 100), data).result(timeout=300)
        cheater = node_names(g, "eu")[seed % 3]
        corrupt_one_in_20(g, "eu", cheater)
        job = g.submit(_job(seed, rounds, 100), data, verify="adaptive")
        with warnings.catch_warnings():
            warnings.simplefilter("error", GridWarning)  # caught before the end: not tainted
            model = job.result(timeout=600)
        caught = quarantined(g)
        history = job.history
        info = job.info()
    computed, corrupted = COMPUTED[cheater]
    assert cheater in caught, f"seed {seed}: the cheater was not caught ({corrupted} of {computed} updates corrupted)"
    assert corrupted <= MAX_CORRUPTED, f"seed {seed}: caught only after {corrupted} corrupted updates"
    assert "tainted" not in info
    replays = [h for h in history if "replayed_from" in h]
    print(f"seed {seed}: caught in round {caught[cheater]['evidence'].get('round', -1) + 1} after {corrupted} "
          f"corrupted of {computed} updates; replays {[(h['replayed_from'], h['caught']) for h in replays]}; "
          f"unchecked updates {sum(h.get('unverified', 0) for h in history)}")
    assert [h["round"] for h in history] == list(range(1, rounds + 1)), "one entry per round, replayed ones replaced"
    for h in replays:
        assert {r: list(n) for r, n in h["caught"].items()} == {"eu": [cheater]}
    assert all(cheater not in (h.get("unverified_nodes") or {}).get("eu", []) for h in history), (
        "a round the cheater went unchecked in was kept"
    )
    assert_same_model(model, clean, f"seed {seed}: a corrupted update reached the model")


@pytest.mark.slow
@pytest.mark.parametrize("honest_jobs", [1, 2, 3, 4, 5])
def test_a_patient_cheater_gives_the_clean_model_or_a_tainted_job(honest_jobs: int) -> None:
    """Honest for K adaptive jobs (it earns trust), then corrupting every update."""
    caught_in_job = 0
    for seed in range(10):
        X, y = make_classification(n_samples=2000, n_features=8, random_state=seed)
        with Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
            data = g.scatter(X, y, partition_rows=500)
            clean = g.submit(_job(seed, 4, 500), data).result(timeout=120)
            for _ in range(honest_jobs):
                earned = g.submit(_job(seed, 4, 500), data, verify="adaptive").result(timeout=120)
                assert_same_model(earned, clean, f"seed {seed}: honest adaptive job")
            cheater = node_names(g, "eu")[0]
            corrupt(g, "eu", cheater)
            job = g.submit(_job(seed, 4, 500), data, verify="adaptive")
            job.wait(timeout=120)
            if cheater in quarantined(g):  # caught while the job ran: it replayed what the cheater touched
                caught_in_job += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("error", GridWarning)
                    assert_same_model(job.result(), clean, f"seed {seed}: caught, yet a corrupted update stayed")
                continue
            # never checked in that job: a verify=2 job catches it, and the first job is tainted
            g.submit(_job(seed, 4, 500), data, verify=2).result(timeout=120)
            assert cheater in quarantined(g)
            with pytest.warns(GridWarning, match=f"node '{cheater}'"):
                job.result()
            assert job.info()["tainted"]["node"] == cheater
            assert_same_model(job.rerun().result(timeout=120), clean, f"seed {seed}: the rerun")
    print(f"honest for {honest_jobs} job(s): caught during its job in {caught_in_job} of 10 seeds")
    assert caught_in_job >= 6, f"the spot checks caught the cheater during its job in only {caught_in_job} of 10 seeds"


def test_a_cheater_caught_after_the_job_taints_it_and_rerun_gives_the_clean_model() -> None:
    """Constructed: floor 0 and every node trusted, so the 1-round job checks nothing; a verify=2 job catches it."""
    X, y = make_classification(n_samples=2000, n_features=8, random_state=0)
    settings = {"grid.scheduler.verify.adaptive.trust-after": 1, "grid.scheduler.verify.adaptive.floor": 0.0}
    with dask.config.set(settings), Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
        data = g.scatter(X, y, partition_rows=500)
        clean = g.submit(_job(0, 1, 500), data).result(timeout=120)
        plugin = plugin_of(g)
        names = node_names(g, "eu")
        for name in names:  # trust already earned: a record of a billion agreeing results, just now
            for _ in range(3):
                plugin.ledger.reliability.valid(name)
            plugin.ledger.reliability.get(name).consecutive_valid = 10**9
        cheater = names[0]
        corrupt(g, "eu", cheater)
        job = g.submit(_job(0, 1, 500), data, verify="adaptive")
        with warnings.catch_warnings():
            warnings.simplefilter("error", GridWarning)  # nobody caught yet: no warning
            poisoned = job.result(timeout=120)
        history = job.history
        assert history[0]["unverified"] == 4 and history[0]["replicas"] == 0, "nothing was checked"
        assert cheater in history[0]["unverified_nodes"]["eu"]
        assert not np.allclose(poisoned.estimator_.coef_, clean.estimator_.coef_), "the cheater's updates are in"
        assert "tainted" not in job.info()

        g.submit(_job(0, 1, 500), data, verify=2).result(timeout=120)  # every update checked: caught
        assert cheater in quarantined(g)
        tainted = job.info()["tainted"]
        assert tainted["node"] == cheater and tainted["region"] == "eu" and list(tainted["rounds"]) == [1]
        assert tainted["evidence"]["reason"].startswith("its update disagreed")
        with pytest.warns(GridWarning, match=rf"job {job.id} is tainted: node '{cheater}'.*job.rerun\(\)"):
            job.result()
        again = job.rerun()
        assert again.id != job.id
        assert_same_model(again.result(timeout=120), clean, "the rerun without the cheater")
        assert again.info()["status"] == "done" and "tainted" not in again.info()


def test_rerun_of_a_job_whose_own_data_was_freed_says_how_to_submit_again() -> None:
    X, y = make_classification(n_samples=400, n_features=4, random_state=0)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as g:
        job = g.submit(_job(0, 1, 200), X, y, verify="adaptive")
        job.result(timeout=120)
        with pytest.raises(ValueError, match=r"freed when it ended.*g\.submit\(estimator, X, y"):
            job.rerun()


def test_adaptive_is_the_only_verify_word_and_needs_average_mode() -> None:
    X, y = make_classification(n_samples=400, n_features=4, random_state=0)
    with Grid.local(regions={"eu": 1}, processes=False, dashboard=False) as g:
        with pytest.raises(ValueError, match="or 'adaptive'"):
            g.submit(_job(0, 1, 200), X, y, verify="adaptiv")
        with pytest.raises(ValueError, match="needs mode='average'"):
            g.submit(PartialFit(SGDClassifier(), rounds=1, mode="sequential"), X, y, verify="adaptive")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_cheater_of_another_region_is_replayed_out_through_the_home_driver(seed: int) -> None:
    """Two regions: the cheater is in "us", the job's home is "eu"; its round reports come back
    through the cross-region round call and the home driver replays."""
    X, y = make_classification(n_samples=2000, n_features=8, random_state=seed)
    rounds = 20
    settings = {"grid.scheduler.verify.adaptive.trust-after": 3, "grid.scheduler.verify.adaptive.floor": FLOOR}
    with dask.config.set(settings), Grid.local(regions={"eu": 3, "us": 3}, processes=False, dashboard=False) as g:
        data = g.scatter(X, y, partition_rows=100)
        clean = g.submit(_job(seed, rounds, 100), data, home="eu").result(timeout=300)
        cheater = node_names(g, "us")[seed % 3]
        corrupt_one_in_20(g, "us", cheater)
        job = g.submit(_job(seed, rounds, 100), data, home="eu", verify="adaptive")
        model = job.result(timeout=600)
        history = job.history
        assert cheater in quarantined(g, "us")
    replays = [h for h in history if "replayed_from" in h]
    assert replays and all({r: list(n) for r, n in h["caught"].items()} == {"us": [cheater]} for h in replays)
    assert any("us" in (h.get("unverified_nodes") or {}) for h in history), "nothing of us went unchecked"
    assert_same_model(model, clean, f"seed {seed}: a corrupted update of region us reached the model")
