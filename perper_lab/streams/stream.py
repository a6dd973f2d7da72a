"""Named, partitioned, persisted streams stored as batches in the fabric.

Layout (see DESIGN.md, Streams): the registry cache maps a stream name to its metadata (JSON); the
batches cache maps ``"{prefix}/{partition}/{seq}"`` to one encoded batch, with consecutive sequence
numbers from 0, and ``"{prefix}/{partition}/head"`` to the partition's counters. The last batch of a
closed partition is the end marker. A partition has one writer at a time. The prefix is the stream's
name, or ``name~g`` for generation g > 0: a function replayed from the start writes a new generation
of its output while the old one stays readable.
"""

from __future__ import annotations

import json
import random
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from perper_lab.errors import StreamClosed, StreamError, StreamNotFound
from perper_lab.fabric.client import FabricClient
from perper_lab.streams.encoding import END_OF_PARTITION, decode_items, encode_items, is_end

STREAMS_CACHE = "perper-control-streams"
BATCHES_CACHE = "perper-data-batches"
DEFAULT_LINGER = 0.05  # a writer flushes a partial batch this long after its first item
MAX_POLL_INTERVAL = 0.01  # idle readers poll at most this far apart: latency against idle load
MAX_BATCH_BYTES = 32 << 20  # larger batches are split; a larger single item is refused
READ_PAGE = 32  # batches per get_all: large enough to amortise a round trip, small enough to decode fast
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")


def batch_key(prefix: str, partition: int, seq: int) -> str:
    return f"{prefix}/{partition}/{seq}"


def head_key(prefix: str, partition: int) -> str:
    return f"{prefix}/{partition}/head"


def key_prefix(name: str, generation: int = 0) -> str:
    return name if generation == 0 else f"{name}~{generation}"


@dataclass(frozen=True)
class Head:
    """A partition's counters: batches written (the end marker excluded), items written, closed."""

    batches: int = 0
    items: int = 0
    closed: bool = False

    def encode(self) -> str:
        return json.dumps({"batches": self.batches, "items": self.items, "closed": self.closed})

    @classmethod
    def decode(cls, text: str | None) -> Head:
        return cls(**json.loads(text)) if text else cls()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise StreamError(
            f"invalid stream name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter "
            "or '_' (at most 200 characters)"
        )
    return name


def create_stream(fabric: FabricClient, name: str, partitions: int = 1, *, producer: str | None = None,
                  exist_ok: bool = True) -> Stream:
    """Create a stream (or open it if it exists with the same number of partitions)."""
    check_name(name)
    if not isinstance(partitions, int) or partitions < 1:
        raise StreamError(f"a stream needs at least one partition, not {partitions!r}")
    meta = {"name": name, "partitions": partitions, "producer": producer, "created": time.time()}
    registry = fabric.cache(STREAMS_CACHE)
    if not registry.put_if_absent(name, json.dumps(meta)):
        existing = open_stream(fabric, name)
        if not exist_ok:
            raise StreamError(f"stream {name!r} already exists")
        if existing.partitions != partitions:
            raise StreamError(
                f"stream {name!r} already exists with {existing.partitions} partition(s), not {partitions}; "
                "pick another name or delete it first"
            )
        return existing
    return Stream(fabric, meta)


def open_stream(fabric: FabricClient, name: str, generation: int | None = None) -> Stream:
    """The existing stream ``name`` (its current generation unless one is asked for).

    :class:`StreamNotFound` names the streams that do exist.
    """
    check_name(name)
    text = fabric.cache(STREAMS_CACHE).get(name)
    if text is None:
        known = sorted(meta["name"] for meta in list_streams(fabric))
        hint = f"existing streams: {', '.join(known[:20])}" if known else "the fabric has no streams yet"
        raise StreamNotFound(f"no stream named {name!r} in the fabric at {fabric.address} ({hint})")
    meta = json.loads(text)
    current = meta.get("generation", 0)
    if generation is not None:
        if not 0 <= generation <= current:
            raise StreamNotFound(f"stream {name!r} has generations 0..{current}, not {generation}")
        meta["generation"] = generation
    return Stream(fabric, meta)


def new_generation(fabric: FabricClient, name: str) -> Stream:
    """Start a new, empty generation of ``name``; the earlier ones stay readable by number."""
    stream = open_stream(fabric, name)
    meta = {**stream.meta, "generation": stream.generation + 1}
    fabric.cache(STREAMS_CACHE).put(name, json.dumps(meta))
    return Stream(fabric, meta)


