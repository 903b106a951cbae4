"""The region's partition store: where dial-out nodes get their partitions.

A dial-out node (``grid/scheduler/reach.py``) cannot receive a scatter: nothing
can connect to it. Every partition a client places on the region passes
through the scheduler anyway (``Grid.scatter`` sends it there without naming
nodes), so the scheduler writes it here, one file per partition, as it came:
the Dask serialisation header and the raw frames the client sent, never
deserialised on the scheduler. Nodes read it back in chunks of at most
``grid.scheduler.store-chunk`` (default 4 MiB) over connections they open
(:data:`~grid.protocol.nodes.STORE_READ_OP`), so a partition is never all in
the scheduler's memory at once and never sent on a node's stream or grid channel.

Who may read what: a node reads a partition only with the token the
scheduler gave that node for that partition, in a call on the node's own
stream (a round request or a prefetch). Tokens carry 128 random bits and
die when their node leaves or the dataset is dropped, so a node learns no
other user's rows by asking for a key.

Holding: a dial-out node *holds* a partition once the scheduler has granted
it one (it fetches at once, and at the latest when a round asks it for an
update). Replication means more nodes are granted the same partition; a
holder that leaves is forgotten, and the next node asked fetches it again.
The files live in ``grid.scheduler.store-dir``, else ``<state-dir>/store-<region>``,
else a temporary directory removed when the scheduler closes; a scheduler
that starts removes the files a previous run left there (their datasets are
not known to it).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distributed.protocol.serialize import Serialized, serialize

from grid.protocol.nodes import partition_head


class StoreError(PermissionError):
    """A read of the store with a token that does not grant that partition."""


class PartitionStore:
    """Partitions of this region's datasets on disk, and which dial-out node holds which.

    Parameters
    ----------
    directory : str or Path, optional
        Where the files go; a temporary directory (removed by :meth:`close`) when None.
    chunk_bytes : int
        The most bytes one read returns.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, chunk_bytes: int) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"grid.scheduler.store-chunk must be at least 1 byte, got {chunk_bytes}; e.g. 4MiB")
        self.temporary = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="dask-grid-store-") if directory is None else directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in [*self.directory.glob("*.part"), *self.directory.glob("*.tmp")]:
            stale.unlink(missing_ok=True)  # a previous run's: no dataset of this scheduler names them
        self.chunk_bytes = int(chunk_bytes)
        self.sizes: dict[str, int] = {}
        #: partition key -> dial-out nodes granted it (fetched, or fetching)
        self.holders: dict[str, set[str]] = {}
        #: the same, by node: node -> keys granted to it (counted per node on every grid_info and
        #: every copy planning pass, so it must not take a scan of every partition)
        self.held: dict[str, set[str]] = {}
        #: token -> (node, key) it lets read
        self.grants: dict[str, tuple[str, str]] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self.bytes_served = 0

    # --- partitions -----------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        # keys are grid partition keys; hashed so that no key names a path of its own
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".part")

    def put(self, key: str, value: Any) -> int:
        """Write one partition (a ``Serialized`` as the scheduler received it, or plain data)."""
        if isinstance(value, Serialized):
            header, frames = value.header, value.frames
        else:
            header, frames = serialize(value, serializers=("dask", "msgpack"), on_error="raise")
        frames = [memoryview(f).cast("B") if not isinstance(f, bytes) else f for f in frames]
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(partition_head(header, frames))
            for frame in frames:
                out.write(frame)
        os.replace(tmp, path)
        self.sizes[key] = path.stat().st_size
        return self.sizes[key]

    def has(self, key: str) -> bool:
        return key in self.sizes

    def read(self, key: str, token: str, offset: int) -> dict:
        """One chunk of partition ``key`` from ``offset``, for the holder of ``token``."""
        granted = self.grants.get(token) if isinstance(token, str) else None
        if granted is None or granted[1] != key or key not in self.sizes:
            raise StoreError(
                "no such partition for this token: a node reads only the partitions its scheduler gave it"
            )
        total = self.sizes[key]
        if not isinstance(offset, int) or not 0 <= offset <= total:
            raise ValueError(f"offset {offset!r} is outside the partition's {total} bytes")
        with open(self._path(key), "rb") as source:
            source.seek(offset)
            data = source.read(min(self.chunk_bytes, total - offset))
        self.bytes_served += len(data)
        return {"status": "OK", "data": data, "total": total}

    def drop(self, keys: Any) -> dict[str, set[str]]:
        """Forget partitions; return the nodes that held each (to be told to forget them too)."""
        held: dict[str, set[str]] = {}
        for key in keys:
            if self.sizes.pop(key, None) is not None:
                self._path(key).unlink(missing_ok=True)
            held[key] = set(self.holders.get(key, set()))
            for node in held[key]:
                self.forget(node, key)
            self.holders.pop(key, None)
        return held

    # --- holders --------------------------------------------------------------------------------
    def grant(self, node: str, key: str) -> str:
        """Let ``node`` hold (and read) ``key``; its token (the same one each time)."""
        token = self._tokens.get((node, key))
        if token is None:
            token = self._tokens[(node, key)] = secrets.token_hex(16)
            self.grants[token] = (node, key)
        self.holders.setdefault(key, set()).add(node)
        self.held.setdefault(node, set()).add(key)
        return token

    def grantee(self, token: Any) -> str | None:
        """The node ``token`` was given to (None: no such token)."""
        granted = self.grants.get(token) if isinstance(token, str) else None
        return granted[0] if granted else None

    def held_by(self, key: str) -> set[str]:
        return self.holders.get(key, set())

    def count_held(self, node: str) -> int:
        return len(self.held.get(node, ()))

    def forget(self, node: str, key: str) -> None:
        """``node`` no longer holds ``key`` (it could not fetch it, or said it lost it)."""
        self.holders.get(key, set()).discard(node)
        keys = self.held.get(node)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.held[node]
        self.grants.pop(self._tokens.pop((node, key), ""), None)

    def remove_node(self, node: str) -> list[str]:
        """A node left: its grants die. Returns the keys it held."""
        lost = sorted(self.held.get(node, ()))
        for key in lost:
            self.forget(node, key)
        return lost

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)



