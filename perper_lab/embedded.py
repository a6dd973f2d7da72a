"""The embedded fabric of a notebook: one local Ignite node and a local worker pool, kept by a supervisor.

A notebook kernel that has no ``PERPER_FABRIC`` starts a supervisor process keyed by the kernel's id.
The supervisor starts the fabric and the workers, restarts a worker that dies, and stops everything
``grace`` seconds after the last attached kernel is gone. A restarted kernel keeps its id, so it finds
the same supervisor and re-attaches: functions keep running meanwhile, and no stream is lost.

Files in the supervisor's directory: ``ready.json`` (address, pid), ``kernels/PID`` (attached
kernels), ``workers.json`` (the wanted number of workers), ``state.json`` (the workers' pids),
``supervisor.log``, and ``fabric/`` (the node's run directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from perper_lab.errors import PerperError
from perper_lab.fabric.launcher import default_run_dir, start_on_free_ports
from perper_lab.runtime.pool import WorkerPool

DEFAULT_GRACE = 20.0
ERROR_PREFIX = "perper-lab: error: "


def embedded_root() -> Path:
    return default_run_dir().parent / "embedded"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data))
    partial.replace(path)  # readers never see half a file


class EmbeddedFabric:
    """The kernel's side: attach to (or start) the supervisor in ``directory``."""

    def __init__(self, directory: Path | str, *, workers: int = 1, grace: float | None = None) -> None:
        self.directory = Path(directory)
        self.workers = workers
        self.grace = grace if grace is not None else float(os.environ.get("PERPER_EMBEDDED_GRACE", DEFAULT_GRACE))

    @property
    def ready(self) -> dict | None:
        ready = _read_json(self.directory / "ready.json")
        return ready if ready and _alive(ready["pid"]) else None

    def attach(self, timeout: float = 180.0) -> tuple[str, bool]:
        """Attach this process; return (fabric address, whether an existing fabric was re-attached)."""
        (self.directory / "kernels").mkdir(parents=True, exist_ok=True)
        (self.directory / "kernels" / str(os.getpid())).touch()
        ready = self.ready
        if ready:
            return ready["address"], True
        (self.directory / "ready.json").unlink(missing_ok=True)
        log = (self.directory / "supervisor.log").open("ab")
        with log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "perper_lab.embedded", str(self.directory), "--workers", str(self.workers),
                 "--grace", str(self.grace)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (ready := self.ready):
            if supervisor.poll() is not None:
                raise PerperError(f"the embedded fabric did not start: {self._failure()}")
            if time.monotonic() > deadline:
                supervisor.terminate()
                raise PerperError(f"the embedded fabric was not ready within {timeout:g}s; "
                                  f"see {self.directory / 'supervisor.log'}")
            time.sleep(0.2)
        return ready["address"], False

    def _failure(self) -> str:
        lines = (self.directory / "supervisor.log").read_text(errors="replace").splitlines()
        reasons = [line.removeprefix(ERROR_PREFIX) for line in lines if line.startswith(ERROR_PREFIX)]
        return reasons[-1] if reasons else "\n".join(lines[-8:])

    def detach(self) -> None:
        (self.directory / "kernels" / str(os.getpid())).unlink(missing_ok=True)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the supervisor now (and with it the fabric and the workers)."""
        ready = _read_json(self.directory / "ready.json")
        if not ready or not _alive(ready["pid"]):
            return
        os.kill(ready["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(ready["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the worker pool, through the supervisor ----------------------------------------------

    @property
    def pids(self) -> list[int]:
        state = _read_json(self.directory / "state.json") or {}
        return [pid for pid in state.get("workers", []) if _alive(pid)]

    def __len__(self) -> int:
        return len(self.pids)

    def __repr__(self) -> str:
        ready = self.ready
        where = f"fabric {ready['address']}" if ready else "not running"
        return f"<embedded perper_lab fabric in {self.directory}: {where}, local worker pids {self.pids}>"

    def scale(self, count: int, timeout: float = 60.0) -> None:
        """Ask for ``count`` local workers and wait until they run."""
        if count < 0:
            raise PerperError(f"the number of workers cannot be negative ({count})")
        _write_json(self.directory / "workers.json", {"count": count})
        deadline = time.monotonic() + timeout
        while len(self) != count:
            if time.monotonic() > deadline:
                raise PerperError(f"{len(self)} local workers run, not {count}, after {timeout:g}s; "
                                  f"see {self.directory}")
            time.sleep(0.1)

    def kill(self, index: int = 0) -> int:
        """Crash one worker with SIGKILL (the supervisor starts a replacement); return its pid."""
        pid = self.pids[index]
        os.kill(pid, signal.SIGKILL)
        return pid


def stop_idle(root: Path | None = None) -> int:
    """Stop every embedded fabric under ``root`` that no live kernel is attached to; return how many."""
    stopped = 0
    for directory in (root or embedded_root()).glob("*/"):
        kernels = [int(p.name) for p in (directory / "kernels").glob("*") if p.name.isdigit()]
        if not any(_alive(pid) for pid in kernels) and EmbeddedFabric(directory).ready:
            EmbeddedFabric(directory).stop()
            stopped += 1
    return stopped


def supervise(directory: Path, workers: int, grace: float) -> None:
    """The supervisor process: run the fabric and the workers until no kernel has been attached for
    ``grace`` seconds, or until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fabric = start_on_free_ports(directory / "fabric", nodes=1, exit_with_pid=os.getpid())
    pool = WorkerPool(fabric.address, log_dir=directory)
    try:
        _write_json(directory / "workers.json", {"count": workers})
        idle_since: float | None = None
        ready = False
        while not stop.is_set():
            wanted = (_read_json(directory / "workers.json") or {}).get("count", workers)
            pool.scale(wanted)  # also replaces workers that died
            _write_json(directory / "state.json", {"workers": pool.pids})
            if not ready:
                _write_json(directory / "ready.json", {"address": fabric.address, "pid": os.getpid()})
                ready = True
            kernels = [p for p in (directory / "kernels").glob("*") if p.name.isdigit()]
            for kernel in kernels:
                if not _alive(int(kernel.name)):
                    kernel.unlink(missing_ok=True)
            if any(_alive(int(k.name)) for k in kernels):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > grace:
                break
            stop.wait(0.5)
    finally:
        pool.stop()
        fabric.stop()
        shutil.rmtree(directory / "fabric" / "work", ignore_errors=True)  # in-memory data: nothing to keep
        # Last: whoever waits for this supervisor to stop sees it until the fabric is really gone.
        (directory / "ready.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="supervisor of a notebook's embedded fabric")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    args = parser.parse_args(argv)
    try:
        supervise(args.directory, args.workers, args.grace)
    except PerperError as exc:
        print(f"{ERROR_PREFIX}{exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