def delete_stream(fabric: FabricClient, name: str) -> None:
    """Remove a stream, every generation of it, and its metadata."""
    stream = open_stream(fabric, name)
    batches = fabric.cache(BATCHES_CACHE)
    for generation in range(stream.generation + 1):
        old = open_stream(fabric, name, generation)
        for partition, head in enumerate(old.heads()):
            keys = [batch_key(old.prefix, partition, seq) for seq in range(head.batches + 1)]
            for start in range(0, len(keys), 1000):
                batches.remove_keys(keys[start:start + 1000])
            batches.remove_keys([head_key(old.prefix, partition)])
    fabric.cache(STREAMS_CACHE).remove_keys([name])


def list_streams(fabric: FabricClient) -> list[dict[str, Any]]:
    return [json.loads(text) for _, text in fabric.cache(STREAMS_CACHE).items()]


class Stream:
    """A handle on a stream in the fabric. Cheap to create; it holds no items."""

    def __init__(self, fabric: FabricClient, meta: dict[str, Any]) -> None:
        self.fabric = fabric
        self.meta = meta
        self.name: str = meta["name"]
        self.partitions: int = meta["partitions"]
        self.producer: str | None = meta.get("producer")
        self.generation: int = meta.get("generation", 0)
        self.prefix = key_prefix(self.name, self.generation)
        self._batches = fabric.cache(BATCHES_CACHE)

    def __repr__(self) -> str:
        generation = f", generation={self.generation}" if self.generation else ""
        return f"Stream({self.name!r}, partitions={self.partitions}{generation})"

    def bind(self, fabric: FabricClient) -> Stream:
        """The same stream seen through another client (e.g. one owned by a background thread)."""
        return Stream(fabric, self.meta)

    # -- counters -------------------------------------------------------------------------------

    def heads(self) -> list[Head]:
        keys = [head_key(self.prefix, p) for p in range(self.partitions)]
        found = self._batches.get_all(keys)
        return [Head.decode(found.get(key)) for key in keys]

    def count(self) -> int:
        """Items written so far, over all partitions."""
        return sum(head.items for head in self.heads())

    @property
    def closed(self) -> bool:
        return all(head.closed for head in self.heads())

    def wait_closed(self, timeout: float | None = None, poll: float = 0.05) -> None:
        """Block until every partition is closed (for a function's output: the pipeline has drained)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.closed:
            self._check_producer()
            if deadline is not None and time.monotonic() > deadline:
                heads = self.heads()
                open_parts = [p for p, head in enumerate(heads) if not head.closed]
                raise TimeoutError(
                    f"stream {self.name!r} was not closed within {timeout:g}s "
                    f"({sum(h.items for h in heads)} items so far; open partitions: {open_parts})"
                )
            time.sleep(poll)

    def _check_producer(self) -> None:
        """Raise if whatever fills this stream has failed (overridden where that can be known)."""

    # -- writing --------------------------------------------------------------------------------

    def writer(self, batch_size: int = 1000, linger: float = DEFAULT_LINGER,
               key: str | Callable[[Any], Any] | None = None) -> StreamWriter:
        return StreamWriter(self, batch_size=batch_size, linger=linger, key=key)

    def append(self, *items: Any) -> None:
        """Append a few items and flush them (for bulk writes use :meth:`writer`)."""
        writer = self.writer()
        writer.extend(items)
        writer.flush()

    def close(self) -> None:
        """Close every partition: readers finish after the items already written."""
        self.writer().close()

    # -- reading --------------------------------------------------------------------------------

    def read_batches(self, partition: int, start: int = 0, *, follow: bool = False,
                     timeout: float | None = None) -> Iterator[tuple[int, list[Any]]]:
        """Yield ``(seq, items)`` from batch ``start`` of ``partition`` until the end marker.

        Without ``follow`` it stops at the last batch written so far; with ``follow`` it waits for new
        batches (up to ``timeout`` seconds of silence, forever if None) until the partition is closed.
        """
        self._check_partition(partition)
        seq = start
        while True:
            keys = [batch_key(self.prefix, partition, s) for s in range(seq, seq + READ_PAGE)]
            found = self._batches.get_all(keys)
            for key in keys:
                value = found.get(key)
                if value is None:
                    break
                if is_end(value):
                    return
                yield seq, decode_items(value)
                seq += 1
            else:
                continue
            if not follow:
                return
            if not self.wait_for_new(partition, seq, timeout):
                raise TimeoutError(f"no new batch in {self.name!r} partition {partition} for {timeout:g}s")

    def wait_for_new(self, partition: int, seq: int, timeout: float | None) -> bool:
        """Wait until batch ``seq`` of ``partition`` exists. The one polling seam: a push can replace it."""
        key = batch_key(self.prefix, partition, seq)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self._batches.get(key) is None:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, MAX_POLL_INTERVAL)
        return True

    def __iter__(self) -> Iterator[Any]:
        """Every item written so far, partition by partition, each partition in order."""
        for partition in range(self.partitions):
            for _, items in self.read_batches(partition):
                yield from items

    def to_pandas(self, start: int | None = None, stop: int | None = None) -> pd.DataFrame:
        """Items ``start:stop`` (partition by partition) as a DataFrame; dict items become columns."""
        items = []
        position = 0
        start = start or 0
        for partition in range(self.partitions):
            for _, batch in self.read_batches(partition):
                end = position + len(batch)
                if end > start:
                    items.extend(batch[max(0, start - position):None if stop is None else stop - position])
                position = end
                if stop is not None and position >= stop:
                    return to_frame(items)
        return to_frame(items)

    def head(self, n: int = 5) -> pd.DataFrame:
        return self.to_pandas(0, n)

    def sample(self, n: int = 5, seed: int | None = None) -> pd.DataFrame:
        """``n`` items drawn uniformly from the stream, read batch by batch (reservoir sampling)."""
        chooser = random.Random(seed)
        chosen: list[Any] = []
        for seen, item in enumerate(self):
            if seen < n:
                chosen.append(item)
            else:
                slot = chooser.randrange(seen + 1)
                if slot < n:
                    chosen[slot] = item
        return to_frame(chosen)

    def tail(self, n: int = 5) -> pd.DataFrame:
        """The last ``n`` items of the last partitions, read backwards batch by batch."""
        heads = self.heads()
        chunks: list[list[Any]] = []
        wanted = n
        for partition in reversed(range(self.partitions)):
            for seq in reversed(range(heads[partition].batches)):
                if wanted <= 0:
                    break
                value = self._batches.get(batch_key(self.prefix, partition, seq))
                batch = decode_items(value) if value is not None else []
                chunks.append(batch[-wanted:] if wanted < len(batch) else batch)
                wanted -= len(chunks[-1])
        return to_frame([item for chunk in reversed(chunks) for item in chunk])

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise StreamError(f"stream {self.name!r} has partitions 0..{self.partitions - 1}, not {partition}")


def to_frame(items: list[Any]) -> pd.DataFrame:
    """Dict items become columns; any other items become one column named ``value``."""
    if items and all(isinstance(item, dict) for item in items):
        return pd.DataFrame.from_records(items)
    return pd.DataFrame({"value": items})


def _encode_bounded(items: list[Any]) -> list[tuple[bytes, int]]:
    """Encode ``items`` as one batch, or as several if one would exceed MAX_BATCH_BYTES: a fabric node
    holds a whole batch in its heap while it stores it."""
    if not items:
        return []
    value = encode_items(items)
    if len(value) <= MAX_BATCH_BYTES:
        return [(value, len(items))]
    if len(items) == 1:
        raise StreamError(f"an item of {len(value) / 2**20:.0f} MB is larger than the {MAX_BATCH_BYTES >> 20} MB "
                          "a stream item may take; store large data elsewhere and stream references to it")
    half = len(items) // 2
    return _encode_bounded(items[:half]) + _encode_bounded(items[half:])


def _field_key(field: str) -> Callable[[Any], Any]:
    """``key="carrier"``: the item's field, with an error that names the key when an item has none."""
    def key_of(item: Any) -> Any:
        try:
            return item[field]
        except (KeyError, TypeError, IndexError) as exc:
            raise StreamError(f"cannot route by key {field!r}: the item {item!r:.80} has no field {field!r} "
                              f"({type(exc).__name__}); pass key= a function of the item, or no key") from None
    return key_of


