"""The benchmark's own fabric and worker pool, and a sampler of its processes' RSS and CPU time.

Everything is started here and stopped here: one Ignite node on free ports (it also exits if this
process dies: ``exit_with_pid``), a run directory under ``benchmarks/work/`` (git-ignored), and a
local worker pool scaled per configuration.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from perper_lab.errors import FabricError
from perper_lab.fabric.client import FabricClient
from perper_lab.fabric.launcher import LocalFabric, start_on_free_ports
from perper_lab.runtime.pool import WorkerPool
from perper_lab.runtime.registry import WORKERS_CACHE

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
REGION_MB = 3072  # every run's streams are deleted after it is checked; this is head room, not need
HEAP_MB = 1024


class BenchFabric:
    """A fabric and a worker pool of the benchmark's own; use as a context manager."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fabric: LocalFabric | None = None
        self.pool: WorkerPool | None = None
        self.client: FabricClient | None = None
        self.started_pids: set[int] = set()  # every worker and JVM started, to check none is left

    def __enter__(self) -> BenchFabric:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Worker processes import benchmarks.workloads (W2's function is pickled by reference).
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.fabric = _start_fabric(self.run_dir / "fabric")
        self.started_pids.update(self.jvm_pids)
        self.client = FabricClient(self.fabric.address, timeout=30.0)
        self.pool = WorkerPool(self.fabric.address, log_dir=self.run_dir / "workers")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        if self.client is not None:
            self.client.close()
        if self.fabric is not None:
            self.fabric.stop()

    @property
    def address(self) -> str:
        assert self.fabric is not None
        return self.fabric.address

    @property
    def jvm_pids(self) -> list[int]:
        assert self.fabric is not None
        return [s.pid for s in self.fabric.status() if s.running and s.pid]

    # -- workers --------------------------------------------------------------------------------

    def workers(self, count: int, timeout: float = 60.0) -> list[int]:
        """Scale the pool to ``count`` workers and wait until exactly those heartbeat in the fabric."""
        assert self.pool is not None and self.client is not None
        self.pool.scale(count)
        self.started_pids.update(self.pool.pids)
        return self.wait_live(self.pool.pids, timeout)

    def wait_live(self, pids: list[int], timeout: float = 60.0) -> list[int]:
        """Wait until the live workers in the fabric are exactly the processes ``pids``."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            records = [json.loads(text) for _, text in self.client.cache(WORKERS_CACHE).items()]
            live = {record["pid"] for record in records if record["heartbeat"] > now - 3.0}
            if live == set(pids):
                return sorted(pids)
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(pids)} not all live in the fabric (live: {sorted(live)})")
            time.sleep(0.1)


def _start_fabric(run_dir: Path, attempts: int = 3) -> LocalFabric:
    """Start the node in a fresh run directory; retry if the readiness check raced the node's SQL schema.

    ``LocalFabric._wait_ready`` looks for the ready marker in the whole node log, which is appended to
    across starts: in a reused run directory it passes at once, and ``_wait_handshake`` then fails on
    ``Schema "SYS" not found`` (a FabricError, which it does not retry). A fresh directory avoids it.
    """
    for attempt in range(attempts):
        try:
            return start_on_free_ports(run_dir, exit_with_pid=os.getpid(), region_mb=REGION_MB, heap_mb=HEAP_MB)
        except FabricError as exc:
            if attempt == attempts - 1 or "SYS" not in str(exc):
                raise
            print(f"  fabric start raced its SQL schema ({exc}); starting again", flush=True)
    raise AssertionError("unreachable")


class ProcessMonitor:
    """Samples the resident set size of some processes every ``period`` seconds and their CPU time.

    ``roles`` names groups of pids (e.g. ``{"worker": [...], "ignite": [...], "driver": [...]}``).
    """

    def __init__(self, roles: dict[str, list[int]], period: float = 0.05) -> None:
        self.roles = roles
        self.processes = {pid: psutil.Process(pid) for pids in roles.values() for pid in pids}
        self.period = period
        self.peaks: dict[int, int] = dict.fromkeys(self.processes, 0)
        self.start_rss: dict[int, int] = {}
        self._cpu_start: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="process-monitor", daemon=True)

    def __enter__(self) -> ProcessMonitor:
        self.start_rss = {pid: self._rss(pid) for pid in self.processes}
        self._cpu_start = {pid: self._cpu(pid) for pid in self.processes}
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = {pid: self._cpu(pid) - self._cpu_start[pid] for pid in self.processes}

    def _rss(self, pid: int) -> int:
        try:
            return self.processes[pid].memory_info().rss
        except psutil.Error:
            return 0

    def _cpu(self, pid: int) -> float:
        try:
            times = self.processes[pid].cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in self.processes:
                self.peaks[pid] = max(self.peaks[pid], self._rss(pid))
            self._stop.wait(self.period)

    def summary(self) -> dict[str, Any]:
        """Per role: the pids, the start and peak RSS (MiB) of each, and their CPU seconds summed."""
        mib = 2 ** 20
        return {role: {"pids": list(pids), "start_mb": [self.start_rss[pid] / mib for pid in pids],
                       "peak_mb": [self.peaks[pid] / mib for pid in pids],
                       "cpu_s": sum(self.cpu.get(pid, 0.0) for pid in pids)}
                for role, pids in self.roles.items()}
