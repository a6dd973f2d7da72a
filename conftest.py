"""Settings for the whole test session, the notebooks under nbval included."""

from __future__ import annotations

import os

# A notebook run by nbval starts an embedded fabric in its kernel: stop it as soon as the kernel exits.
os.environ.setdefault("PERPER_EMBEDDED_GRACE", "0")


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001, ANN201 - pytest hook
    from perper_lab.embedded import stop_idle

    stop_idle()  # and wait for those still stopping, so that no JVM outlives the tests
