"""The "Perper" sidebar in a real browser: JupyterLab with PERPER_FABRIC pointing at the session fabric.

The test writes a stream and registers a function in the fabric, opens the sidebar in chromium and
checks what a user sees: the stream with its item count, which follows appends (the sidebar polls
every 2 s), the stream closing, the function's state and workers, and an embedded fabric whose node is
gone shown as unreachable. Screenshot: ``test-artifacts/browser/sidebar.png``. A second test checks
the message shown when the server knows no fabric at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from pathlib import Path

from jupyter_process import JupyterProcess, wait_until
from playwright.sync_api import Locator, Page

from perper_lab.runtime import register_function
from perper_lab.streams import create_stream

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
SCREENSHOT = ARTIFACTS / "sidebar.png"
SIDEBAR_S = 60  # JupyterLab loaded and the sidebar's tab present
UPDATE_S = 15  # a change in the fabric shown in the sidebar (it polls every 2 s)


def open_sidebar(page: Page, lab: JupyterProcess) -> Locator:
    page.set_viewport_size({"width": 1100, "height": 720})
    page.goto(f"{lab.url}/lab?token={lab.token}", timeout=60_000)
    tab = page.locator('.jp-SideBar li.lm-TabBar-tab[data-id="perper-lab-sidebar"]')
    tab.wait_for(timeout=SIDEBAR_S * 1000)
    tab.click()
    panel = page.locator("#perper-lab-sidebar")
    panel.wait_for(state="visible")
    return panel


def items(row: Locator) -> int:
    text = row.locator(".jp-PerperTable-items").inner_text() if row.count() else ""
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else -1


def test_sidebar_shows_the_fabric_streams_and_functions_live(fabric, client, workers, start_lab, page, console):
    token = uuid.uuid4().hex[:6]
    clicks = create_stream(client, f"clicks_{token}", partitions=2)
    writer = clicks.writer(batch_size=100)
    writer.extend(range(1200))
    writer.flush()

    def tag(click):
        return {"click": click, "even": click % 2 == 0}

    tagged = f"tagged_{token}"
    register_function(client, tag, tagged, [clicks.name])
    lab = start_lab(env={"PERPER_FABRIC": fabric.address}, log="jupyterlab-sidebar.log")
    with socket.socket() as sock:  # an embedded fabric whose supervisor lives (this process) but whose node is gone
        sock.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{sock.getsockname()[1]}"
    kernel = lab.home / "embedded" / "5e1f0c4a-0000-4000-8000-000000000000"
    kernel.mkdir(parents=True)
    (kernel / "ready.json").write_text(json.dumps({"address": gone, "pid": os.getpid()}))

    panel = open_sidebar(page, lab)
    section = panel.locator(f'.jp-PerperFabric[data-address="{fabric.address}"]')
    stream_row = section.locator(f'.jp-PerperStreams tr[data-key="{clicks.name}"]')
    function_row = section.locator(f'.jp-PerperFunctions tr[data-key="{tagged}"]')

    stream_row.wait_for(timeout=UPDATE_S * 1000)
    assert section.locator(".jp-PerperFabric-title").inner_text() == "PERPER_FABRIC"
    assert items(stream_row) == 1200, stream_row.inner_text()
    assert stream_row.locator("td").nth(2).inner_text() == "open"

    writer.extend(range(1200, 2000))  # 800 more: the count in the sidebar follows
    writer.flush()
    appended = time.monotonic()
    assert wait_until(lambda: items(stream_row) == 2000, UPDATE_S, 0.2), (
        f"the sidebar did not show 2,000 items within {UPDATE_S}s: {stream_row.inner_text()!r}; console {console[-5:]}")
    followed_in = time.monotonic() - appended

    function_row.wait_for()
    assert function_row.locator(".jp-PerperTable-name").inner_text() == tagged
    assert function_row.locator("td.jp-PerperTable-state").inner_text() == "running"
    assert wait_until(lambda: function_row.locator(".jp-PerperTable-workers").inner_text() == "1", UPDATE_S), (
        f"the function's worker is not counted: {function_row.inner_text()!r}")
    tagged_row = section.locator(f'.jp-PerperStreams tr[data-key="{tagged}"]')
    assert wait_until(lambda: items(tagged_row) == 2000, 60, 0.5), tagged_row.inner_text()
    assert wait_until(lambda: function_row.locator(".jp-PerperTable-lag").inner_text() == "0", UPDATE_S)
    unreachable = panel.locator(f'.jp-PerperFabric[data-address="{gone}"]')
    unreachable.wait_for()
    stream_row.scroll_into_view_if_needed()  # the session fabric may hold many streams of other tests
    page.screenshot(path=SCREENSHOT)  # live: the stream open, the function on its worker

    writer.close()
    assert wait_until(lambda: stream_row.locator("td").nth(2).inner_text() == "closed", UPDATE_S), (
        stream_row.inner_text())
    assert section.locator(".jp-PerperWorkers tbody tr").count() >= 1

    assert "embedded fabric of kernel 5e1f0c4a" in unreachable.locator(".jp-PerperFabric-title").inner_text()
    assert unreachable.locator(".jp-PerperPanel-error").inner_text().startswith("Unreachable: no fabric node answers")

    assert not [line for line in console if "perper" in line.lower()], console
    print(f"sidebar: 1,200 -> 2,000 items shown {followed_in:.1f}s after the append; screenshot {SCREENSHOT}")


def test_sidebar_says_when_no_fabric_is_known(start_lab, page):
    lab = start_lab(log="jupyterlab-no-fabric.log")  # no PERPER_FABRIC, an empty PERPER_HOME
    panel = open_sidebar(page, lab)
    message = panel.locator(".jp-PerperPanel-message", has_text="No fabric known")
    message.wait_for(timeout=UPDATE_S * 1000)
    assert "%load_ext perper_lab" in message.inner_text()
    page.screenshot(path=ARTIFACTS / "sidebar-no-fabric.png")
