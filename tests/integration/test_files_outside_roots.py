"""Files datasets on an embedded grid with data roots: clear refusals, URLs fetched only where allowed."""

from __future__ import annotations

import http.server
import threading
import time

import dask.config
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import SGDClassifier

from jobs import PartialFit
from jobs.data import Files
from tests.integration.reference import assert_same_model, fedavg


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    X, y = make_classification(n_samples=600, n_features=4, random_state=0)
    for i in range(2):
        frame = pd.DataFrame(X[300 * i : 300 * (i + 1)], columns=list("abcd"))
        frame["label"] = y[300 * i : 300 * (i + 1)]
        frame.to_csv(root / f"part-{i}.csv", index=False)
    return root, X, y


@pytest.fixture
def http_server(dataset):
    """Serves the dataset's directory on 127.0.0.1 and counts the requests it gets."""
    root, _, _ = dataset
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_path_outside_the_roots_fails_fast_naming_the_roots(grid2, dataset, tmp_path):
    root, X, y = dataset
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "part-0.csv").write_bytes((root / "part-0.csv").read_bytes())
    with dask.config.set({"grid.node.data-roots": [str(root)]}):
        start = time.monotonic()
        with pytest.raises(ValueError) as info:
            grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), Files(str(outside / "part-*.csv"), target="label"))
        assert time.monotonic() - start < 30
        message = str(info.value)
        assert str(outside / "part-0.csv") in message and str(root) in message and "--data-root" in message, message
        # the same data under the root trains
        fitted = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), Files(str(root / "part-*.csv"), target="label")).result(timeout=60)
        # one partition per file
        assert_same_model(fitted, fedavg(SGDClassifier(random_state=0), X, y, rounds=1, partition_rows=300))


def test_urls_into_the_nodes_network_are_refused_unless_allowed(grid2, dataset, http_server):
    root, X, y = dataset
    base, requests = http_server
    files = Files([f"{base}/part-0.csv", f"{base}/part-1.csv"], target="label")
    with pytest.raises(ValueError, match="allow-private-urls") as info:
        grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=1), files)
    assert "127.0.0.1" in str(info.value)
    assert requests == []
    # an operator who serves data on the node's own network allows it; the fetch reads the same rows
    with dask.config.set({"grid.node.allow-private-urls": True}):
        over_http = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), files).result(timeout=60)
    assert sorted(requests) == ["/part-0.csv", "/part-1.csv"]
    local = grid2.submit(PartialFit(SGDClassifier(random_state=0), rounds=2), Files(str(root / "part-*.csv"), target="label")).result(timeout=60)
    np.testing.assert_array_equal(over_http.estimator_.coef_, local.estimator_.coef_)
