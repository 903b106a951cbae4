"""Dial-out nodes on an in-process TLS grid: nobody dials them, and they cannot reach past their grants.

The nodes here advertise an address nothing listens on (``contact_address``),
so any attempt to dial one fails at once: a job that finishes with the right
model was served entirely over connections the nodes opened. Then the attacks:
a node reading a partition it was not given (the oracle: a victim's secret
rows), a node answering another node's call, and a pickle in a node's answer
(the oracle: a marker file its unpickling would write).
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
from distributed.core import rpc
from distributed.protocol.serialize import ToPickle
from distributed.utils_test import gen_cluster
from sklearn.datasets import make_classification

from grid import Grid
from grid.protocol.nodes import REPLY_OP
from grid.scheduler.channels import NodeChannels
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


@gen_cluster(client=False, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)])
async def test_an_answer_counts_only_on_the_stream_of_the_node_asked(s, a, b) -> None:
    channels = NodeChannels(s)
    channels.install()
    # a and b take calls but answer only when the test says so
    for w in (a, b):
        w.stream_handlers["grid-call"] = lambda **msg: None
    to_a = asyncio.ensure_future(channels.call(a.address, "update", parts=[]))
    to_b = asyncio.ensure_future(channels.call(b.address, "update", parts=[]))
    wait_until = asyncio.get_running_loop().time() + 10
    while len(channels.pending) < 2:
        assert asyncio.get_running_loop().time() < wait_until
        await asyncio.sleep(0.01)
    (a_call,) = [c for c, (w, _) in channels.pending.items() if w == a.address]
    (b_call,) = [c for c, (w, _) in channels.pending.items() if w == b.address]
    # b forges a's answer, then answers its own call on the same (ordered) stream
    b.batched_stream.send({"op": REPLY_OP, "call": a_call, "reply": {"status": "OK", "forged": True}})
    b.batched_stream.send({"op": REPLY_OP, "call": b_call, "reply": {"status": "OK", "from": "b"}})
    assert (await asyncio.wait_for(to_b, 10)) == {"status": "OK", "from": "b"}
    assert not to_a.done()  # the forged answer was read before b's own, and ignored
    a.batched_stream.send({"op": REPLY_OP, "call": a_call, "reply": {"status": "OK", "from": "a"}})
    assert (await asyncio.wait_for(to_a, 10)) == {"status": "OK", "from": "a"}
    channels.uninstall()


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("unpickled")


class WritesMarker:
    """Unpickling this writes ``path``: the oracle of code run where a node's answer is read."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def test_a_pickle_in_a_dial_out_answer_never_runs(dial_out_grid, tmp_path) -> None:
    marker = str(tmp_path / "marker")
    worker = dial_out_grid.workers["vol-b"]
    plugin = dial_out_grid.plugin

    def send() -> None:
        worker.batched_stream.send({"op": REPLY_OP, "call": 1, "reply": {"blob": ToPickle(WritesMarker(marker))}})

    dial_out_grid.cluster.loop.add_callback(send)
    wait_for(lambda: "vol-b" in plugin.ledger.quarantine.records, timeout=30, what="vol-b quarantined")
    assert not os.path.exists(marker)
    assert "pickled" in plugin.ledger.quarantine.records["vol-b"].reason
