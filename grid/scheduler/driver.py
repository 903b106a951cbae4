"""The round engine: runs a job's rounds on this region and, at home, across regions.

:class:`RegionRun` is the share of one job on one region: per round it sends
one graph of partition tasks to this region's nodes (data stays where it is,
parameters move), gathers the updates as code-free wire blobs, checks them
against the model's layout and reduces them in partition order on this
scheduler. :class:`JobDriver` runs at the job's home scheduler: it asks every
region for its regional aggregate (its own directly, others through their
``grid_region_round`` handler), combines them weighted by samples, records
the round and starts the next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from distributed import Future

from grid import wire
from grid.node.tasks import partition_update, sequential_step
from jobs.aggregate import get_aggregator, weighted_mean
from jobs.merge import MergeRule, state_rule
from jobs.spec import resolve_class

if TYPE_CHECKING:
    from grid.scheduler.datasets import Dataset
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.registry import JobRecord

logger = logging.getLogger("grid.driver")

#: how often one partition's update is re-issued after nodes sent garbage for it
MAX_REISSUES = 3

#: states larger than this are merged in a thread, off the scheduler's event loop
OFFLOAD_BYTES = 1 << 20


def _nbytes(states: list[dict]) -> int:
    return sum(getattr(v, "nbytes", 8) for s in states for v in s.values())


async def _maybe_offload(fn: Any, states: list[dict]) -> Any:
    if _nbytes(states) > OFFLOAD_BYTES:
        return await asyncio.get_running_loop().run_in_executor(None, fn)
    return fn()


#: per-update metrics that are counts or bookkeeping, not averaged
_NOT_AVERAGED = frozenset({"samples", "val_samples", "seconds", "compute_seconds", "partition", "updates"})


def combine_metrics(metrics: list[dict], weights: list[float]) -> dict[str, float]:
    """Sample-weighted means of per-update metrics, in the given (partition) order.

    Validation metrics (``val_*``, ``start_val_*``) are weighted by
    ``val_samples`` where the updates report it.
    """
    out: dict[str, float] = {}
    keys = [k for k in metrics[0] if k not in _NOT_AVERAGED] if metrics else []
    for key in keys:
        is_val = key.startswith(("val_", "start_val_"))
        ws = [(m.get("val_samples", 0.0) if is_val else w) for m, w in zip(metrics, weights)]
        total = float(sum(ws))
        if total > 0:
            out[key] = sum(float(m.get(key, 0.0)) * wi for m, wi in zip(metrics, ws)) / total
    if any("val_samples" in m for m in metrics):
        out["val_samples"] = float(sum(m.get("val_samples", 0.0) for m in metrics))
    return out


def should_stop(history: list[dict], stopping: dict | None) -> bool:
    """scikit-learn's rule, per round: stop after ``n_iter_no_change`` rounds whose
    ``metric`` did not fall below the best so far minus ``tol``."""
    if not stopping or stopping.get("tol") is None:
        return False
    metric, tol, patience = stopping.get("metric", "loss"), float(stopping["tol"]), int(stopping["n_iter_no_change"])
    values = [h[metric] for h in history if metric in h]
    if len(values) <= patience:
        return False
    best = min(values[:-patience])
    return all(v > best - tol for v in values[-patience:])


def merge_rule(request: dict, allowed: Any) -> MergeRule:
    return state_rule(resolve_class(request["estimator"]["class"], allowed))


class RegionRun:
    """One job's partitions on this region and the rounds run over them."""

    def __init__(self, plugin: "GridSchedulerPlugin", job_id: str, request: dict, dataset: "Dataset") -> None:
        self.plugin = plugin
        self.job_id = job_id
        self.request = request
        self.dataset = dataset
        self.rule = merge_rule(request, plugin.allowed_modules)
        self.aggregate = get_aggregator(request.get("aggregate", "mean"))
        self._futures: list[Future] = []
        self._parts: list[Future] | None = None  # made once: each Future costs a message
        self.layout: dict | None = None

    @property
    def n_partitions(self) -> int:
        return len(self.dataset.keys)

    async def run_round(self, round_no: int, state_blob: bytes | None) -> dict:
        """Run one round on this region; return the regional aggregate and metrics."""
        client = await self.plugin.get_client()
        if self._parts is None:
            self._parts = [Future(key, client) for key in self.dataset.keys]
        parts = self._parts
        lost = self.plugin.datasets.lost(self.dataset.name)
        if lost:
            raise RuntimeError(
                f"region {self.plugin.region!r} lost {len(lost)} partition(s) of job {self.job_id} "
                f"(every node holding them left); resubmit the job"
            )
        prefix = f"grid-{self.job_id}-r{round_no}"
        try:
            if self.request["mode"] == "sequential":
                future = None
                for part, index in zip(parts, self.dataset.indices):
                    future = client.submit(
                        sequential_step,
                        self.request,
                        state_blob if future is None else future,
                        part,
                        round_no,
                        index,
                        key=f"{prefix}-seq-p{index}",
                    )
                    self._futures.append(future)
                decoded = [await self._checked(client, future, None, None, round_no, state_blob)]
            else:
                futures = client.map(
                    partition_update,
                    [self.request] * len(parts),
                    [state_blob] * len(parts),
                    parts,
                    [round_no] * len(parts),
                    self.dataset.indices,
                    key=[f"{prefix}-p{i}" for i in self.dataset.indices],
                )
                self._futures.extend(futures)
                try:  # the fast path: one gather for the whole round
                    decoded = [self._decode(blob) for blob in await client.gather(futures)]
                except (TypeError, wire.WireError):
                    # someone sent garbage; a bulk gather fails as a whole, so check the
                    # updates one by one to blame the right node and re-issue its tasks
                    decoded = [
                        await self._checked(client, f, part, index, round_no, state_blob)
                        for f, part, index in zip(futures, parts, self.dataset.indices)
                    ]
        finally:
            self.release()
        previous = wire.decode(state_blob)[0] if state_blob is not None else None
        return await self._reduce(list(decoded), previous)

    def _decode(self, blob: Any) -> tuple[dict, dict]:
        """Check one node update: wire format, size, and the model's layout."""
        arrays, meta = wire.decode(blob, max_bytes=self.plugin.max_update_bytes)
        if self.layout is None:
            self.layout = wire.layout(arrays)
        wire.check_shapes(arrays, self.layout, variable=self.rule.variable_shape)
        return arrays, meta

    async def _checked(
        self, client: Any, future: Future, part: Any, index: int | None, round_no: int, state_blob: bytes | None
    ) -> tuple[dict, dict]:
        """The decoded update of one task; a node that sent garbage is quarantined and the task re-issued.

        A task that *fails* (the node reports an exception) fails the job with
        the node's message: that is not a protocol violation, and an honest
        node would fail the same way.
        """
        for attempt in range(MAX_REISSUES + 1):
            try:
                return self._decode(await future)
            except asyncio.CancelledError:
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                    raise  # the job itself is being cancelled
                # the result was lost with a node (e.g. one just quarantined): compute it again
                if part is None or attempt == MAX_REISSUES:
                    raise
                future = self._reissue(client, future, part, round_no, index, state_blob, attempt)
            except (TypeError, wire.WireError) as exc:  # undecodable or not a grid update
                worker = self.plugin.result_worker(future.key)
                # never quarantine the last node of a region: a fault everyone shares is ours, not theirs
                last_node = len(self.plugin.scheduler.workers) <= 1
                if worker is None or part is None or attempt == MAX_REISSUES or last_node:
                    raise RuntimeError(
                        f"job {self.job_id}: an update for partition {index} in round {round_no} was rejected "
                        f"({exc}) and could not be re-issued"
                    ) from None
                self.plugin.verification_rejects += 1
                self.plugin.rejected[worker] = self.plugin.rejected.get(worker, 0) + 1
                await self.plugin.quarantine.add(
                    worker,
                    reason=f"sent an invalid update ({type(exc).__name__}: {exc})",
                    evidence={"job": self.job_id, "round": round_no, "partition": index, "task": str(future.key)},
                )
                future = self._reissue(client, future, part, round_no, index, state_blob, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _reissue(
        self, client: Any, future: Future, part: Any, round_no: int, index: int | None, state_blob: bytes | None, attempt: int
    ) -> Future:
        """Run one partition's update again under a new key (deterministic: same result)."""
        new = client.submit(
            partition_update, self.request, state_blob, part, round_no, index, key=f"{future.key}-reissue{attempt + 1}"
        )
        self._futures.append(new)
        return new

    async def _reduce(self, decoded: list[tuple[dict, dict]], previous: dict | None) -> dict:
        states = [d[0] for d in decoded]
        metas = [d[1] for d in decoded]
        if self.request["mode"] == "sequential":
            meta = metas[0]
            n = meta["samples"] or 1.0
            merged = states[0]
            metrics = {
                "samples": meta["samples"],
                "loss": meta["loss_sum"] / n,
                "score": meta["score_sum"] / n,
                "compute_seconds": meta["seconds"],
            }
        else:
            weights = [m["samples"] for m in metas]
            merged = await _maybe_offload(
                lambda: self.rule.merge(states, weights, self.aggregate, previous=previous), states
            )
            metrics = combine_metrics(metas, weights)
            metrics["samples"] = float(sum(weights))
            metrics["compute_seconds"] = max(m["seconds"] for m in metas)
        metrics["updates"] = len(decoded)
        return {"state": merged, "weight": metrics["samples"], "metrics": metrics}

    def release(self) -> None:
        """Forget this round's task futures so the scheduler frees their results."""
        futures, self._futures = self._futures, []
        self.plugin.forget_results([f.key for f in futures])
        for f in futures:
            f.release()

    def close(self) -> None:
        """Release everything this run holds (round results and partition handles)."""
        self.release()
        parts, self._parts = self._parts or [], None
        for f in parts:
            f.release()


class JobDriver:
    """Runs one job's rounds from its home scheduler."""

    def __init__(self, plugin: "GridSchedulerPlugin", record: "JobRecord") -> None:
        self.plugin = plugin
        self.record = record
        self.request = record.request
        self.rule = merge_rule(self.request, plugin.allowed_modules)

    async def run(self) -> None:
        record = self.record
        record.status = "running"
        record.started = time.time()
        previous_state: dict | None = None
        init = self.request.get("init_state")
        if init:  # warm start: round 0 starts from the given state
            previous_state = {k: np.asarray(v, dtype=np.float64) for k, v in init.items()}
        state_blob: bytes | None = wire.encode(previous_state) if previous_state else None
        try:
            await self._attach_remote()
            for round_no in range(record.rounds_done, record.rounds):
                started = time.perf_counter()
                if self.request["mode"] == "sequential":
                    results, crossed = await self._sequential_round(round_no, state_blob)
                else:
                    results, crossed = await self._parallel_round(round_no, state_blob)
                states = [r["state"] for r in results]
                weights = [r["weight"] for r in results]
                if self.request["mode"] == "sequential":
                    state = states[-1]
                else:
                    state = await _maybe_offload(
                        lambda: self.rule.merge(states, weights, weighted_mean, previous=previous_state), states
                    )
                    state = self.rule.server_update(previous_state, state, self.request, round_no)
                previous_state = state
                state_blob = wire.encode(state)
                total = float(sum(weights))
                record.history.append(
                    {
                        "round": round_no + 1,
                        "samples": total,
                        **combine_metrics([r["metrics"] for r in results], weights),
                        "seconds": time.perf_counter() - started,
                        "compute_seconds": max(r["metrics"]["compute_seconds"] for r in results),
                        "updates": sum(r["metrics"]["updates"] for r in results),
                        "regions": len(results),
                        "bytes_cross_region": crossed,
                        "time": time.time(),
                    }
                )
                record.rounds_done = round_no + 1
                record.result = state_blob
                if should_stop(record.history, self.request.get("stopping")):
                    record.history[-1]["stopped_early"] = True
                    break
            record.status = "done"
        except asyncio.CancelledError:
            record.status = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
            logger.exception("job %s failed", record.id)
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            record.finished = time.time()
            await self.plugin.finish_job(record)

    # --- one round -------------------------------------------------------------------
    def _regions(self) -> list[tuple[str, dict]]:
        return list(self.record.placement.items())

    async def _region_round(self, region: str, where: dict, round_no: int, blob: bytes | None) -> tuple[dict, int]:
        if region == self.plugin.region:
            return await self.plugin.runs[self.record.id].run_round(round_no, blob), 0
        reply = await self.plugin.scheduler.rpc(where["address"]).grid_region_round(
            job_id=self.record.id, round_no=round_no, state=blob
        )
        if reply.get("status") != "OK":
            raise RuntimeError(f"region {region!r}: {reply.get('message')}")
        arrays, _ = wire.decode(reply["state"], max_bytes=self.plugin.max_update_bytes)
        crossed = len(reply["state"]) + (len(blob) if blob else 0)
        return {"state": arrays, "weight": reply["weight"], "metrics": reply["metrics"]}, crossed

    async def _parallel_round(self, round_no: int, blob: bytes | None) -> tuple[list[dict], int]:
        replies = await asyncio.gather(
            *[self._region_round(r, where, round_no, blob) for r, where in self._regions()]
        )
        return [r for r, _ in replies], sum(c for _, c in replies)

    async def _sequential_round(self, round_no: int, blob: bytes | None) -> tuple[list[dict], int]:
        results, crossed = [], 0
        for region, where in self._regions():
            result, c = await self._region_round(region, where, round_no, blob)
            blob = wire.encode(result["state"])
            results.append(result)
            crossed += c
        return results, crossed

    # --- remote regions ------------------------------------------------------------
    async def _attach_remote(self) -> None:
        for region, where in self._regions():
            if region == self.plugin.region:
                continue
            reply = await self.plugin.scheduler.rpc(where["address"]).grid_attach(
                job_id=self.record.id, request=self.request, dataset=where["dataset"], home=self.plugin.region
            )
            if reply.get("status") != "OK":
                raise RuntimeError(f"region {region!r} refused the job: {reply.get('message')}")

    async def detach_remote(self) -> None:
        for region, where in self._regions():
            if region == self.plugin.region:
                continue
            try:
                await self.plugin.scheduler.rpc(where["address"]).grid_detach(
                    job_id=self.record.id, drop_dataset=bool(where.get("job_owned"))
                )
            except Exception as exc:  # noqa: BLE001 - a region that is gone has nothing to free
                logger.warning("job %s: could not detach region %s: %s", self.record.id, region, exc)
