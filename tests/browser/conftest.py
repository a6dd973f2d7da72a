"""Browser tests: a headless JupyterLab of the test, Debian's chromium driven by Playwright.

Skipped only when ``/usr/bin/chromium`` is absent (``make test`` installs it with apt-get). No browser is
ever downloaded: Playwright drives the system executable. A failing test leaves a screenshot and the
page's HTML in ``test-artifacts/browser/`` (git-ignored); the JupyterLab logs land there too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jupyter_process import JupyterProcess, shut_down, start_jupyter
from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium; `make test` installs it)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201 - pytest hook
    report = yield
    setattr(item, f"report_{report.when}", report)  # for the page fixture: did the test itself fail?
    return report


@pytest.fixture
def start_lab(tmp_path: Path) -> Iterator[Callable[..., JupyterProcess]]:
    """``start_lab(env={...}, files=[...], log="name.log")``: a JupyterLab of this test, shut down (and
    checked for leftover processes) at its end. See ``tests/jupyter_process.py``."""
    servers: list[JupyterProcess] = []

    def start(*, env: dict[str, str | None] | None = None, files: tuple[Path, ...] = (),
              log: str = "jupyterlab.log") -> JupyterProcess:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        server = start_jupyter(tmp_path / f"lab-{len(servers)}", ARTIFACTS / log, env=env, files=files)
        servers.append(server)
        return server

    yield start
    for server in servers:
        shut_down(server)


@pytest.fixture
def console() -> list[str]:
    """Console errors and uncaught exceptions of the page (for failure messages)."""
    return []


@pytest.fixture
def page(request: pytest.FixtureRequest, console: list[str]) -> Iterator[Page]:
    """A chromium page (1280x1200); on failure its screenshot and HTML go to test-artifacts/browser/."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1200})
            tab.set_default_timeout(30_000)
            tab.on("console", lambda msg: console.append(f"{msg.type}: {msg.text[:500]}")
                   if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: console.append(f"pageerror: {str(exc)[:500]}"))
            yield tab
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                with contextlib.suppress(Exception):  # the failure itself is what counts
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    tab.screenshot(path=ARTIFACTS / f"{request.node.name}-failure.png", full_page=True)
                    (ARTIFACTS / f"{request.node.name}-failure.html").write_text(tab.content())
        finally:
            browser.close()
