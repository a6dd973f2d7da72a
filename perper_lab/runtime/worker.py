"""The worker process: claims function instances through leases and runs them.

Instance i of a function with parallelism n owns the input partitions p with p mod n = i. For each
owned partition it reads input batches from the committed offset, writes the output batch derived
from input batch (p, s) under output key (p, s), then commits offset s + 1. A re-run after a crash
therefore overwrites identical batches: exactly-once output for deterministic functions.

Leases are compare-and-set entries in the fabric holding (worker, expiry); a worker renews its leases
every ``lease_ttl / 3`` seconds, and a dead worker's leases expire so that others take them over.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from perper_lab.errors import FabricError, PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.runtime.execution import FunctionStopped, run_batch
from perper_lab.runtime.registry import (
    LEASES_CACHE,
    STATE_CACHE,
    WORKERS_CACHE,
    FunctionSpec,
    lease_key,
    list_functions,
    offset_key,
    status_key,
)
from perper_lab.streams.encoding import END_OF_PARTITION, decode_items, encode_items, is_end
from perper_lab.streams.stream import BATCHES_CACHE, Head, batch_key, head_key, open_stream

log = logging.getLogger("perper_lab.worker")

LEASE_TTL = 6.0
BATCHES_PER_STEP = 16


@dataclass
class Progress:
    """Committed position of one input partition, with the output counters that match it."""

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


class InstanceRunner:
    """Runs instance ``index`` of one function version on the partitions it owns."""

    def __init__(self, fabric: FabricClient, spec: FunctionSpec, index: int) -> None:
        self.fabric = fabric
        self.spec = spec
        self.index = index
        self.fn = spec.load()
        source = open_stream(fabric, spec.inputs[0])
        self.input = source.name
        self.partitions = [p for p in range(source.partitions) if p % spec.parallelism == index]
        state = fabric.cache(STATE_CACHE)
        stored = state.get_all([offset_key(spec.output, p) for p in self.partitions])
        self.progress = {p: Progress.decode(stored.get(offset_key(spec.output, p))) for p in self.partitions}
        self._batches = fabric.cache(BATCHES_CACHE)
        self._state = state

    @property
    def finished(self) -> bool:
        return all(progress.done for progress in self.progress.values())

    def step(self) -> int:
        """Process up to BATCHES_PER_STEP input batches of each owned partition; return items read."""
        return sum(self._step_partition(p) for p, progress in self.progress.items() if not progress.done)

    def _step_partition(self, partition: int) -> int:
        progress = self.progress[partition]
        keys = [batch_key(self.input, partition, s) for s in range(progress.seq, progress.seq + BATCHES_PER_STEP)]
        found = self._batches.get_all(keys)
        spec = self.spec
        entries: dict[str, Any] = {}
        after = Progress(**progress.__dict__)
        items_read = 0
        for key in keys:
            value = found.get(key)
            if value is None:
                break
            if is_end(value):
                entries[batch_key(spec.output, partition, after.seq)] = END_OF_PARTITION
                entries[batch_key(spec.errors_stream, partition, after.seq)] = END_OF_PARTITION
                after.done = True
                break
            items = decode_items(value)
            result = run_batch(spec, self.fn, items, (partition, after.seq))
            entries[batch_key(spec.output, partition, after.seq)] = encode_items(result.outputs)
            entries[batch_key(spec.errors_stream, partition, after.seq)] = encode_items(result.errors)
            after.seq += 1
            after.consumed += len(items)
            after.outputs += len(result.outputs)
            after.errors += len(result.errors)
            items_read += len(items)
        if not entries:
            return 0
        entries[head_key(spec.output, partition)] = Head(after.seq, after.outputs, after.done).encode()
        entries[head_key(spec.errors_stream, partition)] = Head(after.seq, after.errors, after.done).encode()
        self._batches.put_all(entries)
        # Committed only after the output is written: a crash in between re-runs identical batches.
        self._state.put(offset_key(spec.output, partition), after.encode())
        self.progress[partition] = after
        return max(items_read, 1)


class Worker:
    """A worker process's engine. ``run()`` loops until ``stop`` is set; see the module docstring."""

    def __init__(self, fabric: str | FabricClient | None = None, *, slots: int | None = None,
                 lease_ttl: float = LEASE_TTL, worker_id: str | None = None) -> None:
        self.fabric = fabric if isinstance(fabric, FabricClient) else FabricClient(fabric)
        self.slots = slots
        self.lease_ttl = lease_ttl
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.held: dict[str, str] = {}  # lease key -> the lease value we hold
        self.runners: dict[str, InstanceRunner] = {}
        self._leases = self.fabric.cache(LEASES_CACHE)
        self._workers = self.fabric.cache(WORKERS_CACHE)
        self._state = self.fabric.cache(STATE_CACHE)
        self._next_refresh = 0.0

    # -- main loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        idle = 0.001
        log.info("worker %s serving fabric %s", self.id, self.fabric.address)
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= self._next_refresh:
                        self.refresh()
                    processed = self.step()
                except FabricError as exc:
                    log.warning("worker %s: %s; retrying in 1s", self.id, exc)
                    stop.wait(1.0)
                    continue
                if processed:
                    idle = 0.001
                else:
                    stop.wait(idle)
                    idle = min(idle * 2, 0.05)
        finally:
            self.shutdown()

    def step(self) -> int:
        processed = 0
        for key, runner in list(self.runners.items()):
            try:
                processed += runner.step()
            except FunctionStopped as stopped:
                self._fail(runner.spec, f"stopped on an error (policy 'stop'): {stopped}", stopped.record)
                self._drop(key)
        return processed

    # -- leases ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Heartbeat, renew held leases, drop what is no longer ours, claim a fair share of the rest."""
        self._next_refresh = time.monotonic() + min(1.0, self.lease_ttl / 3)
        now = time.time()
        failed = {key.removeprefix("status/") for key, _ in self._state.items("status/")}
        specs = {s.output: s for s in list_functions(self.fabric) if s.state == "running" and s.output not in failed}
        wanted = {lease_key(s.output, i): (s, i) for s in specs.values() for i in range(s.parallelism)}
        self._workers.put(self.id, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                               "heartbeat": now, "instances": sorted(self.held)}))
        live = sum(1 for _, text in self._workers.items() if json.loads(text)["heartbeat"] > now - self.lease_ttl)
        share = math.ceil(len(wanted) / max(live, 1))
        limit = min(share, self.slots) if self.slots else share

        for key in list(self.held):
            if key not in wanted or not self._renew(key, now):
                self._drop(key)
            elif key in self.runners and self.runners[key].spec.version != wanted[key][0].version:
                self._drop(key)  # a new version: rebuilt below from the committed offsets
        while len(self.held) > limit:
            self._drop(sorted(self.held)[-1])

        leases = dict(self._leases.items())
        candidates = [key for key in wanted if key not in self.held]
        random.shuffle(candidates)  # workers starting together should not all race for the same keys
        for key in candidates:
            if len(self.held) >= limit:
                break
            if self._claim(key, leases.get(key), now):
                spec, index = wanted[key]
                try:
                    self.runners[key] = InstanceRunner(self.fabric, spec, index)
                    log.info("worker %s: running %s (version %s)", self.id, key, spec.version)
                except PerperError as exc:
                    self._fail(spec, str(exc))
                    self._drop(key)
                except Exception as exc:  # the function's code could not be loaded in this process
                    self._fail(spec, f"cannot load the function in the worker: {type(exc).__name__}: {exc}")
                    self._drop(key)

    def _lease(self, now: float) -> str:
        return json.dumps({"worker": self.id, "expires": now + self.lease_ttl})

    def _claim(self, key: str, current: str | None, now: float) -> bool:
        mine = self._lease(now)
        if current is None:
            taken = self._leases.put_if_absent(key, mine)
        elif json.loads(current)["expires"] < now:
            taken = self._leases.replace_if_equals(key, current, mine)
        else:
            return False
        if taken:
            self.held[key] = mine
        return taken

    def _renew(self, key: str, now: float) -> bool:
        mine = self._lease(now)
        if self._leases.replace_if_equals(key, self.held[key], mine):
            self.held[key] = mine
            return True
        log.warning("worker %s: lost lease %s", self.id, key)
        return False

    def _drop(self, key: str) -> None:
        self.runners.pop(key, None)
        held = self.held.pop(key, None)
        if held is not None:
            try:
                self._leases.remove_if_equals(key, held)
            except FabricError:
                pass  # it expires on its own

    def _fail(self, spec: FunctionSpec, reason: str, record: dict[str, Any] | None = None) -> None:
        log.error("worker %s: function %s failed: %s", self.id, spec.output, reason)
        detail = {"state": "failed", "reason": reason, "version": spec.version, "worker": self.id,
                  "traceback": (record or {}).get("traceback"), "item": repr((record or {}).get("item"))}
        self._state.put(status_key(spec.output), json.dumps(detail))

    def shutdown(self) -> None:
        """Give back every lease so that other workers take over at once, and sign off."""
        for key in list(self.held):
            self._drop(key)
        try:
            self._workers.remove_keys([self.id])
        except FabricError:
            pass
