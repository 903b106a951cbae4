"""Dial-out nodes on an in-process TLS grid: nobody dials them, and they cannot reach past their grants.

The nodes here advertise an address nothing listens on (``contact_address``),
so any attempt to dial one fails at once: a job that finishes with the right
model was served entirely over connections the nodes opened. Then the attacks:
a node reading a partition it was not given (the oracle: a victim's secret
rows), a node answering another node's call, a peer opening a node's grid
channel with a guessed, borrowed or stolen token (it would receive that
node's calls, each carrying a job's state), and a pickle in a node's answer
(the oracle: a marker file its unpickling would write).
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from distributed.comm import connect
from distributed.comm.core import CommClosedError
from distributed.core import rpc
from distributed.protocol.serialize import ToPickle
from distributed.utils_test import async_poll_for, gen_cluster
from sklearn.datasets import make_classification

from grid import Grid
from grid.node.rounds import PLUGIN_NAME
from grid.protocol.nodes import CALL_OP, CHANNEL_OFFER_OP, CHANNEL_OP, REPLY_OP
from grid.scheduler.channels import NodeChannels, NodeLeft
from grid.security.certs import issue
from tests.conftest import wait_for
from tests.integration.dial_out import SECRET, job as _job

def test_jobs_finish_on_nodes_nobody_can_dial(dial_out_grid) -> None:
    X, y = make_classification(n_samples=4000, n_features=8, random_state=0)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as open_grid:
        clean = open_grid.submit(_job(), X, y).result(timeout=60).estimator_.coef_
        placed = open_grid.scatter(X, y)
        clean_placed = open_grid.submit(_job(), placed).result(timeout=60).estimator_.coef_
    g, plugin = dial_out_grid.g, dial_out_grid.plugin
    assert {plugin.dial_out.reach.kind(w) for w in plugin.scheduler.workers} == {"dial-out"}
    in_memory = g.submit(_job(), X, y).result(timeout=60).estimator_.coef_
    data = g.scatter(X, y)
    scattered = g.submit(_job(), data).result(timeout=60).estimator_.coef_
    job = g.submit(_job(), data, verify=2)
    verified = job.result(timeout=60).estimator_.coef_
    np.testing.assert_allclose(in_memory, clean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scattered, clean_placed, rtol=0, atol=1e-9)
    np.testing.assert_allclose(verified, clean_placed, rtol=0, atol=1e-9)
    assert all(h["requests"] > 0 and h["tasks"] == 0 for h in job.history)  # no Dask task, every update a call
    assert plugin.dial_out.channels.answered > 0


def test_files_with_verification_on_nodes_nobody_can_dial(dial_out_grid, tmp_path) -> None:
    """A second vote on a Files partition is computed by a node that reads the file itself."""
    from jobs.data import Files
    from tests.system.procs import write_npz_parts

    X, y = make_classification(n_samples=4000, n_features=8, random_state=1)
    pattern = write_npz_parts(str(tmp_path), X, y, 4)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as open_grid:
        clean = open_grid.submit(_job(), X, y).result(timeout=60).estimator_.coef_
    job = dial_out_grid.g.submit(_job(), Files(pattern), verify=2)
    np.testing.assert_allclose(job.result(timeout=60).estimator_.coef_, clean, rtol=0, atol=1e-9)
    assert all(h["tasks"] == 0 for h in job.history)  # every vote was a call on a node's own stream


def test_a_node_reads_only_the_partitions_it_was_given(dial_out_grid) -> None:
    g, plugin = dial_out_grid.g, dial_out_grid.plugin
    X = np.full((50, 4), SECRET)
    y = np.arange(50) % 2
    data = g.scatter(X, y, partition_rows=50)
    key = f"grid-part-{data.regions['eu']['dataset']}-0"
    wait_for(lambda: plugin.dial_out.store.held_by(key), timeout=30, what="the partition granted to a node")
    holder = sorted(plugin.dial_out.store.held_by(key))[0]
    name = plugin.access.node_name(holder)
    token = plugin.dial_out.store._tokens[(holder, key)]
    secret = np.float64(SECRET).tobytes()
    throwaway = dial_out_grid.throwaway
    mallory = issue(throwaway.ca, "node", "mallory", region="eu")

    async def read(cert, token: str) -> bytes | str:
        async with rpc(dial_out_grid.address, connection_args=cert.security().get_connection_args("worker")) as r:
            try:
                return (await r.grid_store_read(key=key, token=token, offset=0))["data"]
            except Exception as exc:  # noqa: BLE001 - the refusal is the point
                return f"{type(exc).__name__}: {exc}"

    holder_cert = dial_out_grid.certs[name]
    guessed = asyncio.run(read(mallory, "0" * 32))
    stolen = asyncio.run(read(mallory, token))  # a token handed on by its holder
    own = asyncio.run(read(holder_cert, token))
    assert isinstance(own, bytes) and secret in own  # the oracle sees the rows where they are allowed
    for refused in (guessed, stolen):
        assert isinstance(refused, str) and "a node reads only the partitions its scheduler gave it" in refused, refused
        assert secret.hex() not in refused


async def _offered_tokens(s, channels: NodeChannels, *workers) -> dict[str, str]:
    """Offer ``workers`` their channels; the tokens as each one's worker stream received it."""
    tokens: dict[str, str] = {}
    for w in workers:
        w.stream_handlers[CHANNEL_OFFER_OP] = lambda token, _w=w, **_: tokens.__setitem__(_w.address, token)
        channels.offer(w.address)
    await async_poll_for(lambda: len(tokens) == len(workers), timeout=10)
    return tokens


