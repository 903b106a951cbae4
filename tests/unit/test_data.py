import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jobs.data import DataError, partition, rows_per_partition, split_counts


def test_partitions_depend_on_rows_only():
    X = np.arange(2000.0).reshape(1000, 2)
    y = np.arange(1000) % 2
    p = partition(X, y, partition_rows=300, classification=True)
    assert p.sizes == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.vstack([a for a, _, _ in p.parts]), X)
    np.testing.assert_array_equal(p.classes, [0, 1])
    assert rows_per_partition(100_000, "auto") == 12_500
    assert rows_per_partition(100, "auto") == 256


def test_pandas_sparse_and_dask_inputs():
    X = np.random.default_rng(0).random((600, 3))
    y = (X[:, 0] > 0.5).astype(int)
    assert partition(pd.DataFrame(X), pd.Series(y), partition_rows=200).sizes == [200] * 3
    sparse = partition(sp.csr_matrix(X), y, partition_rows=250)
    assert sp.issparse(sparse.parts[0][0]) and sparse.sizes == [250, 250, 100]
    import dask.array as da

    dx = da.from_array(X, chunks=(150, 3))
    dy = da.from_array(y, chunks=150)
    p = partition(dx, dy)
    assert p.sizes == [150] * 4  # the user's chunks become partitions


@pytest.mark.parametrize(
    "X, y, words",
    [
        (np.zeros((0, 3)), np.zeros(0), ["empty"]),
        (np.zeros((5, 3)), np.zeros(4), ["5 samples", "y has 4"]),
        (np.zeros(5), np.zeros(5), ["2-dimensional", "reshape"]),
        (np.array([[1.0, np.nan]]), np.zeros(1), ["NaN"]),
        (np.array([["a", "b"]]), np.zeros(1), ["dtype", "Encode"]),
        (None, None, ["X is None"]),
    ],
)
def test_bad_data_errors(X, y, words):
    with pytest.raises(DataError) as info:
        partition(X, y)
    for w in words:
        assert w in str(info.value)


def test_split_counts_is_proportional_and_complete():
    assert split_counts(8, [2, 2]) == [4, 4]
    assert split_counts(8, [1, 3]) == [2, 6]
    assert split_counts(3, [1, 1, 1, 1]) == [1, 1, 1, 0]
    assert sum(split_counts(17, [5, 1, 2])) == 17
    assert split_counts(2, [100, 1]) == [1, 1]
