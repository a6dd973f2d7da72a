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

import json
import re
import time
from pathlib import Path

import pytest
from jupyter_process import JupyterProcess, fabric_jvms, wait_until
from playwright.sync_api import Locator, Page

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "02-nyc-flights-live.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
SCREENSHOT = ARTIFACTS / "tutorial-02.png"

KERNEL_IDLE_S = 90  # notebook opened and its kernel idle
VIEW_LIVE_S = 90  # from "Run All Cells" to the delayed view counting live items (fabric start included)
COUNTER_RISE_S = 10  # the item counter must rise between two reads >= 1 s apart within this window
NOTEBOOK_DONE_S = 120  # from "Run All Cells" to the summary line


@pytest.fixture
def lab(start_lab) -> JupyterProcess:
    # No PERPER_FABRIC: the notebook's kernel starts its own embedded fabric under the lab's PERPER_HOME.
    return start_lab(files=(NOTEBOOK,), log="jupyterlab.log")


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


def test_tutorial_02_runs_live_in_jupyterlab(lab: JupyterProcess, page: Page, console: list[str]) -> None:
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
        _check_no_errors(page)
        items, state = _counter(counters) if counters.count() else (-1, "")
        assert state != "closed", f"the delayed stream closed before the view was seen live ({items} items)"
        return items > 0 and state == "live"

    assert wait_until(live_items, left(VIEW_LIVE_S), 0.2), (
        f"the delayed view did not count live items within {VIEW_LIVE_S}s of Run All; counters: "
        f"{counters.all_inner_texts()}; console: {console[-5:]}")
    assert fabric_jvms(lab.home), "the kernel's embedded fabric JVM is not found under the test's PERPER_HOME"

    # The item counter goes up between two reads taken >= 1 s apart (the replay is paced: ~8 s).
    first, _ = _counter(counters)
    first_at = time.monotonic()
    page.wait_for_timeout(1000)
    reads = [(0.0, first)]

    def risen() -> bool:
        items, state = _counter(counters)
        reads.append((round(time.monotonic() - first_at, 2), items))
        return items > first or state == "closed"

    wait_until(risen, COUNTER_RISE_S, 0.25)
    assert reads[-1][1] > first, f"the item counter did not rise while live; reads (s, items): {reads}"

    # The chart: bokeh rendered its canvas, with a real size, inside the widget.
    view.scroll_into_view_if_needed()
    _check_no_errors(page)
    broken = view.locator(".jupyter-widgets-error-widget")
    if broken.count():
        broken.first.click()  # ipywidgets then shows the JavaScript error in place of the widget
        raise AssertionError(f"a widget of the view failed to render: {broken.first.inner_text()[:500]!r}; "
                             f"console: {console[-5:]}")
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
        _check_no_errors(page)
        return summary_output.count() > 0

    assert wait_until(finished, left(NOTEBOOK_DONE_S), 0.5), (
        f"the notebook did not print its summary within {NOTEBOOK_DONE_S}s of Run All")
    line = next(s for s in summary_output.first.inner_text().splitlines() if s.startswith("{"))
    summary = json.loads(line)
    assert summary["matches_pandas"] is True, summary
    assert summary["flights_in"] == 336_776, summary

    # The view ends closed, on the final count; then the screenshot, with the view in sight.
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=30_000)
    assert wait_until(lambda: _counter(counters) == (summary["delayed_out"], "closed"), 10, 0.25), (
        f"the view did not end closed at {summary['delayed_out']} items: {counters.inner_text()}")
    view.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOT, full_page=True)
    view.screenshot(path=ARTIFACTS / "tutorial-02-delayed-view.png")
    print(f"tutorial 02 in JupyterLab: summary line after {time.monotonic() - started:.1f}s; "
          f"counter reads (s, items) {reads}; screenshot {SCREENSHOT}")


def _check_no_errors(page: Page) -> None:
    failed = _failed_outputs(page)
    assert not failed, f"a cell failed:\n{failed[0][-3000:]}"
