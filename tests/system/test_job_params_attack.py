"""Job parameters are plain data, checked on the scheduler before anything reaches a node.

The attacker is a data scientist (a client certificate on a TLS grid, anyone
on a plaintext one) who builds a ``grid_submit`` request by hand instead of
through ``Grid.submit``, with an estimator parameter (``alpha``), the job's
``classes`` or its ``seed`` set to a distributed ``Serialize`` of an object
whose ``__reduce__`` creates a marker file. The scheduler reads handler
arguments without deserializing them, so the object arrives as an opaque
``Serialized``; if the scheduler forwarded it, the node reading the next round
request would unpickle it. The oracle is the marker file, checked after an
honest job ran on the same nodes (worker processes of ``Grid.local``). The
same request sent to ``grid_attach`` (the handler a home scheduler calls on
the other regions) is refused the same way, and estimator class names that
walk through an allowed module to anything else are refused on a real
``Grid.submit``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pytest
from distributed import Client
from distributed.protocol.serialize import Serialize, Serialized, ToPickle, serialize
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from jobs import PartialFit
from tests.integration.reference import assert_same_model, fedavg

X, Y = make_classification(n_samples=400, n_features=5, random_state=0)
#: nodes as worker processes: the marker would be written by another process than the scheduler's
PROCESSES = True


class Marker:
    """Creates a marker file where it is unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module", params=["tcp", "tls"])
def grid(request):
    """One region, one node as a worker process, in plaintext and on mutual TLS (a client certificate)."""
    g = Grid.local(regions={"eu": 1}, processes=PROCESSES, dashboard=False, tls=request.param == "tls")
    try:
        g.data = g.scatter(X, Y, partition_rows=200)
        yield g
    finally:
        g.close()


def job_request(g: Grid) -> tuple[dict, dict]:
    """The request and placement ``Grid.submit`` would send for an honest job on the placed data."""
    request = PartialFit(SGDClassifier(random_state=0), rounds=1)._job_request()
    request.update(verify=1, partial_participation=False, classes=list(g.data.classes), n_features=g.data.n_features)
    placement = {r: {"address": w["address"], "dataset": g.data.name, "job_owned": False} for r, w in g.data.regions.items()}
    return request, placement


def poison(request: dict, field: str, value: Any) -> str:
    """Put ``value`` in ``field`` of ``request``; return the field's path as a refusal names it."""
    if field == "alpha":
        request["estimator"]["params"]["alpha"] = value
        return "request['estimator']['params']['alpha']"
    request[field] = value
    return f"request[{field!r}]"


def submit(client: Client, request: dict, placement: dict, owner: str = "") -> str:
    """Send a hand-built request to ``grid_submit``; the refusal's text (a job that was accepted is cancelled)."""
    try:
        reply = client.sync(client.scheduler.grid_submit, request=request, placement=placement, owner=owner)
    except Exception as exc:  # noqa: BLE001 - a comm-level refusal is a refusal too
        return f"connection refused it: {type(exc).__name__}: {exc}"
    if reply.get("status") == "OK":
        client.sync(client.scheduler.grid_wait, job_id=reply["id"], timeout=30)
        client.sync(client.scheduler.grid_cancel, job_id=reply["id"])
        return f"accepted as job {reply['id']}"
    return reply["message"]


def honest_job_runs(g: Grid) -> None:
    """An honest job on the same nodes (after it, a marker would have been written by now)."""
    fitted = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), g.data).result(timeout=120)
    assert_same_model(fitted, fedavg(SGDClassifier(random_state=0), X, Y, rounds=2, partition_rows=200))


@pytest.mark.parametrize("field", ["alpha", "classes", "seed"])
def test_a_serialized_object_in_a_job_parameter_is_refused(grid, tmp_path, field):
    marker = str(tmp_path / "marker")
    client = grid.client("eu")
    request, placement = job_request(grid)
    path = poison(request, field, Serialize(Marker(marker)))
    refusal = submit(client, request, placement, grid.owner)
    tls = grid.spec.tls is not None
    if tls and refusal.startswith("connection refused it"):
        pass  # a client certificate sends no pickle that names a global: the guarded comm refused it already
    else:
        assert refusal.startswith(f"{path} is a Serialized object") and "plain data" in refusal, refusal
    if tls:  # what does reach the scheduler from a client certificate: a plain pickle, kept opaque
        request, placement = job_request(grid)
        path = poison(request, field, Serialize(0.5))
        refusal = submit(client, request, placement, grid.owner)
        assert refusal.startswith(f"{path} is a Serialized object") and "plain data" in refusal, refusal
    honest_job_runs(grid)
    assert not os.path.exists(marker), f"a node unpickled the Serialized {field} ({refusal})"


@pytest.mark.parametrize("grid", ["tls"], indirect=True)  # a plaintext grid has no admin certificates
def test_an_admin_is_refused_the_same_way(grid, tmp_path):
    """Admin certificates pass the guarded comm unchecked; the request validator still refuses."""
    marker = str(tmp_path / "marker")
    throwaway = grid._local.throwaway
    spec = {
        "regions": {"eu": grid.spec.regions["eu"].address},
        "tls": {"ca-file": str(throwaway.ca_file), "cert": str(throwaway.admin.cert_path), "key": str(throwaway.admin.key_path)},
    }
    with Grid.connect(spec) as admin:
        admin.data = admin.scatter(X, Y, partition_rows=200)  # the admin's own data: a job runs on its owner's data
        client = admin.client("eu")
        for value in (Serialize(Marker(marker)), ToPickle(Serialized(*serialize(Marker(marker)))), ToPickle(np.float64(0.5))):
            request, placement = job_request(admin)
            path = poison(request, "alpha", value)
            refusal = submit(client, request, placement, admin.owner)
            assert refusal.startswith(f"{path} is a ") and "plain data" in refusal, refusal
        honest_job_runs(admin)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("grid", ["tcp"], indirect=True)  # on TLS only a scheduler certificate may call grid_attach
def test_attach_refuses_the_same_requests(grid, tmp_path):
    """``grid_attach`` (scheduler to scheduler) validates the request with the same function."""
    marker = str(tmp_path / "marker")
    client = grid.client("eu")
    request, _ = job_request(grid)
    path = poison(request, "alpha", Serialize(Marker(marker)))
    reply = client.sync(client.scheduler.grid_attach, job_id="eu-attack", request=request, dataset=grid.data.name)
    assert reply["status"] == "error" and reply["message"].startswith(f"{path} is a Serialized object"), reply
    honest_job_runs(grid)
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "path, named",
    [
        ("jobs.spec:importlib.machinery.SourceFileLoader", "module 'importlib'"),
        ("sklearn.linear_model:sys.modules", ""),
        ("sklearn:base.__builtins__", "private or dunder"),
        ("sklearn.linear_model:SGDClassifier.__class__", "private or dunder"),
    ],
)
def test_an_estimator_class_named_through_an_allowed_module_is_refused(grid, path, named):
    est = PartialFit(SGDClassifier(random_state=0), rounds=1)
    honest = est._job_request

    def forged() -> dict:
        request = honest()
        request["estimator"]["class"] = path
        return request

    est._job_request = forged  # what a hand-built client sends
    # the scheduler refuses the request itself (ValueError "submit: ..."), before any job exists
    with pytest.raises(ValueError, match=rf"^submit: .*{re.escape(repr(path))}") as info:
        grid.submit(est, grid.data)
    assert path in str(info.value) and named in str(info.value), str(info.value)
