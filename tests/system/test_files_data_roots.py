"""A data scientist cannot make community nodes read files or URLs outside their operator's data roots.

Real `grid scheduler` / `grid node` processes on mutual TLS (certificates from
the grid's CA), a client certificate as the attacker. The oracles: secret
tokens written in files the nodes can read but must not (they appear in
nothing the client gets back), and an HTTP server on 127.0.0.1 that counts
the requests it receives (it must receive none).
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import threading
import traceback

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from grid import Grid
from grid.security.certs import init_ca, issue
from jobs import PartialFit
from jobs.data import Files
from tests.conftest import wait_for
from tests.integration.reference import assert_same_model, fedavg
from tests.system.procs import grid_processes, tls_args, tls_spec

pytestmark = [pytest.mark.system]

ROWS = 400
PARTS = 3


class Counting(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; every request is recorded, whatever its path."""

    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("files-roots")
    data, outside, web = base / "data", base / "outside", base / "web"
    for d in (data, outside, web / "data"):
        d.mkdir(parents=True)
    tokens = [f"tok{secrets.token_hex(12)}" for _ in range(3)]
    secret = outside / "secret.csv"
    secret.write_text("\n".join(tokens) + "\n")  # header line, then rows: a target= header returns rows as labels
    (web / "data" / "x.csv").write_text("\n".join(tokens) + "\n")
    (web / "secret.csv").write_text("\n".join(tokens) + "\n")
    (data / "link.csv").symlink_to(secret)
    X, y = make_classification(n_samples=ROWS * PARTS, n_features=5, random_state=3)
    for i in range(PARTS):
        sl = slice(ROWS * i, ROWS * (i + 1))
        np.savez(data / f"part-{i}.npz", X=X[sl], y=y[sl])

    Counting.requests = []
    handler = lambda *a, **kw: Counting(*a, directory=str(web), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()

    ca = init_ca(base / "ca")
    certs = base / "certs"
    sched = {r: issue(ca, "scheduler", f"sched-{r}", region=r, out=certs) for r in ("eu", "us")}
    nodes = {n: issue(ca, "node", n, region=r, out=certs) for n, r in (("eu1", "eu"), ("eu2", "eu"), ("us1", "us"))}
    scientist = issue(ca, "client", "scientist", out=certs)
    tls = lambda c: tls_args(ca, c)  # noqa: E731
    roots = (str(data), f"http://127.0.0.1:{port}/data/", f"http://localhost:{port}/data/")
    try:
        with grid_processes() as procs:
            addresses, schedulers = {}, []
            for region in ("eu", "us"):
                proc, addresses[region] = procs.scheduler(region, args=tuple(tls(sched[region])))
                schedulers.append(proc)
                assert addresses[region].startswith("tls://")
            started = [
                procs.node("eu", addresses["eu"], "eu1", data_roots=roots, args=tuple(tls(nodes["eu1"]))),
                procs.node("eu", addresses["eu"], "eu2", data_roots=roots, args=tuple(tls(nodes["eu2"]))),
                procs.node("us", addresses["us"], "us1", args=tuple(tls(nodes["us1"]))),  # a community node without roots
            ]
            spec = tls_spec(ca, scientist, addresses)
            with Grid.connect(spec) as g:
                try:
                    wait_for(lambda: g.status()["eu"]["nodes"]["active"] == 2 and g.status()["us"]["nodes"]["active"] == 1, timeout=90, what="3 nodes")
                except TimeoutError:
                    print("\n".join(procs.log(p)[-3000:] for p in [*schedulers, *started]))
                    raise
                yield {"g": g, "data": data, "secret": secret, "tokens": tokens, "port": port, "X": X, "y": y, "procs": procs}
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)


def everything_the_client_saw(exc: BaseException, g) -> str:
    """The error (message, repr, traceback with its chain) and what the grid reports afterwards."""
    seen = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen.append(json.dumps(g.jobs(), default=str))
    seen.append(json.dumps(g.status(), default=str))
    for job in g.jobs():
        seen.append(json.dumps(g.job(job["id"]).history, default=str))
    return "\n".join(seen)


