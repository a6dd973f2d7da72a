"""Runners: what a worker runs for one function instance it holds a lease on.

A transform (map, flat map, batch; one or several inputs) is a set of **lanes**: input stream s,
partition p, written to output partition q. Output batch (q, seq) is made from input batch (p, seq)
and the lane's offset is committed after it is written, so a re-run after a crash overwrites
identical data. A source is one lane with no input: its generator is restarted after a crash and the
items already committed are skipped.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from perper_lab.fabric.client import FabricClient
from perper_lab.runtime.execution import FunctionStopped, encode_result, error_record, run_batch
from perper_lab.runtime.registry import STATE_CACHE, FunctionSpec, offset_key
from perper_lab.streams.encoding import END_OF_PARTITION, decode_items, encode_items, is_end
from perper_lab.streams.stream import BATCHES_CACHE, Head, batch_key, head_key, key_prefix, open_stream

BATCHES_PER_STEP = 16
SOURCE_BATCH = 1000
SOURCE_LINGER = 0.05


@dataclass
class Progress:
    """Committed position of one lane, with the output counters that match it."""

    seq: int = 0
    consumed: int = 0
    outputs: int = 0
    errors: int = 0
    done: bool = False

    def encode(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def decode(cls, text: str | None) -> Progress:
        return cls(**json.loads(text)) if text else cls()


@dataclass(frozen=True)
class Lane:
    input: str
    input_prefix: str  # the key prefix of the input's generation this lane reads
    partition: int
    output_partition: int


def lanes(fabric: FabricClient, spec: FunctionSpec) -> list[Lane]:
    """Every lane of a transform, inputs in order: input j's partition p -> output partition base_j + p."""
    result = []
    for name in spec.inputs:
        stream = open_stream(fabric, name)
        result += [Lane(name, stream.prefix, p, len(result) + p) for p in range(stream.partitions)]
    return result


def make_runner(fabric: FabricClient, spec: FunctionSpec, index: int) -> TransformRunner | SourceRunner:
    if spec.kind == "source":
        return SourceRunner(fabric, spec)
    return TransformRunner(fabric, spec, index)


class _Runner:
    def __init__(self, fabric: FabricClient, spec: FunctionSpec, partitions: list[int]) -> None:
        self.spec = spec
        self.fn = spec.load()
        self.out = key_prefix(spec.output, spec.generation)
        self.errors = key_prefix(spec.errors_stream, spec.generation)
        self._batches = fabric.cache(BATCHES_CACHE)
        self._state = fabric.cache(STATE_CACHE)
        keys = {q: offset_key(spec.output, spec.generation, q) for q in partitions}
        stored = self._state.get_all(list(keys.values()))
        self.progress = {q: Progress.decode(stored.get(key)) for q, key in keys.items()}

    @property
    def finished(self) -> bool:
        return all(progress.done for progress in self.progress.values())

    def stop(self) -> None:
        """Release whatever the runner holds besides its lease (nothing, unless overridden)."""

    def _commit(self, partition: int, after: Progress, entries: dict[str, Any]) -> None:
        entries[head_key(self.out, partition)] = Head(after.seq, after.outputs, after.done).encode()
        entries[head_key(self.errors, partition)] = Head(after.seq, after.errors, after.done).encode()
        self._batches.put_all(entries)
        # Committed only after the output is written: a crash in between re-runs identical batches.
        self._state.put(offset_key(self.spec.output, self.spec.generation, partition), after.encode())
        self.progress[partition] = after


