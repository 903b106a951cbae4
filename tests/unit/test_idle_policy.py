"""The idle-only policy alone (grid/node/idle_policy.py): its settings' checks and its state machine.

No process and no clock: the decisions are fed synthetic samples. That a real
node pauses for a CPU hog and resumes after it is tests/system/test_idle_only.py.
"""

from __future__ import annotations

import pytest

from grid.node.idle import idle_plugin
from grid.node.idle_policy import IdleConfigError, IdlePolicy


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"cpu_threshold": 0}, ["cpu-threshold", "(0, 1]"]),
        ({"cpu_threshold": 1.5}, ["cpu-threshold"]),
        ({"idle_time_to_run": "soon"}, ["idle-time-to-run", "duration"]),
        ({"pause_after": -1}, ["pause-after", ">= 0"]),
        ({"interval": 0}, ["interval", "> 0"]),
        ({"cpu_share": 0}, ["cpu-share"]),
        ({"nice": 25}, ["nice", "19"]),
        ({"nice": True}, ["nice"]),
    ],
)
def test_settings_out_of_range_name_the_key(kwargs, words):
    with pytest.raises(IdleConfigError) as info:
        idle_plugin(**kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_policy_pauses_on_the_window_mean_and_resumes_only_after_continuous_idleness():
    """The decision logic alone, on a synthetic clock (what the system test exercises for real)."""
    p = IdlePolicy(cpu_threshold=0.5, pause_after=1.0, idle_time_to_run=2.0)
    t, dt = 0.0, 0.25

    def feed(share: float, n: int) -> list:
        nonlocal t
        out = []
        for _ in range(n):
            t += dt
            out.append(p.observe(t, share, dt))
        return out

    assert feed(0.1, 8) == [None] * 8  # an idle host: the node runs
    assert feed(0.6, 1) == [None]  # mean over the last 1 s: (3 * 0.1 + 0.6) / 4 = 0.225
    # busy: pauses once the mean over the last second exceeds 0.5 ((0.1 + 0.6 + 2 * 0.95) / 4 = 0.65)
    decisions = feed(0.95, 4)
    assert decisions.count("pause") == 1 and p.paused
    # a short lull does not resume; the idle streak restarts on the next busy sample
    assert feed(0.1, 4) == [None] * 4
    assert feed(0.9, 1) == [None]
    decisions = feed(0.1, 8)
    assert decisions == [None] * 7 + ["resume"] and not p.paused
    # after resuming, a fresh window: one busy sample alone does not pause again
    assert feed(0.9, 1) == [None]
