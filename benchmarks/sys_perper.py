"""perper_lab: the workloads as registered functions on the benchmark's fabric and worker pool.

A run: create the input stream, register the function, wait until its instances are claimed by the
workers, start one consumer thread per output partition (``Stream.read_batches(p, follow=True)``,
each with its own connection), then replay the events with perper_lab's own source
(``from_iterable``, in a background thread of this process). The clock runs from the first append to
the moment the consumers have read the last output batch and every end marker: ingest, processing
and reading the output, end to end. The "preloaded" variant writes the input first, untimed, and
runs the clock from the moment the instances are claimed.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks import workloads as wl
from benchmarks.environment import BenchFabric, ProcessMonitor
from perper_lab.fabric.client import FabricClient
from perper_lab.runtime.registry import LEASES_CACHE, STATE_CACHE, delete_function, done_key, register_function
from perper_lab.streams import create_stream, open_stream
from perper_lab.streams.sources import from_iterable

FOLLOW_TIMEOUT = 300.0
_counter = itertools.count()


@dataclass
class PipelineRun:
    seconds: float = 0.0
    outputs: list[Any] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    processes: dict[str, Any] | None = None
    claim_s: float | None = None  # register_function returned -> every instance claimed by a worker
    stamps: tuple[float, float] | None = None  # W4: first and last append stamp seen
    input_batches: int = 0  # batches the replay wrote (events per batch = events / input_batches)

    @property
    def offered_rate(self) -> float | None:
        """W4: the rate at which the events were actually appended (first to last stamp)."""
        if not self.stamps or len(self.latencies) < 2 or self.stamps[1] <= self.stamps[0]:
            return None
        return (len(self.latencies) - 1) / (self.stamps[1] - self.stamps[0])


def _names() -> tuple[str, str]:
    tag = f"b{next(_counter)}_{uuid.uuid4().hex[:6]}"
    return f"{tag}_in", f"{tag}_out"


def wait_claimed(bench: BenchFabric, output: str, parallelism: int, timeout: float = 30.0) -> None:
    """Wait until every instance of the (new) function writing ``output`` has been claimed by a worker.

    Polls every 20 ms (perper_lab's ``wait_deployed`` polls every 100 ms): a preloaded run's clock
    starts here, and the worker begins as soon as it has claimed the lease. An instance that has
    already finished (and so given its lease back) counts as claimed: on a small preloaded input one
    instance can finish before a worker's next refresh claims the other.
    """
    assert bench.client is not None
    keys = sorted(f"{output}#{i}" for i in range(parallelism))
    deadline = time.monotonic() + timeout

    def unclaimed() -> int:
        leased = bench.client.cache(LEASES_CACHE).get_all(keys)
        done = bench.client.cache(STATE_CACHE).get_all([done_key(k) for k in keys])
        return sum(1 for k in keys if k not in leased and done_key(k) not in done)

    while unclaimed():
        if time.monotonic() > deadline:
            raise TimeoutError(f"function {output!r}: instances not claimed within {timeout:g}s")
        time.sleep(0.02)


class _Consumer:
    """Follows every partition of a stream, each in a thread with its own connection."""

    def __init__(self, address: str, name: str, partitions: int, on_batch: Callable[[list[Any]], None]) -> None:
        self.address = address
        self.name = name
        self.on_batch = on_batch
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._follow, args=(p,), daemon=True, name=f"consume-{p}")
                         for p in range(partitions)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float, workers: list[int]) -> None:
        """Wait for every partition's end; fail at once if a worker process dies meanwhile."""
        deadline = time.monotonic() + timeout
        while any(thread.is_alive() for thread in self._threads):
            dead = [pid for pid in workers if not _alive(pid)]
            if dead:
                raise RuntimeError(f"worker process(es) {dead} died while {self.name!r} was being produced")
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers of {self.name!r} did not finish within {timeout:g}s")
            for thread in self._threads:
                thread.join(0.2)
                if thread.is_alive():
                    break
        if self.errors:
            raise self.errors[0]

    def _follow(self, partition: int) -> None:
        try:
            with FabricClient(self.address, timeout=30.0) as own:
                stream = open_stream(own, self.name)
                for _, items in stream.read_batches(partition, follow=True, timeout=FOLLOW_TIMEOUT):
                    if items:
                        with self._lock:
                            self.on_batch(items)
        except BaseException as exc:  # re-raised by join()
            self.errors.append(exc)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _roles(bench: BenchFabric) -> dict[str, list[int]]:
    assert bench.pool is not None
    return {"worker": bench.pool.pids, "ignite": bench.jvm_pids, "driver": [os.getpid()]}


def run_pipeline(bench: BenchFabric, events: Iterable[Any], fn: Callable[..., Any], *, kind: str = "map",
                 partitions: int = 1, key: str | None = None, rate: float | None = None,
                 latency: bool = False, preload: bool = False, view: bool = False,
                 roles: dict[str, list[int]] | None = None) -> PipelineRun:
    """One timed run of ``fn`` over ``events`` on the workers now in the pool (see the module doc)."""
    assert bench.client is not None
    source, output = _names()
    run = PipelineRun()
    replay = None
    try:
        if preload:
            from_iterable(events, source, fabric=bench.client, partitions=partitions, key=key).wait_closed(600)
        else:
            create_stream(bench.client, source, partitions)
        register_function(bench.client, fn, output, [source], kind=kind, parallelism=partitions)
        registered = time.perf_counter()
        if latency:
            def on_batch(items: list[Any]) -> None:
                now = time.time()
                run.latencies.extend(now - item["appended"] for item in items)
                first, last = items[0]["appended"], items[-1]["appended"]
                run.stamps = (min(run.stamps[0], first), max(run.stamps[1], last)) if run.stamps else (first, last)
        else:
            on_batch = run.outputs.extend
        if not preload:
            wait_claimed(bench, output, partitions)
            run.claim_s = time.perf_counter() - registered
        consumer = _Consumer(bench.address, output, partitions, on_batch)
        consumer.start()
        shown = _attach_view(bench, output) if view else None
        roles = {**_roles(bench), **(roles or {})}
        with ProcessMonitor(roles) as monitor:
            if preload:
                wait_claimed(bench, output, partitions)
                run.claim_s = time.perf_counter() - registered
            started = time.perf_counter()
            if not preload:
                replay = from_iterable(events, source, fabric=bench.client, rate=rate, partitions=partitions, key=key)
            consumer.join(FOLLOW_TIMEOUT, roles["worker"])
            run.seconds = time.perf_counter() - started
        run.processes = monitor.summary()
        if replay is not None:
            replay.wait_closed(60)
            run.input_batches = sum(head.batches for head in replay.heads())
        if shown is not None:
            shown.stop()
    finally:
        _drop(bench, source, output)
    return run


def _drop(bench: BenchFabric, source: str, output: str) -> None:
    from perper_lab.streams import delete_stream

    assert bench.client is not None
    try:
        delete_function(bench.client, output)
    except Exception as exc:  # a run that failed before registering has no function to delete
        print(f"    (cleanup of {output}: {exc})", flush=True)
    try:
        delete_stream(bench.client, source)
    except Exception as exc:
        print(f"    (cleanup of {source}: {exc})", flush=True)


def _attach_view(bench: BenchFabric, output: str) -> Any:
    from perper_lab.notebook.view import StreamView

    assert bench.client is not None
    return StreamView(open_stream(bench.client, output), errors=open_stream(bench.client, output + ".errors"))


# -- the workloads ------------------------------------------------------------------------------

def w1(bench: BenchFabric, events: list[Any], workers: int, *, preload: bool = False,
       view: bool = False, roles: dict[str, list[int]] | None = None) -> PipelineRun:
    return run_pipeline(bench, events, wl.w1_map, partitions=workers, preload=preload, view=view, roles=roles)


def w2(bench: BenchFabric, events: list[Any], workers: int) -> PipelineRun:
    # Partitioned by carrier, so each carrier's events reach one instance in order; the state lives in
    # a module-level dict of the worker process (benchmarks.workloads.WORKER_STATE), one entry per run.
    fn = functools.partial(wl.w2_in_worker, uuid.uuid4().hex)
    return run_pipeline(bench, events, fn, partitions=workers, key="carrier")


def w3(bench: BenchFabric, events: list[Any], workers: int) -> PipelineRun:
    return run_pipeline(bench, events, wl.w3_frame, kind="batch", partitions=workers)


def w4(bench: BenchFabric, events: list[Any], workers: int, rate: float, seconds: float,
       roles: dict[str, list[int]] | None = None) -> PipelineRun:
    total = int(rate * seconds)
    # Stamped as from_iterable takes the item, i.e. just before its writer.append; it paces by itself.
    stamped = ({**event, "appended": time.time()} for event in itertools.islice(itertools.cycle(events), total))
    return run_pipeline(bench, stamped, wl.w4_map, partitions=workers, rate=rate, latency=True, roles=roles)


# -- time to the first live view ----------------------------------------------------------------

CELL = '''def keep_delayed(flight):
    if flight["dep_delay"] > 60:
        return {"carrier": flight["carrier"], "flight": flight["flight"], "dep_delay": flight["dep_delay"]}
'''
_ITEMS = re.compile(r"items: <b>([\d,]+)</b>")


@dataclass
class FirstView:
    cell_returned_s: float
    first_items_s: float
    items_shown: int


def first_views(bench: BenchFabric, events: list[Any], runs: int) -> list[FirstView]:
    """``%%perper_stream`` in a real IPython shell on the warm fabric: time to the view's first items.

    The input (one copy of the flights) is written once, before; each run registers the cell's
    function under a new output name and polls the view's counters every millisecond.
    """
    from IPython.core.interactiveshell import InteractiveShell

    assert bench.client is not None
    source = _names()[0]
    from_iterable(events, source, fabric=bench.client).wait_closed(600)
    os.environ["PERPER_FABRIC"] = bench.address
    shell = InteractiveShell.instance()
    results = []
    try:
        shell.run_line_magic("load_ext", "perper_lab")
        for _ in range(runs):
            output = _names()[1]
            started = time.perf_counter()
            view = shell.run_cell_magic("perper_stream", f"{output} --input {source}", CELL)
            returned = time.perf_counter() - started
            shown = 0
            while not shown:
                found = _ITEMS.search(view.counters.value)
                shown = int(found.group(1).replace(",", "")) if found else 0
                if time.perf_counter() - started > 60:
                    raise TimeoutError("the view showed no items within 60 s")
                if not shown:
                    time.sleep(0.001)
            results.append(FirstView(returned, time.perf_counter() - started, shown))
            view.stop()
            open_stream(bench.client, output).wait_closed(120)
            delete_function(bench.client, output)
    finally:
        shell.run_line_magic("unload_ext", "perper_lab")
        InteractiveShell.clear_instance()
        os.environ.pop("PERPER_FABRIC", None)
        from perper_lab.streams import delete_stream

        delete_stream(bench.client, source)
    return results
