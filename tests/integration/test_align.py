"""Partitions are aligned on the nodes however they arrived (grid.node.align)."""

from __future__ import annotations

import numpy as np
import pytest

from grid import Grid
from grid.node.align import aligned


def unaligned(n: int) -> np.ndarray:
    buffer = bytearray(8 * n + 1)
    x = np.frombuffer(memoryview(buffer)[1:], dtype=np.float64)
    assert not x.flags.aligned
    x[:] = np.arange(n)
    return x


def test_aligned_copies_only_what_is_unaligned() -> None:
    good = np.arange(4.0)
    assert aligned(good) is good
    bad = unaligned(6).reshape(3, 2)
    fixed = aligned(bad)
    assert fixed.flags.aligned and fixed.flags.c_contiguous
    np.testing.assert_array_equal(fixed, bad)
    part = (bad, good, None)
    fixed_part = aligned(part)
    assert fixed_part[0].flags.aligned and fixed_part[1] is good and fixed_part[2] is None
    assert aligned((good, None)) == (good, None)


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
