"""A patient cheater: honest for K jobs, then corrupting. ``verify=2`` must still give the
clean model, bit for bit, and quarantine it, however long it was honest first."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from jobs import PartialFit
from tests.integration.test_verify_and_stragglers import corrupt, node_names

SEEDS = range(10)


def _job(seed: int) -> PartialFit:
    return PartialFit(SGDClassifier(random_state=seed), rounds=4, partition_rows=500)


pytestmark = pytest.mark.usefixtures("short_connect_timeout")  # tests/integration/conftest.py


@pytest.mark.slow
@pytest.mark.parametrize("honest_jobs", [1, 2, 3, 4, 5])
def test_verify_2_gives_the_clean_model_after_any_number_of_honest_jobs(honest_jobs: int) -> None:
    for seed in SEEDS:
        X, y = make_classification(n_samples=2000, n_features=8, random_state=seed)
        with Grid.local(regions={"eu": 3}, processes=False, dashboard=False) as g:
            clean = g.submit(_job(seed), X, y).result(timeout=120)
            for _ in range(honest_jobs):  # the cheater earns a record of agreeing results
                earned = g.submit(_job(seed), X, y, verify=2).result(timeout=120)
                np.testing.assert_array_equal(earned.estimator_.coef_, clean.estimator_.coef_)
            cheater = node_names(g, "eu")[0]
            corrupt(g, "eu", cheater)
            job = g.submit(_job(seed), X, y, verify=2)
            verified = job.result(timeout=120)
            quarantined = {r["identity"] for r in g.status()["eu"]["quarantined"]}
        np.testing.assert_allclose(verified.estimator_.coef_, clean.estimator_.coef_, rtol=0, atol=1e-9,
                                   err_msg=f"seed {seed}: a corrupted update reached the model")
        np.testing.assert_allclose(verified.estimator_.intercept_, clean.estimator_.intercept_, rtol=0, atol=1e-9)
        assert cheater in quarantined, f"seed {seed}: the cheater was not caught"
