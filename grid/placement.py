"""Client-side placement of partitions on the nodes of each region.

Partitions are split across regions in proportion to their threads, in
contiguous ranges (so global partition order is region order, then partition
order). On TLS grids a region's threads count each node at most
``grid.scheduler.max-node-threads`` (the scheduler caps what nodes claim), so
a node claiming a big machine does not draw a grid's partitions to its region. Inside a region the
scheduler picks the nodes: the client scatters each partition without naming
a node (data scientists do not see node addresses), and the scheduler sends
each to ``grid.jobs.replicas`` of its running nodes (the least loaded ones),
so losing one node loses no data where the region has two or more; its replica policy
(``grid/scheduler/replicas.py``) keeps that many copies through churn. A node
that leaves while its region is being placed on (the scatter to it fails)
makes the region's placement start again (``PLACE_ATTEMPTS``).

A region without nodes is waited for, up to ``grid.jobs.wait-for-nodes``
seconds with one progress line, before placement fails with the reason. A job
on a ``jobs.data.Files`` dataset of one region does not wait here: its files
are registered as *pending* and the job is queued on the scheduler, which has
the files read (and starts the job) when the first node joins.

Dataset names, and with them partition keys, carry 128 random bits
(``secrets.token_hex(16)``): nobody places data under a name another user
will pick, or finds another user's partitions by guessing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grid import config
from grid.errors import check_reply
from grid.keys import partition_key
from grid.progress import wait_for_nodes
from jobs.data import Files, Partitions, split_counts


@dataclass
class PlacedData:
    """A dataset placed on grid nodes by :meth:`grid.Grid.scatter`.

    Pass it to ``Grid.submit(est, data)`` or ``est.fit(data, grid=g)`` to train
    without moving the data again. It stays placed until :meth:`grid.Grid.drop`.

    Attributes
    ----------
    name : str
    regions : dict
        region -> {"address", "dataset", "partitions", "rows"}
    n_samples, n_features, n_partitions : int
    classes : list or None
        Sorted labels when ``y`` looked like class labels.
    pending : bool
        A ``jobs.data.Files`` dataset of a job whose region had no nodes: the
        scheduler has the files read when a node joins, and only then knows
        their rows, features and labels (``n_samples`` and ``n_features`` are
        0 until then).
    """

    name: str
    regions: dict[str, dict]
    n_samples: int
    n_features: int
    n_partitions: int
    classes: list | None = None
    job_owned: bool = False
    supervised: bool = True
    pending: bool = False
    _dropped: bool = field(default=False, repr=False)

    def __repr__(self) -> str:
        where = ", ".join(f"{r}: {v['partitions']}" for r, v in self.regions.items())
        return (
            f"<PlacedData {self.name}: {self.n_samples} x {self.n_features}, "
            f"{self.n_partitions} partitions ({where})>"
        )


def _label_classes(parts: Partitions) -> list | None:
    if parts.classes is not None:
        return parts.classes.tolist()
    if parts.parts[0][1] is None:
        return None
    y = np.concatenate([p[1] for p in parts.parts])
    uniq = np.unique(y)
    if y.dtype.kind == "f" and (len(uniq) > 1000 or not np.all(np.mod(uniq, 1) == 0)):
        return None  # continuous target: regression
    return uniq.tolist()


#: how often placing a region's partitions is tried when nodes leave while it happens
PLACE_ATTEMPTS = 3


#: bytes of one scatter message at most (several partitions go in one message up to this)
SCATTER_BATCH_BYTES = 32 * 2**20


def dataset_name(job_owned: bool) -> str:
    """A new dataset name: ``data-`` or ``job-`` and 128 random bits, so its partition keys are unguessable."""
    return f"{'job' if job_owned else 'data'}-{secrets.token_hex(16)}"


def node_count(info: dict) -> int:
    """Nodes (active or paused) of a region's ``grid_info`` reply, whoever asked."""
    nodes = info.get("nodes")
    if isinstance(nodes, dict):
        return int(nodes.get("active", 0)) + int(nodes.get("paused", 0))
    return len(info.get("workers") or [])