class StreamWriter:
    """Buffers appends and writes them as batches, like a Kafka producer.

    A batch is flushed when it holds ``batch_size`` items, or on the next append after ``linger``
    seconds, or on :meth:`flush`/:meth:`close`. Items are routed to partitions round-robin, or by
    ``key`` (a dict field name or a function of the item) so that items with one key stay in order.
    """

    def __init__(self, stream: Stream, batch_size: int = 1000, linger: float = DEFAULT_LINGER,
                 key: str | Callable[[Any], Any] | None = None) -> None:
        if batch_size < 1:
            raise StreamError(f"batch_size must be at least 1, not {batch_size}")
        if stream.producer:
            raise StreamError(f"stream {stream.name!r} is written by the function {stream.producer!r}; "
                              "a partition has one writer, so write to another stream (or to its input)")
        self.stream = stream
        self.batch_size = batch_size
        self.linger = linger
        self._key = _field_key(key) if isinstance(key, str) else key
        self._heads = stream.heads()
        self._buffers: list[list[Any]] = [[] for _ in range(stream.partitions)]
        self._oldest: float | None = None
        self._next_partition = 0

    def _route(self, item: Any) -> int:
        if self.stream.partitions == 1:
            return 0
        if self._key is None:
            partition = self._next_partition
            self._next_partition = (partition + 1) % self.stream.partitions
            return partition
        # crc32, not hash(): the same key must reach the same partition from every process.
        return zlib.crc32(repr(self._key(item)).encode()) % self.stream.partitions

    def append(self, item: Any) -> None:
        partition = self._route(item)
        if self._heads[partition].closed:
            raise StreamClosed(f"stream {self.stream.name!r} partition {partition} is closed")
        buffer = self._buffers[partition]
        buffer.append(item)
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        if len(buffer) >= self.batch_size or now - self._oldest >= self.linger:
            self.flush()

    def extend(self, items: Any) -> None:
        """Append many items. Unkeyed, they are dealt out in runs rather than routed one by one."""
        if self._key is not None:
            for item in items:
                self.append(item)
            return
        items = list(items)
        partitions = self.stream.partitions
        closed = [p for p, head in enumerate(self._heads) if head.closed]
        if closed:
            raise StreamClosed(f"stream {self.stream.name!r} partition {closed[0]} is closed")
        if self._oldest is None and items:
            self._oldest = time.monotonic()
        # Round-robin, item i to partition (next + i) mod P: the same placement append() gives.
        for offset in range(min(partitions, len(items))):
            partition = (self._next_partition + offset) % partitions
            self._buffers[partition].extend(items[offset::partitions])
        self._next_partition = (self._next_partition + len(items)) % partitions
        self._flush_full()
        if self._oldest is not None and time.monotonic() - self._oldest >= self.linger:
            self.flush()

    def _flush_full(self) -> None:
        """Write every full batch, one per partition and request; keep the rest buffered.

        The buffers are trimmed once at the end (a batch at a time would copy the rest of a long
        ``extend`` over and over), also when a write fails, so that nothing written is written twice.
        """
        size = self.batch_size
        written = [0] * len(self._buffers)
        try:
            while full := [p for p, buffer in enumerate(self._buffers) if len(buffer) - written[p] >= size]:
                entries: dict[str, Any] = {}
                heads = list(self._heads)
                for p in full:
                    for value, count in _encode_bounded(self._buffers[p][written[p]:written[p] + size]):
                        self._add_batch(entries, heads, p, value, count)
                self.stream._batches.put_all(entries)
                self._heads = heads
                for p in full:
                    written[p] += size
        finally:
            self._buffers = [buffer[done:] for buffer, done in zip(self._buffers, written, strict=True)]
            if not any(self._buffers):
                self._oldest = None

    def flush(self) -> None:
        """Write the buffered items. If it raises, nothing changed and the flush can be retried."""
        entries: dict[str, Any] = {}
        heads = list(self._heads)
        for partition, buffer in enumerate(self._buffers):
            for value, count in _encode_bounded(buffer):
                self._add_batch(entries, heads, partition, value, count)
        self.stream._batches.put_all(entries)
        self._heads = heads
        self._buffers = [[] for _ in self._buffers]
        self._oldest = None

    def close(self) -> None:
        """Flush, then write the end marker to every partition still open."""
        self.flush()
        entries: dict[str, Any] = {}
        heads = list(self._heads)
        for partition, head in enumerate(heads):
            if not head.closed:
                entries[batch_key(self.stream.prefix, partition, head.batches)] = END_OF_PARTITION
                heads[partition] = Head(head.batches, head.items, closed=True)
                entries[head_key(self.stream.prefix, partition)] = heads[partition].encode()
        self.stream._batches.put_all(entries)
        self._heads = heads

    def _add_batch(self, entries: dict[str, Any], heads: list[Head], partition: int, value: bytes,
                   count: int) -> None:
        head = heads[partition]
        entries[batch_key(self.stream.prefix, partition, head.batches)] = value
        heads[partition] = Head(head.batches + 1, head.items + count)
        entries[head_key(self.stream.prefix, partition)] = heads[partition].encode()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()
