"""The user-facing conveniences: embedded default grid, progress bars."""

from __future__ import annotations

import io

import psutil
from sklearn.linear_model import SGDClassifier

from jobs import PartialFit


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


def test_fit_without_any_grid_uses_an_embedded_one_and_leaves_nothing(classification_data):
    X, y = classification_data
    before = live_children()
    est = PartialFit(SGDClassifier(random_state=0), rounds=2).fit(X, y)
    assert est.score(X, y) > 0.7 and len(est.history_) == 2
    assert live_children() <= before


def test_progress_bar_shows_rounds_and_loss(grid2, classification_data):
    X, y = classification_data
    job = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=4), X, y)
    out = io.StringIO()
    assert job.progress(file=out) is None
    text = out.getvalue()
    assert "4/4" in text and "loss=" in text and "done" in text
