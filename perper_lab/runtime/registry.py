"""The function registry: stream functions stored in the fabric as code (cloudpickle) plus source text.

A function is identified by the stream it writes (one producer per stream). Registering the same code
again changes nothing; new code becomes a new version that continues from the committed offsets.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cloudpickle

from perper_lab.errors import FunctionError, FunctionNotFound, FunctionRejected, StreamError
from perper_lab.fabric.client import FabricClient
from perper_lab.streams import create_stream, delete_stream, new_generation, open_stream
from perper_lab.streams.stream import check_name

FUNCTIONS_CACHE = "perper-control-functions"
STATE_CACHE = "perper-control-state"  # committed offsets and function status
LEASES_CACHE = "perper-control-leases"
WORKERS_CACHE = "perper-control-workers"
KINDS = ("map", "flat_map", "batch", "source")
ERROR_SUFFIX = ".errors"


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do when the function raises on an item: skip it, retry it, or stop the function.

    Every failed item is written to the dead-letter stream ``OUTPUT.errors`` whatever the policy.

    >>> ErrorPolicy.parse("retry=3")
    ErrorPolicy(action='retry', retries=3)
    """

    action: str = "skip"
    retries: int = 0

    @classmethod
    def parse(cls, text: str | ErrorPolicy) -> ErrorPolicy:
        if isinstance(text, ErrorPolicy):
            return text
        action, _, count = str(text).partition("=")
        if action in ("skip", "stop") and not count:
            return cls(action)
        if action == "retry" and count.isdigit() and int(count) > 0:
            return cls("retry", int(count))
        raise FunctionRejected(f"unknown error policy {text!r}: use skip, stop or retry=N (N >= 1)")

    def __str__(self) -> str:
        return f"retry={self.retries}" if self.action == "retry" else self.action


@dataclass(frozen=True)
class FunctionSpec:
    """A registered stream function, as stored in the fabric."""

    output: str
    inputs: tuple[str, ...]
    kind: str
    version: str
    source: str
    code: bytes = field(repr=False)
    function_name: str
    convention: str = "item"  # "item": f(item); "context": the seed's f(context, data)
    parallelism: int = 1
    on_error: str = "skip"
    state: str = "running"
    generation: int = 0  # of the output stream; replaying from the start writes a new one
    created: float = 0.0

    @property
    def errors_stream(self) -> str:
        return self.output + ERROR_SUFFIX

    def load(self) -> Callable[..., Any]:
        if self.convention == "context":
            from perper_lab.runtime.seed import provide_seed_modules

            provide_seed_modules()  # seed-style code may refer to azure.functions / perper.functions
        return cloudpickle.loads(self.code)

    def encode(self) -> bytes:
        return pickle.dumps(asdict(self), protocol=5)

    @classmethod
    def decode(cls, value: bytes) -> FunctionSpec:
        data = pickle.loads(value)
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


