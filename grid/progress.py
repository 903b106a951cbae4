"""Progress lines (tqdm: terminal or notebook): a job's rounds, and placement waiting for nodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from grid.protocol.requests import FINISHED


def progress(job: Any, *, interval: float = 0.5, file: Any = None, leave: bool = True, desc: str | None = None) -> str:
    """Show round k/N, loss and samples/s of ``job`` until it finishes.

    ``desc`` labels the bar (default: the job id); the job id is shown either way.

    Returns the job's final status.
    """
    info = job.info()
    label = f"{job.id} {desc}" if desc else job.id
    bar = tqdm(total=info["rounds"], desc=label, unit="round", file=file, leave=leave)
    try:
        while True:
            bar.n = info["rounds_done"]
            last = info["history"][-1] if info["history"] else None
            if last:
                rate = last["samples"] / last["seconds"] if last["seconds"] else 0.0
                bar.set_postfix(loss=f"{last['loss']:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
            bar.refresh()
            if info["status"] in FINISHED:
                bar.set_description(f"{label} {info['status']}")
                return info["status"]
            job.wait(timeout=interval)
            info = job.info()
    finally:
        bar.close()


def wait_for_nodes(
    count: Callable[[], dict[str, int]], timeout: float, *, interval: float = 0.5, file: Any = None
) -> dict[str, int]:
    """Wait up to ``timeout`` seconds until every region has a node, showing one progress line.

    Parameters
    ----------
    count : callable
        Returns the nodes of each region now, ``{region: nodes}``.
    timeout : float
        Seconds to wait; 0 does not wait (and shows nothing).
    interval : float
        Seconds between two calls of ``count``.
    file : file-like, optional
        Where the line goes (tqdm's default: stderr).

    Returns
    -------
    dict
        The last counts: every region has a node unless ``timeout`` passed first.
    """
    counts = count()
    if all(counts.values()) or timeout <= 0:
        return counts
    needed = len(counts)  # one node per region is what placing data needs; more only add replicas
    deadline = time.monotonic() + timeout

    def line(counts: dict[str, int]) -> str:
        there = sum(1 for n in counts.values() if n)
        each = ", ".join(f"{r}: {n}" for r, n in counts.items())
        return f"waiting for nodes: {there}/{needed} needed nodes there ({each}; up to {timeout:g} s, grid.jobs.wait-for-nodes)"

    bar = tqdm(total=needed, desc=line(counts), file=file, leave=True, bar_format="{desc} {elapsed}")
    try:
        while True:
            bar.n = sum(1 for n in counts.values() if n)
            bar.set_description_str(line(counts), refresh=False)
            bar.refresh()
            if all(counts.values()) or time.monotonic() >= deadline:
                return counts
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            counts = count()
    finally:
        bar.close()
