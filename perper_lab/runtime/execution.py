"""The one execution kind: a batch of input items in, output items and dead-letter records out.

map, flat map and batch functions are thin adapters over :func:`run_batch`, so offsets, leases and
exactly-once are written once for all of them.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perper_lab.runtime.registry import ErrorPolicy, FunctionSpec
from perper_lab.streams.encoding import encode_items
from perper_lab.streams.stream import to_frame


class FunctionStopped(Exception):
    """The error policy is ``stop`` and an item failed: the function must not go on."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"{record['error']}: {record['message']}")
        self.record = record


@dataclass
class BatchResult:
    outputs: list[Any] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StreamContext:
    """What a seed-style function ``main(context, data)`` is told about the item it is given."""

    stream: str
    partition: int
    batch: int
    index: int
    function: str
    logger: logging.Logger

    @property
    def position(self) -> tuple[int, int, int]:
        return self.partition, self.batch, self.index


def run_batch(spec: FunctionSpec, fn: Callable[..., Any], items: list[Any], stream: str,
              position: tuple[int, int]) -> BatchResult:
    """Apply ``fn`` to one batch of ``stream`` at ``position`` = (partition, seq), per the error policy."""
    policy = ErrorPolicy.parse(spec.on_error)
    result = BatchResult()
    if spec.kind == "batch":
        _run_vectorised(spec, fn, items, position, policy, result)
        return result
    context = None
    if spec.convention == "context":
        logger = logging.getLogger(f"perper_lab.function.{spec.output}")

        def context(index: int) -> StreamContext:
            return StreamContext(stream, *position, index, spec.function_name, logger)
    _run_per_item(spec, fn, context, items, position, policy, result)
    return result


def _run_per_item(spec: FunctionSpec, fn: Callable[..., Any], context: Callable[[int], StreamContext] | None,
                  items: list[Any], position: tuple[int, int], policy: ErrorPolicy, result: BatchResult) -> None:
    """The hot loop: nothing but the call and the append per item, until an item fails; that item alone
    takes the slow path (retries, dead letter or stop), then the loop goes on after it."""
    flat = spec.kind == "flat_map"
    outputs = result.outputs
    start, count = 0, len(items)
    while start < count:
        index = start
        try:
            for index in range(start, count):
                produced = fn(items[index]) if context is None else fn(context(index), items[index])
                if flat:
                    if produced is not None:
                        outputs.extend(list(produced))
                elif produced is not None:
                    outputs.append(produced)
            return
        except (Exception, SystemExit) as exc:  # sys.exit() in a function must not end the worker
            _retry_or_record(spec, fn, context, items[index], (*position, index), policy, result, exc)
            start = index + 1


def _retry_or_record(spec: FunctionSpec, fn: Callable[..., Any], context: Callable[[int], StreamContext] | None,
                     item: Any, position: tuple[int, int, int], policy: ErrorPolicy, result: BatchResult,
                     exc: BaseException) -> None:
    for _ in range(policy.retries):
        try:
            produced = fn(item) if context is None else fn(context(position[2]), item)
            if spec.kind == "flat_map":
                produced = list(produced) if produced is not None else []
        except (Exception, SystemExit) as again:
            exc = again
        else:
            if spec.kind == "flat_map":
                result.outputs.extend(produced)
            elif produced is not None:
                result.outputs.append(produced)
            return
    record = error_record(spec, item, position, exc)
    if policy.action == "stop":
        raise FunctionStopped(record) from exc
    result.errors.append(record)


def _run_vectorised(spec: FunctionSpec, fn: Callable[[pd.DataFrame], Any], items: list[Any],
                    position: tuple[int, int], policy: ErrorPolicy, result: BatchResult) -> None:
    if not items:
        # A filter upstream writes an empty batch for every input batch it drops entirely (its output
        # keys follow its input's); a DataFrame without rows or columns is nothing to compute on.
        return
    for attempt in range(policy.retries + 1):
        try:
            frame = fn(to_frame(items))
            if frame is None:
                return
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"a batch function must return a pandas DataFrame or None, "
                                f"not {type(frame).__name__}")
            result.outputs.extend(frame.to_dict("records"))
            return
        except (Exception, SystemExit) as exc:
            if attempt < policy.retries:
                continue
            record = error_record(spec, items, (*position, 0), exc)
            if policy.action == "stop":
                raise FunctionStopped(record) from exc
            result.errors.append(record)


def encode_result(spec: FunctionSpec, result: BatchResult, position: tuple[int, int]) -> tuple[bytes, bytes]:
    """The batch values of a result's outputs and dead letters. An output that cannot be pickled (a lock,
    a generator, ...) cannot be stored: it becomes a dead letter instead of failing the whole batch."""
    try:
        return encode_items(result.outputs), encode_items(result.errors)
    except Exception:
        pass  # find the culprits: the slow path runs only when a batch holds one
    kept = []
    for index, value in enumerate(result.outputs):
        try:
            pickle.dumps(value, protocol=5)
        except Exception as exc:
            problem = TypeError(f"the function returned a value that cannot be stored "
                                f"({type(exc).__name__}: {exc}); return plain data instead")
            record = error_record(spec, repr(value), (*position, index), problem)
            if ErrorPolicy.parse(spec.on_error).action == "stop":
                raise FunctionStopped(record) from exc
            result.errors.append(record)
        else:
            kept.append(value)
    result.outputs = kept
    return encode_items(result.outputs), encode_items(result.errors)


def error_record(spec: FunctionSpec, item: Any, position: tuple[int, int, int],
                 exc: BaseException) -> dict[str, Any]:
    return {
        "item": item,
        "partition": position[0],
        "batch": position[1],
        "index": position[2],
        "error": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "function": spec.function_name,
        "version": spec.version,
    }
