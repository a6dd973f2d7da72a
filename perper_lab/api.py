"""The public, process-level API: one default fabric connection and helpers that use it.

>>> import perper_lab                                      # doctest: +SKIP
>>> perper_lab.connect("127.0.0.1:10800")                  # doctest: +SKIP
>>> numbers = perper_lab.from_iterable(range(10), "numbers")   # doctest: +SKIP
>>> perper_lab.register(lambda x: x * 10, "tens", "numbers")   # doctest: +SKIP
>>> perper_lab.stream("tens").wait_closed(30)              # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from perper_lab.errors import FunctionError, PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.runtime.registry import (
    LEASES_CACHE,
    STATE_CACHE,
    WORKERS_CACHE,
    FunctionSpec,
    delete_function,
    failure,
    get_function,
    list_functions,
    offset_key,
    register_function,
    status_key,
)
from perper_lab.streams import Stream, delete_stream, list_streams, open_stream
from perper_lab.streams import from_dataframe as _from_dataframe
from perper_lab.streams import from_iterable as _from_iterable

_default: FabricClient | None = None
WORKER_GONE_AFTER = 30.0  # seconds without a heartbeat after which status() leaves a worker out


def connect(address: str | None = None, timeout: float = 5.0) -> FabricClient:
    """Connect to the fabric at ``address`` (default ``$PERPER_FABRIC`` or 127.0.0.1:10800) and use it
    for every later call in this process."""
    global _default
    client = FabricClient(address, timeout=timeout)
    if _default is not None:
        _default.close()
    _default = client
    return client


def current_fabric() -> FabricClient:
    """The connection made by :func:`connect` (or by ``%load_ext perper_lab``)."""
    if _default is None:
        raise PerperError("not connected to a fabric: call perper_lab.connect() or run %load_ext perper_lab")
    return _default


def disconnect() -> None:
    global _default
    if _default is not None:
        _default.close()
        _default = None


class FunctionOutput(Stream):
    """A stream written by a function: waiting on it also reports the function's failure, and a
    timeout says whether any worker runs the function at all."""

    def _check_producer(self) -> None:
        failed = failure(self.fabric, self.producer)
        if failed:
            raise FunctionError(f"the function writing {self.name!r} failed: {failed['reason']}")
        if get_function(self.fabric, self.producer).state == "stopped":
            raise FunctionError(f"the function writing {self.name!r} was stopped, so the stream stays open; "
                                "run its cell (or register it) again to resume it")

    def wait_closed(self, timeout: float | None = None, poll: float = 0.05) -> None:
        try:
            super().wait_closed(timeout, poll)
        except TimeoutError as exc:
            now = time.time()
            leases = [json.loads(text) for _, text in self.fabric.cache(LEASES_CACHE).items(self.producer + "#")]
            if not any(lease["expires"] > now for lease in leases):
                raise TimeoutError(f"{exc}; no worker runs its function: start one with "
                                   f"`perper-lab worker --fabric {self.fabric.address}`") from None
            raise


def stream(name: str, generation: int | None = None) -> Stream:
    """The stream ``name`` of the current fabric (its latest generation unless one is asked for)."""
    found = open_stream(current_fabric(), name, generation)
    if found.producer:
        return FunctionOutput(found.fabric, found.meta)
    return found


def from_dataframe(df: pd.DataFrame, name: str, rate: float | None = None, partitions: int = 1,
                   key: str | Callable[[Any], Any] | None = None) -> Stream:
    """Replay a DataFrame's rows (as dicts) into a new stream, in the background; see streams.sources."""
    return _from_dataframe(df, name, fabric=current_fabric(), rate=rate, partitions=partitions, key=key)


def from_iterable(items: Iterable[Any], name: str, rate: float | None = None, partitions: int = 1,
                  key: str | Callable[[Any], Any] | None = None) -> Stream:
    """Replay any iterable into a new stream, in the background; see streams.sources."""
    return _from_iterable(items, name, fabric=current_fabric(), rate=rate, partitions=partitions, key=key)


def register(fn: Callable[..., Any], output: str, input: str | list[str] | None = None, *, kind: str = "map",
             parallelism: int = 1, on_error: str = "skip", partitions: int = 1, replay: bool = False) -> FunctionSpec:
    """Register ``fn`` to turn stream(s) ``input`` into stream ``output`` on the fabric's workers.

    ``kind`` is map (default), flat_map, batch, or source (no input; ``partitions`` output partitions).
    ``replay`` reprocesses the inputs from the start into a new generation of ``output``.
    """
    inputs = [] if input is None else [input] if isinstance(input, str) else list(input)
    return register_function(current_fabric(), fn, output, inputs, kind=kind, parallelism=parallelism,
                             on_error=on_error, partitions=partitions, replay=replay)


