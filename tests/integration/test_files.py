"""File datasets (jobs.data.Files): nodes read their own partitions; bad files are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from jobs import PartialFit
from jobs.data import DataError, Files
from tests.integration.reference import assert_same_model, fedavg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    X, y = make_classification(n_samples=3000, n_features=6, random_state=0)
    for i in range(6):
        sl = slice(500 * i, 500 * (i + 1))
        frame = pd.DataFrame(X[sl], columns=[f"f{j}" for j in range(6)])
        frame["label"] = y[sl]
        if i % 2:
            frame.to_parquet(root / f"part-{i}.parquet")
        else:
            frame.to_csv(root / f"part-{i}.csv", index=False)
        np.savez(root / f"arr-{i}.npz", X=X[sl], y=y[sl])
    return root, X, y


def test_nodes_read_files_and_train_like_in_memory_data(grid2, files):
    root, X, y = files
    from_files = grid2.submit(
        PartialFit(SGDClassifier(random_state=0), rounds=2), Files(str(root / "arr-*.npz"))
    ).result(timeout=60)
    in_memory = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=2, partition_rows=500), X, y).result(timeout=60)
    np.testing.assert_allclose(from_files.estimator_.coef_, in_memory.estimator_.coef_, rtol=0, atol=1e-12)


def test_mixed_csv_and_parquet_with_a_target_column(grid2, files):
    root, X, y = files
    data = grid2.scatter(Files([str(p) for p in sorted(root.glob("part-*"))], target="label"))
    assert data.n_samples == 3000 and data.n_features == 6 and data.classes == [0, 1]
    est = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(data, grid=grid2)
    # one partition per file, in the files' order: the model of the same 6 x 500 rows in memory
    assert_same_model(est, fedavg(SGDClassifier(random_state=0), X, y, rounds=2, partition_rows=500))
    grid2.drop(data)


def test_bad_partitions_are_named_and_the_grid_keeps_serving(grid2, files, tmp_path):
    root, X, y = files
    good = pd.read_csv(root / "part-0.csv")
    good.to_csv(tmp_path / "a.csv", index=False)
    cases = {
        "features": good.drop(columns=["f5"]),
        "target": good.drop(columns=["label"]),
        "nan": good.assign(f1=np.nan),
        "text": good.assign(f2="x"),
    }
    messages = {"features": "features", "target": "target column 'label' is missing", "nan": "NaN", "text": "dtype"}
    for case, frame in cases.items():
        bad = tmp_path / f"bad-{case}.csv"
        frame.to_csv(bad, index=False)
        with pytest.raises(ValueError) as info:
            grid2.submit(PartialFit(SGDClassifier()), Files([str(tmp_path / "a.csv"), str(bad)], target="label"))
        assert messages[case] in str(info.value) and f"bad-{case}.csv" in str(info.value), str(info.value)
    with pytest.raises(DataError, match="no file matches"):
        grid2.submit(PartialFit(SGDClassifier()), Files(str(tmp_path / "nothing-*.csv"), target="label"))
    assert all(d["name"].startswith("data-") or not d["job_owned"] for info in grid2.status().values() for d in info["datasets"])
    served = grid2.submit(PartialFit(SGDClassifier(), rounds=1), X, y).result(timeout=60)
    assert_same_model(served, fedavg(SGDClassifier(), X, y, rounds=1))
