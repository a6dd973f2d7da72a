"""A pool of local worker processes (processes, not threads: the GIL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from perper_lab.errors import PerperError


class WorkerPool:
    """Worker subprocesses serving one fabric; they exit on their own if this process dies.

    >>> pool = WorkerPool("127.0.0.1:10800", log_dir="/tmp/perper")   # doctest: +SKIP
    >>> pool.scale(2)                                                  # doctest: +SKIP
    """

    def __init__(self, address: str, log_dir: Path | str, *, slots: int | None = None) -> None:
        self.address = address
        self.log_dir = Path(log_dir)
        self.slots = slots
        self.processes: list[subprocess.Popen] = []
        self._started = 0

    def __len__(self) -> int:
        self._reap()
        return len(self.processes)

    def scale(self, count: int) -> None:
        """Start or stop workers until ``count`` are running."""
        if count < 0:
            raise PerperError(f"the number of workers cannot be negative ({count})")
        self._reap()
        while len(self.processes) < count:
            self.processes.append(self._spawn())
        while len(self.processes) > count:
            self._terminate(self.processes.pop())

    def _spawn(self) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._started += 1
        log = (self.log_dir / f"worker-{self._started}.log").open("ab")
        args = [sys.executable, "-m", "perper_lab.cli", "worker", "--fabric", self.address,
                "--exit-with-parent"]
        if self.slots:
            args += ["--slots", str(self.slots)]
        with log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def kill(self, index: int = 0) -> int:
        """Crash one worker with SIGKILL (for fault tests and demos); returns its pid."""
        self._reap()
        process = self.processes.pop(index)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        return process.pid

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            self._wait_or_kill(process)
        self.processes.clear()

    def _terminate(self, process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGTERM)
        self._wait_or_kill(process)

    @staticmethod
    def _wait_or_kill(process: subprocess.Popen, timeout: float = 10.0) -> None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _reap(self) -> None:
        self.processes = [p for p in self.processes if p.poll() is None]

    @property
    def pids(self) -> list[int]:
        self._reap()
        return [p.pid for p in self.processes]


def exit_with_parent(poll: float = 1.0) -> None:
    """Block-free watchdog: a daemon thread that ends this process once its parent is gone."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="perper-parent-watch", daemon=True).start()