def run_app(app_dir: str | Path, input: str, *, output: str | None = None,
            parallelism: int = 1) -> list[FunctionSpec]:
    """Register the functions of a seed-style app folder (function.json + __init__.py) to read ``input``.

    Each function writes the stream named after its folder, or ``output`` if the app has one function.
    """
    from perper_lab.apps import load_app

    functions = load_app(app_dir)
    if output and len(functions) > 1:
        raise PerperError(f"output names one stream, but {app_dir} has {len(functions)} functions "
                          f"({', '.join(f.name for f in functions)}); leave it out to use their folder names")
    fabric = current_fabric()
    open_stream(fabric, input)  # before registering anything
    return [register_function(fabric, function.main, output or function.name, [input], parallelism=parallelism,
                              source=function.source, seed_style=True, name=function.name)
            for function in functions]


def delete(name: str, client: FabricClient | None = None) -> None:
    """Delete stream ``name``; if a function writes it, stop and forget the function first.

    A stream that a function reads cannot be deleted until that function is.
    """
    client = client or current_fabric()
    open_stream(client, name)
    functions = list_functions(client)
    readers = [spec.output for spec in functions if name in spec.inputs]
    if readers:
        raise PerperError(f"stream {name!r} is read by the function(s) writing {', '.join(readers)}; "
                          "delete those first")
    if any(spec.output == name for spec in functions):
        delete_function(client, name)
    else:
        delete_stream(client, name)


def status(client: FabricClient | None = None) -> dict[str, pd.DataFrame]:
    """Streams, functions and workers of the fabric, each as a DataFrame."""
    client = client or current_fabric()
    now = time.time()
    streams = []
    for meta in sorted(list_streams(client), key=lambda m: m["name"]):
        s = Stream(client, meta)
        heads = s.heads()
        streams.append({"stream": s.name, "partitions": s.partitions, "items": sum(h.items for h in heads),
                        "closed": all(h.closed for h in heads), "producer": s.producer or ""})
    leases = {key: json.loads(value) for key, value in client.cache(LEASES_CACHE).items()}
    functions = [_function_row(client, spec, leases, now)
                 for spec in sorted(list_functions(client), key=lambda s: s.output)]
    workers = []
    for worker_id, text in sorted(client.cache(WORKERS_CACHE).items()):
        record = json.loads(text)
        if now - record["heartbeat"] > WORKER_GONE_AFTER:
            continue  # a crashed worker never signs off
        workers.append({"worker": worker_id, "host": record["host"], "pid": record["pid"],
                        "heartbeat_age_s": round(max(0.0, now - record["heartbeat"]), 1),  # beats since `now`
                        "instances": ", ".join(record["instances"])})
    return {"streams": pd.DataFrame(streams, columns=["stream", "partitions", "items", "closed", "producer"]),
            "functions": pd.DataFrame(functions, columns=["function", "output", "input", "kind", "version",
                                                          "parallelism", "state", "reason", "workers", "lag",
                                                          "errors"]),
            "workers": pd.DataFrame(workers, columns=["worker", "host", "pid", "heartbeat_age_s", "instances"])}


def function_progress(output: str, client: FabricClient | None = None) -> dict[str, Any]:
    """One function's row of :func:`status` (by its output stream), plus ``offered`` (items in its inputs)
    and ``instances`` (how many run now). What a live view of the output shows besides the stream."""
    client = client or current_fabric()
    leases = {key: json.loads(value) for key, value in client.cache(LEASES_CACHE).items()
              if key.startswith(output + "#")}
    return _function_row(client, get_function(client, output), leases, time.time())


def _function_row(client: FabricClient, spec: FunctionSpec, leases: dict[str, Any], now: float) -> dict[str, Any]:
    state = client.cache(STATE_CACHE)
    output = open_stream(client, spec.output)
    offsets = state.get_all([offset_key(spec.output, spec.generation, q) for q in range(output.partitions)])
    offered = sum(open_stream(client, name).count() for name in spec.inputs)
    consumed = sum(json.loads(text)["consumed"] for text in offsets.values())
    errors = sum(json.loads(text)["errors"] for text in offsets.values())
    failed = state.get(status_key(spec.output))
    if failed:
        errors += 1  # the item that stopped the function is a dead letter its offsets do not count
    finished = output.closed  # also when stopped afterwards: it did finish
    live = [lease for key, lease in leases.items() if key.startswith(spec.output + "#") and lease["expires"] > now]
    return {
        "function": spec.function_name, "output": spec.output, "input": ", ".join(spec.inputs),
        "kind": spec.kind, "version": spec.version, "parallelism": spec.parallelism,
        "state": json.loads(failed)["state"] if failed else "finished" if finished else spec.state,
        "reason": json.loads(failed)["reason"] if failed else "",
        "workers": ", ".join(sorted({lease["worker"] for lease in live})),
        "lag": offered - consumed if spec.inputs else 0, "errors": errors,
        "offered": offered, "instances": len(live),
    }


def status_text(client: FabricClient | None = None) -> str:
    parts = []
    for title, frame in status(client).items():
        parts.append(f"{title}:\n" + (frame.to_string(index=False) if len(frame) else "  (none)"))
    return "\n\n".join(parts)
