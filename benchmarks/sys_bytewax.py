"""Bytewax 0.21: a dataflow run in this process with ``bytewax.testing.run_main`` (one worker).

The source hands out the in-memory events in batches of 1,000 (what a Kafka source does; Bytewax's
``TestingSource`` would default to batches of 1), and the sink appends each output batch to a list.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from benchmarks import workloads as wl
from benchmarks.data import BATCH


class _ListPartition(StatelessSourcePartition):
    def __init__(self, items: list[Any], batch: int) -> None:
        self._items = items
        self._batch = batch
        self._next = 0

    def next_batch(self) -> list[Any]:
        if self._next >= len(self._items):
            raise StopIteration()
        start = self._next
        self._next += self._batch
        return self._items[start:self._next]


class ListSource(DynamicSource):
    def __init__(self, items: list[Any], batch: int = BATCH) -> None:
        self._items = items
        self._batch = batch

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ListPartition:
        return _ListPartition(self._items if worker_index == 0 else [], self._batch)


class _PacedPartition(StatelessSourcePartition):
    """Emits the events due by now (stamped as they are handed over), then sleeps until the next is due."""

    def __init__(self, items: list[Any], rate: float, seconds: float) -> None:
        self._items = items
        self._rate = rate
        self._total = int(rate * seconds)
        self._sent = 0
        self._started = time.monotonic()

    def next_batch(self) -> list[Any]:
        if self._sent >= self._total:
            raise StopIteration()
        due = min(self._total, int((time.monotonic() - self._started) * self._rate) + 1)
        batch = []
        while self._sent < due:
            event = self._items[self._sent % len(self._items)]
            batch.append({**event, "appended": time.time()})
            self._sent += 1
        return batch

    def next_awake(self) -> datetime | None:
        wait = self._started + self._sent / self._rate - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))


class PacedSource(DynamicSource):
    def __init__(self, items: list[Any], rate: float, seconds: float) -> None:
        self._args = (items, rate, seconds)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PacedPartition:
        items, rate, seconds = self._args
        return _PacedPartition(items, rate, seconds if worker_index == 0 else 0)


class _ListSinkPartition(StatelessSinkPartition):
    def __init__(self, out: list[Any], on_batch: Any) -> None:
        self._out = out
        self._on_batch = on_batch

    def write_batch(self, items: list[Any]) -> None:
        if self._on_batch is not None:
            self._on_batch(items)
        else:
            self._out.extend(items)


class ListSink(DynamicSink):
    def __init__(self, out: list[Any], on_batch: Any = None) -> None:
        self._out = out
        self._on_batch = on_batch

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ListSinkPartition:
        return _ListSinkPartition(self._out, self._on_batch)


def w1(events: list[dict[str, Any]]) -> list[Any]:
    flow = Dataflow("w1")
    stream = op.input("in", flow, ListSource(events))
    delayed = op.filter("delayed", stream, wl.is_delayed)
    projected = op.map("project", delayed, wl.project)
    out: list[Any] = []
    op.output("out", projected, ListSink(out))
    run_main(flow)
    return out


def _running(state: tuple[int, float] | None, event: dict[str, Any]) -> tuple[tuple[int, float], tuple]:
    count, total = state or (0, 0.0)
    count += 1
    total += event["dep_delay"]
    return (count, total), (count, total / count)


def w2(events: list[dict[str, Any]]) -> list[Any]:
    flow = Dataflow("w2")
    stream = op.input("in", flow, ListSource(events))
    known = op.filter("known", stream, wl.has_delay)
    keyed = op.key_on("carrier", known, lambda event: event["carrier"])
    running = op.stateful_map("running", keyed, _running)
    out: list[Any] = []
    op.output("out", running, ListSink(out))
    run_main(flow)
    return [(carrier, count, mean) for carrier, (count, mean) in out]


def w3(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    flow = Dataflow("w3")
    stream = op.input("in", flow, ListSource(events))
    partials = op.flat_map_batch("per_batch", stream, wl.w3_batch)
    out: list[Any] = []
    op.output("out", partials, ListSink(out))
    run_main(flow)
    return wl.reduce_partials(out)


def w4(events: list[dict[str, Any]], rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []

    def seen(items: list[Any]) -> None:
        now = time.time()
        latencies.extend(now - item["appended"] for item in items)

    flow = Dataflow("w4")
    stream = op.input("in", flow, PacedSource(events, rate, seconds))
    mapped = op.map("project", stream, wl.w4_map)
    op.output("out", mapped, ListSink([], on_batch=seen))
    run_main(flow)
    return latencies
