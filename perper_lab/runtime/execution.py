"""The one execution kind: a batch of input items in, output items and dead-letter records out.

map, flat map and batch functions are thin adapters over :func:`run_batch`, so offsets, leases and
exactly-once are written once for all of them.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from perper_lab.runtime.registry import ErrorPolicy, FunctionSpec
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


def _map(fn: Callable[[Any], Any], item: Any, out: list[Any]) -> None:
    value = fn(item)
    if value is not None:
        out.append(value)


def _flat_map(fn: Callable[[Any], Any], item: Any, out: list[Any]) -> None:
    produced = fn(item)
    if produced is not None:
        out.extend(produced)


PER_ITEM = {"map": _map, "flat_map": _flat_map}


def run_batch(spec: FunctionSpec, fn: Callable[..., Any], items: list[Any],
              position: tuple[int, int]) -> BatchResult:
    """Apply ``fn`` to one input batch at ``position`` = (partition, seq), honouring the error policy."""
    policy = ErrorPolicy.parse(spec.on_error)
    result = BatchResult()
    if spec.kind == "batch":
        _run_vectorised(spec, fn, items, position, policy, result)
        return result
    apply = PER_ITEM[spec.kind]
    for index, item in enumerate(items):
        for attempt in range(policy.retries + 1):
            produced: list[Any] = []
            try:
                apply(fn, item, produced)
            except Exception as exc:
                if attempt < policy.retries:
                    continue
                record = error_record(spec, item, (*position, index), exc)
                if policy.action == "stop":
                    raise FunctionStopped(record) from exc
                result.errors.append(record)
            else:
                result.outputs.extend(produced)
            break
    return result


def _run_vectorised(spec: FunctionSpec, fn: Callable[[pd.DataFrame], Any], items: list[Any],
                    position: tuple[int, int], policy: ErrorPolicy, result: BatchResult) -> None:
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
        except Exception as exc:
            if attempt < policy.retries:
                continue
            record = error_record(spec, items, (*position, 0), exc)
            if policy.action == "stop":
                raise FunctionStopped(record) from exc
            result.errors.append(record)


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
