"""Micro-benchmarks that put a number on each proposed perper_lab change, without changing perper_lab.

Each compares perper_lab's current code path with a drop-in alternative on the same W1 batches
(1,000 flights per batch), in this process, without the fabric: the gain is an upper bound on what
the change can bring end to end. The alternatives live here, not in perper_lab.
"""

from __future__ import annotations

import marshal
import pickle
import time
from collections.abc import Callable
from typing import Any

from benchmarks.data import chunks
from perper_lab.streams.encoding import decode_items, encode_items
from perper_lab.streams.stream import Stream


def _pair(before: Callable[[], Any], after: Callable[[], Any], repeat: int = 5) -> tuple[float, float]:
    """Best-of-``repeat`` seconds of each, interleaved so that a busy moment hits both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for index, fn in enumerate((before, after)):
            started = time.perf_counter()
            fn()
            best[index] = min(best[index], time.perf_counter() - started)
    return best[0], best[1]


class _NullCache:
    def get_all(self, keys: list[str]) -> dict[str, Any]:
        return {}

    def put_all(self, pairs: dict[str, Any]) -> None:
        pass


class _NullFabric:
    address = "null"

    def cache(self, name: str) -> _NullCache:
        return _NullCache()


def _keyed_writer(partitions: int) -> Any:
    return Stream(_NullFabric(), {"name": "x", "partitions": partitions}).writer(key="carrier")  # type: ignore[arg-type]


def _keyed_as_is(events: list[Any]) -> None:
    writer = _keyed_writer(2)
    writer.extend(events)
    writer.close()


def _keyed_cached(events: list[Any]) -> None:
    """The proposed routing: crc32(repr(key)) once per distinct key, then a dict lookup."""
    writer = _keyed_writer(2)
    original, cache = writer._route, {}

    def route(item: Any) -> int:
        key = item["carrier"]
        partition = cache.get(key)
        if partition is None:
            partition = cache[key] = original(item)
        return partition

    writer._route = route
    writer.extend(events)
    writer.close()


def _marshal_decode(values: list[bytes]) -> None:
    for value in values:
        marshal.loads(value)


def run_all(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    batches = list(chunks(records))
    n = len(records)
    rows = []

    def ratio(seconds: float) -> float:
        return n / seconds  # events per second

    before, after = _pair(lambda: _keyed_as_is(records), lambda: _keyed_cached(records))
    rows.append({"name": "keyed StreamWriter.extend (stream.py, W2's input), no I/O: crc32(repr(key)) per item "
                 "-> per-key partition cache", "unit": "events/s", "before": ratio(before), "after": ratio(after)})

    encoded = [encode_items(batch) for batch in batches]
    marshalled = [marshal.dumps(batch) for batch in batches]
    before, after = _pair(lambda: [decode_items(v) for v in encoded], lambda: _marshal_decode(marshalled))
    rows.append({"name": "decode a batch (encoding.py): pickle -> marshal for plain builtin values",
                 "unit": "events/s", "before": ratio(before), "after": ratio(after),
                 "size_before": sum(map(len, encoded)) / n, "size_after": sum(map(len, marshalled)) / n})
    before, after = _pair(lambda: [encode_items(b) for b in batches], lambda: [marshal.dumps(b) for b in batches])
    rows.append({"name": "encode a batch (encoding.py): pickle -> marshal", "unit": "events/s",
                 "before": ratio(before), "after": ratio(after)})
    # What the per-item decode costs against shipping the batch as columns (what a DataFrame function needs).
    import pandas as pd

    frames = [pickle.dumps(pd.DataFrame.from_records(b), protocol=5) for b in batches]
    before, after = _pair(lambda: [pd.DataFrame.from_records(decode_items(v)) for v in encoded],
                          lambda: [pickle.loads(v) for v in frames], repeat=3)
    rows.append({"name": "batch function input (W3): decode dicts + DataFrame.from_records -> unpickle a DataFrame",
                 "unit": "events/s", "before": ratio(before), "after": ratio(after)})
    return rows
