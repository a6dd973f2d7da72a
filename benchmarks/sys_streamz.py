"""streamz: a synchronous streamz pipeline in this process, fed with ``emit``."""

from __future__ import annotations

import time
from typing import Any

from streamz import Stream

from benchmarks import workloads as wl
from benchmarks.data import chunks
from benchmarks.pacing import paced


def w1(events: list[dict[str, Any]]) -> list[Any]:
    source = Stream()
    out: list[Any] = []
    source.filter(wl.is_delayed).map(wl.project).sink(out.append)
    emit = source.emit
    for event in events:
        emit(event)
    return out


def w2(events: list[dict[str, Any]]) -> list[Any]:
    source = Stream()
    out: list[Any] = []

    def step(state: dict[str, tuple[int, float]], event: dict[str, Any]) -> tuple[dict, tuple]:
        return state, wl.running_update(state, event)

    source.filter(wl.has_delay).accumulate(step, start={}, returns_state=True).sink(out.append)
    emit = source.emit
    for event in events:
        emit(event)
    return out


def w3(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    # streamz has no batch kind of its own: the source emits lists of 1,000 events (like perper_lab's
    # batches), each mapped through the same DataFrame function, then reduced.
    source = Stream()
    partials: list[Any] = []
    source.map(wl.w3_batch).sink(partials.extend)
    for batch in chunks(events):
        source.emit(batch)
    return wl.reduce_partials(partials)


def w4(events: list[dict[str, Any]], rate: float, seconds: float) -> list[float]:
    source = Stream()
    latencies: list[float] = []
    source.map(wl.w4_map).sink(lambda item: latencies.append(time.time() - item["appended"]))
    for event in paced(events, rate, seconds):
        source.emit(event)
    return latencies
