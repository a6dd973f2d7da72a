"""Offering events at a fixed rate, each stamped with the moment it is handed to the system."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import cycle, islice
from typing import Any


def paced(events: list[dict[str, Any]], rate: float, seconds: float) -> Iterator[dict[str, Any]]:
    """Yield ``rate * seconds`` events on schedule (sleeping when ahead), each with ``appended``.

    The stamp is taken when the event is yielded, i.e. just before the system's append/emit call.
    """
    total = int(rate * seconds)
    started = time.monotonic()
    for index, event in enumerate(islice(cycle(events), total)):
        ahead = started + index / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        yield {**event, "appended": time.time()}
