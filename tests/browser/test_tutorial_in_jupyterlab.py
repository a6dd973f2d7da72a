"""Tutorial 02 in a real browser: headless JupyterLab, Debian's chromium driven by Playwright.

The test starts JupyterLab on 127.0.0.1 (a free port, a token) in a temporary root holding a copy of
``notebooks/02-nyc-flights-live.ipynb``, opens it in chromium, runs all cells from the Run menu, and
checks what a user sees in the live StreamView of the ``delayed`` cell: the bokeh throughput chart
(a canvas), the table of the latest rows, and an item counter that goes up while the paced replay
runs. It then waits for the summary line of the last cell and saves a screenshot to
``test-artifacts/browser/``.

The kernel starts its own embedded fabric (``PERPER_FABRIC`` is removed from its environment) under a
``PERPER_HOME`` of this test, so the fabric JVM's ``--work-dir`` names a directory of this test; every
process the server starts also carries a marker in its environment. The teardown shuts the kernel and
the server down and checks that none of these processes, and no fabric JVM of this test, is left
(``PERPER_EMBEDDED_GRACE`` is short, so the embedded fabric stops soon after its kernel).

Skipped only when ``/usr/bin/chromium`` is absent (``make test`` installs it with apt-get). No
browser is ever downloaded: Playwright drives the system executable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "02-nyc-flights-live.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
SCREENSHOT = ARTIFACTS / "tutorial-02.png"
MARKER = "PERPER_LAB_BROWSER_TEST"

SERVER_START_S = 60  # JupyterLab answering /api/status
KERNEL_IDLE_S = 90  # notebook opened and its kernel idle
VIEW_LIVE_S = 90  # from "Run All Cells" to the delayed view counting live items (fabric start included)
COUNTER_RISE_S = 10  # the item counter must rise between two reads >= 1 s apart within this window
NOTEBOOK_DONE_S = 120  # from "Run All Cells" to the summary line
LEFTOVERS_S = 30  # kernel, fabric JVM and workers gone after the shutdown

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"{CHROMIUM} is absent (Debian package chromium; `make test` installs it)")


@dataclass
class Lab:
    """A running JupyterLab server of this test."""

    url: str
    token: str
    root: Path
    home: Path
    marker: str
    process: subprocess.Popen
    log: Path
    console: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, timeout: float = 10.0) -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fabric_jvms(home: Path) -> set[int]:
    """PIDs of perper-fabric JVMs whose work dir lies under ``home`` (so: started for this test's kernel)."""
    result = subprocess.run(["pgrep", "-f", f"perper-fabric.*--work-dir {home}/"], capture_output=True, text=True)
    return {int(pid) for pid in result.stdout.split()}


def _marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``marker``: the server and all it started."""
    needle = marker.encode() + b"\0"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "root"
    home = tmp_path / "perper-home"
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    for folder in (root, home, settings, tmp_path / "workspaces", tmp_path / "runtime", tmp_path / "config"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    # No "get notified about Jupyter news?" toast over the screenshot, no update check (offline).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    token = secrets.token_hex(24)
    marker = f"{MARKER}={uuid.uuid4().hex}"
    env = {key: value for key, value in os.environ.items() if key != "PERPER_FABRIC"}
    env.update({
        "JUPYTER_TOKEN": token,
        "BOKEH_RESOURCES": "inline",  # no CDN here: BokehJS comes inline
        "PERPER_HOME": str(home),  # the embedded fabric's directories, so the JVM's --work-dir, are in here
        "PERPER_EMBEDDED_GRACE": "2",  # the embedded fabric stops 2 s after its kernel is gone (default 20)
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        MARKER: marker.split("=", 1)[1],
    })
    port = _free_port()
    log = ARTIFACTS / "jupyterlab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"],
            env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, root, home, marker, process, log)
    try:
        def answers() -> bool:
            assert process.poll() is None, f"JupyterLab exited ({process.returncode}):\n{server.log_tail()}"
            try:
                return "started" in server.api("GET", "/api/status", timeout=2.0)
            except (OSError, urllib.error.URLError):
                return False

        assert _wait_until(answers, SERVER_START_S, 0.25), (
            f"JupyterLab did not answer /api/status within {SERVER_START_S}s:\n{server.log_tail()}")
        yield server
    finally:
        _shut_down(server)


def _shut_down(server: Lab) -> None:
    """Kernels first (each stops its embedded fabric and workers), then the server; then check for leftovers."""
    if server.process.poll() is None:
        try:
            for kernel in server.api("GET", "/api/kernels"):
                server.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=60.0)
            server.api("POST", "/api/shutdown")
        except (OSError, urllib.error.URLError):
            pass
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(10)
    gone = _wait_until(lambda: not _fabric_jvms(server.home) and not _marked_processes(server.marker), LEFTOVERS_S)
    leftovers = {pid: "fabric JVM" for pid in _fabric_jvms(server.home)} | _marked_processes(server.marker)
    for pid in leftovers:  # leave the machine clean even when failing
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert gone, f"processes of this test still running {LEFTOVERS_S}s after the shutdown: {leftovers}"


def _counter(counters: Locator) -> tuple[int, str]:
    """(items, state) from the counters widget: "items: <b>1,234</b> ... state: <b>live</b>"."""
    text = counters.inner_text()
    items = re.search(r"items:\s*([\d,]+)", text)
    state = re.search(r"state:\s*(\w+)", text)
    return (int(items.group(1).replace(",", "")) if items else -1), (state.group(1) if state else "")


def _failed_outputs(page: Page) -> list[str]:
    """Text of error outputs (tracebacks, UsageError lines) anywhere in the notebook."""
    texts = page.locator('.jp-Cell-outputArea .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return [t for t in texts.all_inner_texts() if re.search(r"Traceback|^\w*(Error|Exception)\b", t, re.M)]


def test_tutorial_02_runs_live_in_jupyterlab(lab: Lab) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.set_default_timeout(30_000)
            page.on("console", lambda msg: lab.console.append(f"{msg.type}: {msg.text[:500]}")
                    if msg.type == "error" else None)
            page.on("pageerror", lambda exc: lab.console.append(f"pageerror: {str(exc)[:500]}"))
            try:
                _run_tutorial(page, lab)
            except BaseException:
                with contextlib.suppress(Exception):  # the failure itself is what counts
                    page.screenshot(path=ARTIFACTS / "tutorial-02-failure.png", full_page=True)
                    (ARTIFACTS / "tutorial-02-failure.html").write_text(page.content())
                raise
        finally:
            browser.close()


def _run_tutorial(page: Page, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}", timeout=60_000)
    # Wait for the kernel as the status bar shows it: "Python 3 (ipykernel) | Idle". Not the toolbar's
    # execution indicator: it reads data-status="idle" for a moment while the status bar still says
    # "No Kernel | Initializing", and cells run from the menu then are dropped (never executed).
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"^(?!No Kernel).+ \| Idle$")).wait_for(
        timeout=KERNEL_IDLE_S * 1000)
    kernels = lab.api("GET", "/api/kernels")
    assert len(kernels) == 1 and kernels[0]["connections"] >= 1, f"the notebook's kernel is not connected: {kernels}"

    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    started = time.monotonic()

    # The StreamView is the output of the one cell whose source starts with "%%perper_stream delayed".
    cell = page.locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea-editor", has_text="%%perper_stream delayed "))
    view = cell.locator(".jp-OutputArea-output .widget-vbox")
    title = view.locator(".widget-html-content").filter(has=page.locator("b", has_text=re.compile(r"^delayed$")))
    counters = view.locator(".widget-html-content").filter(has_text="items:")
    chart = view.locator("[data-root-id] .bk-Figure")  # jupyter_bokeh's BokehModel
    table = view.locator(".widget-output table.dataframe")

    def left(budget: float) -> float:
        """Seconds left of a budget counted from Run All (at least 1)."""
        return max(1.0, budget - (time.monotonic() - started))

    cell.first.wait_for(state="attached", timeout=left(VIEW_LIVE_S) * 1000)
    assert cell.count() == 1, f"{cell.count()} code cells start with '%%perper_stream delayed', expected 1"
    title.wait_for(state="attached", timeout=left(VIEW_LIVE_S) * 1000)

    # Counting live: items > 0 while the replay still runs.
    def live_items() -> bool:
        _check_no_errors(page, lab)
        items, state = _counter(counters) if counters.count() else (-1, "")
        assert state != "closed", f"the delayed stream closed before the view was seen live ({items} items)"
        return items > 0 and state == "live"

    assert _wait_until(live_items, left(VIEW_LIVE_S), 0.2), (
        f"the delayed view did not count live items within {VIEW_LIVE_S}s of Run All; counters: "
        f"{counters.all_inner_texts()}; console: {lab.console[-5:]}")
    assert _fabric_jvms(lab.home), "the kernel's embedded fabric JVM is not found under the test's PERPER_HOME"

    # The item counter goes up between two reads taken >= 1 s apart (the replay is paced: ~8 s).
    first, _ = _counter(counters)
    first_at = time.monotonic()
    page.wait_for_timeout(1000)
    reads = [(0.0, first)]

    def risen() -> bool:
        items, state = _counter(counters)
        reads.append((round(time.monotonic() - first_at, 2), items))
        return items > first or state == "closed"

    _wait_until(risen, COUNTER_RISE_S, 0.25)
    assert reads[-1][1] > first, f"the item counter did not rise while live; reads (s, items): {reads}"

    # The chart: bokeh rendered its canvas, with a real size, inside the widget.
    view.scroll_into_view_if_needed()
    _check_no_errors(page, lab)
    broken = view.locator(".jupyter-widgets-error-widget")
    if broken.count():
        broken.first.click()  # ipywidgets then shows the JavaScript error in place of the widget
        raise AssertionError(f"a widget of the view failed to render: {broken.first.inner_text()[:500]!r}; "
                             f"console: {lab.console[-5:]}")
    chart.locator("canvas").first.wait_for(state="visible", timeout=30_000)
    box = chart.locator("canvas").first.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50, f"the chart's canvas is too small: {box}"

    # The table: the latest rows of the stream, with the columns the function returns.
    table.wait_for(state="visible", timeout=30_000)
    headers = table.locator("thead th").all_inner_texts()
    assert {"carrier", "flight", "origin", "dest", "dep_delay"} <= set(headers), headers
    rows = table.locator("tbody tr").count()
    assert 1 <= rows <= 10, f"{rows} rows in the latest-items table"

    # The whole notebook ends with the summary JSON of its last cell.
    summary_output = page.locator(".jp-CodeCell").last.locator(".jp-OutputArea-output", has_text='"matches_pandas"')

    def finished() -> bool:
        _check_no_errors(page, lab)
        return summary_output.count() > 0

    assert _wait_until(finished, left(NOTEBOOK_DONE_S), 0.5), (
        f"the notebook did not print its summary within {NOTEBOOK_DONE_S}s of Run All")
    line = next(s for s in summary_output.first.inner_text().splitlines() if s.startswith("{"))
    summary = json.loads(line)
    assert summary["matches_pandas"] is True, summary
    assert summary["flights_in"] == 336_776, summary

    # The view ends closed, on the final count; then the screenshot, with the view in sight.
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=30_000)
    assert _wait_until(lambda: _counter(counters) == (summary["delayed_out"], "closed"), 10, 0.25), (
        f"the view did not end closed at {summary['delayed_out']} items: {counters.inner_text()}")
    view.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOT, full_page=True)
    view.screenshot(path=ARTIFACTS / "tutorial-02-delayed-view.png")
    print(f"tutorial 02 in JupyterLab: summary line after {time.monotonic() - started:.1f}s; "
          f"counter reads (s, items) {reads}; screenshot {SCREENSHOT}")


def _check_no_errors(page: Page, lab: Lab) -> None:
    failed = _failed_outputs(page)
    assert not failed, f"a cell failed:\n{failed[0][-3000:]}"
