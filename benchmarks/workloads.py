"""The workloads' logic, shared by every system, and order-independent output checksums.

W1  stateless: keep flights that left more than an hour late, project five fields.
W2  keyed: running count and mean departure delay per carrier; one update per flight with a delay.
W3  vectorised: W2 as a DataFrame function per batch (per-carrier count and sum), reduced at the end.
W4  latency: W1's projection of every event (no filter), carrying the moment it was appended.

W2 and W3 skip cancelled flights (NaN delay). Every delay is a whole number of minutes, so sums of
floats are exact in any order and all systems agree bit for bit.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import pandas as pd

DELAY_MINUTES = 60
FIELDS = ("carrier", "flight", "origin", "dest", "dep_delay")


# -- W1 -----------------------------------------------------------------------------------------

def is_delayed(event: dict[str, Any]) -> bool:
    return event["dep_delay"] > DELAY_MINUTES  # NaN compares False: cancelled flights drop


def project(event: dict[str, Any]) -> dict[str, Any]:
    return {"carrier": event["carrier"], "flight": event["flight"], "origin": event["origin"],
            "dest": event["dest"], "dep_delay": event["dep_delay"]}


def w1_map(event: dict[str, Any]) -> dict[str, Any] | None:
    """W1 as one map (perper_lab's idiom: returning None drops the item)."""
    if event["dep_delay"] > DELAY_MINUTES:
        return {"carrier": event["carrier"], "flight": event["flight"], "origin": event["origin"],
                "dest": event["dest"], "dep_delay": event["dep_delay"]}
    return None


# -- W2 -----------------------------------------------------------------------------------------

def has_delay(event: dict[str, Any]) -> bool:
    return event["dep_delay"] == event["dep_delay"]  # not NaN


def running_update(state: dict[str, tuple[int, float]], event: dict[str, Any]) -> tuple[str, int, float] | None:
    """Fold one event into ``state`` (carrier -> (count, total)); the update ``(carrier, count, mean)``."""
    delay = event["dep_delay"]
    if delay != delay:
        return None
    carrier = event["carrier"]
    count, total = state.get(carrier, (0, 0.0))
    count += 1
    total += delay
    state[carrier] = (count, total)
    return (carrier, count, total / count)


# State of perper_lab's W2 function: a module-level dict in each worker process, one entry per run.
# The function is pickled by reference (benchmarks.workloads.w2_in_worker), so every batch a worker
# runs for that run sees the same dict. It is NOT checkpointed in the fabric: see RESULTS.md.
WORKER_STATE: dict[str, dict[str, tuple[int, float]]] = {}


def w2_in_worker(run: str, event: dict[str, Any]) -> tuple[str, int, float] | None:
    return running_update(WORKER_STATE.setdefault(run, {}), event)


# -- W3 -----------------------------------------------------------------------------------------

def w3_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-carrier count and sum of the delays in one batch (a partial aggregate)."""
    known = frame[frame["dep_delay"].notna()]
    grouped = known.groupby("carrier", sort=False)["dep_delay"].agg(["count", "sum"])
    return grouped.reset_index()


def w3_batch(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """W3 on a batch of events (DataFrame in, records out), as perper_lab's batch kind does it."""
    return w3_frame(pd.DataFrame.from_records(items)).to_dict("records")


def reduce_partials(partials: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    totals: dict[str, tuple[int, float]] = {}
    for row in partials:
        count, total = totals.get(row["carrier"], (0, 0.0))
        totals[row["carrier"]] = (count + int(row["count"]), total + float(row["sum"]))
    return totals


# -- W4 -----------------------------------------------------------------------------------------

def w4_map(event: dict[str, Any]) -> dict[str, Any]:
    return {"carrier": event["carrier"], "flight": event["flight"], "dep_delay": event["dep_delay"],
            "appended": event["appended"]}


# -- checks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What a run produced: item count and an order-independent checksum of the items."""

    count: int
    checksum: int

    def __str__(self) -> str:
        return f"{self.count:,} items, checksum {self.checksum:016x}"


def _canonical(item: Any) -> str:
    if isinstance(item, dict):
        return repr(tuple(sorted(item.items())))
    return repr(tuple(item))


def outcome(items: list[Any]) -> Outcome:
    total = 0
    for item in items:
        total += zlib.crc32(_canonical(item).encode())
    return Outcome(len(items), total & 0xFFFF_FFFF_FFFF_FFFF)


def table_outcome(totals: dict[str, tuple[int, float]]) -> Outcome:
    """A final per-carrier table (count, mean) as an outcome."""
    rows = [(carrier, count, total / count) for carrier, (count, total) in totals.items()]
    return outcome(rows)
