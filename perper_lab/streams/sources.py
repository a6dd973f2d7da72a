"""Sources that replay data into a stream from the notebook process."""

from __future__ import annotations

import atexit
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from perper_lab.errors import PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.streams.stream import DEFAULT_LINGER, Stream, StreamWriter, create_stream

# A paced replay stands for a live source, where latency matters more than batch size: at 10,000 items/s
# a 5 ms linger keeps the append-to-output p50 under 10 ms, against ~45 ms with the writer's 50 ms
# default, for about 1.7x the CPU per item (benchmarks/RESULTS.md, W4).
PACED_LINGER = 0.005

_running: set[ReplayedStream] = set()  # replays still writing, waited for when the interpreter exits


class ReplayedStream(Stream):
    """A stream being filled by a background replay; :meth:`wait_closed` reports a failed replay."""

    def __init__(self, stream: Stream, thread: threading.Thread) -> None:
        super().__init__(stream.fabric, stream.meta)
        self._thread = thread
        self.error: BaseException | None = None

    @property
    def replaying(self) -> bool:
        return self._thread.is_alive()

    def wait_closed(self, timeout: float | None = None, poll: float = 0.05) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(timeout)
        if self.error is not None:
            raise PerperError(f"replaying into {self.name!r} failed: {self.error}") from self.error
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        super().wait_closed(remaining, poll)


def from_iterable(items: Iterable[Any], name: str, *, fabric: FabricClient, rate: float | None = None,
                  partitions: int = 1, key: str | Callable[[Any], Any] | None = None,
                  batch_size: int = 1000) -> ReplayedStream:
    """Replay ``items`` into a new stream ``name`` in a background thread, then close it.

    ``rate`` paces the replay at that many items per second (None: as fast as the fabric takes them).
    Returns at once; the stream fills while other cells run.
    """
    if rate is not None and rate <= 0:
        raise PerperError(f"rate must be a positive number of items per second or None, not {rate!r}")
    stream = create_stream(fabric, name, partitions)
    if stream.count() or stream.closed:
        raise PerperError(
            f"stream {name!r} already holds data; replay into a new name or delete it first"
        )
    address, timeout = fabric.address, fabric.timeout

    def replay() -> None:
        try:
            # pyignite clients are not thread-safe: the replay thread gets its own connection.
            with FabricClient(address, timeout=timeout) as own:
                target = stream.bind(own)
                linger = DEFAULT_LINGER if rate is None else PACED_LINGER
                writer = target.writer(batch_size=batch_size, linger=linger, key=key)
                if rate is None:
                    for chunk in _chunks(items, batch_size):
                        writer.extend(chunk)
                else:
                    _paced(items, writer, rate)
                writer.close()
        except BaseException as exc:  # reported by ReplayedStream.wait_closed, never lost
            handle.error = exc
            # Nobody may be waiting on the handle: say it where the notebook (or terminal) shows it.
            print(f"perper_lab: replaying into {name!r} failed: {str(exc).rstrip('.')}. The stream stays open "
                  "with what was written; delete it (perper_lab.delete(name)) and replay again.", file=sys.stderr)
        finally:
            _running.discard(handle)

    thread = threading.Thread(target=replay, name=f"perper-replay-{name}", daemon=True)
    handle = ReplayedStream(stream, thread)
    _running.add(handle)
    thread.start()
    return handle


@atexit.register
def _finish_replays() -> None:
    """A script that ends right after ``from_iterable`` would otherwise kill its daemon replay thread and
    leave the stream open and partly written: wait for it, saying so, and say what Ctrl-C leaves behind."""
    for handle in list(_running):
        print(f"perper_lab: waiting for the replay into {handle.name!r} to finish before exiting "
              "(Ctrl-C leaves the stream open and incomplete)", file=sys.stderr, flush=True)
        try:
            handle._thread.join()
        except KeyboardInterrupt:
            print(f"perper_lab: the replay into {handle.name!r} was abandoned; the stream stays open with "
                  "what was written", file=sys.stderr, flush=True)
            return


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _paced(items: Iterable[Any], writer: StreamWriter, rate: float) -> None:
    """Append at ``rate`` items per second. While ahead of schedule the writer's linger decides when to
    flush, so that batches stay larger than a few items; before a longer pause it flushes at once."""
    started = time.monotonic()
    for index, item in enumerate(items):
        writer.append(item)
        ahead = started + (index + 1) / rate - time.monotonic()
        if ahead > writer.linger:
            writer.flush()
        if ahead > 0:
            time.sleep(ahead)


def from_dataframe(df: pd.DataFrame, name: str, *, fabric: FabricClient, rate: float | None = None,
                   partitions: int = 1, key: str | Callable[[Any], Any] | None = None,
                   batch_size: int = 1000) -> ReplayedStream:
    """Replay the rows of ``df`` (as dicts, in order) into a new stream ``name``; see :func:`from_iterable`."""
    if not isinstance(df, pd.DataFrame):
        raise PerperError(f"from_dataframe needs a pandas DataFrame, not {type(df).__name__}")
    if isinstance(key, str) and key not in df.columns:
        raise PerperError(f"key column {key!r} is not in the DataFrame (columns: {', '.join(map(str, df.columns))})")
    return from_iterable(df.to_dict("records"), name, fabric=fabric, rate=rate, partitions=partitions,
                         key=key, batch_size=batch_size)
