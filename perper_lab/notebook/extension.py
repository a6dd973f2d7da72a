"""``%load_ext perper_lab``: attach the kernel to a fabric and register the magics.

With ``PERPER_FABRIC`` set, the kernel connects to that fabric. Otherwise it starts the embedded
default, the way PySpark starts a local JVM: one local Ignite node and one local worker process,
both stopped when the kernel exits (and both exit on their own if the kernel is killed).
"""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from perper_lab import api
from perper_lab.fabric.launcher import LocalFabric, start_on_free_ports
from perper_lab.runtime.pool import WorkerPool


@dataclass
class LabSession:
    """What this kernel attached to: a fabric address and, if embedded, the processes it started."""

    address: str
    fabric: LocalFabric | None = None
    pool: WorkerPool | None = None
    views: list = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        return self.fabric is not None

    def describe(self) -> str:
        if not self.embedded:
            return f"connected to the fabric at {self.address} (PERPER_FABRIC)"
        workers = len(self.pool) if self.pool else 0
        return (f"embedded fabric: 1 local Ignite node at {self.address}, {workers} local worker(s); "
                f"logs in {self.fabric.run_dir}")

    def stop(self) -> None:
        for view in self.views:
            view.stop()
        api.disconnect()
        if self.pool:
            self.pool.stop()
        if self.fabric:
            self.fabric.stop()


_session: LabSession | None = None


def start_session(workers: int = 1) -> LabSession:
    """Connect to ``PERPER_FABRIC``, or start the embedded fabric and ``workers`` local workers."""
    address = os.environ.get("PERPER_FABRIC")
    if address:
        api.connect(address)
        return LabSession(address)
    run_dir = Path(tempfile.mkdtemp(prefix="perper-lab-"))
    fabric = start_on_free_ports(run_dir, nodes=1, exit_with_pid=os.getpid())
    session = LabSession(fabric.address, fabric=fabric)
    try:
        api.connect(fabric.address)
        session.pool = WorkerPool(fabric.address, log_dir=run_dir)
        session.pool.scale(workers)
    except BaseException:
        session.stop()
        raise
    return session


def current_session() -> LabSession | None:
    return _session


def load(ipython) -> None:  # noqa: ANN001 - IPython's InteractiveShell
    global _session
    from perper_lab.notebook.magics import PerperMagics

    if _session is None:
        _session = start_session()
        atexit.register(_stop_session)
    ipython.register_magics(PerperMagics)
    print(f"perper_lab: {_session.describe()}")


def unload(ipython) -> None:  # noqa: ANN001
    _stop_session()


def _stop_session() -> None:
    global _session
    if _session is not None:
        session, _session = _session, None
        session.stop()