def region_capacity(info: dict) -> int:
    """A region's threads for placement (0: no nodes). On TLS grids the scheduler
    believes at most ``grid.scheduler.max-node-threads`` of each node's claim."""
    return max(1, int(info.get("nthreads") or 0)) if node_count(info) else 0


def _batches(keys: list[str], indices: list[int], parts: Partitions) -> list[dict[str, Any]]:
    """``{key: partition}`` groups of consecutive partitions, each at most ``SCATTER_BATCH_BYTES``
    (or one partition): bounded messages, each placed by the scheduler on its least loaded nodes."""
    from dask.sizeof import sizeof

    out: list[dict[str, Any]] = []
    size = 0
    for key, index in zip(keys, indices):
        nbytes = sizeof(parts.parts[index])
        if not out or size + nbytes > SCATTER_BATCH_BYTES:
            out.append({})
            size = 0
        out[-1][key] = parts.parts[index]
        size += nbytes
    return out


def region_shares(grid: Any, regions: list[str], n_parts: int) -> tuple[dict, list[tuple[str, list[int]]]]:
    """Each region's contiguous range of partition indices, in proportion to its threads.

    Returns the regions' ``grid_info`` replies and ``[(region, indices), ...]``
    (regions that get no partition are left out).
    """
    infos: dict[str, dict] = {}

    def count() -> dict[str, int]:
        infos.update({r: grid._info(r) for r in regions})
        return {r: node_count(infos[r]) for r in regions}

    timeout = config.seconds("jobs.wait-for-nodes")
    wait_for_nodes(count, timeout)
    threads = [region_capacity(infos[r]) for r in regions]
    for r, t in zip(regions, threads):
        if t == 0:
            waited = f" (waited {timeout:g} s: grid.jobs.wait-for-nodes)" if timeout > 0 else ""
            raise RuntimeError(
                f"region {r!r} has no nodes{waited}; start one with `grid node --region {r} --scheduler ...` "
                "or leave the region out with regions=[...]"
            )
    shares, start = [], 0
    for region, count in zip(regions, split_counts(n_parts, threads)):
        if count:
            shares.append((region, list(range(start, start + count))))
            start += count
    return infos, shares


def place(
    grid: Any,
    parts: Partitions,
    regions: list[str],
    *,
    job_owned: bool,
    owner: str,
) -> PlacedData:
    """Scatter partitions onto the regions' nodes and register them as one dataset.

    How many nodes hold each partition is each region's scheduler's
    ``grid.jobs.replicas`` (its scatter handler places every copy).
    """
    infos, shares = region_shares(grid, regions, len(parts))
    name = dataset_name(job_owned)
    classes = _label_classes(parts)
    placed_regions: dict[str, dict] = {}
    try:
        for region, indices in shares:
            count = len(indices)
            client = grid.client(region)
            keys = [partition_key(name, index) for index in indices]
            held: list = []  # futures of every attempt, released only once the dataset holds the keys
            for attempt in range(PLACE_ATTEMPTS):
                try:
                    # no node named: the scheduler sends each partition to grid.jobs.replicas
                    # of its running nodes
                    for data in _batches(keys, indices, parts):
                        held.extend(client.scatter(data, hash=False).values())
                    reply = client.sync(
                        client.scheduler.grid_register_dataset,
                        name=name,
                        keys=keys,
                        rows=[parts.sizes[i] for i in indices],
                        indices=indices,
                        n_features=parts.n_features,
                        classes=classes,
                        owner=owner,
                        job_owned=job_owned,
                    )
                except PermissionError:  # refused (e.g. a certificate that may not place data): no retry helps
                    raise
                except OSError:  # a node left while we scattered to it (distributed closes the comm)
                    reply = None
                # a node that left during the scatter, or took a partition with it before the
                # dataset held the keys: place once more on the nodes that are left
                churned = reply is None or (reply.get("status") != "OK" and "not on this scheduler" in str(reply.get("message")))
                if not churned or attempt == PLACE_ATTEMPTS - 1:
                    break
                infos[region] = grid._info(region)
                if not node_count(infos[region]):
                    raise RuntimeError(f"region {region!r} has no nodes left to place data on")
            if reply is None:
                raise OSError(f"placing data on region {region!r}: nodes kept leaving ({PLACE_ATTEMPTS} attempts)")
            check_reply(reply, f"placing data on region {region!r}")
            del held  # the scheduler holds the keys now
            placed_regions[region] = {
                "address": grid.spec.regions[region].address,
                "dataset": name,
                "partitions": count,
                "rows": int(sum(parts.sizes[i] for i in indices)),
            }
    except BaseException:
        for region in placed_regions:
            drop_on(grid, region, name)
        raise
    return PlacedData(
        name=name,
        regions=placed_regions,
        n_samples=parts.n_samples,
        n_features=parts.n_features,
        n_partitions=len(parts),
        classes=classes,
        job_owned=job_owned,
        supervised=parts.parts[0][1] is not None,
    )


