"""Aligning a partition's arrays (grid/node/align.py), on arrays made unaligned on purpose.

That partitions scattered to worker processes arrive aligned is tests/integration/test_align.py.
"""

from __future__ import annotations

import numpy as np

from grid.node.align import aligned


def unaligned(n: int) -> np.ndarray:
    """``0, 1, ..., n-1`` as float64 that numpy finds unaligned: a view one byte into a buffer."""
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
