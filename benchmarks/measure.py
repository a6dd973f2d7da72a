"""Repeated, checked measurements: every run's output is compared with the plain loop's before it counts."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks.workloads import Outcome


class Machine:
    """CPU used by other processes on this (shared) machine, and a gate that waits for a quiet moment.

    "Ours" is this process and all its descendants (workers, Ignite JVM). Foreign load is the machine's
    busy CPU time minus ours, in cores, over an interval.
    """

    def __init__(self, wait_budget: float = 240.0) -> None:
        self.wait_budget = wait_budget
        self.waited = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    @staticmethod
    def _ours() -> float:
        me = psutil.Process()
        total = 0.0
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), self._busy(), self._ours()

    @staticmethod
    def foreign(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        elapsed = after[0] - before[0]
        if elapsed <= 0:
            return 0.0
        return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / elapsed)

    def wait_quiet(self, threshold: float = 0.3, window: float = 0.5, limit: float = 20.0) -> float:
        """Wait (at most ``limit`` s, within the run's budget) for a window with foreign load < threshold."""
        started = time.monotonic()
        while True:
            before = self.snapshot()
            time.sleep(window)
            load = self.foreign(before, self.snapshot())
            spent = time.monotonic() - started
            if load < threshold or spent >= limit or self.waited + spent >= self.wait_budget:
                self.waited += spent
                return load


MACHINE = Machine()


@dataclass
class Series:
    """The runs of one system on one workload. ``failed`` says why it is not timed, if it is not."""

    workload: str
    system: str
    events: int
    seconds: list[float] = field(default_factory=list)
    failed: str | None = None
    extras: list[dict[str, Any]] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies, default=float("nan")) * 1000,
            "count": len(latencies)}


def checked_run(series: Series, run: Callable[[], tuple[float, Outcome, dict[str, Any]]],
                expected: Outcome, label: str = "") -> None:
    """Run once; time it only if its outcome equals ``expected``, otherwise mark the series FAILED."""
    if series.failed:
        return
    MACHINE.wait_quiet()
    stamp = time.time()
    started = time.perf_counter()
    before = MACHINE.snapshot()
    try:
        seconds, got, extra = run()
    except Exception as exc:
        series.failed = f"error: {type(exc).__name__}: {exc}"
        print(f"  {series.workload} {series.system}{label}: FAILED ({series.failed})", flush=True)
        traceback.print_exc()
        return
    if got != expected:
        series.failed = f"output differs from the plain loop: got {got}, expected {expected}"
        print(f"  {series.workload} {series.system}{label}: FAILED ({series.failed})", flush=True)
        return
    extra["foreign_cores"] = MACHINE.foreign(before, MACHINE.snapshot())
    extra["started"] = stamp
    series.seconds.append(seconds)
    series.extras.append(extra)
    wall = time.perf_counter() - started
    print(f"  {series.workload} {series.system}{label}: {seconds:.2f} s, {series.events / seconds:,.0f} events/s "
          f"({got.count:,} out; {wall:.1f} s with set-up and checks; other processes used "
          f"{extra['foreign_cores']:.2f} cores)", flush=True)
