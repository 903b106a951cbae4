"""Placing and registering datasets: one extension of the grid's scheduler plugin.

It holds the region's :class:`~grid.scheduler.datasets.DatasetStore` and
registers the handlers that fill and empty it:

* ``scatter`` (Dask's own handler, wrapped): partitions a client scatters
  without naming nodes go to ``grid.jobs.replicas`` nodes at once, and to the
  region's partition store (:meth:`DatasetsExtension._spread_scatter`);
* ``grid_register_dataset``: scattered partitions become a dataset;
* ``grid_register_files``: the nodes read ``jobs.data.Files`` partitions
  themselves, now or, for a job's files on a region without nodes, once
  nodes join (:meth:`DatasetsExtension.read_later`, also how a restarted
  scheduler reads its Files datasets again);
* ``grid_drop_dataset``.

It also keeps ``grid.jobs.replicas`` copies of every partition through churn
(the replica policy, ``grid/scheduler/replicas.py``) and decides whether a
job's submitter may train on a dataset (:meth:`DatasetsExtension.dataset_for`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from grid import config
from grid.handlers import call_handler
from grid.keys import is_partition, partition_key
from grid.scheduler import recovery, replicas
from grid.scheduler.datasets import Dataset, DatasetStore
from grid.scheduler.replies import error_reply

if TYPE_CHECKING:
    from grid.scheduler.plugin import GridSchedulerPlugin

logger = logging.getLogger("grid.scheduler.datasets")


class DatasetsExtension:
    """The datasets of one region and the handlers that place, register and drop them.

    Parameters
    ----------
    plugin : GridSchedulerPlugin
        The region's grid plugin (its dial-out nodes, access control and client are used here).
    """

    def __init__(self, plugin: "GridSchedulerPlugin") -> None:
        self.plugin = plugin
        self.scheduler = plugin.scheduler
        self.region = plugin.region
        dial_out = plugin.dial_out
        self.store = DatasetStore(
            self.scheduler, stored=dial_out.store.has, on_drop=dial_out.drop_stored, fetchable=dial_out.fetchable
        )
        self.files_ready: dict[str, asyncio.Task] = {}  # Files datasets read in the background (read_later)
        self.pending_files: set[str] = set()  # jobs' Files datasets registered before a node could read them
        self.replica_policy: replicas.GridReplicas | None = None

    def install(self) -> None:
        self.scheduler.handlers.update(
            {
                "grid_register_dataset": self.register_dataset,
                "grid_drop_dataset": self.drop_dataset,
                "grid_register_files": self.register_files,
            }
        )
        # partitions a client scatters without naming nodes go to grid.jobs.replicas nodes at once
        self.scheduler.handlers["scatter"] = self._spread_scatter(self.scheduler.handlers["scatter"])
        # keep grid.jobs.replicas copies of every dataset partition (docs/reliability.md#churn)
        self.replica_policy = replicas.install(self.plugin, self.scheduler)

    def close(self) -> None:
        for task in self.files_ready.values():
            task.cancel()
        replicas.uninstall(self.scheduler, self.replica_policy)

    # --- who may use a dataset -------------------------------------------------------
    def dataset_for(self, comm: Any, name: str, owner: str | None) -> Dataset:
        """The dataset a job trains on, if its submitter may use it.

        On a TLS grid: its owner, an admin or a scheduler (the certificate
        decides). On a plaintext grid nobody is identified, so the owner the
        client names must match, as it always did.
        """
        access = self.plugin.access
        if access.active and access.identity(comm) is not None:
            return self.store.get_for(name, lambda o: access.may_see(comm, o))
        return self.store.get_for(name, lambda o: not o or owner is None or o == owner)

    # --- handlers --------------------------------------------------------------------
    def register_dataset(
        self,
        comm: Any,
        name: str,
        keys: list[str],
        rows: list[int],
        indices: list[int],
        n_features: int,
        classes: list | None = None,
        owner: str = "",
        job_owned: bool = False,
    ) -> dict:
        try:
            for arg, value in (("keys", keys), ("rows", rows), ("indices", indices)):
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"{arg} must be a list, got {value!r:.80}")
            if not keys:
                raise ValueError("a dataset needs at least one partition (keys is empty)")
            if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rows):
                raise ValueError(f"rows must be integers >= 1, got {rows!r:.80}")
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices) or len(set(indices)) != len(indices):
                raise ValueError(f"indices must be distinct integers >= 0, got {indices!r:.80}")
            if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
                raise ValueError(f"n_features must be an integer >= 1, got {n_features!r:.80}")
            if not (len(keys) == len(rows) == len(indices)):
                raise ValueError("keys, rows and indices must have the same length")
            # on TLS a dataset is made only of partitions its owner scattered (grid.scheduler.access)
            self.plugin.access.check_keys_placed_by(comm, str(name), list(keys))
            self.store.register(
                Dataset(
                    name=str(name),
                    keys=[str(k) for k in keys],
                    rows=[int(r) for r in rows],
                    indices=[int(i) for i in indices],
                    n_features=int(n_features),
                    classes=classes,
                    owner=self.plugin.access.owner(comm, owner),
                    job_owned=bool(job_owned),
                )
            )
        except Exception as exc:  # noqa: BLE001 - report every rejection to the caller
            return error_reply(exc)
        return {"status": "OK"}

    def _spread_scatter(self, scatter: Any) -> Any:
        """Wrap ``scatter``: grid partitions sent without named nodes go to ``grid.jobs.replicas``
        nodes, each copy straight from the scheduler.

        Data scientists do not see node addresses, so the scheduler picks the
        nodes holding the fewest partitions. Every partition is also written
        to the region's partition store (``grid/scheduler/store.py``). An open
        node gets its copy by scatter, from the scheduler; a dial-out node is
        granted the partition and fetches it from the store over its own
        connection (at once, and at the latest when a round needs it). A node
        the scheduler cannot reach gets nothing, so it never stalls placement.
        None gets a copy from another node: a node that will not serve its
        partitions to other nodes cannot leave a dataset with a single copy,
        and the dataset has its copies before it is registered (the replica
        policy keeps them through churn afterwards).
        """
        scheduler, dial_out = self.scheduler, self.plugin.dial_out

        async def spread(comm: Any = None, **msg: Any) -> Any:
            data = msg.get("data")
            if msg.get("workers") or msg.get("broadcast") or not isinstance(data, dict) or not data or not all(
                is_partition(k) for k in data
            ):
                return await call_handler(scatter, comm, msg)
            await dial_out.settled([ws.address for ws in scheduler.running])
            eligible = dial_out.working_nodes()
            if not eligible:
                if scheduler.running:
                    raise OSError(
                        f"region {self.region!r} has no node the scheduler can reach or that dials out "
                        "(its nodes are stock Dask workers behind a firewall); start nodes with `grid node`"
                    )
                return await call_handler(scatter, comm, msg)  # no node yet: distributed waits for one
            loop = asyncio.get_running_loop()
            for key, value in data.items():  # disk writes off the event loop
                await loop.run_in_executor(None, dial_out.store.put, key, value)
            # nodes may have left during the writes: choose among those here now (no await until
            # the choice is made), and tell the client to place again if none is left
            eligible = dial_out.working_nodes()
            if not eligible:
                raise OSError(f"region {self.region!r}: every node left while partitions were placed; place them again")
            held = {w: dial_out.partitions_on(scheduler.workers[w]) for w in eligible}
            ranked = sorted(eligible, key=lambda w: (held[w], w))
            # partition j of the message goes to the j-th least loaded node and the ones after it
            r = min(max(1, int(config.get("jobs.replicas"))), len(ranked))
            groups: dict[tuple[str, ...], dict] = {}
            for j, (key, value) in enumerate(data.items()):
                holders = tuple(ranked[(j + k) % len(ranked)] for k in range(r))
                groups.setdefault(holders, {})[key] = value
            for holders, part in groups.items():
                placed = 0
                for holder in holders:
                    if holder not in scheduler.workers:
                        continue  # it left while an earlier group was scattered: the others hold the copies
                    if dial_out.reach.is_dial_out(holder):
                        dial_out.prefetch(holder, list(part))
                    else:  # one scatter per holder (distributed's broadcast would copy node to node)
                        await call_handler(scatter, comm, {**msg, "data": part, "workers": [holder], "broadcast": False})
                    placed += 1
                if not placed:  # the client places them again on the nodes that are left
                    raise OSError(
                        f"region {self.region!r}: every node chosen for {len(part)} partition(s) left while they "
                        "were placed; place them again"
                    )
            return list(data)

        return spread

    async def register_files(
        self,
        comm: Any,
        name: str,
        paths: list[str],
        indices: list[int],
        options: dict,
        owner: str = "",
        job_owned: bool = False,
        wait: bool = True,
    ) -> dict:
        """Have this region's nodes read file partitions and hold them as a dataset.

        The read tasks keep their recipe, so a partition whose every holder
        left is read again. Partitions that disagree are refused with the file
        named. ``wait=False`` (a job's files on a region without nodes) answers
        at once: the files are read when nodes join, and the job submitted on
        them is queued until then.
        """
        from grid import wire
        from grid.node.tasks import read_file_partition

        access = self.plugin.access
        if not wait:
            try:
                if len(paths) != len(indices) or not paths:
                    raise ValueError("paths and indices must be non-empty lists of the same length")
                if name in self.store.datasets or name in self.files_ready:
                    raise ValueError(f"a dataset named {name!r} exists already on this region")
                options = {k: options.get(k) for k in ("target", "features", "format")}
                self.pending_files.add(str(name))
                self.read_later(str(name), list(paths), list(indices), options, access.owner(comm, owner), job_owned=True)
            except Exception as exc:  # noqa: BLE001 - every rejection goes back to the caller
                return error_reply(exc)
            return {"status": "OK", "pending": True}
        try:
            if len(paths) != len(indices) or not paths:
                raise ValueError("paths and indices must be non-empty lists of the same length")
            options = {k: options.get(k) for k in ("target", "features", "format")}
            client = await self.plugin.get_client()
            parts = [
                client.submit(read_file_partition, str(p), options, key=partition_key(name, i))
                for p, i in zip(paths, indices)
            ]
            try:
                blobs = await self._describe(client, parts, name, indices)
            except Exception as exc:  # noqa: BLE001 - a file that cannot be read: say which
                await client.cancel(parts)
                raise ValueError(str(exc)) from None
            described = [wire.decode(b)[0] for b in blobs]
            n_features = described[0]["n_features"]
            for d, path in zip(described, paths):
                if d["n_features"] != n_features:
                    await client.cancel(parts)
                    raise ValueError(
                        f"partition {path} has {d['n_features']} features but {paths[0]} has {n_features}; "
                        "every partition needs the same columns"
                    )
            labels = sorted({v for d in described if "labels" in d for v in np.asarray(d["labels"]).tolist()})
            self.store.register(
                Dataset(
                    name=str(name),
                    keys=[f.key for f in parts],
                    rows=[int(d["rows"]) for d in described],
                    indices=[int(i) for i in indices],
                    n_features=int(n_features),
                    classes=labels or None,
                    owner=access.owner(comm, owner),
                    job_owned=bool(job_owned),
                    sources={f.key: [str(p), options] for f, p in zip(parts, paths)},
                )
            )
            for f in parts:
                f.release()  # the dataset holds them now
            recovery.save_recipe(self.plugin, self.store.get(str(name)), paths, options)
        except Exception as exc:  # noqa: BLE001 - every rejection goes back to the caller
            return error_reply(exc)
        return {"status": "OK", "rows": sum(int(d["rows"]) for d in described), "n_features": int(n_features), "labels": labels}

    def read_later(
        self, name: str, paths: list, indices: list, options: dict, owner: str, job_owned: bool, again: bool = False
    ) -> None:
        """Have the nodes read a Files dataset in the background: ``files_ready[name]`` ends with
        the error message, or None once the dataset is held.

        For a job's files registered before the region had nodes, and (``again``)
        for every Files dataset of a restarted scheduler. The read tasks simply
        wait for a node (distributed keeps tasks without workers until one
        arrives); nothing here polls.
        """
        self.files_ready[name] = asyncio.get_running_loop().create_task(
            self._read(name, paths, indices, options, owner, job_owned, again)
        )

    async def _read(
        self, name: str, paths: list, indices: list, options: dict, owner: str, job_owned: bool, again: bool
    ) -> str | None:
        reply = await self.register_files(None, name, paths, indices, options, owner=owner, job_owned=job_owned)
        if reply.get("status") != "OK":
            again_text = " again after the restart" if again else ""
            logger.warning("dataset %s could not be read%s: %s", name, again_text, reply.get("message"))
            return str(reply.get("message"))
        when = "again after the restart" if again else "once nodes joined"
        logger.info("dataset %s: %d file partition(s) read %s", name, len(paths), when)
        return None

    async def _describe(self, client: Any, parts: list, name: str, indices: list[int]) -> list[bytes]:
        """The rows, features and labels of each file partition read on the nodes (wire blobs).

        Each is described where it was read: by a task on an open node (its small
        result fetched as usual), by a call on a dial-out node's grid channel (which
        nothing can dial to fetch a result from)."""
        from grid.node.tasks import describe_partition

        dial_out = self.plugin.dial_out
        for exc in await asyncio.gather(*(f.exception() for f in parts)):  # each read ends (or fails)
            if exc is not None:
                raise exc

        async def describe(f: Any, i: int) -> bytes:
            ts = self.scheduler.tasks.get(f.key)
            holder = min((ws.address for ws in ts.who_has), default=None) if ts is not None and ts.who_has else None
            if holder is not None and dial_out.reach.is_dial_out(holder):
                reply = await dial_out.channels.call(holder, "describe", key=f.key)
                if not isinstance(reply, dict) or not isinstance(reply.get("blob"), bytes):
                    raise OSError(f"node {holder} did not describe partition {i}: {str(reply)[:120]}")
                return reply["blob"]
            info = client.submit(describe_partition, f, key=f"grid-describe-{name}-{i}", workers=dial_out.open_nodes())
            try:
                return await info.result()
            finally:
                info.release()

        return list(await asyncio.gather(*(describe(f, i) for f, i in zip(parts, indices))))

    def drop_dataset(self, comm: Any, name: str) -> dict:
        if not isinstance(name, str):
            return error_reply(TypeError(f"dataset name must be a string, got {name!r:.80}"))
        dataset = self.store.datasets.get(name)
        if dataset is not None and not self.plugin.access.may_see(comm, dataset.owner):
            return error_reply(PermissionError(f"dataset {name!r} belongs to another user; it is not yours to drop"))
        if dataset is None and name in self.pending_files:  # not read yet (its job was never submitted): stop the read
            self.pending_files.discard(name)
            reading = self.files_ready.pop(name, None)
            if reading is not None:
                reading.cancel()
        if dataset is not None and dataset.users:
            active = [j for j in dataset.users if j in self.plugin.region_share.runs]
            if active:
                return error_reply(ValueError(f"dataset {name!r} is in use by job(s) {sorted(active)}"))
        dropped = self.store.drop(name)
        recovery.forget_recipe(self.plugin, name)
        return {"status": "OK", "dropped": dropped}