def plan_copies(
    keys: list[str], holders: dict[str, set[str]], nodes: list[str], replicas: int, load: dict[str, int]
) -> list[tuple[str, str]]:
    """Which dial-out node should fetch which partition: ``(node, key)`` pairs.

    A partition held (by open and dial-out nodes together) fewer than
    ``replicas`` times gets copies on the dial-out nodes among ``nodes``
    holding the fewest partitions; then a partition moves to the emptiest node
    where that lowers its fullest holder's count by more than one (a node that
    joins gets partitions, and with them work; the fullest holder forgets it
    once the new copy is fetched). Pure: ``load`` (node -> partitions held)
    and ``holders`` are updated with the plan.

    Runs every couple of seconds on the scheduler's event loop, so it costs
    O(keys x replicas x log nodes), not O(keys x nodes): the emptiest nodes
    come off a heap, skipping the few that hold the partition already.
    """
    plan: list[tuple[str, str]] = []
    if not nodes:
        return plan
    heap = [(load.get(n, 0), n) for n in nodes]
    heapq.heapify(heap)

    def emptiest(exclude: set[str]) -> str | None:
        skipped, found = [], None
        while heap:
            count, node = heapq.heappop(heap)
            if count != load.get(node, 0):
                continue  # a stale entry: the node's fresh one is in the heap too
            if node in exclude:
                skipped.append((count, node))
                continue
            found = node
            skipped.append((count, node))
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def take(node: str, key: str, held: set[str]) -> None:
        plan.append((node, key))
        held.add(node)
        load[node] = load.get(node, 0) + 1
        heapq.heappush(heap, (load[node], node))

    members = set(nodes)
    for key in keys:
        held = set(holders.get(key, set()))
        for _ in range(max(0, replicas - len(held))):
            node = emptiest(held)
            if node is None:
                break
            take(node, key, held)
        holders[key] = held
    for key in keys:
        held = holders[key]
        movable = held & members
        if not movable or len(held) < replicas:
            continue
        fullest = max(movable, key=lambda n: (load.get(n, 0), n))
        node = emptiest(held)
        if node is not None and load.get(node, 0) + 1 < load.get(fullest, 0):
            take(node, key, held)
            load[fullest] -= 1  # it forgets the partition once the new copy is fetched
            heapq.heappush(heap, (load[fullest], fullest))
    return plan
