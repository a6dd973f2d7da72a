"""The plain Python loop over the same events: the in-process limit and the reference output."""

from __future__ import annotations

from typing import Any

from benchmarks import workloads as wl
from benchmarks.data import chunks
from benchmarks.pacing import paced


def w1(events: list[dict[str, Any]]) -> list[Any]:
    out = []
    for event in events:
        if wl.is_delayed(event):
            out.append(wl.project(event))
    return out


def w2(events: list[dict[str, Any]]) -> list[Any]:
    state: dict[str, tuple[int, float]] = {}
    out = []
    for event in events:
        update = wl.running_update(state, event)
        if update is not None:
            out.append(update)
    return out


def w3(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    partials: list[dict[str, Any]] = []
    for batch in chunks(events):
        partials.extend(wl.w3_batch(batch))
    return wl.reduce_partials(partials)


def w4(events: list[dict[str, Any]], rate: float, seconds: float) -> list[float]:
    """Latency of the plain loop: stamp, map, see. Measures only the Python call itself."""
    import time

    latencies = []
    for event in paced(events, rate, seconds):
        seen = wl.w4_map(event)
        latencies.append(time.time() - seen["appended"])
    return latencies
