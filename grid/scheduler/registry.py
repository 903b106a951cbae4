"""The job registry of one scheduler: every job whose home this region is."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grid.protocol.requests import FINISHED, STATUSES


class UnknownJob(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


@dataclass
class JobRecord:
    """What the registry knows of one job."""

    id: str
    owner: str
    home: str
    request: dict
    placement: dict
    status: str = "queued"
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    rounds_done: int = 0
    error: str | None = None
    history: list[dict] = field(default_factory=list)
    result: bytes | None = None  # the final state, in the grid wire format
    #: why the job waits: queued (its region has no nodes to read its files yet) or running (a round
    #: waits for independent nodes to verify on); None when it does not
    waiting: str | None = None
    #: verify="adaptive": a node caught after it contributed unchecked updates that the job could no longer
    #: replay (it had ended): {"node", "region", "rounds", "evidence"}; None while nothing taints the job
    tainted: dict | None = None

    @property
    def rounds(self) -> int:
        return int(self.request.get("rounds", 0))

    def summary(self) -> dict[str, Any]:
        """Plain data about the job (what `grid jobs` and the dashboard show)."""
        last = self.history[-1] if self.history else {}
        end = self.finished or time.time()
        return {
            "id": self.id,
            "owner": self.owner,
            "home": self.home,
            "regions": sorted(self.placement),
            "estimator": self.request.get("estimator", {}).get("class", "?").rpartition(":")[2],
            "kind": self.request.get("kind"),
            "mode": self.request.get("mode"),
            "status": self.status,
            "rounds": self.rounds,
            "rounds_done": self.rounds_done,
            "loss": last.get("loss"),
            "score": last.get("score"),
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
            "elapsed": (end - self.started) if self.started else 0.0,
            "error": self.error,
            **({"waiting": self.waiting} if self.waiting and self.status not in FINISHED else {}),
            **({"tainted": self.tainted} if self.tainted else {}),
        }


class JobRegistry:
    """Jobs by id, in submission order; forgets the oldest finished jobs past a limit."""

    def __init__(self, region: str, keep_finished: int = 1000) -> None:
        self.region = region
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()
        #: called with the id of each finished job the registry forgets (the state
        #: directory deletes its files, so the disk keeps what memory keeps)
        self.on_forget: Callable[[str], None] | None = None

    def new_id(self) -> str:
        return f"{self.region}-{uuid.uuid4().hex[:12]}"

    def add(self, record: JobRecord) -> JobRecord:
        self._jobs[record.id] = record
        self._trim()
        return record

    def get(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no job {job_id!r} on region {self.region!r}") from None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def all(self) -> list[JobRecord]:
        return list(self._jobs.values())

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for job in self._jobs.values():
            out[job.status] += 1
        return out

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in FINISHED]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
            if self.on_forget is not None:
                self.on_forget(job.id)
