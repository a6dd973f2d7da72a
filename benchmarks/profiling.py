"""Where perper_lab's time goes: pyinstrument profiles of a worker (W1, W4), the writer and the reader.

* the worker: a worker process of our own (``benchmarks.variants.CustomWorker`` with ``profile``)
  runs perper_lab's unchanged ``Worker`` in its main thread; SIGUSR1 starts the profiler and SIGUSR2
  stops it and saves the session, so that only the run is profiled;
* the ingest path: ``StreamWriter.extend`` + ``close`` of the W1 events, in this process;
* the read path: ``Stream.read_batches`` of the same stream, in this process.

Each profile is reduced to buckets (wall-clock self time, each sample charged to the innermost
enclosing bucket) so that the report can say which part dominates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyinstrument import Profiler
from pyinstrument.session import Session

# (bucket, function name, a substring of the file path); the innermost enclosing match wins. Time in
# pyignite's Connection.send/recv (waiting on Ignite's answer) is charged to the fabric call it serves.
SOCKET = "socket"
BUCKETS: list[tuple[str, str, str]] = [
    (SOCKET, "recv", "pyignite/connection"),
    (SOCKET, "send", "pyignite/connection"),
    ("decode_items (pickle.loads)", "decode_items", "perper_lab/streams/encoding.py"),
    ("encode_items (pickle.dumps)", "encode_items", "perper_lab/streams/encoding.py"),
    ("the W1 function itself", "w1_map", "benchmarks/workloads.py"),
    ("the W4 function itself", "w4_map", "benchmarks/workloads.py"),
    ("run_batch (per-item loop, error policy)", "run_batch", "perper_lab/runtime/execution.py"),
    ("get_all", "get_all", "perper_lab/fabric/client.py"),
    ("put_all", "put_all", "perper_lab/fabric/client.py"),
    ("put (offset commit)", "put", "perper_lab/fabric/client.py"),
    ("get (polling for the next batch)", "get", "perper_lab/fabric/client.py"),
    ("scan (control caches)", "items", "perper_lab/fabric/client.py"),
    ("StreamWriter.append/_route (per item)", "append", "perper_lab/streams/stream.py"),
    ("worker refresh (leases, heartbeat, registry)", "refresh", "perper_lab/runtime/worker.py"),
    ("idle wait (back-off sleep)", "wait", "threading.py"),
    ("idle wait (back-off sleep)", "wait_for_new", "perper_lab/streams/stream.py"),
]
FABRIC_CALLS = {"get_all", "put_all", "put (offset commit)", "get (polling for the next batch)",
                "scan (control caches)"}


@dataclass
class Breakdown:
    title: str
    seconds: float
    shares: list[tuple[str, float]]  # (bucket, seconds), largest first


def _bucket(frame: Any) -> str | None:
    path = (frame.file_path or "").replace("\\", "/")
    for name, function, where in BUCKETS:
        if frame.function == function and where in path:
            return name
    return None


def breakdown(session: Session, title: str) -> Breakdown:
    root = session.root_frame()
    totals: dict[str, float] = {}

    def walk(frame: Any, current: str, call: str) -> None:
        bucket = _bucket(frame)
        if bucket == SOCKET:
            bucket = f"{call}: waiting on Ignite (socket)"
        elif bucket in FABRIC_CALLS:
            call = bucket
            bucket = f"{bucket}: pyignite Python side"
        bucket = bucket or current
        own = frame.time - sum(child.time for child in frame.children)
        totals[bucket] = totals.get(bucket, 0.0) + max(own, 0.0)
        for child in frame.children:
            walk(child, bucket, call)

    if root is not None:
        walk(root, "other (framework Python, pyignite internals, ...)", "other fabric call")
    return Breakdown(title, session.duration, sorted(totals.items(), key=lambda kv: -kv[1]))


def profiled(fn: Callable[[], Any]) -> tuple[Any, Session]:
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        result = fn()
    finally:
        session = profiler.stop()
    return result, session
