"""Progress bars for grid jobs (tqdm: terminal or notebook)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from grid.scheduler.registry import FINISHED


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
