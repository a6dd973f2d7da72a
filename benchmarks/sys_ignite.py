"""The raw Ignite ceiling: the same encoded batches through the same fabric, with pyignite and nothing else.

Two variants, both in one process with no framework (no heads, offsets, leases, error streams,
polling) and perper_lab's own page sizes: as many batches per ``put_all`` as a worker's step writes
(``BATCHES_PER_STEP``), as many per ``get_all`` as a reader's page (``READ_PAGE``):

* ``transport``: the W1 input, encoded beforehand with perper_lab's ``encode_items`` in batches of
  1,000, ``put_all`` into the batches cache and ``get_all`` back. The clock covers only the two
  transfers: this is what the fabric and pyignite can move. Afterwards (untimed) the bytes are
  compared, decoded and run through W1 so that the output is checked like every other system's.
* ``codec``: the whole W1 data path without a framework: encode, ``put_all``, ``get_all``, decode,
  W1, and the (small) output through the fabric the same way, one step after the other.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyignite import Client

from benchmarks import workloads as wl
from benchmarks.data import chunks
from perper_lab.fabric.client import parse_addresses
from perper_lab.runtime.runners import BATCHES_PER_STEP as WRITE_PAGE
from perper_lab.streams.encoding import decode_items, encode_items
from perper_lab.streams.stream import BATCHES_CACHE, READ_PAGE


@dataclass
class CeilingRun:
    seconds: float
    outputs: list[Any] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


def _put(cache: Any, prefix: str, values: list[bytes]) -> None:
    for start in range(0, len(values), WRITE_PAGE):
        cache.put_all({f"{prefix}/{seq}": values[seq] for seq in range(start, min(start + WRITE_PAGE, len(values)))})


def _get(cache: Any, prefix: str, count: int) -> list[bytes]:
    out = []
    for start in range(0, count, READ_PAGE):
        keys = [f"{prefix}/{seq}" for seq in range(start, min(start + READ_PAGE, count))]
        found = cache.get_all(keys)
        out.extend(found[key] for key in keys)
    return out


def _remove(cache: Any, prefix: str, count: int) -> None:
    keys = [f"{prefix}/{seq}" for seq in range(count)]
    for start in range(0, count, 1000):
        cache.remove_keys(keys[start:start + 1000])


class _Connection:
    def __init__(self, address: str) -> None:
        self.client = Client(timeout=60.0)
        self.client.connect(parse_addresses(address))
        self.cache = self.client.get_or_create_cache(BATCHES_CACHE)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()


def transport(address: str, events: list[Any]) -> CeilingRun:
    encoded = [encode_items(batch) for batch in chunks(events)]
    prefix = f"ceiling-{uuid.uuid4().hex[:8]}"
    with _Connection(address) as conn:
        started = time.perf_counter()
        _put(conn.cache, prefix, encoded)
        written = time.perf_counter()
        back = _get(conn.cache, prefix, len(encoded))
        done = time.perf_counter()
        _remove(conn.cache, prefix, len(encoded))
    if back != encoded:
        raise AssertionError("the fabric returned different bytes than were written")
    run = CeilingRun(done - started, phases={"put_all": written - started, "get_all": done - written})
    for value in back:
        run.outputs.extend(y for y in map(wl.w1_map, decode_items(value)) if y is not None)
    return run


def codec(address: str, events: list[Any]) -> CeilingRun:
    prefix = f"ceiling-{uuid.uuid4().hex[:8]}"
    with _Connection(address) as conn:
        run = CeilingRun(0.0)
        started = time.perf_counter()
        encoded = [encode_items(batch) for batch in chunks(events)]
        _put(conn.cache, prefix + "-in", encoded)
        written = time.perf_counter()
        out = []
        for value in _get(conn.cache, prefix + "-in", len(encoded)):
            out.append(encode_items([y for y in map(wl.w1_map, decode_items(value)) if y is not None]))
        processed = time.perf_counter()
        _put(conn.cache, prefix + "-out", out)
        for value in _get(conn.cache, prefix + "-out", len(out)):
            run.outputs.extend(decode_items(value))
        run.seconds = time.perf_counter() - started
        run.phases = {"encode + put_all": written - started, "get_all + decode + W1 + encode": processed - written,
                      "output put_all + get_all + decode": started + run.seconds - processed}
        _remove(conn.cache, prefix + "-in", len(encoded))
        _remove(conn.cache, prefix + "-out", len(out))
    return run