def drop_on(grid: Any, region: str, name: str) -> None:
    client = grid.client(region)
    client.sync(client.scheduler.grid_drop_dataset, name=name)


def queue_files(grid: Any, files: Files, region: str, *, owner: str) -> PlacedData:
    """Register a job's file dataset on a region without nodes: its nodes read it once one joins.

    The scheduler answers at once; the job submitted on the returned (pending)
    dataset is queued there until the files are read.
    """
    paths = files.paths()
    name = dataset_name(True)
    client = grid.client(region)
    check_reply(
        client.sync(
            client.scheduler.grid_register_files,
            name=name,
            paths=paths,
            indices=list(range(len(paths))),
            options=files.options(),
            owner=owner,
            job_owned=True,
            wait=False,
        ),
        f"reading {files.pattern!r} on region {region!r}",
    )
    return PlacedData(
        name=name,
        regions={region: {"address": grid.spec.regions[region].address, "dataset": name, "partitions": len(paths), "rows": 0}},
        n_samples=0,
        n_features=0,
        n_partitions=len(paths),
        job_owned=True,
        supervised=files.target is not None,
        pending=True,
    )


def place_files(grid: Any, files: Files, regions: list[str], *, job_owned: bool, owner: str) -> PlacedData:
    """Have the regions' nodes read a file dataset (one partition per file); nothing moves through the client.

    A job's dataset (``job_owned``) on one region that has no nodes is queued
    instead (:func:`queue_files`): the job waits on the scheduler, not here.
    """
    if job_owned and len(regions) == 1 and not node_count(grid._info(regions[0])):
        return queue_files(grid, files, regions[0], owner=owner)
    paths = files.paths()
    _, shares = region_shares(grid, regions, len(paths))
    name = dataset_name(job_owned)
    placed: dict[str, dict] = {}
    labels: set = set()
    n_features = None
    try:
        for region, indices in shares:
            count = len(indices)
            client = grid.client(region)
            reply = check_reply(
                client.sync(
                    client.scheduler.grid_register_files,
                    name=name,
                    paths=[paths[i] for i in indices],
                    indices=indices,
                    options=files.options(),
                    owner=owner,
                    job_owned=job_owned,
                ),
                f"reading {files.pattern!r} on region {region!r}",
            )
            placed[region] = {
                "address": grid.spec.regions[region].address,
                "dataset": name,
                "partitions": count,
                "rows": int(reply["rows"]),
            }
            if n_features is not None and reply["n_features"] != n_features:
                raise ValueError(
                    f"partition {paths[indices[0]]} (read on region {region!r}) has {reply['n_features']} features "
                    f"but {paths[0]} has {n_features}; every partition needs the same columns"
                )
            n_features = reply["n_features"]
            labels.update(reply.get("labels") or ())
    except BaseException:
        for region in placed:
            drop_on(grid, region, name)
        raise
    return PlacedData(
        name=name,
        regions=placed,
        n_samples=sum(v["rows"] for v in placed.values()),
        n_features=int(n_features or 0),
        n_partitions=len(paths),
        classes=sorted(labels) or None,
        job_owned=job_owned,
        supervised=files.target is not None,
    )
