"""How a round's updates reach nodes and how their outcomes come back: node requests and tasks.

The round engine (:class:`~grid.scheduler.attempts.RoundAttempts`) decides
which node computes which update (:mod:`grid.scheduler.round_policy`);
:class:`RoundCalls` carries each decision to the node and puts every outcome,
in the order they arrive, on one queue the round reads:

* **Node requests.** The updates issued to one node between two flushes go
  in one ``grid_update`` request carrying the state once
  (``grid/node/rounds.py``): to an open node as an RPC, msgpack only; to a
  dial-out node as a call on the stream it opened, saying for each partition
  it lacks how to fetch it. Each update's outcome is what the answer says of
  its partition (:func:`~grid.scheduler.round_policy.read_reply`), or how the
  request failed.
* **Tasks.** An update no request can serve is a Dask task of
  :func:`grid.node.tasks.partition_update`; its result is fetched as soon as
  it is ready. Tasks no longer needed are cancelled; a node request is not
  cancelled on the node, its answer is simply not used.
* **Who sent garbage.** A client's fetch does not say which node a task
  result came from, so :meth:`RoundCalls.probe` asks each holder on its own,
  msgpack only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import Future
from distributed.protocol.serialize import Serialized, deserialize
from distributed.worker import get_data_from_worker

from grid import wire
from grid.node.tasks import partition_update
from grid.scheduler.round_policy import Attempt, Declined, NodeLost, PartitionRound, read_reply

if TYPE_CHECKING:
    from grid.scheduler.driver import RegionRun


class _NodeCallFailed(Exception):
    """A dial-out node answered a call with an error of its own (not an update)."""


@dataclass
class NodeCall:
    """One partition update asked of a node directly (a ``grid_update`` request, no task)."""

    key: str  # names the attempt in logs and evidence; no task has it
    worker: str
    outcome: asyncio.Future  # the wire blob, or an outcome of round_policy.read_reply (or NodeLost)


def _consume(task: asyncio.Future) -> None:
    """Retrieve a finished fetch's exception so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class RoundCalls:
    """The node requests and tasks of one round, and the queue their outcomes arrive on.

    Parameters
    ----------
    run : RegionRun
        The job's share of this region (request, dataset, plugin).
    client : distributed.Client
        The plugin's asynchronous client of this scheduler.
    round_no : int
    state_blob : bytes or None
        The global state the updates start from (grid wire format).
    counts : dict
        The round's counts; ``requests`` and ``tasks`` are counted here.
    direct : bool
        Whether updates go to nodes as requests (``grid.scheduler.round-engine: direct``) or all as tasks.
    """

    def __init__(
        self, run: "RegionRun", client: Any, round_no: int, state_blob: bytes | None, counts: dict, direct: bool
    ) -> None:
        self.run = run
        self.plugin = run.plugin
        self.dial_out = run.plugin.dial_out
        self.client = client
        self.round_no = round_no
        self.state_blob = state_blob
        self.counts = counts
        self.direct = direct
        #: (partition, attempt, outcome) of every attempt, as each outcome arrives
        self.queue: asyncio.Queue = asyncio.Queue()
        self.fetchers: list[asyncio.Task] = []
        self.futures: list[Future] = []
        self.to_cancel: list[Future | NodeCall] = []
        #: node requests of this round not sent yet: node -> [(partition, attempt)]; sent by flush
        self.batch: dict[str, list[tuple[PartitionRound, Attempt]]] = {}
        self.calls: list[asyncio.Task] = []

    # --- who can be reached, and how ------------------------------------------------------
    def holders(self, pr: PartitionRound) -> set[str]:
        """Nodes holding ``pr``'s data: in Dask's memory (open nodes), or granted it from the store (dial-out)."""
        return self.dial_out.partition_holders(self.run.dataset.keys[pr.position], running_only=False)

    def is_dial_out(self, worker: str | None) -> bool:
        return worker is not None and self.dial_out.reach.is_dial_out(worker)

    def fetches(self, pr: PartitionRound, worker: str) -> bool:
        """Whether dial-out node ``worker`` can get ``pr``'s data: from the region's store, or
        by reading its file (a Files dataset)."""
        return self.is_dial_out(worker) and self.dial_out.can_fetch(self.run.dataset.keys[pr.position])

    def task_nodes(self) -> list[str] | None:
        """Where a Dask task of this round may run (:meth:`DialOutNodes.open_nodes`): None is anywhere,
        an empty list nowhere."""
        return self.dial_out.open_nodes()

    def can_call(self, worker: str) -> bool:
        """Whether ``worker`` can be asked for updates by request now (running, reachable, with the handler)."""
        ws = self.plugin.scheduler.workers.get(worker)
        return (
            self.direct
            and ws is not None
            and ws.status.name == "running"
            and self.dial_out.reach.may_work(worker)
            and (self.is_dial_out(worker) or not self.plugin.ledger.lacks_rounds(worker))
        )

    # --- issuing ---------------------------------------------------------------------------
    def issue(self, pr: PartitionRound, worker: str | None, key: str, kind: str, task: bool = False) -> None:
        """Issue one update of ``pr``: a node request where ``worker`` holds the data (or, dial-out,
        can fetch it) and unless ``task``, else a task, pinned to ``worker`` if the scheduler can dial it."""
        if worker and self.can_call(worker) and (self.fetches(pr, worker) or (not task and worker in self.holders(pr))):
            self.request(pr, worker, key, kind)
            return
        if self.is_dial_out(worker):
            worker = None  # no task on a node the scheduler cannot dial: Dask places it on an open one
        nodes = [worker] if worker else self.task_nodes()
        if nodes == []:  # (distributed reads an empty list as "anywhere")
            raise RuntimeError(
                f"job {self.run.job_id}: no node of region {self.plugin.region!r} can run the update of partition "
                f"{pr.index}: no node holds or can fetch its data, and the scheduler cannot dial the others for a "
                "task's result; resubmit the job once open nodes have joined"
            )
        self.task(pr, worker, nodes, key, kind)

    def request(self, pr: PartitionRound, worker: str, key: str, kind: str) -> None:
        """Ask ``worker`` for ``pr``'s update in its next request (sent by :meth:`flush`)."""
        call = NodeCall(key, worker, asyncio.get_running_loop().create_future())
        attempt = Attempt(call, worker, time.monotonic(), kind)
        self.batch.setdefault(worker, []).append((pr, attempt))
        self._track(pr, attempt)

    def task(self, pr: PartitionRound, worker: str | None, nodes: list[str] | None, key: str, kind: str) -> None:
        """Submit ``pr``'s update as a task on ``nodes`` (None: anywhere), pinned to ``worker`` if given."""
        self.counts["tasks"] += 1
        future = self.client.submit(
            partition_update,
            self.run.request,
            self.state_blob,
            self.run.parts[pr.position],
            self.round_no,
            pr.index,
            key=key,
            workers=nodes,
            # a pinned task must run there: replicas of one update need distinct nodes
            allow_other_workers=False,
        )
        self._track(pr, Attempt(future, worker, time.monotonic(), kind))

    def map(self, partitions: list[PartitionRound], keys: list[str], nodes: list[str] | None) -> None:
        """Submit every partition's update as one graph (the ``tasks`` engine), placed by Dask next to the data."""
        parts = self.run.parts
        futures = self.client.map(
            partition_update,
            [self.run.request] * len(parts),
            [self.state_blob] * len(parts),
            parts,
            [self.round_no] * len(parts),
            self.run.dataset.indices,
            key=keys,
            workers=nodes,
        )
        for pr, future in zip(partitions, futures):
            self._track(pr, Attempt(future, None, time.monotonic(), "first"))
        self.counts["tasks"] += len(futures)

    def _track(self, pr: PartitionRound, attempt: Attempt) -> None:
        pr.attempts.append(attempt)
        if isinstance(attempt.future, NodeCall):
            self.fetchers.append(asyncio.create_task(self._await_call(pr, attempt)))
            return
        self.futures.append(attempt.future)
        self.fetchers.append(asyncio.create_task(self._fetch(pr, attempt)))

    def flush(self) -> None:
        """Send the node requests issued since the last flush: one per node."""
        batch, self.batch = self.batch, {}
        for worker, items in batch.items():
            self.counts["requests"] += 1
            self.calls.append(asyncio.create_task(self._call_node(worker, items)))

    # --- ending ----------------------------------------------------------------------------
    def drop(self, attempt: Attempt) -> None:
        """Take no outcome of ``attempt`` any more; its task is cancelled by the next :meth:`cancel`."""
        attempt.settled = True
        self.to_cancel.append(attempt.future)

    async def cancel(self) -> None:
        """Cancel the tasks no longer needed (their pending fetches then end too).

        A node request is not cancelled on the node: its answer, when it
        comes, is simply not used."""
        futures = [f for f in self.to_cancel if isinstance(f, Future)]
        self.to_cancel = []
        if futures:
            await self.client.cancel(futures, reason="grid: not needed any more")

    async def close(self, pending: list[Attempt]) -> None:
        """End the round: stop waiting for anything, cancel the ``pending`` attempts' tasks, release the rest."""
        for task in [*self.fetchers, *self.calls]:
            task.cancel()
        self.to_cancel.extend(a.future for a in pending)
        await self.cancel()
        futures, self.futures = self.futures, []
        self.plugin.ledger.release_futures(futures)

    # --- outcomes --------------------------------------------------------------------------
    async def _call_node(self, worker: str, items: list[tuple[PartitionRound, Attempt]]) -> None:
        """One ``grid_update`` request; settles each item's outcome future."""
        from grid.node.rounds import OP

        outcomes: dict[int, Any] = {}
        store = self.dial_out.store
        try:
            if self.is_dial_out(worker):
                # never dialed: the request goes on the grid channel the node opened, saying for each
                # partition how the node gets it if it does not hold it yet (it holds it from now on)
                keys = [self.run.dataset.keys[pr.position] for pr, _ in items]
                reply = await self.dial_out.channels.call(
                    worker,
                    "update",
                    request=self.run.request,
                    state=self.state_blob,
                    round_no=self.round_no,
                    parts=[[key, pr.index, self.dial_out.fetch_spec(worker, key)] for key, (pr, _) in zip(keys, items)],
                )
                if isinstance(reply, dict) and reply.get("status") == "error":
                    raise _NodeCallFailed(str(reply.get("message"))[:200])
                if isinstance(reply, dict):
                    for key, _ in reply.get("unfetched") or []:
                        store.forget(worker, str(key))  # it could not read it: no holder there
            else:
                reply = await getattr(self.plugin.scheduler.rpc(worker), OP)(
                    request=self.run.request,
                    state=self.state_blob,
                    round_no=self.round_no,
                    parts=[[self.run.dataset.keys[pr.position], pr.index] for pr, _ in items],
                    # node results are msgpack'd wire blobs; refuse anything that unpickles
                    serializers=["msgpack"],
                    deserializers=["msgpack"],
                )
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError) as exc:  # the node left, or the connection broke
            reply, default = None, NodeLost(exc)
        except _NodeCallFailed as exc:  # e.g. the store could not be read: another node tries
            reply, default = None, Declined(f"the node could not serve the request: {exc}")
        except TypeError as exc:
            # the request or its answer did not go through msgpack: run it as a task, whose
            # fetch finds out which node (if any) sends garbage (probe)
            reply, default = None, Declined(f"not msgpack: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. a node whose handler table refused the call
            reply, default = None, Declined(f"{type(exc).__name__}: {exc}")
        else:
            if reply is None:  # distributed answers None to an op it has no handler for: ask again later
                self.plugin.ledger.nodes_without_rounds[worker] = time.monotonic()
            outcomes, default = read_reply(worker, reply)
        for pr, attempt in items:
            assert isinstance(attempt.future, NodeCall)
            if not attempt.future.outcome.done():
                attempt.future.outcome.set_result(outcomes.get(pr.index, default))

    async def _await_call(self, pr: PartitionRound, attempt: Attempt) -> None:
        assert isinstance(attempt.future, NodeCall)
        outcome = await attempt.future.outcome
        self.queue.put_nowait((pr, attempt, outcome))

    async def _fetch(self, pr: PartitionRound, attempt: Attempt) -> None:
        # shielded: the client batches concurrent fetches into one shared request, and
        # cancelling one waiter (the round ending) must not cancel that request for the others
        fetch = asyncio.ensure_future(attempt.future.result())
        fetch.add_done_callback(_consume)
        try:
            outcome: Any = await asyncio.shield(fetch)
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the round itself is over; the fetch ends when its future is cancelled
            outcome = exc  # the future was cancelled or lost: a result to replace
        except Exception as exc:  # noqa: BLE001 - the round decides what a failure means
            outcome = exc
        self.queue.put_nowait((pr, attempt, outcome))

    async def probe(self, key: str) -> tuple[Any, str | None, str | None]:
        """Ask each node holding task result ``key`` for it, one at a time, accepting msgpack only.

        Returns the first valid update, the node that sent it, and the first
        node that sent garbage (each ``None`` if there was none). A node that
        left, is busy or no longer holds the key is no evidence either way.
        """
        ts = self.plugin.scheduler.tasks.get(key)
        holders = sorted(ws.address for ws in ts.who_has) if ts is not None and ts.who_has else []
        guilty = None
        for worker in holders:
            try:
                response = await get_data_from_worker(self.plugin.scheduler.rpc, [key], worker, deserializers=["msgpack"])
            except TypeError:  # its answer could not even be read as msgpack
                guilty = guilty or worker
                continue
            except (OSError, ValueError):
                continue  # the node left meanwhile, or answered nothing usable
            data = response.get("data") if response.get("status") == "OK" else None
            if not isinstance(data, dict) or key not in data:
                continue  # busy, or it no longer holds the key: no evidence either way
            blob = data[key]
            try:
                if isinstance(blob, Serialized):  # the scheduler's comms leave payloads serialized
                    blob = deserialize(blob.header, blob.frames, deserializers=["msgpack"])
                self.run.decode(blob)
            except (TypeError, wire.WireError):  # pickles, dask frames, or not a grid update
                guilty = guilty or worker
                continue
            return blob, worker, guilty
        return None, None, guilty