def function_source(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return f"# source of {getattr(fn, '__qualname__', fn)!r} is not available\n"


def register_function(fabric: FabricClient, fn: Callable[..., Any], output: str, inputs: list[str], *,
                      kind: str = "map", parallelism: int = 1, on_error: str = "skip",
                      source: str | None = None, partitions: int = 1,
                      seed_style: bool | None = None, replay: bool = False, name: str | None = None) -> FunctionSpec:
    """Register ``fn`` to read ``inputs`` and write ``output``; workers pick it up within a second.

    Creates ``output`` and its dead-letter stream ``output.errors``. Input partition p of the j-th
    input becomes output partition (partitions of the inputs before j) + p, so that every output
    partition has one writer and keeps its input's order. A source reads nothing and writes
    ``partitions`` partitions from one instance.
    """
    if not callable(fn):
        raise FunctionRejected(f"{fn!r} is not a function")
    if kind not in KINDS:
        raise FunctionRejected(f"unknown function kind {kind!r}: use one of {', '.join(KINDS)}")
    if not isinstance(parallelism, int) or parallelism < 1:
        raise FunctionRejected(f"parallelism must be a positive integer, not {parallelism!r}")
    if kind == "map" and inspect.isgeneratorfunction(fn):
        kind = "flat_map"  # a generator yields the items it makes: calling it a map would store generators
    policy = ErrorPolicy.parse(on_error)
    try:
        check_name(output)
        check_name(output + ERROR_SUFFIX)
    except StreamError as exc:
        raise FunctionRejected(str(exc)) from None
    inputs = list(inputs)
    if kind == "source":
        if inputs:
            raise FunctionRejected(f"a source function reads no input stream; got {', '.join(inputs)}")
        if parallelism != 1:
            raise FunctionRejected("a source function runs as one instance (parallelism 1)")
    elif not inputs:
        raise FunctionRejected(f"a {kind} function needs at least one input stream")
    if len(set(inputs)) != len(inputs):
        raise FunctionRejected(f"an input stream is named twice: {', '.join(inputs)}")
    if output in inputs:
        raise FunctionRejected(f"function output {output!r} is also its input; write to another stream")
    source_streams = [open_stream(fabric, name) for name in inputs]
    convention = calling_convention(fn, kind, seed_style)
    code = _pickle_function(fn)
    source = source if source is not None else function_source(fn)
    version = hashlib.sha256(
        json.dumps([source, kind, inputs, str(policy)]).encode()
    ).hexdigest()[:12]

    registry = fabric.cache(FUNCTIONS_CACHE)
    existing = registry.get(output)
    generation = 0
    if existing is not None:
        current = FunctionSpec.decode(existing)
        generation = current.generation
        unchanged = current.version == version and current.parallelism == parallelism
        if unchanged and current.state == "running" and not replay:
            return current
        if (current.kind == "batch") != (kind == "batch") and not replay:
            # Rows of a DataFrame and the items of a map have different shapes: one stream would mix them.
            raise FunctionRejected(
                f"{output!r} is written by a {current.kind} function; switching it to a {kind} function would "
                "mix two shapes of items in one stream: replay it into a new generation (--replay, "
                "replay=True) or choose another output name")
    else:
        try:
            produced = open_stream(fabric, output)
            if produced.producer != output:
                raise FunctionRejected(
                    f"stream {output!r} already exists and is not written by a function; "
                    "choose another output name"
                )
        except StreamError:
            pass
    out_partitions = sum(s.partitions for s in source_streams) if source_streams else partitions
    try:
        create_stream(fabric, output, out_partitions, producer=output)
        create_stream(fabric, output + ERROR_SUFFIX, out_partitions, producer=output)
    except StreamError as exc:
        raise FunctionRejected(f"{exc} (the new inputs give {out_partitions} output partitions)") from None
    if replay and existing is not None:
        # Stop the running version first, so that no worker writes the old generation meanwhile.
        registry.put(output, replace(FunctionSpec.decode(existing), state="stopped").encode())
        wait_released(fabric, output)
        generation = new_generation(fabric, output).generation
        new_generation(fabric, output + ERROR_SUFFIX)
    spec = FunctionSpec(output=output, inputs=tuple(inputs), kind=kind, version=version, source=source,
                        code=code, function_name=name or getattr(fn, "__name__", "function"), convention=convention,
                        parallelism=parallelism, on_error=str(policy), generation=generation,
                        created=time.time())
    registry.put(output, spec.encode())
    fabric.cache(STATE_CACHE).remove_keys([status_key(output)])
    return spec


def calling_convention(fn: Callable[..., Any], kind: str, seed_style: bool | None = None) -> str:
    """How workers call ``fn``: with the item, or as the seed's ``main(context, data)``."""
    name = getattr(fn, "__name__", "the function")
    try:
        parameters = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return "item"  # builtins and some callables have no signature: call them with the item
    names = [p.name for p in parameters]
    if kind == "source":
        if names:
            raise FunctionRejected(f"a source function takes no arguments; {name} takes {', '.join(names)}")
        return "item"
    if len(names) == 2 and kind != "batch" and (seed_style or (seed_style is None and names[0] == "context")):
        return "context"
    if len(names) != 1:
        wanted = "a DataFrame" if kind == "batch" else "the item"
        raise FunctionRejected(
            f"a {kind} function takes one argument ({wanted}), or (context, data) in the seed's style; "
            f"{name} takes {len(names)}: ({', '.join(names)})"
        )
    return "item"


def _pickle_function(fn: Callable[..., Any]) -> bytes:
    name = getattr(fn, "__name__", repr(fn))
    try:
        code = cloudpickle.dumps(fn)
        cloudpickle.loads(code)
    except Exception as exc:
        raise FunctionRejected(
            f"function {name!r} cannot be shipped to the workers: {type(exc).__name__}: {exc}. "
            "It probably uses an object that cannot be pickled (an open file, a lock, a connection, "
            "a generator); create that object inside the function instead"
        ) from None
    return code


def wait_released(fabric: FabricClient, output: str, timeout: float = 15.0) -> None:
    """Wait until no worker holds a live lease on the (stopped) function writing ``output``."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        held = [key for key, text in fabric.cache(LEASES_CACHE).items(output + "#")
                if json.loads(text)["expires"] > now]
        if not held:
            return
        if time.monotonic() > deadline:
            raise FunctionError(f"workers still run {', '.join(held)} after {timeout:g}s; try again")
        time.sleep(0.1)


def wait_deployed(fabric: FabricClient, spec: FunctionSpec, timeout: float = 15.0) -> None:
    """Wait until every instance of ``spec`` runs on a worker with this version and generation."""
    deadline = time.monotonic() + timeout
    keys = [lease_key(spec.output, i) for i in range(spec.parallelism)]
    while True:
        now = time.time()
        leases = fabric.cache(LEASES_CACHE).get_all(keys)
        finished = fabric.cache(STATE_CACHE).get_all([done_key(key) for key in keys])
        running = {key: json.loads(text) for key, text in leases.items()}
        if all(finished.get(done_key(key)) == done_mark(spec)  # ran this version to the end of its input
               or (key in running and running[key]["expires"] > now and running[key].get("version") == spec.version
                   and running[key].get("generation") == spec.generation) for key in keys):
            return
        if time.monotonic() > deadline:
            raise FunctionError(f"{spec.output!r} version {spec.version} is not running on workers after "
                                f"{timeout:g}s; are workers running? (`perper-lab status`)")
        time.sleep(0.1)


def delete_function(fabric: FabricClient, output: str, *, delete_output: bool = True) -> None:
    """Stop the function writing ``output``, forget it, and (by default) delete its output streams."""
    spec = stop_function(fabric, output)
    wait_released(fabric, output)
    partitions = open_stream(fabric, output).partitions
    fabric.cache(STATE_CACHE).remove_keys(
        [status_key(output)] + [offset_key(output, g, q) for g in range(spec.generation + 1) for q in range(partitions)]
        + [done_key(lease_key(output, i)) for i in range(spec.parallelism)]
    )
    fabric.cache(FUNCTIONS_CACHE).remove_keys([output])
    if delete_output:
        delete_stream(fabric, output)
        delete_stream(fabric, output + ERROR_SUFFIX)


def get_function(fabric: FabricClient, output: str) -> FunctionSpec:
    value = fabric.cache(FUNCTIONS_CACHE).get(output)
    if value is None:
        known = sorted(name for name, _ in fabric.cache(FUNCTIONS_CACHE).items())
        raise FunctionNotFound(
            f"no function writes {output!r} (registered: {', '.join(known) if known else 'none'})"
        )
    return FunctionSpec.decode(value)


def list_functions(fabric: FabricClient) -> list[FunctionSpec]:
    return [FunctionSpec.decode(value) for _, value in fabric.cache(FUNCTIONS_CACHE).items()]


def stop_function(fabric: FabricClient, output: str) -> FunctionSpec:
    """Stop running the function; its output stays readable. Registering it again resumes it."""
    spec = replace(get_function(fabric, output), state="stopped")
    fabric.cache(FUNCTIONS_CACHE).put(output, spec.encode())
    return spec


def failure(fabric: FabricClient, output: str) -> dict[str, Any] | None:
    """Why the function writing ``output`` failed (reason, traceback, item), or None if it did not."""
    text = fabric.cache(STATE_CACHE).get(status_key(output))
    return json.loads(text) if text else None


def status_key(output: str) -> str:
    return f"status/{output}"


def offset_key(output: str, generation: int, partition: int) -> str:
    return f"offset/{output}/{generation}/{partition}"


def done_key(lease: str) -> str:
    """Where a worker notes that instance ``lease`` (``output#i``) has finished its input."""
    return f"done/{lease}"


def done_mark(spec: FunctionSpec) -> str:
    return f"{spec.version}/{spec.generation}"


def lease_key(output: str, instance: int) -> str:
    return f"{output}#{instance}"