class TransformRunner(_Runner):
    """Instance ``index`` of a map, flat map or batch function: the lanes q with q mod parallelism = index."""

    def __init__(self, fabric: FabricClient, spec: FunctionSpec, index: int) -> None:
        self.lanes = [lane for lane in lanes(fabric, spec) if lane.output_partition % spec.parallelism == index]
        super().__init__(fabric, spec, [lane.output_partition for lane in self.lanes])

    def step(self) -> int:
        """Process up to BATCHES_PER_STEP input batches of each lane; return the work done."""
        return sum(self._step_lane(lane) for lane in self.lanes if not self.progress[lane.output_partition].done)

    def _step_lane(self, lane: Lane) -> int:
        spec, q = self.spec, lane.output_partition
        after = Progress(**self.progress[q].__dict__)
        keys = [batch_key(lane.input_prefix, lane.partition, s) for s in range(after.seq, after.seq + BATCHES_PER_STEP)]
        found = self._batches.get_all(keys)
        entries: dict[str, Any] = {}
        items_read = 0
        for key in keys:
            value = found.get(key)
            if value is None:
                break
            if is_end(value):
                entries[batch_key(self.out, q, after.seq)] = END_OF_PARTITION
                entries[batch_key(self.errors, q, after.seq)] = END_OF_PARTITION
                after.done = True
                break
            items = decode_items(value)
            try:
                result = run_batch(spec, self.fn, items, lane.input, (lane.partition, after.seq))
                outputs, errors = encode_result(spec, result, (lane.partition, after.seq))
            except FunctionStopped as stopped:
                if entries:
                    self._commit(q, after, entries)  # the batches before the failing one are done
                # Whatever the policy, the failing item goes to the dead-letter stream. The offset stays
                # before this batch: a function registered again re-runs it and overwrites this record.
                self._batches.put_all({
                    batch_key(self.errors, q, after.seq): encode_items([stopped.record]),
                    head_key(self.errors, q): Head(after.seq + 1, after.errors + 1).encode(),
                })
                raise
            entries[batch_key(self.out, q, after.seq)] = outputs
            entries[batch_key(self.errors, q, after.seq)] = errors
            after.seq += 1
            after.consumed += len(items)
            after.outputs += len(result.outputs)
            after.errors += len(result.errors)
            items_read += len(items)
        if not entries:
            return 0
        self._commit(q, after, entries)
        return max(items_read, 1)


_END = object()


@dataclass(frozen=True)
class _Failure:
    error: Exception


class SourceRunner(_Runner):
    """A source function: its generator runs in a thread of its own, so a slow or paced source does
    not hold up the other instances of the worker. Batches of up to SOURCE_BATCH items, or what came
    within SOURCE_LINGER seconds, go to the output partitions in turn (batch k to partition k mod P).
    """

    def __init__(self, fabric: FabricClient, spec: FunctionSpec) -> None:
        partitions = open_stream(fabric, spec.output).partitions
        super().__init__(fabric, spec, list(range(partitions)))
        self._queue: queue.Queue = queue.Queue(maxsize=4 * SOURCE_BATCH)
        self._pending: list[Any] = []
        self._since = 0.0
        self._stop = threading.Event()
        # Batches are committed in order, so the committed ones are a prefix of the items.
        committed = sum(progress.consumed for progress in self.progress.values())
        self._thread = threading.Thread(target=self._generate, args=(committed,),
                                        name=f"perper-source-{spec.output}", daemon=True)
        if not self.finished:
            self._thread.start()

    def _generate(self, skip: int) -> None:
        try:
            # A deterministic source yields the same items again after a restart: skip the committed.
            for item in itertools.islice(self.fn(), skip, None):
                if not self._offer(item):
                    return
            self._offer(_END)
        except Exception as exc:
            self._offer(_Failure(exc))

    def _offer(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> int:
        if self.finished:
            return 0
        ended = self._drain()
        full = len(self._pending) >= SOURCE_BATCH
        lingered = self._pending and time.monotonic() - self._since >= SOURCE_LINGER
        if not (full or lingered or ended):
            return 0
        written = len(self._pending)
        if self._pending:
            batch_index = sum(progress.seq for progress in self.progress.values())
            q = batch_index % len(self.progress)
            after = Progress(**self.progress[q].__dict__)
            entries = {batch_key(self.out, q, after.seq): encode_items(self._pending),
                       batch_key(self.errors, q, after.seq): encode_items([])}
            after.seq += 1
            after.consumed += written
            after.outputs += written
            self._commit(q, after, entries)
            self._pending = []
        if ended:
            for q, progress in list(self.progress.items()):
                after = Progress(**progress.__dict__)
                after.done = True
                self._commit(q, after, {batch_key(self.out, q, after.seq): END_OF_PARTITION,
                                        batch_key(self.errors, q, after.seq): END_OF_PARTITION})
        return max(written, 1)

    def _drain(self) -> bool:
        """Move generated items to the pending batch; True once the generator has ended."""
        while len(self._pending) < SOURCE_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _END:
                return True
            if isinstance(item, _Failure):
                raise FunctionStopped(error_record(self.spec, None, (0, 0, 0), item.error))
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append(item)
        return False
