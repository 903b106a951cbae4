"""The round engine: runs a job's rounds on this region and, at home, across regions.

:class:`RegionRun` is the share of one job on one region: per round it asks
this region's nodes for their partitions' updates (one request per node, see
``grid/scheduler/attempts.py``; data stays where it is, parameters move),
takes the updates as code-free wire blobs, checks them
against the model's layout and reduces them in partition order on this
scheduler. :class:`JobDriver` runs at the job's home scheduler: it asks every
region for its regional aggregate (its own directly, others through their
``grid_region_round`` handler), combines them weighted by samples, records
the round and starts the next.

With ``verify="adaptive"`` some updates are accepted unchecked. Every round
records which nodes (per region) contributed such updates, and the driver
keeps the state each round started from. When a node is caught (quarantined)
while the job runs, every round from the first one it contributed an
unchecked update to is replayed from the state before it; updates are
deterministic, so the replayed rounds give what a fully verified run gives.
A node caught after the job ended taints the job instead
(``JobsExtension.taint_if_caught``, ``grid/scheduler/job_handlers.py``).

One idea, hence the length: how a job's rounds run, from a region's share
to the job's home; what a round decides is ``round_policy.py``'s, one
round on one region ``attempts.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dask.utils import parse_timedelta
from distributed import Future

from grid import config, wire
from grid.node.tasks import sequential_step
from grid.scheduler import recovery
from grid.scheduler.attempts import RoundAttempts
from grid.scheduler.round_policy import late_after
from grid.protocol.requests import ADAPTIVE
from jobs.aggregate import get_aggregator, weighted_mean
from jobs.merge import MergeRule, state_rule
from jobs.spec import resolve_class

if TYPE_CHECKING:
    from grid.scheduler.datasets import Dataset
    from grid.scheduler.plugin import GridSchedulerPlugin
    from grid.scheduler.registry import JobRecord

logger = logging.getLogger("grid.driver")

#: states larger than this are merged in a thread, off the scheduler's event loop
OFFLOAD_BYTES = 1 << 20


def _nbytes(states: list[dict]) -> int:
    return sum(getattr(v, "nbytes", 8) for s in states for v in s.values())


async def _maybe_offload(fn: Any, states: list[dict]) -> Any:
    if _nbytes(states) > OFFLOAD_BYTES:
        return await asyncio.get_running_loop().run_in_executor(None, fn)
    return fn()


#: per-round counts of what the round engine did about churn, stragglers and verification (summed)
#: (``requests``: round requests sent to nodes; ``tasks``: updates run as Dask tasks)
ROUND_COUNTS = ("reissued", "speculative", "replicas", "quarantined", "requests", "tasks")

#: per-update metrics that are counts or bookkeeping, not averaged
_NOT_AVERAGED = frozenset({
    "samples", "val_samples", "seconds", "compute_seconds", "partition", "updates", *ROUND_COUNTS,
    "unverified", "unverified_nodes", "caught",  # verify="adaptive": who went unchecked, who was caught
})


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
        self._client: Any = None
        self._current: asyncio.Task | None = None
        self.layout: dict | None = None
        #: seconds from the start of the last round to each partition's accepted update (straggler deadlines)
        self.last_round_seconds: list[float] = []
        #: verify="adaptive": node identities with an update accepted unchecked in any round of this run
        self.unverified_ever: set[str] = set()
        #: ... and those of them already reported caught to the job driver
        self.reported_caught: set[str] = set()

    @property
    def n_partitions(self) -> int:
        return len(self.dataset.keys)

    @property
    def parts(self) -> list[Future]:
        """Handles of the dataset's partitions, made once (each Future costs a message)."""
        if self._parts is None:
            self._parts = [Future(key, self._client) for key in self.dataset.keys]
        return self._parts

    async def run_round(self, round_no: int, state_blob: bytes | None) -> dict:
        """Run one round on this region; return the regional aggregate and metrics.

        A round still running here (its region was skipped by the home
        scheduler's partial participation) is cancelled first.
        """
        previous = self._current
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        # the round runs as its own task: the caller's task may be a pooled comm's handler that outlives it
        self._current = asyncio.ensure_future(self._round(round_no, state_blob))
        try:
            return await self._current
        except asyncio.CancelledError:
            self._current.cancel()
            raise

    async def _round(self, round_no: int, state_blob: bytes | None) -> dict:
        self._client = await self.plugin.get_client()
        self._check_not_lost()
        try:
            if self.request["mode"] == "sequential":
                decoded, counts = [await self._sequential(round_no, state_blob)], {}
            else:
                decoded, counts = await RoundAttempts(self, self._client, round_no, state_blob).run_round()
        except Exception:
            self._check_not_lost()  # a partition lost mid-round: say so, not which task noticed it
            raise
        previous_state = wire.decode(state_blob)[0] if state_blob is not None else None
        result = await self._reduce(list(decoded), previous_state)
        if "unverified_nodes" in counts:
            counts["caught"] = self._newly_caught(counts)
        result["metrics"].update(counts)
        return result

    def _newly_caught(self, counts: dict) -> list[str]:
        """verify="adaptive": nodes caught in this round, and earlier unchecked contributors of this
        job quarantined since (by any job's check), each reported to the driver once."""
        self.unverified_ever.update(counts["unverified_nodes"])
        caught = set(counts.get("caught") or ()) | {n for n in self.unverified_ever if n in self.plugin.ledger.quarantine}
        new = sorted(caught - self.reported_caught)
        self.reported_caught.update(new)
        return new

    def _check_not_lost(self) -> None:
        lost = self.plugin.datasets.store.lost(self.dataset.name)
        if lost:
            raise RuntimeError(
                f"region {self.plugin.region!r} lost {len(lost)} partition(s) of job {self.job_id} "
                f"(every node holding them left); resubmit the job"
            )

    async def _sequential(self, round_no: int, state_blob: bytes | None) -> tuple[dict, dict]:
        """The state moves node to node in partition order; one chain per round."""
        prefix = f"grid-{self.job_id}-r{round_no}"
        future = None
        try:
            for part, index in zip(self.parts, self.dataset.indices):
                future = self._client.submit(
                    sequential_step,
                    self.request,
                    state_blob if future is None else future,
                    part,
                    round_no,
                    index,
                    key=f"{prefix}-seq-p{index}",
                )
                self._futures.append(future)
            try:
                return self.decode(await future)
            except (TypeError, wire.WireError) as exc:
                raise RuntimeError(
                    f"job {self.job_id}: the sequential update of round {round_no} was rejected ({exc})"
                ) from None
        finally:
            self.release()

    def decode(self, blob: Any) -> tuple[dict, dict]:
        """Check one node update: wire format, size, and the model's layout."""
        arrays, meta = wire.decode(blob, max_bytes=self.plugin.max_update_bytes)
        if self.layout is None:
            self.layout = wire.layout(arrays)
        wire.check_shapes(arrays, self.layout, variable=self.rule.variable_shape)
        return arrays, meta

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
        self.plugin.ledger.release_futures(futures)

    def close(self) -> None:
        """Release everything this run holds (round results and partition handles)."""
        self.release()
        parts, self._parts = self._parts or [], None
        for f in parts:
            f.release()