async def _open_channel(address: str, worker: str, token: str, **connection_args) -> tuple[object, object]:
    """Open a grid channel as a node would: the comm and the scheduler's answer to the opening."""
    comm = await connect(address, **connection_args)
    await comm.write({"op": CHANNEL_OP, "worker": worker, "token": token})
    return comm, await comm.read()


@gen_cluster(client=False, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_an_answer_counts_only_on_the_channel_of_the_node_asked(s, a, b) -> None:
    channels = NodeChannels(s)
    s.handlers[CHANNEL_OP] = channels.open
    tokens = await _offered_tokens(s, channels, a, b)
    comm_a, opened_a = await _open_channel(s.address, a.address, tokens[a.address])
    comm_b, opened_b = await _open_channel(s.address, b.address, tokens[b.address])
    assert opened_a == opened_b == "OK"
    to_a = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    to_b = asyncio.ensure_future(channels.call(b.address, "update", parts=[]))
    a_call, b_call = (await comm_a.read())["call"], (await comm_b.read())["call"]
    # b forges a's answer, then answers its own call on the same (ordered) channel
    await comm_b.write({"op": REPLY_OP, "call": a_call, "reply": {"status": "OK", "forged": True}})
    await comm_b.write({"op": REPLY_OP, "call": b_call, "reply": {"status": "OK", "from": "b"}})
    assert (await asyncio.wait_for(to_b, 10)) == {"status": "OK", "from": "b"}
    assert not to_a.done()  # the forged answer was read before b's own, and ignored
    await comm_a.write({"op": REPLY_OP, "call": a_call, "reply": {"status": "OK", "from": "a"}})
    assert (await asyncio.wait_for(to_a, 10)) == {"status": "OK", "from": "a"}
    channels.uninstall()
    for comm in (comm_a, comm_b):
        await comm.close()


@gen_cluster(client=False, nthreads=[("127.0.0.1", 1)])
async def test_a_call_waits_for_its_channel_and_fails_at_once_when_it_breaks(s, a) -> None:
    channels = NodeChannels(s, open_timeout=30)
    s.handlers[CHANNEL_OP] = channels.open
    tokens = await _offered_tokens(s, channels, a)
    early = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    comm, opened = await _open_channel(s.address, a.address, tokens[a.address])
    assert opened == "OK"
    call = await asyncio.wait_for(comm.read(), 10)  # the call made before the channel opened
    assert call["op"] == CALL_OP and call["kind"] == "update"
    await comm.write({"op": REPLY_OP, "call": call["call"], "reply": {"status": "OK"}})
    assert (await asyncio.wait_for(early, 10)) == {"status": "OK"}
    pending = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    await asyncio.wait_for(comm.read(), 10)
    comm.abort()  # the node's connection breaks before it answers
    with pytest.raises(NodeLeft, match="closed before it answered"):
        await asyncio.wait_for(pending, 10)
    assert not channels.is_open(a.address)
    channels.uninstall()


@gen_cluster(client=False, nthreads=[("127.0.0.1", 1)])
async def test_a_channel_opened_again_takes_over_and_the_calls_on_the_old_one_fail(s, a) -> None:
    """The node lost its connection before the scheduler noticed, and opened a new one."""
    channels = NodeChannels(s)
    s.handlers[CHANNEL_OP] = channels.open
    tokens = await _offered_tokens(s, channels, a)
    old, _ = await _open_channel(s.address, a.address, tokens[a.address])
    stranded = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    await asyncio.wait_for(old.read(), 10)  # sent on the old connection, never to be answered there
    new, opened = await _open_channel(s.address, a.address, tokens[a.address])
    assert opened == "OK"
    with pytest.raises(NodeLeft, match="opened its grid channel again"):
        await asyncio.wait_for(stranded, 10)
    answered = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    call = await asyncio.wait_for(new.read(), 10)
    await new.write({"op": REPLY_OP, "call": call["call"], "reply": {"status": "OK"}})
    assert (await asyncio.wait_for(answered, 10)) == {"status": "OK"}
    channels.uninstall()
    await new.close()


@gen_cluster(client=False, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_a_channel_opens_only_with_the_token_offered_to_that_node(s, a, b) -> None:
    """An impostor with a guessed token, or with b's own token for a's address, gets none of a's calls."""
    channels = NodeChannels(s, open_timeout=0.5)
    s.handlers[CHANNEL_OP] = channels.open
    tokens = await _offered_tokens(s, channels, a, b)
    guessed, refused_guess = await _open_channel(s.address, a.address, "0" * 43)
    borrowed, refused_borrow = await _open_channel(s.address, a.address, tokens[b.address])
    for refusal in (refused_guess, refused_borrow):
        assert isinstance(refusal, dict) and "no grid channel was offered" in str(refusal.get("exception_text")), refusal
    assert not channels.is_open(a.address)
    # nobody answers for a: its call fails (the round would issue it elsewhere), and no impostor saw it
    with pytest.raises(NodeLeft, match="did not open its grid channel"):
        await channels.call(a.address, "update", parts=[], secret=SECRET)
    for impostor in (guessed, borrowed):
        with pytest.raises((CommClosedError, asyncio.TimeoutError)):
            await asyncio.wait_for(impostor.read(), 0.5)
    # an address that was offered nothing opens nothing, whatever it presents
    _, refused_unknown = await _open_channel(s.address, "tcp://127.0.0.1:1", tokens[a.address])
    assert "no grid channel was offered" in str(refused_unknown.get("exception_text"))
    channels.uninstall()


def test_a_stolen_channel_token_opens_nothing_without_the_nodes_certificate(dial_out_grid) -> None:
    """mallory (a node certificate of the region, not registered) presents vol-a's own token."""
    grid, plugin = dial_out_grid, dial_out_grid.plugin
    victim = grid.workers["vol-a"].address
    channels = plugin.dial_out.channels
    token = channels.tokens[victim]
    before = channels.comms[victim][0]
    mallory = issue(grid.throwaway.ca, "node", "mallory", region="eu")

    async def attack() -> tuple[object, list]:
        comm, answer = await _open_channel(grid.address, victim, token, **mallory.security().get_connection_args("worker"))
        seen = []
        try:  # whatever the scheduler still writes to mallory (a call would carry a job's state)
            seen.append(await asyncio.wait_for(comm.read(), 1.0))
        except Exception:  # noqa: BLE001 - closed or silent: nothing reached mallory
            pass
        comm.abort()
        return answer, seen

    answer, seen = asyncio.run(attack())
    assert isinstance(answer, dict) and "that node's own certificate only" in str(answer.get("exception_text")), answer
    assert seen == []
    assert channels.comms[victim][0] is before  # vol-a's own channel still carries its calls
    X, y = make_classification(n_samples=2000, n_features=8, random_state=3)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as open_grid:
        clean = open_grid.submit(_job(), X, y).result(timeout=60).estimator_.coef_
    np.testing.assert_allclose(grid.g.submit(_job(), X, y).result(timeout=60).estimator_.coef_, clean, rtol=0, atol=1e-9)


def test_a_broken_channel_is_opened_again_and_its_calls_go_elsewhere(dial_out_grid) -> None:
    grid, plugin = dial_out_grid, dial_out_grid.plugin
    node = grid.workers["vol-a"].address
    channels = plugin.dial_out.channels
    broken = channels.comms[node][0]
    grid.cluster.loop.add_callback(broken.abort)
    wait_for(lambda: node in channels.comms and channels.comms[node][0] is not broken, timeout=30, what="vol-a's channel open again")
    X, y = make_classification(n_samples=2000, n_features=8, random_state=4)
    with Grid.local(regions={"eu": 2}, processes=False, dashboard=False) as open_grid:
        clean = open_grid.submit(_job(), X, y).result(timeout=60).estimator_.coef_
    job = grid.g.submit(_job(), X, y)
    np.testing.assert_allclose(job.result(timeout=60).estimator_.coef_, clean, rtol=0, atol=1e-9)
    assert all(h["tasks"] == 0 for h in job.history)  # every update was a call on a channel


def _node_channel(worker):
    """The grid channel ``worker`` opened, as the node holds it."""
    rounds = worker.plugins[PLUGIN_NAME]
    wait_for(lambda: rounds._channel is not None, timeout=30, what="the node's end of its grid channel")
    return rounds._channel


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("unpickled")


class WritesMarker:
    """Unpickling this writes ``path``: the oracle of code run where a node's answer is read."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


@pytest.mark.parametrize("connection", ["channel", "stream"])
def test_a_pickle_in_a_dial_out_answer_never_runs(dial_out_grid, tmp_path, connection) -> None:
    """Sent on the node's grid channel, where answers go, and on its worker stream, where they do not."""
    marker = str(tmp_path / "marker")
    worker = dial_out_grid.workers["vol-b"]
    plugin = dial_out_grid.plugin
    reply = {"op": REPLY_OP, "call": 1, "reply": {"blob": ToPickle(WritesMarker(marker))}}

    channel = _node_channel(worker)

    async def send() -> None:
        if connection == "channel":
            await channel.write(reply)
        else:
            worker.batched_stream.send(reply)

    dial_out_grid.cluster.loop.add_callback(send)
    wait_for(lambda: "vol-b" in plugin.ledger.quarantine.records, timeout=30, what="vol-b quarantined")
    assert not os.path.exists(marker)
    assert "pickled" in plugin.ledger.quarantine.records["vol-b"].reason


def test_a_channel_carries_answers_and_nothing_else(dial_out_grid) -> None:
    """A task report on the grid channel (it belongs on the worker stream, bound to the node's address)."""
    worker = dial_out_grid.workers["vol-b"]
    plugin = dial_out_grid.plugin

    channel = _node_channel(worker)

    async def send() -> None:
        await channel.write({"op": "task-finished", "key": "x", "worker": "tcp://1.2.3.4:5", "nbytes": 1})

    dial_out_grid.cluster.loop.add_callback(send)
    wait_for(lambda: "vol-b" in plugin.ledger.quarantine.records, timeout=30, what="vol-b quarantined")
    assert "may not send 'task-finished'" in plugin.ledger.quarantine.records["vol-b"].reason
