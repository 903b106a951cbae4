"""The user-facing conveniences: embedded default grid, progress bars."""

from __future__ import annotations

import io

import psutil
import pytest
from sklearn.linear_model import SGDClassifier

from grid import GridWarning
from grid.client import _close_owned, _owned
from jobs import PartialFit
from tests.integration.reference import assert_same_model, fedavg


def live_children() -> set[int]:
    """Child processes, less Python's own multiprocessing resource tracker (one per process, by design)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_fit_without_any_grid_uses_the_process_embedded_grid_and_closing_it_leaves_nothing(classification_data):
    X, y = classification_data
    before = live_children()
    try:
        with pytest.warns(GridWarning, match="started an embedded local grid"):
            est = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(X, y)
        embedded = _owned["embedded"]
        again = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(X, y)  # the same grid, no new warning
        assert _owned["embedded"] is embedded and len(embedded.jobs()) == 2
    finally:
        _close_owned()  # what the process does at exit
    assert_same_model(est, fedavg(SGDClassifier(random_state=0), X, y, rounds=2))
    assert_same_model(again, est.estimator_)
    assert live_children() <= before, "the embedded grid's node processes are gone"


def test_progress_bar_shows_rounds_and_loss(grid2, classification_data):
    X, y = classification_data
    job = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=4), X, y)
    out = io.StringIO()
    assert job.progress(file=out) is None
    text = out.getvalue()
    assert "4/4" in text and "loss=" in text and "done" in text
