"""``%load_ext perper_lab``: attach the kernel to a fabric and register the magics.

With ``PERPER_FABRIC`` set, the kernel connects to that fabric. Otherwise it attaches to its embedded
fabric (:mod:`perper_lab.embedded`), the way PySpark starts a local JVM: one local Ignite node and one
local worker process, kept by a supervisor keyed by the kernel's id. After a kernel restart the same
fabric is re-attached, its functions still running; once the kernel has exited, it is stopped after a
grace period (``PERPER_EMBEDDED_GRACE`` seconds, default 20).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from pathlib import Path

from IPython.core.error import UsageError

from perper_lab import api
from perper_lab.embedded import EmbeddedFabric, embedded_root
from perper_lab.errors import PerperError


@dataclass
class LabSession:
    """What this kernel attached to: a fabric address and, if embedded, its supervisor."""

    address: str
    embedded: EmbeddedFabric | None = None
    reattached: bool = False
    views: list = field(default_factory=list)

    def describe(self) -> str:
        if self.embedded is None:
            return f"connected to the fabric at {self.address} (PERPER_FABRIC)"
        how = "re-attached to the" if self.reattached else "started an"
        return (f"{how} embedded fabric: 1 local Ignite node at {self.address}, "
                f"{len(self.embedded)} local worker(s); logs in {self.embedded.directory}")

    def detach(self) -> None:
        for view in self.views:
            view.stop()
        api.disconnect()
        if self.embedded:
            self.embedded.detach()


def kernel_key() -> str:
    """The kernel's id (kept across restarts), or this process's pid outside a Jupyter kernel."""
    try:
        from ipykernel import get_connection_file

        return Path(get_connection_file()).stem.removeprefix("kernel-")
    except Exception:  # not in a kernel (a plain IPython shell, a test): no restart to survive
        return f"pid-{os.getpid()}"


_session: LabSession | None = None


def start_session() -> LabSession:
    """Connect to ``PERPER_FABRIC``, or attach to (starting if needed) this kernel's embedded fabric."""
    address = os.environ.get("PERPER_FABRIC")
    if address:
        api.connect(address)
        return LabSession(address)
    embedded = EmbeddedFabric(embedded_root() / kernel_key())
    address, reattached = embedded.attach()
    session = LabSession(address, embedded=embedded, reattached=reattached)
    try:
        api.connect(address)
    except BaseException:
        session.detach()
        raise
    return session


def current_session() -> LabSession | None:
    return _session


def load(ipython) -> None:  # noqa: ANN001 - IPython's InteractiveShell
    global _session
    from perper_lab.notebook.magics import PerperMagics

    if _session is None:
        try:
            _session = start_session()
        except PerperError as exc:
            raise UsageError(f"perper_lab: {exc}") from None
        atexit.register(_detach)
    ipython.register_magics(PerperMagics)
    # perper_lab's errors say what to do in their message; the frames of our own code that raised them
    # only hide that line (a cell calling stream("typo") should answer in one line, like the magics do).
    ipython.set_custom_exc((PerperError,), _one_line_error)
    print(f"perper_lab: {_session.describe()}")


def unload(ipython) -> None:  # noqa: ANN001
    ipython.set_custom_exc((), None)
    _detach()


def _one_line_error(shell, etype, value, tb, tb_offset=None) -> list[str]:  # noqa: ANN001 - IPython's hook
    shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])
    return [f"{etype.__name__}: {value}"]


def _detach() -> None:
    global _session
    if _session is not None:
        session, _session = _session, None
        session.detach()
