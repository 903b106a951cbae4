"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and helpers for dashboard tests.

The browser is the system's: Playwright never downloads one here. A missing
``chromium`` fails the tests (``.ci/run`` installs it), it does not skip them.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("GRID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: JS: the data of a named ColumnDataSource of the page's Bokeh document, as plain arrays
SOURCE_JS = """
(name) => {
    const docs = window.Bokeh && window.Bokeh.documents;
    if (!docs || docs.length === 0) return null;
    const model = docs[0].get_model_by_name(name);
    if (!model) return null;
    const data = model.data;
    const out = {};
    const keys = data instanceof Map ? Array.from(data.keys()) : Object.keys(data);
    for (const k of keys) {
        const v = data instanceof Map ? data.get(k) : data[k];
        out[k] = Array.from(v);
    }
    return out;
}
"""

def chromium_path() -> str:
    """The system Chromium; fails the test (never skips) when it is missing."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM} or on PATH: install Debian's package "
            "(`apt-get update && apt-get install -y chromium`; .ci/run does this)",
            pytrace=False,
        )
    return path

@pytest.fixture(scope="module")  # not session: Playwright's sync API keeps an event loop running
def browser() -> Iterator[Any]:   # in this thread, which breaks asyncio.run() in later test modules
    """A headless Chromium browser (Playwright, system executable)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()

@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x800 page; its console errors are collected in ``page.errors``."""
    context = browser.new_context(viewport=VIEWPORT)
    p = context.new_page()
    p.errors = []  # type: ignore[attr-defined]
    p.on("pageerror", lambda exc: p.errors.append(str(exc)))  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        context.close()

def source_data(page: Any, name: str) -> dict | None:
    """The columns of a named ColumnDataSource in the page's Bokeh document."""
    return page.evaluate(SOURCE_JS, name)

class Proc:
    """A child process in its own process group, with its stdout lines in a queue."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None) -> None:
        self.log_path = log
        self._log = open(log, "w")
        self.lines: queue.Queue[str] = queue.Queue()
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        """The first stdout line matching ``pattern`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.popen.poll() is not None and self.lines.empty()):
                raise TimeoutError(f"no line matching {pattern!r} from {self.popen.args}; stderr:\n{self.stderr_tail()}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            match = re.search(pattern, line)
            if match:
                return match

    def stderr_tail(self, n: int = 40) -> str:
        self._log.flush()
        try:
            return "".join(self.log_path.read_text().splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (a node's nanny and its worker)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the process."""
        try:
            if self.popen.poll() is None:
                try:
                    os.killpg(self.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            self._log.close()

def dashboard_command(grid_file: str, port: int = 0) -> list[str]:
    """``grid dashboard`` when the CLI has it, else the dashboard module's own entry point."""
    from grid.cli import main

    if "dashboard" in getattr(main, "commands", {}):
        return [sys.executable, "-m", "grid.cli", "dashboard", "--grid", grid_file, "--port", str(port)]
    return [sys.executable, "-m", "grid.dashboard.app", "--grid", grid_file, "--port", str(port)]