class JobDriver:
    """Runs one job's rounds from its home scheduler."""

    def __init__(self, plugin: "GridSchedulerPlugin", record: "JobRecord", resume: bytes | None = None) -> None:
        self.plugin = plugin
        self.record = record
        self.request = record.request
        self.rule = merge_rule(self.request, plugin.allowed_modules)
        #: the checkpointed state to continue from after a scheduler restart (rounds_done is the record's)
        self.resume = resume
        #: what the last round adds to the history (region weights, skipped regions)
        self.round_extra: dict[str, Any] = {}
        #: recent regional round times (seconds), for the partial-participation deadline
        self.region_seconds: list[float] = []
        #: verify="adaptive": round number -> the state blob it started from, to replay from there
        self.before: dict[int, bytes | None] = {}

    async def run(self) -> None:
        record = self.record
        record.status = "running"
        record.started = record.started or time.time()  # a resumed job keeps its first start
        recovery.save_record(self.plugin, record)
        previous_state: dict | None = None
        init = self.request.get("init_state")
        if init:  # warm start: round 0 starts from the given state
            previous_state = {k: np.asarray(v, dtype=np.float64) for k, v in init.items()}
        state_blob: bytes | None = wire.encode(previous_state) if previous_state else None
        if self.resume is not None:  # the exact bytes of the last checkpoint: the nodes see what they would have
            state_blob = self.resume
            previous_state = wire.decode(state_blob)[0]
        try:
            await self._attach_remote()
            round_no = record.rounds_done
            replay: dict[str, Any] = {}  # what the next history entry says about a rollback
            while round_no < record.rounds:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # a cancel (of the job, or of every job as the scheduler stops) that a
                    # round swallowed (Python 3.11's asyncio.wait_for can) still ends the job here
                    raise asyncio.CancelledError
                started = time.perf_counter()
                if self.request.get("verify") == ADAPTIVE:
                    self.before[round_no] = state_blob  # states are small: one blob per round
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
                        **{k: sum(int(r["metrics"].get(k, 0)) for r in results) for k in ROUND_COUNTS},
                        "regions": len(results),
                        "bytes_cross_region": crossed,
                        **self.round_extra,
                        **_unverified(results),
                        **replay,
                        "time": time.time(),
                    }
                )
                replay = {}
                record.rounds_done = round_no + 1
                record.result = state_blob
                caught = _caught(results)
                first = first_round_of(record.history, caught)
                if first is not None and first in self.before:
                    # a node caught now had updates accepted unchecked from round `first` on: replay from there
                    replay = {"replayed_from": first + 1, "caught": caught}
                    logger.warning(
                        "job %s: node(s) %s caught in round %d had updates accepted unchecked from round %d on; "
                        "replaying from there", record.id, caught, round_no + 1, first + 1,
                    )
                    state_blob = self.before[first]
                    previous_state = wire.decode(state_blob)[0] if state_blob is not None else None
                    del record.history[first:]
                    record.rounds_done = round_no = first
                    record.result = state_blob
                    await self._checkpoint_rollback(state_blob)
                    continue
                if first is not None:  # before a restart of this scheduler: its states are gone
                    record.tainted = record.tainted or taint_entry(record, caught, {"reason": "caught while the job ran, "
                                                                   "in rounds from before a scheduler restart"})
                if should_stop(record.history, self.request.get("stopping")):
                    record.history[-1]["stopped_early"] = True
                    break
                await recovery.checkpoint(self.plugin, record, state_blob)  # a restart resumes after this round
                round_no += 1
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
            await self.plugin.jobs.finish_job(record)

    async def _checkpoint_rollback(self, state_blob: bytes | None) -> None:
        """After a rollback, a restart must resume from the restored state, not a later one."""
        if state_blob is not None:
            await recovery.checkpoint(self.plugin, self.record, state_blob)
        elif self.plugin.state is not None:  # back to round 0: no checkpoint at all
            self.plugin.state.remove_checkpoint(self.record.id)

    # --- one round -------------------------------------------------------------------
    def _regions(self) -> list[tuple[str, dict]]:
        return list(self.record.placement.items())

    async def _region_round(self, region: str, where: dict, round_no: int, blob: bytes | None) -> tuple[dict, int]:
        if region == self.plugin.region:
            return await self.plugin.region_share.runs[self.record.id].run_round(round_no, blob), 0
        reply = await self.plugin.scheduler.rpc(where["address"]).grid_region_round(
            job_id=self.record.id, round_no=round_no, state=blob
        )
        if reply.get("status") != "OK":
            raise RuntimeError(f"region {region!r}: {reply.get('message')}")
        arrays, _ = wire.decode(reply["state"], max_bytes=self.plugin.max_update_bytes)
        crossed = len(reply["state"]) + (len(blob) if blob else 0)
        return {"state": arrays, "weight": reply["weight"], "metrics": reply["metrics"]}, crossed

    async def _parallel_round(self, round_no: int, blob: bytes | None) -> tuple[list[dict], int]:
        calls = {
            region: asyncio.ensure_future(self._region_round(region, where, round_no, blob))
            for region, where in self._regions()
        }
        try:
            skipped = await self._wait_regions(calls) if self.request.get("partial_participation") else []
            replies = {region: await call for region, call in calls.items() if region not in skipped}
        finally:
            for call in calls.values():  # one region failed (or the job was cancelled): stop the others
                call.cancel()
        self.round_extra = {
            "region_weights": {region: reply["weight"] for region, (reply, _) in replies.items()},
            **({"skipped_regions": skipped} if skipped else {}),
        }
        for region, (reply, _) in replies.items():
            reply["region"] = region  # whose nodes went unchecked (verify="adaptive")
        return [r for r, _ in replies.values()], sum(c for _, c in replies.values())

    async def _wait_regions(self, calls: dict[str, asyncio.Future]) -> list[str]:
        """Partial participation: wait for the regions until the round's deadline; return the skipped ones.

        The deadline is ``grid.scheduler.partial-participation.multiplier``
        times the median of the regions' past round times (in the first
        round: the time of the first region to finish), and never less than
        its ``minimum``. At least one region always takes part. A skipped
        region's round is cancelled; its next round starts from the new
        global state.
        """
        settings = config.get("scheduler.partial-participation")
        multiplier = float(settings["multiplier"])
        minimum = float(parse_timedelta(settings["minimum"]))
        started = time.monotonic()
        finished: list[float] = []  # seconds into the round at which each region answered
        for call in calls.values():
            call.add_done_callback(lambda _: finished.append(time.monotonic() - started))
        pending = set(calls.values())
        while pending:
            past = self.region_seconds or finished[:1]
            deadline = late_after(statistics.median(past), multiplier, minimum) if past else None
            timeout = None if deadline is None else max(0.0, deadline - (time.monotonic() - started))
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break  # the deadline passed
        self.region_seconds = (self.region_seconds + finished)[-20:]  # recent rounds only
        skipped = [region for region, call in calls.items() if call in pending]
        for region in skipped:
            calls[region].cancel()
            logger.info("job %s: region %s missed the round deadline and is skipped this round", self.record.id, region)
        await asyncio.gather(*(calls[r] for r in skipped), return_exceptions=True)
        return skipped

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
                job_id=self.record.id, request=self.request, dataset=where["dataset"], home=self.plugin.region,
                owner=self.record.owner,  # the other region trains only on the submitter's own data
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


