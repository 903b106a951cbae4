"""Placed datasets held by a region's scheduler.

``Grid.scatter`` puts each partition on nodes of a region (two replicas where
the region has two nodes) and registers the partition keys here. The
scheduler then *desires* those keys on behalf of the dataset, the way
distributed's publish extension does, so the data outlives the client that
placed it and many jobs can reuse it. Dropping the dataset releases the keys.
On a TLS grid a dataset belongs to the certificate name that placed it: only
that user, an admin or a scheduler may register it, train on it, see it or
drop it (:meth:`DatasetStore.get_for`).
The scheduler's replica policy (:mod:`grid.scheduler.replicas`) reads the
keys from here and keeps ``grid.jobs.replicas`` copies of each through churn.

A job's ``jobs.data.Files`` dataset registered while the region has no nodes
is *pending* (:meth:`grid.scheduler.dataset_handlers.DatasetsExtension.read_later`):
its read tasks wait for the first node, and the job waits for them, queued
(:meth:`grid.scheduler.job_handlers.JobsExtension.start_when_read`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def no_nodes_reason(region: str) -> str:
    """Why a job on files waits: what ``g.jobs()`` shows under ``waiting``."""
    return (
        f"region {region!r} has no nodes to read the job's files; it starts when one joins "
        f"(`grid node --region {region} --scheduler ...`)"
    )


@dataclass
class Dataset:
    """One dataset's partitions on this region, in global partition order."""

    name: str
    keys: list[str]
    rows: list[int]
    indices: list[int]
    n_features: int
    classes: list | None = None
    owner: str = ""
    job_owned: bool = False
    users: set[str] = field(default_factory=set)
    #: Files datasets: partition key -> [path, reader options], what a dial-out node reads itself
    sources: dict[str, list] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": len(self.keys),
            "rows": int(sum(self.rows)),
            "n_features": self.n_features,
            "owner": self.owner,
            "job_owned": self.job_owned,
            "jobs": sorted(self.users),
        }


class DatasetStore:
    """The datasets of one region, keeping their keys alive on the scheduler."""

    def __init__(
        self,
        scheduler: Any,
        stored: Callable[[str], bool] = lambda key: False,
        on_drop: Callable[[list[str]], None] = lambda keys: None,
        fetchable: Callable[[str], bool] = lambda key: False,
    ) -> None:
        self.scheduler = scheduler
        self.datasets: dict[str, Dataset] = {}
        #: whether the region's partition store holds a key
        self.stored = stored
        #: whether a node can fetch a key from the store now (a dial-out node is there)
        self.fetchable = fetchable
        self.on_drop = on_drop
        #: partition key -> [path, reader options] of every Files dataset held here
        self.sources: dict[str, list] = {}

    def _holder(self, name: str) -> str:
        return f"grid-dataset-{name}"

    def register(self, dataset: Dataset) -> None:
        missing = [k for k in dataset.keys if k not in self.scheduler.tasks and not self.stored(k)]
        if missing:
            raise ValueError(
                f"dataset {dataset.name!r}: {len(missing)} partition keys are not on this "
                f"scheduler (e.g. {missing[0]!r}); place the data with Grid.scatter first"
            )
        if dataset.name in self.datasets:
            raise ValueError(f"a dataset named {dataset.name!r} exists already on this region")
        known = [k for k in dataset.keys if k in self.scheduler.tasks]  # the rest only the store holds
        self.scheduler.client_desires_keys(keys=known, client=self._holder(dataset.name))
        self.datasets[dataset.name] = dataset
        self.sources.update(dataset.sources)

    def get(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            raise KeyError(
                f"no dataset {name!r} on this region; it was dropped or never placed "
                "(Grid.scatter places data)"
            ) from None

    def get_for(self, name: str, may_use: Any) -> Dataset:
        """The dataset ``name`` if ``may_use(owner)`` says the caller may use it.

        Raises
        ------
        KeyError
            No such dataset on this region.
        PermissionError
            The dataset belongs to another user (who is not named).
        """
        dataset = self.get(name)
        if not may_use(dataset.owner):
            raise PermissionError(
                f"dataset {name!r} belongs to another user; place your own data with Grid.scatter"
            )
        return dataset

    def drop(self, name: str) -> bool:
        dataset = self.datasets.pop(name, None)
        if dataset is None:
            return False
        holder = self._holder(name)
        if holder in self.scheduler.clients:
            self.scheduler.client_releases_keys(keys=list(dataset.keys), client=holder)
            self.scheduler.clients.pop(holder, None)
        for key in dataset.keys:
            self.sources.pop(key, None)
        self.on_drop(list(dataset.keys))
        return True

    def lost(self, name: str) -> list[str]:
        """Keys of the dataset that no node holds any more and nothing can make again.

        A partition the scheduler can recompute or have fetched again is not
        lost: one in the region's partition store while a dial-out node can
        fetch it (grid/scheduler/store.py), and a
        ``jobs.data.Files`` partition is a read task with its recipe
        (``run_spec``), so when its every holder vanished the scheduler reads
        the file again and the round waits for it. Scattered data
        (``Grid.scatter``) has no recipe: once its last holder is gone it is
        lost.
        """
        dataset = self.get(name)
        out = []
        for key in dataset.keys:
            ts = self.scheduler.tasks.get(key)
            if ts is not None and (ts.who_has or ts.run_spec is not None):
                continue  # the common case first: asked every round, of every partition
            if not self.fetchable(key):
                out.append(key)
        return out
