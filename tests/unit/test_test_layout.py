"""The test tree itself: every test module's basename is unique across tests/.

The test folders are not packages, so pytest imports each test module by its
basename: two modules of the same name in two folders stop the whole run at
collection ("import file mismatch"), which a run of one folder never shows.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        where[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: sorted(paths) for name, paths in where.items() if len(paths) > 1}
    assert not shared, f"test modules share a basename (rename one; pytest imports them by it): {shared}"
