"""Partitions are aligned on the nodes however they arrived (grid.node.align)."""

from __future__ import annotations

import numpy as np
import pytest

from grid import Grid


@pytest.mark.slow
def test_scattered_partitions_are_aligned_on_worker_processes() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 13))  # odd row width: frame offsets are rarely multiples of 8
    y = (X[:, 0] > 0).astype(int)

    def check(dask_worker) -> list[bool]:  # noqa: ANN001
        return [
            all(v.flags.aligned for v in value if isinstance(v, np.ndarray))
            for key, value in dask_worker.data.items()
            if str(key).startswith("grid-part-")
        ]

    with Grid.local(regions={"eu": 2}, dashboard=False) as g:
        g.scatter(X, y)
        flags = [f for per_node in g.client("eu").run(check).values() for f in per_node]
    assert len(flags) >= 8 and all(flags)