def assert_refused(world, attempt, *expected: str) -> str:
    """``attempt`` is refused with the node's reason, and nothing the client sees holds a secret.

    A node's refusal reaches the client as a ``ValueError`` naming the files
    and the region that read them; any other error (a timeout, a crash) fails.
    """
    g = world["g"]
    with pytest.raises(ValueError, match=r"^reading .* on region '(eu|us)': ") as info:
        attempt(g)
    seen = everything_the_client_saw(info.value, g)
    for token in world["tokens"]:
        assert token not in seen, f"a secret of the node's file reached the client:\n{str(info.value)[:2000]}"
    message = str(info.value)
    for text in expected:
        assert text in message, message
    return message


def est():
    return PartialFit(SGDClassifier(random_state=0), rounds=2)


def test_a_file_outside_the_roots_is_refused_and_its_content_never_reaches_the_client(world):
    secret, data = str(world["secret"]), str(world["data"])
    header = world["tokens"][0]
    attacks = [
        lambda g: g.submit(est(), Files(secret, target="x", format="csv"), regions=["eu"]),
        lambda g: g.submit(est(), Files(secret, target=header, format="csv"), regions=["eu"]),
        lambda g: g.scatter(Files(secret, target=header, format="csv"), regions=["eu"]),
        lambda g: g.scatter(Files(secret, format="csv"), regions=["eu"]),
    ]
    for attack in attacks:
        message = assert_refused(world, attack, secret, "outside this node's data roots", data, "--data-root")
        assert "resolves" not in message


@pytest.mark.parametrize("where", ["symlink", "dotdot"])
def test_paths_that_lead_out_of_the_root_are_refused(world, where):
    data = world["data"]
    path = str(data / "link.csv") if where == "symlink" else f"{data}/../outside/secret.csv"
    message = assert_refused(
        world, lambda g: g.scatter(Files(path, target=world["tokens"][0], format="csv"), regions=["eu"]), path, "outside this node's data roots"
    )
    assert str(world["secret"]) not in message.replace(path, "")  # where the link points is not told


def test_urls_into_the_nodes_own_network_are_never_fetched(world):
    port = world["port"]
    before = list(Counting.requests)
    for url in (f"http://127.0.0.1:{port}/data/x.csv", f"http://localhost:{port}/data/x.csv"):
        assert_refused(
            world, lambda g: g.scatter(Files(url, target=world["tokens"][0], format="csv"), regions=["eu"]), url,
            "loopback, link-local or private", "--allow-private-urls",
        )
    # outside the URL roots: refused before any lookup
    url = f"http://127.0.0.1:{port}/secret.csv"
    assert_refused(world, lambda g: g.submit(est(), Files(url, target="x", format="csv"), regions=["eu"]), url, "outside this node's data roots")
    assert Counting.requests == before == []


def test_a_community_node_without_roots_reads_nothing(world):
    path = str(world["data"] / "part-0.npz")
    assert_refused(
        world, lambda g: g.submit(est(), Files(path), regions=["us"]), path, "has none", "community mode", "--data-root"
    )


def test_datasets_under_the_root_train_as_before_after_the_attacks(world):
    g, X, y = world["g"], world["X"], world["y"]
    from_files = g.submit(est(), Files(str(world["data"] / "part-*.npz")), regions=["eu"]).result(timeout=180)
    in_memory = g.submit(PartialFit(SGDClassifier(random_state=0), rounds=2, partition_rows=ROWS), X, y, regions=["eu"]).result(timeout=180)
    np.testing.assert_allclose(from_files.estimator_.coef_, in_memory.estimator_.coef_, rtol=0, atol=1e-12)
    assert_same_model(in_memory, fedavg(SGDClassifier(random_state=0), X, y, rounds=2, partition_rows=ROWS))
    for name in ("eu1", "eu2", "us1"):
        log = open(os.path.join(world["procs"].workdir, f"node-{name}.log"), errors="replace").read()
        assert not any(token in log for token in world["tokens"]), f"node {name} logged a secret"