def _unverified(results: list[dict]) -> dict[str, Any]:
    """verify="adaptive": how many updates of a round went unchecked and whose, by region (nothing otherwise)."""
    if not any("unverified" in r["metrics"] for r in results):
        return {}
    nodes = {r["region"]: list(r["metrics"]["unverified_nodes"]) for r in results
             if r.get("region") and r["metrics"].get("unverified_nodes")}
    return {"unverified": sum(int(r["metrics"].get("unverified", 0)) for r in results),
            **({"unverified_nodes": nodes} if nodes else {})}


def _caught(results: list[dict]) -> dict[str, list[str]]:
    """Region -> node identities caught and reported by that region in this round."""
    return {r["region"]: list(r["metrics"]["caught"]) for r in results if r.get("region") and r["metrics"].get("caught")}


def first_round_of(history: list[dict], caught: dict[str, list[str]]) -> int | None:
    """The first round (0-based) whose accepted updates include an unchecked one of a caught node."""
    if not caught:
        return None
    for i, entry in enumerate(history):
        unverified = entry.get("unverified_nodes") or {}
        if any(set(unverified.get(region, ())) & set(nodes) for region, nodes in caught.items()):
            return int(entry.get("round", i + 1)) - 1
    return None


def rounds_of(history: list[dict], region: str, node: str) -> list[int]:
    """The rounds (1-based, as the history numbers them) in which ``node`` of ``region`` went unchecked."""
    return [int(e.get("round", i + 1)) for i, e in enumerate(history)
            if node in (e.get("unverified_nodes") or {}).get(region, ())]


def taint_entry(record: "JobRecord", caught: dict[str, list[str]], evidence: dict) -> dict | None:
    """What a job's ``tainted`` says: the first caught node that went unchecked in it, its rounds, the evidence."""
    for region, nodes in caught.items():
        for node in nodes:
            rounds = rounds_of(record.history, region, node)
            if rounds:
                return {"node": node, "region": region, "rounds": rounds, "evidence": evidence}
    return None
