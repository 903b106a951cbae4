"""Real `grid scheduler` / `grid node` processes for system tests, always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator

import dask.config

from tests.conftest import wait_for

GRID = os.path.join(os.path.dirname(sys.executable), "grid")


class Processes:
    """Starts grid processes and ends every one of them, even on failure."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, str] = {}

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = os.path.join(self.workdir, f"{name}.log")
        f = open(log, "wb")
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        f.close()
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        with open(self.logs[proc.pid], errors="replace") as f:
            return f.read()

    def scheduler(self, region: str, port: int = 0, args: tuple[str, ...] = (), name: str | None = None) -> tuple[subprocess.Popen, str]:
        """Start `grid scheduler` (on ``port``, 0 for any, with extra ``args``); wait until it listens."""
        path = os.path.join(self.workdir, f"scheduler-{region}.json")
        if os.path.exists(path):  # left by a scheduler that was killed: wait for the new one's
            os.remove(path)
        proc = self.spawn(
            [GRID, "scheduler", "--region", region, "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", path, *args],
            name or f"scheduler-{region}",
        )
        wait_for(lambda: os.path.exists(path) or proc.poll() is not None, timeout=60, what=f"scheduler {region}")
        if proc.poll() is not None:
            raise RuntimeError(f"scheduler {region} exited:\n{self.log(proc)}")
        with open(path) as f:
            return proc, json.load(f)["address"]

    def node(
        self, region: str, address: str, name: str, data_roots: tuple[str, ...] = (), args: tuple[str, ...] = (),
        community: bool | None = True,
    ) -> subprocess.Popen:
        """Start `grid node` reading Files only under ``data_roots``, with extra ``args``.

        ``community``: True passes ``--community`` (the mode of a volunteer's node, also on
        plain TCP), False ``--no-community``, None neither (the node's own default).
        """
        roots = [a for root in data_roots for a in ("--data-root", str(root))]
        mode = [] if community is None else ["--community" if community else "--no-community"]
        return self.spawn(
            [GRID, "node", "--region", region, "--scheduler", address, "--name", name, "--nthreads", "1", "--memory-limit", "1GiB",
             *mode, *roots, *args],
            f"node-{name}",
        )

    def python(self, code: str, name: str) -> subprocess.Popen:
        script = os.path.join(self.workdir, f"{name}.py")
        with open(script, "w") as f:
            f.write(code)
        return self.spawn([sys.executable, script], name)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - reported by the leak below
                pass


@contextmanager
def grid_processes() -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix="grid-system-") as workdir:
        procs = Processes(workdir)
        try:
            yield procs
        finally:
            procs.stop_all()


def tls_args(ca, cert) -> tuple[str, ...]:
    """The ``--tls-*`` options of a ``grid scheduler`` / ``grid node`` presenting ``cert`` of the CA ``ca``."""
    return ("--tls-ca-file", str(ca.cert_path), "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path))


def tls_spec(ca, cert, regions: dict[str, str]) -> dict:
    """A grid spec of ``regions`` (name -> address) for a client presenting ``cert`` of the CA ``ca``."""
    return {"regions": dict(regions), "tls": {"ca-file": str(ca.cert_path), "cert": str(cert.cert_path), "key": str(cert.key_path)}}


def wait_nodes(grid, region: str, n: int, timeout: float = 60) -> None:
    wait_for(lambda: len(grid.status()[region]["workers"]) == n, timeout=timeout, what=f"{n} nodes in {region}")


def free_port() -> int:
    """A free local port, e.g. to restart a scheduler on the same address (clients and placements keep it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close_grid(grid) -> None:
    """Close a ``Grid`` whose scheduler may be gone, without waiting the full connect timeout."""
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        grid.close()


def write_npz_parts(directory, X, y, n: int, stem: str = "part") -> str:
    """Write ``X``, ``y`` as ``n`` equal ``.npz`` files for ``jobs.data.Files``; return their glob."""
    import numpy as np

    rows = len(X) // n
    for i in range(n):
        np.savez(os.path.join(directory, f"{stem}-{i}.npz"), X=X[rows * i : rows * (i + 1)], y=y[rows * i : rows * (i + 1)])
    return os.path.join(directory, f"{stem}-*.npz")
